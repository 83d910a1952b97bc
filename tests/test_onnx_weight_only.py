"""Weight-only int8 (``deploy/onnx_weight_only.py``): constant-weight MatMuls become 8-bit ``MatMulNBits`` that
compute what the float MatMul did to within the 8-bit rounding; other MatMuls and shared weights stay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from genexp.deploy.onnx_weight_only import quantize_weight_only


def _graph(path: Path, k: int, n: int) -> np.ndarray:
    """x (batch, seq, k) @ W (k, n) -> y, then y @ y^T (no constant weight); W also feeds an Identity output."""
    weight = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["y"], name="proj"),
        helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["y", "yt"], ["gram"], name="gram"),
        helper.make_node("Identity", ["W"], ["w_out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", k])],
        [
            helper.make_tensor_value_info("gram", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("w_out", TensorProto.FLOAT, None),
        ],
        [numpy_helper.from_array(weight, "W")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return weight


def test_constant_matmuls_become_8bit_matmulnbits_within_rounding(tmp_path: Path) -> None:
    for k in (64, 72):  # 72: the last block of 32 input rows is padded
        weight = _graph(tmp_path / "f.onnx", k, 48)
        rewritten = quantize_weight_only(tmp_path / "f.onnx", tmp_path / "q.onnx")
        assert rewritten == ["proj"]  # "gram" multiplies two activations
        model = onnx.load(str(tmp_path / "q.onnx"))
        node = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["bits"] == 8 and attrs["K"] == k and attrs["N"] == 48 and attrs["block_size"] == 32
        assert "W" in {i.name for i in model.graph.initializer}  # still read by the Identity
        x = np.random.default_rng(1).standard_normal((2, 5, k)).astype(np.float32)
        session = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
        gram, w_out = session.run(None, {"x": x})
        y = x @ weight
        want = y @ y.transpose(0, 2, 1)
        error = np.linalg.norm(gram - want) / np.linalg.norm(want)
        assert 1e-6 < error < 0.02  # 8-bit rounding: not exact, and not far
        assert np.array_equal(w_out, weight)
