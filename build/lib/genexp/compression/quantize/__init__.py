"""Quantization: ``numerics`` (torchao configs, QAT flow, quantized copies) and ``callback``
(``QuantizationCallback``, the ``compression=[quantize]`` option)."""

from genexp.compression.quantize.callback import QuantizationCallback

__all__ = ["QuantizationCallback"]
