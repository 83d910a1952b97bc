"""Sample-quality metrics: offline feature extractors, FID/KID/class scores, and the callback."""
