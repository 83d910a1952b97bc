"""What ships: genexp's weight format, compressed layers, the torch artifact, and what a deployable costs.

Importable without Lightning callbacks or training code:

- ``sparse_format``: pruning folded in, the bitmask encoding of zeros, tied tensors once;
- ``layers``: ``Int8WeightConv``, the half-precision cast, the recipe's module swaps;
- ``artifact``: the ``quantized/`` artifact (save / read / install);
- ``costs``: parameters, non-zeros, bytes (``measure``) and output fidelity;
- ``latency``: CPU (and GPU) latency and throughput on a fixed batch;
- ``onnx_export``, ``onnx_quantize``, ``onnx_runtime``, ``onnx_package``: the ONNX deployables (``model.onnx``,
  ``model.int8.onnx``, ``model.json``) that run with onnxruntime and numpy alone, and latency per backend;
- ``onnx_attention``, ``onnx_conv``: export-time swaps for faster graphs (the GPT's fused attention, the GAN
  generator's first layer as one Gemm, strided transposed convs as sub-pixel convs in ``<stem>.subpixel.onnx``);
- ``backends``, ``openvino_runtime``: the runtimes x precisions x graph layouts an export is timed on.
"""
