"""Generation speed of a text family: greedy tokens/s per backend, without a cache (the whole context every
step) and with the cached decoder (``decoder_with_past``), as ``model.json``, ``genexp-eval`` and
``genexp-optimize objective=tokens_per_s`` report it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genexp.deploy.latency import tokens_per_s, tokens_per_s_cached
from genexp.deploy.onnx_export import Graph
from genexp.deploy.onnx_runtime import open_session

TORCH_EAGER = "torch fp32 eager"
GENERATION_TOKENS = 256
Step = Callable[[np.ndarray, list[np.ndarray]], tuple[np.ndarray, list[np.ndarray]]]
NextLogits = Callable[[np.ndarray], np.ndarray]


def generation_speed(
    text: tuple[np.ndarray, int],
    main: Graph,
    sessions: dict[str, Any],
    new_tokens: int = GENERATION_TOKENS,
    cached: Graph | None = None,
    folder: Path | None = None,
) -> dict[str, dict[str, float]]:
    """Greedy tokens/s for ``new_tokens`` new tokens from a prompt ``(ids, block_size)``, per backend:
    ``no_cache`` (the whole context, cropped to block_size, every step), ``cache`` (the ``cached`` decoder
    graph, ``folder``'s fp32 and int8 files, and its torch module) and ``speedup`` (cache / no_cache)."""
    prompt, block_size = text
    speeds = {
        name: {"no_cache": tokens_per_s(next_logits, prompt, new_tokens, block_size)}
        for name, next_logits in next_logits_calls(main, sessions).items()
    }
    if cached is None or folder is None:
        return speeds
    empty = empty_past(cached)
    steps = cached_steps(cached, folder, [TORCH_EAGER, *sessions])
    for name, step in steps.items():
        speeds[name]["cache"] = tokens_per_s_cached(step, empty, prompt, new_tokens, block_size)
        speeds[name]["speedup"] = speeds[name]["cache"] / speeds[name]["no_cache"]
    return speeds


def next_logits_calls(main: Graph, sessions: dict[str, Any]) -> dict[str, NextLogits]:
    """``next_logits(ids) -> logits of the last position`` per backend, without a cache: ``torch fp32 eager``
    (the main graph's module) and each ONNX Runtime session of ``model.onnx`` / ``model.int8.onnx``."""
    net = main.module

    def torch_next(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(ids))[:, -1].numpy()

    calls: dict[str, NextLogits] = {TORCH_EAGER: torch_next}
    for name, session in sessions.items():
        calls[name] = lambda ids, s=session: s.run(None, {"tokens": ids})[0][:, -1]
    return calls


def empty_past(cached: Graph) -> list[np.ndarray]:
    """The cached decoder's past at batch 1 with no position seen yet (``past_<i>`` of length 0)."""
    return [
        np.zeros((*p.shape[:1], 1, *p.shape[2:3], 0, *p.shape[4:]), np.float32) for p in cached.example[1:]
    ]


def cached_steps(cached: Graph, folder: Path, backends: Sequence[str]) -> dict[str, Step]:
    """``step(new_ids, past) -> (logits, present)`` per backend in ``backends`` that has its cached decoder:
    ``torch fp32 eager`` (the graph's module), ``onnxruntime fp32`` / ``onnxruntime int8`` (``folder``'s
    ``decoder_with_past.onnx`` / ``.int8.onnx``, when written)."""
    decoder = cached.module

    def torch_step(ids: np.ndarray, past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        with torch.inference_mode():
            out = decoder(torch.from_numpy(ids), *(torch.from_numpy(p) for p in past))
        return out[0].numpy(), [p.numpy() for p in out[1:]]

    steps: dict[str, Step] = {TORCH_EAGER: torch_step} if TORCH_EAGER in backends else {}
    for name, file in (("onnxruntime fp32", cached.file), ("onnxruntime int8", cached.int8_file())):
        if name in backends and (folder / file).is_file():
            session = open_session(folder / file)

            def ort_step(ids: np.ndarray, past: list[np.ndarray], s: Any = session) -> Any:
                out = s.run(None, {"tokens": ids, **dict(zip(cached.inputs[1:], past, strict=True))})
                return out[0], out[1:]

            steps[name] = ort_step
    return steps
