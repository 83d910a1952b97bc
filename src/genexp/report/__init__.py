"""The compression report: what a run, checkpoint or quantized artifact costs and how good it is.

- targets are rebuilt by ``genexp.checkpoints.rebuild.load_any`` (a checkpoint, a run folder or a quantized artifact) and
  measured through ``genexp.deploy`` (never ``genexp.compression``);
- ``family``: each model family's quality metric (VAE negative ELBO, GAN domain FID, GPT loss / bpc / ppl);
- ``measure_run.measure_target``: quality, parameters, non-zeros, bytes, CPU (and GPU) latency -> one dict;
- ``compare.compare_runs``: every run of a sweep in one table, the dense baseline, ratios against it;
- ``pareto``: the quality-vs-bytes and quality-vs-latency plot with its frontier;
- ``hparams``: one TensorBoard HPARAMS entry per run;
- ``tables``: the Markdown and rich renderings.

The Hydra callback that compares a multirun when it ends is ``genexp.callbacks.sweep_comparison.CompareSweep``.
"""
