"""Compression callbacks (prune; quantize and distill reuse the same pieces).

- ``schedule.CompressionSchedule``: when and how much (start/end epoch, every n epochs, cubic/linear/one-shot).
- ``measure.measure``: parameters, non-zeros, dense and sparse bytes, CPU latency of a module.
- ``prune.PruningCallback``: scheduled, exact pruning of ``deployable()`` with ``torch.nn.utils.prune``.
- ``distill.DistillationCallback``: a frozen teacher from an earlier run; KD mixed into the loss on a schedule.
"""

from genexp.compression.schedule import CompressionSchedule

__all__ = ["CompressionSchedule", "measure"]
