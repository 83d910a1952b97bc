"""The OpenVINO backend (``deploy/openvino_runtime.py``, ``deploy/backends.py``): it reads an export's ONNX graph
with the precision it is asked for, fails on a bad file in one line, and is left out where it cannot run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from genexp.deploy import backends, openvino_runtime
from genexp.deploy.backends import Backend, by_name, onnx_backends, open_backends
from genexp.deploy.onnx_runtime import open_session
from genexp.runtime.errors import GenexpError
from genexp.search.select import deployable_files


def _conv_graph(path: Path) -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1)).eval()
    x = torch.randn(4, 3, 16, 16)
    torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=False)
    return {"x": x.numpy()}


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_openvino_computes_the_onnx_graph_in_the_precision_asked(tmp_path: Path) -> None:
    feeds = _conv_graph(tmp_path / "model.onnx")
    want = open_session(tmp_path / "model.onnx").run(None, feeds)[0]
    fp32 = openvino_runtime.OpenVinoSession(tmp_path / "model.onnx", "fp32")
    assert [(i.name, i.shape) for i in fp32.get_inputs()] == [("x", [4, 3, 16, 16])]
    assert _relative_error(fp32.run(None, feeds)[0], want) < 1e-5  # f32 pinned, not OpenVINO's bf16 default
    bf16 = openvino_runtime.OpenVinoSession(tmp_path / "model.onnx", "bf16")
    error = _relative_error(bf16.run(None, feeds)[0], want)
    if "bf16" in openvino_runtime.precisions():  # this CPU computes bf16: 8 bits of mantissa show
        assert 1e-4 < error < 3e-2
    else:
        assert error < 3e-2


def test_a_bad_graph_or_precision_is_one_line_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(GenexpError, match=r"target=.*model\.onnx: not an ONNX graph OpenVINO can run") as err:
        openvino_runtime.OpenVinoSession(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(GenexpError, match="precision=int4"):
        openvino_runtime.OpenVinoSession(bad, "int4")


def test_a_backend_that_cannot_read_a_graph_is_left_out_with_its_reason(tmp_path: Path) -> None:
    _conv_graph(tmp_path / "model.onnx")
    (tmp_path / "model.int8.onnx").write_bytes(b"corrupt")
    opened, skipped = open_backends(onnx_backends(int8=True), tmp_path, ["model"])
    assert {"onnxruntime fp32", "openvino fp32"} <= set(opened)
    assert set(skipped) == {"onnxruntime int8", "openvino int8"}
    assert "model.int8.onnx" in skipped["openvino int8"]


def test_without_openvino_only_onnx_runtime_is_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openvino_runtime, "available", lambda: False)
    assert [b.name for b in onnx_backends(int8=True)] == ["onnxruntime fp32", "onnxruntime int8"]
    monkeypatch.setattr(backends.openvino_runtime, "available", lambda: True)
    monkeypatch.setattr(openvino_runtime, "precisions", lambda: ["fp32"])  # an AVX2 CPU: no bf16 backend
    assert [b.name for b in onnx_backends(int8=False)] == ["onnxruntime fp32", "openvino fp32"]
    with_subpixel = [b.name for b in onnx_backends(int8=True, subpixel=True)]  # the float ones, twice
    assert with_subpixel == [
        "onnxruntime fp32",
        "openvino fp32",
        "onnxruntime fp32 subpixel",
        "openvino fp32 subpixel",
        "onnxruntime int8",
        "openvino int8",
    ]


def test_backend_names_and_what_ships_for_them(tmp_path: Path) -> None:
    assert by_name("openvino bf16") == Backend("openvino", "bf16") and by_name("torch fp32 eager") is None
    assert (
        by_name("openvino int4") is None
        and Backend("openvino", "int8").file("decoder") == "decoder.int8.onnx"
    )
    sub = by_name("openvino bf16 subpixel")
    assert sub == Backend("openvino", "bf16", "subpixel") and sub.name == "openvino bf16 subpixel"
    assert sub.file("model") == "model.subpixel.onnx" and by_name("onnxruntime int8 subpixel") is None
    for name in ("model", "decoder"):
        for suffix in ("onnx", "int8.onnx", "subpixel.onnx"):
            (tmp_path / f"{name}.{suffix}").write_bytes(b"")
    row = {"export": str(tmp_path), "run": str(tmp_path / "run")}
    bf16 = deployable_files({**row, "backend": "openvino bf16"})  # bf16 is a compile setting: fp32 files ship
    assert [p.name for p in bf16] == ["decoder.onnx", "model.onnx"]
    int8 = deployable_files({**row, "backend": "openvino int8"})
    assert [p.name for p in int8] == ["decoder.int8.onnx", "model.int8.onnx"]
    subpixel = deployable_files({**row, "backend": "onnxruntime fp32 subpixel"})
    assert [p.name for p in subpixel] == ["decoder.subpixel.onnx", "model.subpixel.onnx"]
    assert deployable_files({**row, "backend": "torch fp32 eager"})[0].name == "last.ckpt"


def test_model_json_says_how_to_run_the_chosen_backend() -> None:
    bf16 = Backend("openvino", "bf16").how()
    assert bf16["compile_config"]["INFERENCE_PRECISION_HINT"] == "bf16" and bf16["device"] == "CPU"
    assert Backend("openvino", "int8").how()["compile_config"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert Backend("onnxruntime", "int8").how()["runtime"] == "onnxruntime"
