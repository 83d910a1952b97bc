"""QuantizationCallback: QAT from a set epoch, post-training int8, or a half-precision cast, with torchao.

Three modes, all acting on ``pl_module.deployable()`` (never ``torch.ao.quantization``, which is deprecated):

- ``qat``: from ``start_epoch`` (a ``CompressionSchedule``) every targeted ``nn.Linear`` trains with fake
  quantization through torchao's QAT prepare flow (a module swap to ``FakeQuantizedLinear`` sharing the same
  Parameters, so the optimizer is unaffected): int8 symmetric per-channel weights, plus int8 asymmetric
  per-token dynamic activations for ``scheme=int8_dynamic``. At fit end a copy is converted to real int8.
  The live LightningModule keeps its fake-quantized layers, so Lightning's checkpoints (same state-dict
  keys) and ``trainer.test`` go on working: the test metrics of a QAT run are those of the simulated int8 net.
- ``ptq``: post-training int8 of a copy at fit end: ``int8_weight_only`` or ``int8_dynamic``. Both scales
  come from the weights and, for activations, from each input at run time: no calibration data needed.
- ``half``: a ``float16``/``bfloat16`` copy (``dtype``); each layer computes in that dtype and takes and
  returns float32 at its boundary, so the copy is a drop-in for the float network.

Conv layers (GAN, VAE): torchao's ``quantize_`` is Linear-only, so in ``qat`` and ``ptq`` modes each targeted
Conv/ConvTranspose becomes a ``deploy.layers.Int8WeightConv`` (int8 weights, one scale per output channel,
dequantized per forward; never fake-quantized). ``conv: none`` keeps convs in float.

Pruning composes (``compression=[prune,quantize]``, in either order): targets are names, so after the QAT
swap the pruning callback finds the fake-quantized layer under the same name, and the mask moves with it
(``numerics.take_pruning``/``give_pruning``); the fit-end conversion works on a copy with masks folded in,
so symmetric int8 keeps every pruned zero. The artifact ``<run>/quantized/`` is ``genexp.deploy.artifact``'s;
figures go to ``compression.json``'s ``quantize`` section and TensorBoard through ``record_compression``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from genexp.checks.values import boolean, int_at_least, one_of, regexes
from genexp.compression.quantize.numerics import (
    SCHEMES,
    UNSUPPORTED_SCHEMES,
    give_pruning,
    qat_prepare_config,
    quantize_copy,
    take_pruning,
    unfake,
)
from genexp.compression.schedule import CompressionSchedule, last_epoch
from genexp.compression.targets import deployable_of, example_input_of, find_targets
from genexp.deploy.artifact import ARTIFACT_DIR, save_deployable
from genexp.deploy.costs import fidelity, measure, weight_bytes, zero_fraction
from genexp.deploy.layers import CONV_TYPES, HALF_DTYPES, plain_copy
from genexp.runtime.errors import ConfigError
from genexp.runtime.run_folder import LAST_CHECKPOINT, record_compression

log = logging.getLogger(__name__)

MODES = ("qat", "ptq", "half")
BACKENDS = ("torchao", "onnxruntime")
CONV_SCHEMES = ("int8_weight_only", "none")
CONV_NAMES = tuple(kind.__name__ for kind in CONV_TYPES)


class QuantizationCallback(Callback):
    """Quantize ``pl_module.deployable()``: QAT from ``start_epoch``, int8 PTQ or a half cast at fit end.

    Args:
        mode: ``qat``, ``ptq`` or ``half``.
        scheme: ``int8_dynamic`` (int8 weights and per-token dynamic int8 activations) or
            ``int8_weight_only``, for Linear layers (qat and ptq).
        dtype: ``bfloat16`` or ``float16`` (half).
        conv: ``int8_weight_only`` (``Int8WeightConv``) or ``none`` for Conv/ConvTranspose layers.
        start_epoch: first epoch (0-based) that trains with fake quantization (qat).
        include, exclude: regexes on module names inside ``deployable()`` (as for pruning); default:
            every Linear/Conv/ConvTranspose except a weight tied to a non-target (a GPT head).
        latency_batch_size, latency_repeats: the batch and repeats of the CPU latency in compression.json.
        artifact: write the deployable artifact to ``<run>/quantized/``.
        backend: ``torchao`` (the modes above) or ``onnxruntime``: at fit end, export the deployable to ONNX and
            quantize it with ONNX Runtime (``<run>/export/model.int8.onnx`` and ``model.json``, through
            ``genexp.deploy.onnx_package``) instead of writing the torch artifact; ``ptq`` only.
        key_prefix: the config path named in error messages.

    Raises:
        ConfigError: naming ``<key_prefix>.<key>`` for a bad value, before training starts.
    """

    def __init__(
        self,
        mode: str = "ptq",
        scheme: str = "int8_weight_only",
        dtype: str = "bfloat16",
        conv: str = "int8_weight_only",
        start_epoch: int = 0,
        include: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        latency_batch_size: int = 16,
        latency_repeats: int = 5,
        artifact: bool = True,
        backend: str = "torchao",
        key_prefix: str = "compression.quantize",
    ) -> None:
        super().__init__()
        p = key_prefix
        one_of(f"{p}.mode", mode, MODES)
        self.backend = one_of(f"{p}.backend", backend, BACKENDS)
        if backend == "onnxruntime" and mode != "ptq":
            raise ConfigError(f"{p}.mode", mode, "ptq with backend=onnxruntime (its int8 is post-training)")
        if scheme in UNSUPPORTED_SCHEMES:
            raise ConfigError(
                f"{p}.scheme",
                scheme,
                f"one of {list(SCHEMES)} on this CPU backend: {UNSUPPORTED_SCHEMES[scheme]}",
            )
        one_of(f"{p}.scheme", scheme, SCHEMES)
        reason = " (Conv layers: torchao's int8 kernels are Linear-only)" if conv in SCHEMES else ""
        one_of(f"{p}.conv", conv, CONV_SCHEMES, reason)
        one_of(f"{p}.dtype", dtype, HALF_DTYPES)
        self.schedule = CompressionSchedule(
            start_epoch=start_epoch, end_epoch=start_epoch, ramp="one_shot", key_prefix=p
        )
        int_at_least(f"{p}.latency_batch_size", latency_batch_size, 1)
        int_at_least(f"{p}.latency_repeats", latency_repeats, 0)
        boolean(f"{p}.artifact", artifact)
        self.mode, self.scheme, self.dtype, self.conv = mode, scheme, dtype, conv
        self.include = regexes(f"{p}.include", include)
        self.exclude = regexes(f"{p}.exclude", exclude)
        self.latency_batch_size, self.latency_repeats = latency_batch_size, latency_repeats
        self.artifact, self.key_prefix = artifact, p
        self.targets: dict[str, str] = {}  # target name -> its float layer type ("Linear", "Conv2d", ...)
        self.fake_quant_epoch: int | None = None  # the epoch QAT's fake quantization started in this fit
        self.report: dict[str, Any] = {}
        self.quantized: nn.Module | None = None  # the fit-end quantized copy (scripts, tests)

    @property
    def linears(self) -> list[str]:
        return [n for n, kind in self.targets.items() if kind == "Linear"]

    @property
    def convs(self) -> list[str]:
        return [n for n, kind in self.targets.items() if kind in CONV_NAMES] if self.conv != "none" else []

    def _find(self, deployable: nn.Module) -> dict[str, str]:
        found = find_targets(deployable, self.include, self.exclude, self.key_prefix)
        return {name: type(module).__name__ for name, module in found.items()}

    # ----- Lightning hooks -----------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.mode != "half":
            self.targets = self._find(deployable_of(pl_module))
        if self.mode == "qat" and not self.linears:
            rank_zero_warn(
                f"{self.key_prefix}.mode=qat: deployable() has no Linear layer to fake-quantize; its Conv layers "
                "get int8 weights at fit end"
            )
        last = last_epoch(trainer.max_epochs)
        if self.mode == "qat" and last is not None and self.schedule.start_epoch > last:
            rank_zero_warn(
                f"{self.key_prefix}.start_epoch={self.schedule.start_epoch} is after the last epoch ({last}): "
                "this fit never trains with fake quantization (the fit-end conversion is plain PTQ)"
            )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if (
            self.mode == "qat"
            and self.fake_quant_epoch is None
            and epoch >= self.schedule.start_epoch
            and self.linears
        ):
            self.prepare_qat(deployable_of(pl_module))
            self.fake_quant_epoch = epoch
            log.info("Epoch %d: fake quantization on %d Linear layers", epoch, len(self.linears))

    def prepare_qat(self, deployable: nn.Module) -> None:
        """Swap the targeted Linears of ``deployable`` to torchao ``FakeQuantizedLinear`` (same Parameters),
        keeping pruning masks (a pruning callback finds the new layer under the same name)."""
        from torchao.quantization import quantize_

        names = set(self.linears)
        taken = {name: take_pruning(deployable.get_submodule(name)) for name in names}
        quantize_(deployable, qat_prepare_config(self.scheme), filter_fn=lambda m, fqn: fqn in names)
        for name in names:
            if taken[name] is not None:
                give_pruning(deployable.get_submodule(name), taken[name])

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        run_dir = Path(trainer.default_root_dir) if trainer.default_root_dir else None
        if self.backend == "onnxruntime":
            self.report = record_compression(
                trainer, self.export_onnx(trainer, pl_module, run_dir), section="quantize"
            )
            return
        float_net, quantized, report = self.convert(pl_module, trainer.current_epoch)
        example = example_input_of(pl_module, self.latency_batch_size)
        if self.artifact and run_dir is not None:
            if getattr(pl_module, "genexp_config", None) is None:
                rank_zero_warn(
                    "QuantizationCallback: the LightningModule has no genexp_config; no artifact written"
                )
            else:
                path = save_deployable(
                    run_dir / ARTIFACT_DIR, pl_module, quantized, report["recipe"], trainer
                )
                report["artifact"] = str(path.relative_to(run_dir))
        self.report, self.quantized = (
            record_compression(
                trainer,
                report,
                section="quantize",
                timings={
                    ("before", "latency_ms"): (float_net, example),
                    ("after", "latency_ms"): (quantized, example),
                },
                repeats=self.latency_repeats,
                scalars={
                    f"compression/quantize/{key}_{stage}": (stage, key)
                    for key in ("bytes_dense", "latency_ms", "linear_weight_bytes")
                    for stage in ("before", "after")
                }
                | {
                    f"compression/quantize/{key}": ("fidelity", key)
                    for key in ("max_abs_error", "relative_rmse")
                },
            ),
            quantized,
        )

    def export_onnx(
        self, trainer: L.Trainer, pl_module: L.LightningModule, run_dir: Path | None
    ) -> dict[str, Any]:
        """``backend=onnxruntime``: model.onnx and model.int8.onnx (checked against fp32) into ``<run>/export``."""
        from genexp.deploy.onnx_export import export_folder
        from genexp.deploy.onnx_package import write_package
        from genexp.exporters.registry import family_of

        if run_dir is None:
            return {"backend": "onnxruntime", "export": None}
        folder = export_folder(run_dir / "export")
        info = write_package(
            family_of(pl_module, getattr(trainer, "datamodule", None)),  # type: ignore[arg-type]
            folder,
            quantize="int8",
            batch_size=self.latency_batch_size,
            source={"target": str(run_dir / LAST_CHECKPOINT), "relative": str(".." / LAST_CHECKPOINT)},
            timing={"repeats": self.latency_repeats},
        )
        log.info("ONNX Runtime int8 export: %s", folder)
        graphs = {
            name: {k: g[k] for k in ("bytes", "precision", "params")} for name, g in info["graphs"].items()
        }
        return {
            "backend": "onnxruntime",
            "mode": "ptq",
            "export": folder.name,
            "graphs": graphs,
            "latency": info.get("latency"),
        }

    # ----- the conversion ------------------------------------------------------------------------
    def convert(self, pl_module: nn.Module, epoch: int = -1) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
        """A float copy of the deployable (pruning folded, fake quantization removed), its quantized
        copy, and the report (before/after numbers, fidelity, per-layer recipe)."""
        float_net = unfake(plain_copy(deployable_of(pl_module))).cpu().eval()
        if not self.targets and self.mode != "half":
            self.targets = self._find(float_net)
        quantized, layers = quantize_copy(
            float_net, self.mode, self.scheme, self.dtype, self.linears, self.convs
        )
        example = example_input_of(pl_module, self.latency_batch_size)
        before, after = self.numbers(float_net), self.numbers(quantized)
        names = [n for n in (*self.linears, *self.convs)]
        report: dict[str, Any] = {
            "mode": self.mode,
            "epochs_completed": epoch,
            "fake_quant_from_epoch": self.fake_quant_epoch,
            "recipe": self.recipe(layers),
            "before": before,
            "after": after,
            "ratios": {
                k: before[k] / after[k]
                for k in ("bytes_dense", "linear_weight_bytes", "conv_weight_bytes")
                if after.get(k) and before.get(k)
            },
            "zero_fraction": {
                "before": zero_fraction(float_net, names),
                "after": zero_fraction(quantized, names),
            },
            "fidelity": fidelity(float_net, quantized, example) if example is not None else {},
            "schedule": {"start_epoch": self.schedule.start_epoch},
        }
        return float_net, quantized, report

    def recipe(self, layers: dict[str, dict[str, str]]) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "scheme": self.scheme,
            "dtype": self.dtype,
            "conv": self.conv,
            "layers": layers,
        }

    def numbers(self, module: nn.Module) -> dict[str, float]:
        """Sizes before/after (``deploy.costs``); ``record_compression`` adds the latency."""
        out = measure(module, repeats=0)
        out["linear_weight_bytes"] = weight_bytes(module, (nn.Linear,))
        out["conv_weight_bytes"] = weight_bytes(module, CONV_TYPES)
        return out
