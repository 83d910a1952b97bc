"""Generation with and without the key/value cache (issue 29), per backend, in one process.

    python benchmarks/generation.py --run outputs/train/runs/<gpt run> [--run <gpt_shakespeare_256 run>]

For each run: export it (fp32 + int8, fused attention) to a temporary folder, then time greedy generation of
``--new-tokens`` (256) new tokens from the model's sample prompt for torch fp32 eager, ONNX Runtime fp32 and ONNX
Runtime int8, each without the cache (the whole context, cropped to block_size, every step: ``model.onnx``) and
with it (``Transformer.forward_cached`` / ``decoder_with_past.onnx``; re-filled from the last block_size // 2 ids
when full). The six cells run in ``--rounds`` interleaved rounds, so a shared machine's load drifts over all of
them alike; the table gives the median tokens/s and the ratio cache / no cache of the same backend.

Long-generation quality: ``--long-samples`` sampled continuations (temperature 1, the same seeds for both) of
``--long-tokens`` characters from the sample prompt, generated with the cache and with crop-every-step, each
scored by the model itself with a full ``block_size`` window before every character (nats/char; lower is more
what the model expects). The cache's re-fill gives some tokens only half a window of context; the ratio says
what that costs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from _harness import latency_header, load_best
from genexp.deploy import latency
from genexp.deploy.generation_speed import cached_steps, empty_past, next_logits_calls
from genexp.deploy.onnx_export import Family
from genexp.deploy.onnx_package import write_package
from genexp.deploy.onnx_runtime import open_session
from genexp.exporters.registry import family_of


def steps(family: Family, folder: Path) -> dict[str, tuple[Any, Any, list[np.ndarray]]]:
    """backend -> (no-cache next-logits call, cached step, empty past), numpy in and out; ORT from ``folder``."""
    graphs = {g.stem: g for g in family.graphs(1)}
    main, cached = graphs["model"], graphs[family.cached]
    files = {"onnxruntime fp32": main.file, "onnxruntime int8": main.int8_file()}
    sessions = {
        name: open_session(folder / file) for name, file in files.items() if (folder / file).is_file()
    }
    nexts = next_logits_calls(main, sessions)
    cached_calls = cached_steps(cached, folder, list(nexts))
    empty = empty_past(cached)
    return {name: (nexts[name], cached_calls[name], empty) for name in nexts}


def speeds(
    model: Any, family: Family, folder: Path, new_tokens: int, rounds: int
) -> dict[str, dict[str, float]]:
    """backend -> {"no_cache", "cache", "ratio"}: median tokens/s over interleaved rounds."""
    prompt = model.encode(model.sample_prompt).cpu().numpy().reshape(1, -1)
    block = model.block_size
    calls = steps(family, folder)
    times: dict[tuple[str, str], list[float]] = {}
    for nxt, step, empty in calls.values():  # warm-up: one short generation each
        latency.tokens_per_s(nxt, prompt, 4, block)
        latency.tokens_per_s_cached(step, empty, prompt, 4, block)
    for _ in range(rounds):
        for name, (nxt, step, empty) in calls.items():
            times.setdefault((name, "no_cache"), []).append(
                latency.tokens_per_s(nxt, prompt, new_tokens, block)
            )
            times.setdefault((name, "cache"), []).append(
                latency.tokens_per_s_cached(step, empty, prompt, new_tokens, block)
            )
    out = {}
    for name in calls:
        no_cache, cache = (statistics.median(times[(name, mode)]) for mode in ("no_cache", "cache"))
        out[name] = {"no_cache": no_cache, "cache": cache, "ratio": cache / no_cache}
    return out


@torch.no_grad()
def nats_per_char(model: Any, ids: torch.Tensor, start: int, chunk: int = 64) -> float:
    """Mean nats/char of ``ids[:, start:]`` under ``model``, each character after a full window (crop-every-step)."""
    block, total = model.block_size, ids.shape[1]
    losses = []
    for t in range(start, min(block, total)):  # the first characters: all the context there is
        losses.append(F.cross_entropy(model.net(ids[:, :t])[:, -1], ids[:, t], reduction="none"))
    for first in range(max(start, block), total, chunk):  # then a full window each, many windows a call
        targets = range(first, min(first + chunk, total))
        windows = torch.cat([ids[:, t - block : t] for t in targets], dim=0)
        labels = torch.cat([ids[:, t] for t in targets], dim=0)
        losses.append(F.cross_entropy(model.net(windows)[:, -1], labels, reduction="none"))
    return float(torch.cat(losses).mean())


def quality(model: Any, long_tokens: int, samples: int) -> dict[str, float]:
    """nats/char of sampled long continuations, generated with the cache and crop-every-step (same seeds)."""
    prompt = model.encode(model.sample_prompt)[None].expand(samples, -1)
    out = {}
    for label, cache in (("crop every step", False), ("cache", True)):
        torch.manual_seed(0)
        ids = model.generate_ids(prompt, long_tokens, temperature=1.0, cache=cache)
        out[label] = nats_per_char(model, ids, prompt.shape[1])
    out["ratio"] = out["cache"] / out["crop every step"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", action="append", required=True, help="a GPT run folder (or a .ckpt)")
    parser.add_argument("--new-tokens", type=int, default=256, help="new tokens per timed generation")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median over them)")
    parser.add_argument("--long-tokens", type=int, default=2000, help="characters per long generation")
    parser.add_argument("--long-samples", type=int, default=4, help="long generations (seeds) per path")
    parser.add_argument("--no-quality", action="store_true", help="skip the long-generation quality")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows, checks = [], []
    with tempfile.TemporaryDirectory(prefix="generation-") as tmp:
        for run in args.run:
            model, datamodule, _ = load_best(Path(run))
            folder = Path(tmp) / f"export{len(rows)}"
            family = family_of(model, datamodule)
            write_package(family, folder, quantize="int8", timing={"repeats": 0})
            rows.append((run, model.block_size, speeds(model, family, folder, args.new_tokens, args.rounds)))
            if not args.no_quality:
                checks.append((run, model.block_size, quality(model, args.long_tokens, args.long_samples)))
    print(
        f"\n{latency_header()}; greedy, {args.new_tokens} new tokens from the sample prompt, median of "
        f"{args.rounds} interleaved rounds in one process; x = cache / no cache of the same backend\n"
    )
    print("| run | block_size | backend | no cache, tokens/s | cache, tokens/s | x |")
    print("|---|---:|---|---:|---:|---:|")
    for run, block, table in rows:
        for backend, cell in table.items():
            print(
                f"| {Path(run).name} | {block} | {backend} | {cell['no_cache']:,.0f} | {cell['cache']:,.0f} | "
                f"{cell['ratio']:.2f} |"
            )
    if checks:
        print(
            f"\nLong generations: {args.long_samples} x {args.long_tokens} characters (temperature 1, same "
            "seeds), scored by the model with a full window before each character\n"
        )
        print("| run | block_size | crop every step, nats/char | cache, nats/char | cache / crop |")
        print("|---|---:|---:|---:|---:|")
        for run, block, q in checks:
            print(
                f"| {Path(run).name} | {block} | {q['crop every step']:.4f} | {q['cache']:.4f} | "
                f"{q['ratio']:.4f} |"
            )


if __name__ == "__main__":
    main()
