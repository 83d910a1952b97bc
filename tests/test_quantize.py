"""Quantization: QAT from start_epoch, PTQ int8, half, the artifact in a fresh process, pruning composed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from omegaconf import OmegaConf

from conftest import FAST, REPO, run_cli
from genexp.checkpoints.rebuild import load_deployable
from genexp.compression.prune import PruningCallback
from genexp.compression.quantize import QuantizationCallback
from genexp.deploy.layers import Int8WeightConv
from genexp.runtime.build import build_callbacks, build_datamodule, build_model, build_trainer
from genexp.runtime.errors import ConfigError
from test_onnx_export import RUNS, compose_cfg

VAE_FAST = [
    *FAST,
    "logger=csv",
    "callbacks.model_summary=null",
    "callbacks.learning_rate_monitor=null",
    "model.sample_every_n_epochs=0",
]


class FakeQuantProbe(Callback):
    """Records, per epoch, whether deployable() holds torchao fake-quantized layers while training."""

    def __init__(self) -> None:
        self.seen: dict[int, bool] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        from torchao.quantization.qat.linear import FakeQuantizedLinear

        fake = any(isinstance(m, FakeQuantizedLinear) for m in pl_module.deployable().modules())
        self.seen[trainer.current_epoch] = fake


def fit(cfg, extra: list[Callback] = ()):
    """Build and fit like genexp-train (no test stage); returns the model and the callbacks."""
    Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    model.genexp_config = OmegaConf.to_container(cfg, resolve=True)
    callbacks = build_callbacks(cfg) + list(extra)
    trainer = build_trainer(cfg, callbacks, [])
    trainer.fit(model, datamodule=datamodule)
    return model, callbacks


def quantizer(callbacks) -> QuantizationCallback:
    return next(cb for cb in callbacks if isinstance(cb, QuantizationCallback))


def test_qat_fake_quant_from_start_epoch_and_artifact_round_trips_in_a_fresh_process(compose_train, tmp_path):
    cfg = compose_train(
        [
            *VAE_FAST,
            "trainer.max_epochs=2",
            "compression=[quantize]",
            "compression.quantize.mode=qat",
            "compression.quantize.scheme=int8_dynamic",
            "compression.quantize.start_epoch=1",
            "compression.quantize.latency_repeats=0",
        ]
    )
    probe = FakeQuantProbe()
    model, callbacks = fit(cfg, [probe])
    assert probe.seen == {0: False, 1: True}  # fake quantization from start_epoch only
    run = Path(cfg.paths.output_dir)
    report = json.loads((run / "compression.json").read_text())["quantize"]
    assert report["fake_quant_from_epoch"] == 1
    layers = report["recipe"]["layers"]
    assert layers["encoder.head"]["how"].startswith("QAT fake-quant, then torchao")
    assert layers["encoder.conv.0"]["how"].startswith("Int8WeightConv")
    assert report["ratios"]["linear_weight_bytes"] > 3.0

    # save-time outputs, then a fresh interpreter loads the artifact and must reproduce them
    quantized = quantizer(callbacks).quantized
    example = model.example_input(4)
    with torch.no_grad():
        torch.save({"x": example, "y": quantized(example)}, tmp_path / "ref.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from genexp.checkpoints.rebuild import load_deployable
        net = load_deployable({str(run / "quantized")!r})
        ref = torch.load({str(tmp_path / "ref.pt")!r})
        with torch.no_grad():
            out = net(ref["x"])
        err = (out - ref["y"]).abs().max().item()
        print("max_abs_error", err)
        sys.exit(0 if err <= 1e-5 and type(net.encoder.head.weight).__name__ == "Int8Tensor" else 1)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]

    # and genexp-eval tests it like a checkpoint
    args = [f"ckpt_path={run / 'quantized'}", "callbacks.sample_quality=null", "trainer.limit_test_batches=2"]
    done = run_cli([*args, "trainer.enable_progress_bar=false"], cwd=tmp_path, module="genexp.evaluate")
    assert done.returncode == 0, done.stderr[-2000:]
    [metrics] = (tmp_path / "outputs" / "eval").rglob("metrics.json")
    assert json.loads(metrics.read_text())["test/nelbo"] > 0


@pytest.mark.parametrize("order", ["prune,quantize", "quantize,prune"])
def test_prune_and_qat_together_keep_the_sparsity(compose_train, order):
    cfg = compose_train(
        [
            *VAE_FAST,
            "trainer.max_epochs=2",
            f"compression=[{order}]",
            "compression.prune.final_sparsity=0.5",
            "compression.prune.start_epoch=0",
            "compression.prune.end_epoch=1",
            "compression.prune.ramp=linear",
            "compression.quantize.mode=qat",
            "compression.quantize.start_epoch=0",
            "compression.quantize.latency_repeats=0",
        ]
    )
    model, callbacks = fit(cfg)
    pruner = next(cb for cb in callbacks if isinstance(cb, PruningCallback))
    from torchao.quantization.qat.linear import FakeQuantizedLinear

    # the pruning callback follows QAT's module swap: its targets are the live, fake-quantized layers
    live = dict(model.deployable().named_modules())
    assert all(live[name] is module for name, module in pruner.targets.items())
    assert isinstance(pruner.targets["encoder.head"], FakeQuantizedLinear)
    assert pruner.achieved_sparsity() == pytest.approx(0.5, abs=0.01)

    run = Path(cfg.paths.output_dir)
    report = json.loads((run / "compression.json").read_text())
    assert report["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)  # pruning's section survived
    assert (
        report["quantize"]["zero_fraction"]["after"] >= report["quantize"]["zero_fraction"]["before"] >= 0.49
    )

    net = load_deployable(run / "quantized")  # the shipped int8 weights keep every pruned zero
    zeros = total = 0
    for name in pruner.targets:
        layer = net.get_submodule(name)
        weight = layer.weight_int8 if isinstance(layer, Int8WeightConv) else layer.weight.dequantize()
        zeros, total = zeros + int((weight == 0).sum()), total + weight.numel()
    assert zeros / total >= 0.5 - 0.01


def test_half_halves_the_bytes_and_ptq_quantizes_convs(compose_train):
    cfg = compose_train(VAE_FAST)
    model = build_model(cfg, build_datamodule(cfg))
    half = QuantizationCallback(mode="half", dtype="float16", latency_repeats=0)
    _, quantized, report = half.convert(model)
    assert 0.45 < report["after"]["bytes_dense"] / report["before"]["bytes_dense"] < 0.55
    assert all(p.dtype == torch.float16 for p in quantized.parameters())
    example = model.example_input(2)
    assert quantized(example).dtype == torch.float32  # float32 in and out
    assert report["fidelity"]["relative_rmse"] < 1e-2

    ptq = QuantizationCallback(mode="ptq", scheme="int8_weight_only", latency_repeats=0)
    _, quantized, report = ptq.convert(model)
    assert isinstance(quantized.encoder.conv[0], Int8WeightConv)
    assert report["ratios"]["conv_weight_bytes"] > 3.0
    assert report["fidelity"]["relative_rmse"] < 0.05


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"mode": "int3"}, "compression.quantize.mode"),
        ({"scheme": "int4_weight_only"}, "compression.quantize.scheme"),
        ({"scheme": "int7"}, "compression.quantize.scheme"),
        ({"conv": "int8_dynamic"}, "compression.quantize.conv"),
        ({"dtype": "float8"}, "compression.quantize.dtype"),
        ({"start_epoch": -1}, "compression.quantize.start_epoch"),
    ],
)
def test_bad_values_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        QuantizationCallback(**kwargs)


def test_unsupported_scheme_fails_before_training_through_the_cli(tmp_path):
    done = run_cli(
        [*VAE_FAST, "compression=[quantize]", "compression.quantize.scheme=int4_weight_only"], cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "compression.quantize.scheme='int4_weight_only'" in done.stderr
    assert "CPU" in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing trained


def test_quantize_backend_onnxruntime_exports_the_int8_graph_at_fit_end(tmp_path: Path) -> None:
    from genexp.train import train

    run = tmp_path / "run"
    overrides = [
        *FAST,
        *RUNS["vae"],
        "model.sample_every_n_epochs=0",
        "logger=csv",
        "test=false",
        "compression=[quantize]",
        "compression.quantize.backend=onnxruntime",
        "compression.quantize.latency_repeats=2",
    ]
    train(compose_cfg("train", overrides, run))
    report = json.loads((run / "compression.json").read_text())["quantize"]
    assert report["backend"] == "onnxruntime" and report["export"] == "export"
    assert (run / "export" / "model.int8.onnx").is_file() and not (run / "quantized").exists()
    info = json.loads((run / "export" / "model.json").read_text())
    assert info["graphs"]["model.int8.onnx"]["quantization"]["method"] == "static QDQ"
    from genexp.deploy.backends import onnx_backends

    timed = {r["backend"] for r in info["latency"]["rows"]}  # every backend here, OpenVINO's when installed,
    # the float ones also on the VAE's sub-pixel graphs
    assert timed == {"torch fp32 eager", *(b.name for b in onnx_backends(int8=True, subpixel=True))}
    assert {"onnxruntime fp32", "onnxruntime int8"} <= timed and info["latency"]["left_out"] == {}
