"""QuantizationCallback: QAT from a set epoch, post-training int8, or a half-precision cast, with torchao.

Three modes, all acting on ``pl_module.deployable()`` (never ``torch.ao.quantization``, which is deprecated):

- ``qat``: from ``start_epoch`` (a ``CompressionSchedule``) every targeted ``nn.Linear`` trains with fake
  quantization through torchao's QAT prepare flow (``quantize_(net, QATConfig(..., step="prepare"))``,
  a module swap to ``FakeQuantizedLinear`` sharing the same Parameters, so the optimizer is unaffected):
  int8 symmetric per-channel weights, plus int8 asymmetric per-token dynamic activations for
  ``scheme=int8_dynamic``. At fit end a copy is converted to real int8 (``QATConfig(step="convert")``
  then the scheme's torchao config). The live LightningModule keeps its fake-quantized layers, so
  Lightning's checkpoints (same state-dict keys) and ``trainer.test`` go on working: the test metrics
  of a QAT run are those of the simulated int8 network.
- ``ptq``: post-training int8 of a copy at fit end: ``int8_weight_only`` (torchao
  ``Int8WeightOnlyConfig``) or ``int8_dynamic`` (``Int8DynamicActivationInt8WeightConfig``). Both scales
  come from the weights and, for activations, from each input at run time, so no calibration data is
  needed (torchao 0.18 has no static-activation int8 config outside its prototype namespace).
- ``half``: a ``float16``/``bfloat16`` copy (``dtype``); each layer computes in that dtype and takes and
  returns float32 at its boundary (forward hooks), so the copy is a drop-in for the float network.

Conv layers (GAN, VAE): torchao's ``quantize_`` is Linear-only, so in ``qat`` and ``ptq`` modes each
targeted Conv/ConvTranspose becomes an ``Int8WeightConv``: int8 weights with one float32 scale per
output channel (symmetric, zeros stay zeros), dequantized in each forward. It is weight-only (4x
smaller weights, float compute) and never fake-quantized during training: per-channel int8 weight
rounding costs little. ``conv: none`` keeps convs in float. ``compression.json`` lists every layer and how.

Pruning composes (``compression=[prune,quantize]``, in either order): a pruned Linear keeps its mask
through the QAT swap (the reparametrization moves onto the fake-quantized layer and the
PruningCallback is re-pointed at it), and the fit-end conversion works on a copy with masks folded
in, so symmetric int8 keeps every pruned zero whatever order the callbacks' ``on_fit_end`` run in.

The deployable artifact (``<run>/quantized/``):

- ``deployable.pt``: ``torch.save`` of a dict: ``format``, ``genexp_config`` (the run config),
  ``model_kwargs`` (what the data module told the model), the data module state, ``attribute`` (where
  the deployable sits in the LightningModule), ``recipe`` (mode, scheme, dtype, per-layer ``how``) and
  ``state_dict`` (the quantized deployable, torchao ``Int8Tensor`` weights and int8 conv buffers, in
  ``measure.sparse_state_dict``'s format: a pruned layer's int8 zeros cost one bit each, so pruning and
  quantization compound on disk);
- ``context.pt``: the LightningModule's other weights (a GAN's discriminator), only for ``genexp-eval``;
- ``recipe.json``: the same recipe and config, human-readable.

Load it in any process with ``load_deployable(path) -> nn.Module`` or ``genexp-eval ckpt_path=<run>/quantized``:
the model is rebuilt from its config, the recipe's module swaps are re-applied, and the state dict is
assigned (``load_state_dict(assign=True)``), which gives the same outputs as at save time.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import OmegaConf
from torch import nn
from torch.nn.utils import prune

from genexp.compression.measure import (
    deployable_state_dict,
    load_sparse_state_dict,
    measure,
    serialized_bytes,
    sparse_state_dict,
    values_of,
)
from genexp.compression.prune import (
    CONV_TYPES,
    PruningCallback,
    _patterns,
    deployable_of,
    example_input_of,
    find_targets,
)
from genexp.compression.schedule import CompressionSchedule
from genexp.compression.slim import plain_copy
from genexp.errors import CheckpointError, ConfigError, first_line
from genexp.run_folder import update_json, write_json

log = logging.getLogger(__name__)

MODES = ("qat", "ptq", "half")
SCHEMES = ("int8_weight_only", "int8_dynamic")
UNSUPPORTED_SCHEMES = {  # known names, refused with the reason
    "int4_weight_only": "int4 weight-only has no CPU kernel in torchao 0.18 (it needs CUDA int4 kernels)",
    "int4_dynamic": "int4 activations have no CPU kernel in torchao 0.18",
    "float8": "float8 needs a GPU with float8 tensor cores (H100 or newer); there is no CPU kernel",
}
CONV_SCHEMES = ("int8_weight_only", "none")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
CONVS = CONV_TYPES  # the layer kinds quantized through Int8WeightConv
ARTIFACT_DIR, ARTIFACT_FILE, CONTEXT_FILE, RECIPE_FILE = (
    "quantized",
    "deployable.pt",
    "context.pt",
    "recipe.json",
)
FORMAT = "genexp-deployable/2"  # /2: state_dict in the sparse bitmask format
READABLE_FORMATS = ("genexp-deployable/1", FORMAT)


# ----- the conv path: int8 weights, one scale per output channel ------------------------------------
class Int8WeightConv(nn.Module):
    """A Conv/ConvTranspose layer storing its weight as int8 plus a float32 scale per output channel.

    Symmetric: ``weight ~= weight_int8 * weight_scale`` with ``|weight_int8| <= 127``; zeros stay zero.
    The weight is dequantized in every forward (float compute; the saving is in bytes).
    """

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        weight = conv.weight.detach().float()
        dim = 1 if isinstance(conv, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0
        amax = weight.abs().movedim(dim, 0).flatten(1).amax(1).clamp(min=1e-12)
        shape = [1] * weight.dim()
        shape[dim] = -1
        scale = (amax / 127.0).view(shape)
        layer = copy.deepcopy(conv)
        del layer.weight  # the float weight goes; forward sets a dequantized one
        self.layer = layer
        self.register_buffer("weight_int8", torch.round(weight / scale).clamp(-127, 127).to(torch.int8))
        self.register_buffer("weight_scale", scale)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_int8.to(self.weight_scale.dtype) * self.weight_scale

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.layer.weight = self.dequantized_weight()
        try:
            return self.layer(*args, **kwargs)
        finally:
            del self.layer.weight


# ----- the half path -------------------------------------------------------------------------------------
def _cast_floats(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, tuple):
        return tuple(_cast_floats(v, dtype) for v in value)
    return value


def cast_half(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast ``module`` to ``dtype`` in place; each layer with weights takes and returns float32."""
    module.to(dtype)
    for layer in module.modules():
        if any(True for _ in layer.parameters(recurse=False)) or any(
            True for _ in layer.buffers(recurse=False)
        ):
            layer.register_forward_pre_hook(lambda m, args, d=dtype: _cast_floats(args, d))
            layer.register_forward_hook(lambda m, args, out: _cast_floats(out, torch.float32))
    return module


# ----- pruning stays on through the QAT module swap -------------------------------------------------------
def _take_pruning(module: nn.Module) -> tuple[nn.Parameter, torch.Tensor, Any] | None:
    """Detach a ``torch.nn.utils.prune`` reparametrization of ``weight``: expose ``weight_orig`` as ``weight``."""
    for key, hook in list(module._forward_pre_hooks.items()):
        if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == "weight":
            del module._forward_pre_hooks[key]
            orig = module._parameters.pop("weight_orig")
            mask = module._buffers.pop("weight_mask")
            delattr(module, "weight")
            module.weight = orig
            return orig, mask, hook
    return None


def _give_pruning(module: nn.Module, taken: tuple[nn.Parameter, torch.Tensor, Any]) -> None:
    """Re-install a reparametrization taken by ``_take_pruning`` on ``module`` (which shares ``weight_orig``)."""
    orig, mask, hook = taken
    del module._parameters["weight"]
    module.register_parameter("weight_orig", orig)
    module.register_buffer("weight_mask", mask)
    module.register_forward_pre_hook(hook)
    module.weight = hook.apply_mask(module)


# ----- torchao configs (imported lazily: torchao takes seconds to import) --------------------------------
def torchao_config(scheme: str) -> Any:
    """The torchao post-training config of ``scheme`` (no global inductor settings changed)."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, MappingType

    if scheme == "int8_dynamic":  # asymmetric activations: what QAT's per-token fake quantizer simulates
        return Int8DynamicActivationInt8WeightConfig(
            act_mapping_type=MappingType.ASYMMETRIC, set_inductor_config=False
        )
    return Int8WeightOnlyConfig(set_inductor_config=False)


def qat_prepare_config(scheme: str) -> Any:
    """torchao's QAT prepare config with ``scheme``'s numerics: symmetric per-channel int8 weights and, for
    int8_dynamic, asymmetric per-token int8 activations (torchao's fake quantizer has no symmetric per-token)."""
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

    weight = IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)
    activation = (
        IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
        if scheme == "int8_dynamic"
        else None
    )
    return QATConfig(activation_config=activation, weight_config=weight, step="prepare")


def unfake(module: nn.Module) -> nn.Module:
    """Swap every torchao fake-quantized layer in ``module`` back to its plain float layer, in place."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig
    from torchao.quantization.qat.linear import FakeQuantizedLinear

    if any(isinstance(m, FakeQuantizedLinear) for m in module.modules()):
        quantize_(
            module, QATConfig(step="convert"), filter_fn=lambda m, fqn: isinstance(m, FakeQuantizedLinear)
        )
    return module


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def quantize_copy(
    module: nn.Module, mode: str, scheme: str, dtype: str, linears: Sequence[str], convs: Sequence[str]
) -> tuple[nn.Module, dict[str, dict[str, str]]]:
    """A quantized copy of the float ``module`` and ``{layer: {"type", "how"}}``.

    ``linears`` and ``convs`` are the names (inside ``module``) of the Linear and Conv layers to
    quantize; ``half`` casts the whole copy instead.
    """
    out = copy.deepcopy(module).eval()
    if mode == "half":
        cast_half(out, DTYPES[dtype])
        return out, {
            "*": {"type": type(module).__name__, "how": f"{dtype} cast, float32 at each layer's boundary"}
        }
    layers: dict[str, dict[str, str]] = {}
    if linears:
        from torchao.quantization import quantize_

        config = torchao_config(scheme)
        wanted = set(linears)
        quantize_(out, config, filter_fn=lambda m, fqn: fqn in wanted and isinstance(m, nn.Linear))
        how = f"torchao {type(config).__name__} ({scheme}: int8 per-channel weights"
        how += (
            ", int8 asymmetric per-token dynamic activations)"
            if scheme == "int8_dynamic"
            else ", float activations)"
        )
        if mode == "qat":
            how = "QAT fake-quant, then " + how
        layers.update({name: {"type": "Linear", "how": how} for name in linears})
    for name in convs:
        conv = out.get_submodule(name)
        _set_submodule(out, name, Int8WeightConv(conv))
        layers[name] = {
            "type": type(conv).__name__,
            "how": "Int8WeightConv (int8 per-output-channel weights, dequantized per forward; no fake-quant)",
        }
    for p in out.parameters():
        p.requires_grad_(False)
    return out, layers


def _output(module: nn.Module, example: Any) -> torch.Tensor:
    args = example if isinstance(example, tuple) else (example,)
    with torch.no_grad():
        out = module(*args)
    return (out[0] if isinstance(out, tuple) else out).detach().float()


def fidelity(reference: nn.Module, quantized: nn.Module, example: Any) -> dict[str, float]:
    """How far ``quantized``'s outputs are from ``reference``'s on ``example``: max abs and relative RMS error."""
    ref, out = _output(reference, example), _output(quantized, example)
    err = out - ref
    return {
        "max_abs_error": float(err.abs().max()),
        "relative_rmse": float(err.pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp(min=1e-12)),
    }


def weight_bytes(module: nn.Module, kinds: tuple[type[nn.Module], ...]) -> int:
    """Serialized bytes of the ``weight`` (or int8 weight + scales) of every layer of ``kinds`` in ``module``."""
    state = deployable_state_dict(module)
    names = [n for n, m in module.named_modules() if isinstance(m, kinds) or _wraps(m, kinds)]
    keys = [
        k for k in state for n in names if k.rpartition(".")[0] == n and "bias" not in k.rpartition(".")[2]
    ]
    return serialized_bytes({k: state[k] for k in keys}) if keys else 0


def _wraps(module: nn.Module, kinds: tuple[type[nn.Module], ...]) -> bool:
    return isinstance(module, Int8WeightConv) and isinstance(module.layer, kinds)


def zero_fraction(module: nn.Module, names: Sequence[str]) -> float:
    """Fraction of zeros among the weights of the named layers (dequantized; int8 conv weights as stored)."""
    total = zeros = 0
    for name in names:
        layer = module.get_submodule(name)
        weight = layer.weight_int8 if isinstance(layer, Int8WeightConv) else values_of(layer.weight.detach())
        total += weight.numel()
        zeros += int((weight == 0).sum())
    return zeros / total if total else 0.0


# ----- the callback ----------------------------------------------------------------------------------------
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
        key_prefix: str = "compression.quantize",
    ) -> None:
        super().__init__()
        p = key_prefix
        if mode not in MODES:
            raise ConfigError(f"{p}.mode", mode, f"one of {list(MODES)}")
        if scheme in UNSUPPORTED_SCHEMES:
            raise ConfigError(
                f"{p}.scheme",
                scheme,
                f"one of {list(SCHEMES)} on this CPU backend: {UNSUPPORTED_SCHEMES[scheme]}",
            )
        if scheme not in SCHEMES:
            raise ConfigError(f"{p}.scheme", scheme, f"one of {list(SCHEMES)}")
        if conv not in CONV_SCHEMES:
            reason = " (Conv layers: torchao's int8 kernels are Linear-only)" if conv in SCHEMES else ""
            raise ConfigError(f"{p}.conv", conv, f"one of {list(CONV_SCHEMES)}{reason}")
        if dtype not in DTYPES:
            raise ConfigError(f"{p}.dtype", dtype, f"one of {list(DTYPES)}")
        self.schedule = CompressionSchedule(
            start_epoch=start_epoch, end_epoch=start_epoch, ramp="one_shot", key_prefix=p
        )
        for key, value, minimum in (
            ("latency_batch_size", latency_batch_size, 1),
            ("latency_repeats", latency_repeats, 0),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ConfigError(f"{p}.{key}", value, f"an integer >= {minimum}")
        if not isinstance(artifact, bool):
            raise ConfigError(f"{p}.artifact", artifact, "true or false")
        self.mode, self.scheme, self.dtype, self.conv = mode, scheme, dtype, conv
        self.include = _patterns(include, f"{p}.include")
        self.exclude = _patterns(exclude, f"{p}.exclude")
        self.latency_batch_size, self.latency_repeats = latency_batch_size, latency_repeats
        self.artifact, self.key_prefix = artifact, p
        self.targets: dict[str, nn.Module] = {}
        self.fake_quant_epoch: int | None = None  # the epoch QAT's fake quantization started in this fit
        self.report: dict[str, Any] = {}
        self.quantized: nn.Module | None = None  # the fit-end quantized copy (scripts, tests)

    @property
    def linears(self) -> list[str]:
        return [n for n, m in self.targets.items() if isinstance(m, nn.Linear)]

    @property
    def convs(self) -> list[str]:
        return [n for n, m in self.targets.items() if isinstance(m, CONVS)] if self.conv != "none" else []

    # ----- Lightning hooks -----------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.mode != "half":
            self.targets = find_targets(deployable_of(pl_module), self.include, self.exclude, self.key_prefix)
        if self.mode == "qat" and not self.linears:
            rank_zero_warn(
                f"{self.key_prefix}.mode=qat: deployable() has no Linear layer to fake-quantize; its Conv layers "
                "get int8 weights at fit end"
            )
        last = trainer.max_epochs - 1 if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
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
            self.prepare_qat(deployable_of(pl_module), trainer.callbacks)
            self.fake_quant_epoch = epoch
            log.info("Epoch %d: fake quantization on %d Linear layers", epoch, len(self.linears))

    def prepare_qat(self, deployable: nn.Module, callbacks: Sequence[Callback] = ()) -> None:
        """Swap the targeted Linears of ``deployable`` to torchao ``FakeQuantizedLinear`` (same Parameters),
        keeping pruning masks, and re-point any PruningCallback at the new layers."""
        from torchao.quantization import quantize_

        names = set(self.linears)
        taken = {name: _take_pruning(self.targets[name]) for name in names}
        quantize_(deployable, qat_prepare_config(self.scheme), filter_fn=lambda m, fqn: fqn in names)
        pruners = [cb for cb in callbacks if isinstance(cb, PruningCallback)]
        for name in names:
            new = deployable.get_submodule(name)
            if taken[name] is not None:
                _give_pruning(new, taken[name])
            self.targets[name] = new
            for pruner in pruners:
                if name in pruner.targets:
                    pruner.retarget(name, new)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        run_dir = Path(trainer.default_root_dir) if trainer.default_root_dir else None
        float_net, quantized, report = self.convert(pl_module, trainer.current_epoch)
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
        self.report, self.quantized = report, quantized
        if run_dir is not None:
            update_json(run_dir / "compression.json", {"quantize": report})
        writer = pl_module.tensorboard() if hasattr(pl_module, "tensorboard") else None
        if writer is not None:
            for key in ("bytes_dense", "latency_ms", "linear_weight_bytes"):
                for stage in ("before", "after"):
                    if key in report[stage]:
                        writer.add_scalar(
                            f"compression/quantize/{key}_{stage}", report[stage][key], trainer.global_step
                        )
            for key, value in report["fidelity"].items():
                writer.add_scalar(f"compression/quantize/{key}", value, trainer.global_step)

    # ----- the conversion ------------------------------------------------------------------------
    def convert(self, pl_module: nn.Module, epoch: int = -1) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
        """A float copy of the deployable (pruning folded, fake quantization removed), its quantized
        copy, and the report (before/after numbers, fidelity, per-layer recipe)."""
        float_net = unfake(plain_copy(deployable_of(pl_module))).cpu().eval()
        if not self.targets and self.mode != "half":
            self.targets = find_targets(float_net, self.include, self.exclude, self.key_prefix)
        quantized, layers = quantize_copy(
            float_net, self.mode, self.scheme, self.dtype, self.linears, self.convs
        )
        example = example_input_of(pl_module, self.latency_batch_size)
        before, after = self.numbers(float_net, example), self.numbers(quantized, example)
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
                for k in ("bytes_dense", "linear_weight_bytes", "conv_weight_bytes", "latency_ms")
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

    def numbers(self, module: nn.Module, example: Any) -> dict[str, float]:
        out = measure(module, example, repeats=self.latency_repeats if example is not None else 0)
        out["linear_weight_bytes"] = weight_bytes(module, (nn.Linear,))
        out["conv_weight_bytes"] = weight_bytes(module, CONVS)
        return out


# ----- the artifact ----------------------------------------------------------------------------------------
def _attribute(pl_module: nn.Module, deployable: nn.Module) -> str:
    for name, module in pl_module.named_modules():
        if module is deployable:
            return name
    raise ConfigError(
        "compression.quantize", type(deployable).__name__, "a deployable() that is a submodule of the model"
    )


def save_deployable(
    folder: Path,
    pl_module: nn.Module,
    quantized: nn.Module,
    recipe: dict[str, Any],
    trainer: L.Trainer | None = None,
) -> Path:
    """Write ``deployable.pt``, ``context.pt`` and ``recipe.json`` into ``folder``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    attribute = _attribute(pl_module, deployable_of(pl_module))
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    model_kwargs = datamodule.model_kwargs() if hasattr(datamodule, "model_kwargs") else {}
    data_state = {type(datamodule).__qualname__: datamodule.state_dict()} if datamodule is not None else {}
    config = pl_module.genexp_config
    artifact = {
        "format": FORMAT,
        "genexp_config": config,
        "model_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in model_kwargs.items()},
        "datamodule": data_state,
        "attribute": attribute,
        "recipe": recipe,
        "epoch": getattr(trainer, "current_epoch", -1),
        "global_step": getattr(trainer, "global_step", -1),
        "state_dict": sparse_state_dict(deployable_state_dict(quantized)),  # sorted keys, as measure() counts
    }
    torch.save(artifact, folder / ARTIFACT_FILE)
    prefix = f"{attribute}." if attribute else ""
    context = {
        k: v.detach().cpu()
        for k, v in pl_module.state_dict().items()
        if not (attribute and k.startswith(prefix))
    }
    torch.save(context if attribute else {}, folder / CONTEXT_FILE)
    readable = {k: v for k, v in artifact.items() if k not in ("state_dict", "datamodule")}
    readable["load"] = (
        "genexp.compression.quantize.load_deployable(path) or genexp-eval ckpt_path=<this folder>"
    )
    write_json(folder / RECIPE_FILE, json.loads(json.dumps(readable, default=str)))
    return folder


def is_artifact(path: str | Path) -> bool:
    """True when ``path`` is a deployable artifact folder or its ``deployable.pt``."""
    path = Path(path)
    return (path.is_dir() and (path / ARTIFACT_FILE).is_file()) or (path.name == ARTIFACT_FILE)


def read_artifact(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """The artifact dict of a folder (or its ``deployable.pt``), loaded with ``weights_only=True``.

    Raises CheckpointError naming ``key`` and the path when it is missing or unreadable.
    """
    import torchao  # noqa: F401  (registers its tensor subclasses as safe globals for weights_only)

    path = Path(path)
    file = path / ARTIFACT_FILE if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(
            f"{key}={path}: no {ARTIFACT_FILE} (expected a quantized/ folder written by compression=[quantize])"
        )
    try:
        artifact = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (any unpickling failure means the same to the user)
        raise CheckpointError(f"{key}={file}: not a readable deployable artifact: {first_line(err)}") from err
    if not isinstance(artifact, dict) or artifact.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"{key}={file}: not a genexp deployable artifact (format {FORMAT})")
    context = file.parent / CONTEXT_FILE
    artifact["where"] = f"{key}={file}"  # for error messages
    artifact["context_state_dict"] = (
        torch.load(context, map_location="cpu", weights_only=True) if context.is_file() else {}
    )
    return artifact


def restructure(deployable: nn.Module, recipe: dict[str, Any]) -> nn.Module:
    """Apply the recipe's module swaps to a fresh float deployable (before its state dict is assigned)."""
    if recipe["mode"] == "half":
        return cast_half(deployable, DTYPES[recipe["dtype"]])
    for name, layer in recipe["layers"].items():
        if layer["how"].startswith("Int8WeightConv"):
            _set_submodule(deployable, name, Int8WeightConv(deployable.get_submodule(name)))
    return deployable


def install_artifact(pl_module: nn.Module, artifact: dict[str, Any]) -> nn.Module:
    """Put the artifact's quantized deployable into a freshly built ``pl_module``; returns the deployable."""
    attribute = artifact["attribute"]
    if artifact.get("context_state_dict"):
        pl_module.load_state_dict(artifact["context_state_dict"], strict=False)
    deployable = (
        restructure(pl_module.get_submodule(attribute), artifact["recipe"]) if attribute else pl_module
    )
    try:
        state = load_sparse_state_dict(artifact["state_dict"])
        deployable.load_state_dict(state, assign=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        where = artifact.get("where", "artifact")
        raise CheckpointError(f"{where}: its state_dict does not load: {first_line(err)}") from err
    for p in deployable.parameters():
        p.requires_grad_(False)
    return deployable.eval()


def build_from_artifact(artifact: dict[str, Any]) -> nn.Module:
    """The LightningModule of the artifact's run config (sized by its saved ``model_kwargs``), float and untrained."""
    from genexp.build import instantiate

    model_cfg = dict(artifact["genexp_config"]["model"])
    if "compile" in model_cfg:
        model_cfg["compile"] = False
    return instantiate(OmegaConf.create(model_cfg), "model", **artifact["model_kwargs"])


def load_deployable(path: str | Path) -> nn.Module:
    """Load a quantized deployable written by ``compression=[quantize]`` (a ``<run>/quantized`` folder or its
    ``deployable.pt``) in any process: same outputs as at save time, in eval mode.

    Example::

        from genexp.compression.quantize import load_deployable
        net = load_deployable("outputs/train/<run>/quantized")
        logits = net(token_ids)
    """
    artifact = read_artifact(path, key="path")
    model = build_from_artifact(artifact)
    return install_artifact(model, {**artifact, "context_state_dict": {}})
