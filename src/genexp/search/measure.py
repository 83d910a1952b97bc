"""A trial measured on this machine: quality on the validation split, its export, and the latency of every
backend interleaved with the base model in this one process.

Timing happens here, in the ``genexp-optimize`` process, after the trial's fine-tune has exited and before the
next one starts, under an exclusive lock on ``<out>/measure.lock`` (a second search on the same folder waits):
no training shares the cores while a backend is timed. The base model's torch eager graph is timed in the same
alternating rounds as the trial's backends, so every speedup is a ratio taken under the same conditions.
A diffusion model's time is one call of its network times its ``sample_steps`` (the base's and each trial's
own), so a trial distilled to fewer steps is as much faster. With ``objective=tokens_per_s`` (a text family)
the timed call is a greedy generation of ``NEW_TOKENS`` tokens from the sample prompt at batch 1 through each
backend's cached decoder, against the base's torch generation with its cache; the figures are then ms per
generated token.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genexp.callbacks.sample_quality import SampleQuality
from genexp.checkpoints.rebuild import Loaded, load_any
from genexp.deploy.backends import by_name, onnx_backends, open_backends
from genexp.deploy.generation_speed import cached_steps, empty_past
from genexp.deploy.latency import cpu_flags, cpu_name, interleaved_latency, tokens_per_s_cached, torch_call
from genexp.deploy.onnx_export import Family
from genexp.deploy.onnx_package import write_package
from genexp.deploy.onnx_runtime import session_call
from genexp.exporters.registry import family_of, graphs_of, install_graphs
from genexp.runtime.build import instantiate
from genexp.runtime.errors import GenexpError
from genexp.runtime.run_folder import scalar_metrics

BASE_BACKEND = "base torch fp32 eager"
TORCH, ORT_FP32, ORT_INT8 = "torch fp32 eager", "onnxruntime fp32", "onnxruntime int8"
NEW_TOKENS = 64  # per timed generation (objective=tokens_per_s)
AT_1 = " @ batch 1"


@contextlib.contextmanager
def measuring(out: Path) -> Iterator[None]:
    """Hold ``<out>/measure.lock`` exclusively: one trial is timed at a time."""
    with open(out / "measure.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def quality(loaded: Loaded, metric: str, split: str = "val") -> float:
    """The family's ``metric`` of ``loaded.model`` on ``split`` (``val`` or ``test``), with the run's trainer
    (and, for an image score such as ``fid``, the run's ``SampleQuality`` callback: ``sample_scorer``)."""
    trainer_cfg = dict(loaded.config.get("trainer") or {})
    trainer_cfg.update(accelerator="cpu", devices=1, strategy="auto", enable_progress_bar=False)
    trainer_cfg.update(enable_model_summary=False, num_nodes=1)
    from omegaconf import OmegaConf

    callbacks = sample_scorer(loaded, metric)
    trainer = instantiate(OmegaConf.create(trainer_cfg), "trainer", logger=False, callbacks=callbacks)
    run = trainer.validate if split == "val" else trainer.test
    metrics = scalar_metrics(*run(loaded.model, datamodule=loaded.datamodule, verbose=False))
    name = f"{split}/{metric}"
    if name not in metrics:
        raise GenexpError(f"space: metric={metric}: the model logs no {name} (it logs {sorted(metrics)})")
    return metrics[name]


def sample_scorer(loaded: Loaded, metric: str) -> list[SampleQuality]:
    """The run's ``callbacks.sample_quality`` settings as a ``SampleQuality`` that scores every validation,
    when ``metric`` is one of its scores (``fid``, ``kid``, ...): the same classifier, seed and sample noise
    for the base and every trial. Built directly from its plain settings: a saved ``_target_`` is not called."""
    spec = dict((loaded.config.get("callbacks") or {}).get("sample_quality") or {})
    if spec.get("_target_") != f"{SampleQuality.__module__}.{SampleQuality.__name__}":
        return []
    kwargs = {k: spec[k] for k in ("cache_dir", "seed", "num_samples", "inception_weights") if k in spec}
    scorer = SampleQuality(**kwargs, every_n_epochs=1)
    return [scorer] if f"val/{metric}" in scorer.val_metric_names else []


def through(loaded: Loaded, sessions: dict[str, Any]) -> Loaded:
    """A copy of ``loaded`` whose deployable computes through ``sessions`` (one per graph stem, any backend)."""
    model = install_graphs(copy.deepcopy(loaded.model), sessions)
    return Loaded(**{**loaded.__dict__, "model": model})


def through_backend(loaded: Loaded, folder: Path, name: str) -> Loaded:
    """A copy of ``loaded`` computing through backend ``name``'s graphs in ``folder`` (``"onnxruntime int8"``)."""
    backend = by_name(name)
    if backend is None:
        raise GenexpError(f"backend={name}: not an ONNX backend (expected e.g. 'onnxruntime int8')")
    stems = [g.stem for g in graphs_of(loaded.model)]
    return through(loaded, {stem: backend.open(folder / backend.file(stem)) for stem in stems})


def measure_trial(
    run: Path,
    base: Loaded,
    metric: str,
    batch_size: int,
    int8: bool,
    timing: dict[str, int],
    objective: str = "latency",
) -> dict[str, Any]:
    """Export the trial in ``run`` to ``run/export`` and measure it; returns the figures of every backend
    (``median_ms``: per call at ``batch_size``, or per generated token with ``objective=tokens_per_s``)."""
    loaded = load_any(run, key="trial")
    family, base_family = family_of(loaded.model, loaded.datamodule), family_of(base.model, base.datamodule)
    folder = run / "export"
    info = write_package(
        family,
        folder,
        quantize="int8" if int8 else "none",
        batch_size=batch_size,
        timing={"repeats": 0},
    )
    fp32_quality = quality(loaded, metric)
    main = family.graphs(batch_size)[0]
    backends = onnx_backends("int8" in info["variants"], subpixel=bool(info["layouts"]))
    if objective == "tokens_per_s":  # generation runs through ONNX Runtime's cached decoders
        backends = [b for b in backends if b.name in (ORT_FP32, ORT_INT8)]
    opened, skipped = open_backends(backends, folder, [g.stem for g in graphs_of(loaded.model)])
    files = {TORCH: folder / main.file}
    qualities = {TORCH: fp32_quality}
    for name, sessions in opened.items():
        backend = by_name(name)
        files[name] = folder / backend.file(main.stem)
        # fp32 on any runtime computes what torch does (relative error ~1e-7); bf16 and int8 are scored
        qualities[name] = (
            fp32_quality if backend.precision == "fp32" else quality(through(loaded, sessions), metric)
        )
    per = NEW_TOKENS if objective == "tokens_per_s" else 1
    if objective == "tokens_per_s":
        calls = {BASE_BACKEND: generation_call(base_family, None, TORCH)}
        calls.update({name: generation_call(family, folder, name) for name in files})
    else:  # the family's batch, and batch 1 (recorded; the objective is the family's batch)
        sessions = {name: by_stem[main.stem] for name, by_stem in opened.items()}
        calls = forward_calls(family, base_family, sessions, batch_size)
        at_1 = forward_calls(family, base_family, sessions, 1)
        calls.update({f"{name}{AT_1}": call for name, call in at_1.items()})
    times = interleaved_latency(
        calls, timing.get("repeats", 20), timing.get("warmup", 3), timing.get("rounds", 4)
    )
    steps = {name: sampler_calls(loaded) for name in files} | {BASE_BACKEND: sampler_calls(base)}
    ms = {name: t["median_ms"] * steps[name.removesuffix(AT_1)] / per for name, t in times.items()}
    backends = {}
    for name in files:
        backends[name] = {
            "median_ms": ms[name],
            "quality": qualities[name],
            "bytes": files[name].stat().st_size,
        }
        if per > 1:
            backends[name]["tokens_per_s"] = 1e3 / ms[name]
        if f"{name}{AT_1}" in ms:
            backends[name]["batch1_ms"] = ms[f"{name}{AT_1}"]
    return {
        "backends": backends,
        "base_ms": ms[BASE_BACKEND],
        **({"base_batch1_ms": ms[f"{BASE_BACKEND}{AT_1}"]} if f"{BASE_BACKEND}{AT_1}" in ms else {}),
        "batch_size": 1 if objective == "tokens_per_s" else batch_size,
        "int8": info.get("int8", {}),
        "left_out": skipped,
        "export": str(folder),
    }


def final_round(
    rows: list[dict[str, Any]], base: Loaded, batch_size: int, timing: dict[str, int], objective: str
) -> dict[int, dict[str, float]]:
    """Time the trials ``rows`` once more, each through its chosen backend, interleaved with the base in the
    same rounds of this process: ``{trial number: {"ms", "base_ms"}}`` (per call at ``batch_size`` times the
    sampling steps, or per generated token with ``objective=tokens_per_s``)."""
    tokens = objective == "tokens_per_s"
    base_family = family_of(base.model, base.datamodule)
    if tokens:
        calls = {BASE_BACKEND: generation_call(base_family, None, TORCH)}
    else:
        base_main = base_family.graphs(batch_size)[0]
        calls = {BASE_BACKEND: torch_call(base_main.module, base_main.example)}
    steps = {BASE_BACKEND: sampler_calls(base)}
    for row in rows:
        loaded, name = load_any(Path(row["run"]), key="trial"), f"trial {row['number']}"
        family, folder = family_of(loaded.model, loaded.datamodule), Path(row["export"])
        steps[name] = sampler_calls(loaded)
        if tokens:
            calls[name] = generation_call(family, folder, row["backend"])
        else:
            calls[name] = backend_call(family, folder, row["backend"], batch_size)
    times = interleaved_latency(
        calls, timing.get("repeats", 20), timing.get("warmup", 3), timing.get("rounds", 4)
    )
    per = NEW_TOKENS if tokens else 1
    ms = {name: t["median_ms"] * steps[name] / per for name, t in times.items()}
    return {r["number"]: {"ms": ms[f"trial {r['number']}"], "base_ms": ms[BASE_BACKEND]} for r in rows}


def backend_call(family: Family, folder: Path, backend: str, batch: int) -> Any:
    """A no-argument call of the main graph at ``batch`` on ``backend`` (torch eager: the module itself)."""
    main = family.graphs(batch)[0]
    chosen = by_name(backend)
    if chosen is None:
        return torch_call(main.module, main.example)
    feeds = {name: x.numpy() for name, x in zip(main.inputs, main.example, strict=True)}
    return session_call(chosen.open(folder / chosen.file(main.stem)), feeds)


def forward_calls(family: Family, base: Family, sessions: dict[str, Any], batch: int) -> dict[str, Any]:
    """No-argument calls of one forward pass at ``batch``: the base's torch graph, the trial's torch eager
    graph and each of its backends' ``sessions`` of the main graph, on the same example input."""
    main, base_main = family.graphs(batch)[0], base.graphs(batch)[0]
    feeds = {name: x.numpy() for name, x in zip(main.inputs, main.example, strict=True)}
    calls = {
        BASE_BACKEND: torch_call(base_main.module, base_main.example),
        TORCH: torch_call(main.module, main.example),
    }
    calls.update({name: session_call(session, feeds) for name, session in sessions.items()})
    return calls


def sampler_calls(loaded: Loaded) -> int:
    """Network calls per sample: a diffusion model's ``sample_steps`` (its images cost that many calls of the
    timed graph), else 1."""
    return int(getattr(loaded.model, "sample_steps", 1) or 1)


def generation_call(family: Family, folder: Path | None, backend: str) -> Any:
    """A no-argument call: greedy generation of ``NEW_TOKENS`` tokens from the sample prompt through
    ``backend``'s cached decoder (torch: the model's own; ONNX Runtime: ``folder``'s graphs)."""
    cached = next(g for g in family.graphs(1) if g.stem == family.cached)
    step = cached_steps(cached, folder or Path("."), [backend])[backend]
    prompt, block = family.text
    empty = empty_past(cached)
    return lambda: tokens_per_s_cached(step, empty, prompt, NEW_TOKENS, block)


def machine() -> dict[str, Any]:
    """The CPU the figures were taken on."""
    return {"cpu": cpu_name(), "cpu_flags": cpu_flags()}
