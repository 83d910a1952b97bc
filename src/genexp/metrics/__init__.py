"""Sample-quality metrics: offline feature extractors and FID/KID/class scores (the callback that uses them
is ``genexp.callbacks.sample_quality``)."""
