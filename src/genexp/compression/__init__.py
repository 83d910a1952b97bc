"""Compression callbacks: they change ``deployable()`` during fit and hand their figures to one writer
(``genexp.runtime.run_folder.record_compression``); sizes and latency come from ``genexp.deploy``.

- ``schedule.CompressionSchedule``: when and how much (start/end epoch, every n epochs, cubic/linear/one-shot);
- ``targets``: which layers, by name (include/exclude regexes; the conv types come from ``deploy.layers``);
- ``prune.PruningCallback``: scheduled, exact pruning with one of two strategies: weight masks
  (``prune_masks``, ``torch.nn.utils.prune``; ``masks``: which weights) or unit removal (``prune_units``,
  ``structured``: heads, MLP units and conv channels through torch-pruning's graph);
- ``quantize.QuantizationCallback``: QAT / PTQ / half with torchao;
- ``distill.DistillationCallback``: a frozen teacher from an earlier run, rebuilt through ``genexp.checkpoints.rebuild``.
"""

from genexp.compression.schedule import CompressionSchedule

__all__ = ["CompressionSchedule"]
