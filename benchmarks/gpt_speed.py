"""GPT training speed: genexp (Lightning Trainer, the recipe's callbacks and loggers) vs a plain PyTorch loop.

Both train the same network (same init) on the same batches with the same AdamW parameter groups, warm-up
+ cosine schedule and gradient clipping, in one process. Both validate on the same fixed batches, write two
text samples and a checkpoint at the end of every epoch, and log train loss and learning rate to TensorBoard
every ``log_every_n_steps`` steps, as ``experiment=gpt_shakespeare_cpu`` does. The table shows ms per
training iteration (total wall time / steps, validation included) and the ratio genexp / plain.

    python benchmarks/gpt_speed.py                       # the full recipe: 10 epochs x 200 steps
    python benchmarks/gpt_speed.py --epochs 2 --compile  # quicker, torch.compile'd network

End to end (``--e2e``): process start to exit of ``genexp-train experiment=gpt_shakespeare_cpu`` (as a user
runs it: config composition, imports, sanity check, fit, test pass, samples, metrics.json) against
``benchmarks/plain_gpt.py``, the same recipe as one torch-only script, as written (torch's default AdamW, a
per-tensor loop on the CPU) and with ``--fused`` (the fused AdamW kernel genexp picks on 32-true: the framework's
own overhead, like for like); alternating runs, wall and CPU seconds.

    python benchmarks/gpt_speed.py --e2e --repeats 2     # the full 2,000 steps each, ~14 minutes
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from torch.utils.tensorboard import SummaryWriter

from _harness import CONF, REPO, SHAKESPEARE
from genexp.models.gpt import GPT  # noqa: E402
from genexp.runtime.build import (  # noqa: E402
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_model,
    build_trainer,
)

DEFAULT_DATA = SHAKESPEARE


def compose_recipe(args: argparse.Namespace, out: Path) -> DictConfig:
    """``experiment=gpt_shakespeare_cpu`` with the run length and output folder of this benchmark."""
    overrides = [
        "experiment=gpt_shakespeare_cpu",
        f"data.path={args.data}",
        f"trainer.max_epochs={args.epochs}",
        f"scheduler.scheduler.total_steps={args.epochs * args.batches_per_epoch}",
        f"data.batches_per_epoch={args.batches_per_epoch}",
        f"model.compile={str(args.compile).lower()}",
        "trainer.accelerator=cpu",
        "trainer.enable_model_summary=false",
    ]
    if not args.progress_bar:
        overrides.append("callbacks.progress_bar=null")
    overrides += args.overrides
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_genexp(cfg: DictConfig) -> tuple[float, float, int, float]:
    """Fit with the Lightning Trainer; returns (wall seconds, CPU seconds, steps, last val loss)."""
    torch.manual_seed(cfg.seed)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    trainer = build_trainer(cfg, build_callbacks(cfg), build_loggers(cfg))
    datamodule.setup("fit")  # read and encode the text outside the timing, as the plain loop does
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=datamodule)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return seconds, cpu, trainer.global_step, float(trainer.callback_metrics["val/loss"])


def run_plain(cfg: DictConfig, out: Path) -> tuple[float, float, int, float]:
    """The same training as a hand-written PyTorch loop; returns (wall s, CPU s, steps, last val loss)."""
    torch.manual_seed(cfg.seed)
    datamodule = build_datamodule(cfg)
    model: GPT = build_model(cfg, datamodule)  # type: ignore[assignment]
    datamodule.setup("fit")
    net, clip, log_every = model.net, cfg.trainer.gradient_clip_val, cfg.trainer.log_every_n_steps
    optimizer = model.optimizer_factory(model.optimizer_param_groups(), fused=True)  # the kernel genexp picks
    scheduler = model.scheduler_config["scheduler"](optimizer)
    writer = SummaryWriter(str(out / "tensorboard"))
    step, val_loss = 0, math.nan
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(cfg.trainer.max_epochs):
        net.train()
        for x, y in datamodule.train_dataloader():
            logits = net(x)
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
            optimizer.step()
            scheduler.step()
            step += 1
            if step % log_every == 0:
                writer.add_scalar("train/loss", loss.item(), step)
                writer.add_scalar("lr", scheduler.get_last_lr()[0], step)
        net.eval()
        with torch.no_grad():
            losses = [
                F.cross_entropy(net(x).flatten(0, 1), y.flatten()) for x, y in datamodule.val_dataloader()
            ]
        val_loss = torch.stack(losses).mean().item()
        writer.add_scalar("val/loss", val_loss, step)
        writer.add_text("samples", "\n\n".join(model.sample(model.num_samples)), step)
        state = {
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "vocab": datamodule.state_dict(),
        }
        torch.save(state, out / "last.pt")
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    writer.close()
    return seconds, cpu, step, val_loss


def timed(command: list[str], cwd: Path) -> tuple[float, float]:
    """Run ``command`` to completion; its (wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def end_to_end(args: argparse.Namespace) -> None:
    """genexp-train vs the plain script, process start to exit, alternating."""
    names = ("plain", "plain fused", "genexp")
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for name in names if i % 2 == 0 else names[::-1]:
                out = Path(tmp) / f"{name.replace(' ', '_')}{i}"
                if name.startswith("plain"):
                    command = [
                        sys.executable,
                        str(REPO / "benchmarks" / "plain_gpt.py"),
                        f"--data={args.data}",
                    ]
                    command += [
                        f"--out={out}",
                        f"--epochs={args.epochs}",
                        *(["--fused"] if "fused" in name else []),
                    ]
                else:
                    command = [sys.executable, "-m", "genexp.train", "experiment=gpt_shakespeare_cpu"]
                    command += [f"data.path={args.data}", f"hydra.run.dir={out}", *args.overrides]
                    if args.epochs != 10:
                        command += [f"trainer.max_epochs={args.epochs}"]
                        command += [f"scheduler.scheduler.total_steps={args.epochs * 200}"]
                runs[name].append(timed(command, Path(tmp)))
                print(
                    f"  {name:7s} run {i}: {runs[name][-1][0]:.1f} s wall, {runs[name][-1][1]:.1f} s CPU",
                    flush=True,
                )
    wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
    print(f"\nEnd to end, {args.epochs * 200} steps, median of {args.repeats} (process start to exit)")
    print("| script | wall s | CPU s |\n|---|---:|---:|")
    for name in names:
        print(f"| {name} | {wall[name]:.1f} | {cpu[name]:.1f} |")
    for base in ("plain", "plain fused"):
        print(
            f"ratio genexp/{base}: {wall['genexp'] / wall[base]:.3f}x wall, "
            f"{cpu['genexp'] / cpu[base]:.3f}x CPU time (target <= 1.0x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Tiny Shakespeare input.txt")
    parser.add_argument(
        "--epochs", type=int, default=10, help="epochs of --batches-per-epoch steps (recipe: 10)"
    )
    parser.add_argument("--batches-per-epoch", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=1, help="alternate plain/genexp this many times each")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the network (model.compile=true)"
    )
    parser.add_argument("--progress-bar", action="store_true", help="keep the RichProgressBar callback")
    parser.add_argument(
        "--e2e", action="store_true", help="end to end: genexp-train vs benchmarks/plain_gpt.py"
    )
    parser.add_argument(
        "overrides", nargs="*", help="extra Hydra overrides for both runs, e.g. model.n_layer=6"
    )
    args = parser.parse_args()
    if args.e2e:
        end_to_end(args)
        return

    wall: dict[str, list[float]] = {"plain": [], "genexp": []}
    cpu: dict[str, list[float]] = {"plain": [], "genexp": []}
    losses: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.compile:  # compile outside the timings; later runs reuse the graphs
            warmup_overrides = [*args.overrides, "scheduler.scheduler.warmup_steps=5"]
            warm = argparse.Namespace(
                **{**vars(args), "epochs": 1, "batches_per_epoch": 20, "overrides": warmup_overrides}
            )
            for name in (
                "plain",
                "genexp",
            ):  # both: Lightning validates under inference_mode, a graph of its own
                (root / f"warmup_{name}").mkdir()
                warm_cfg = compose_recipe(warm, root / f"warmup_{name}")
                run_plain(warm_cfg, root / "warmup_plain") if name == "plain" else run_genexp(warm_cfg)
        for i in range(args.repeats):
            order = ("plain", "genexp") if i % 2 == 0 else ("genexp", "plain")
            for name in order:
                out = root / f"{name}{i}"
                out.mkdir()
                cfg = compose_recipe(args, out)
                seconds, cpu_seconds, steps, loss = (
                    run_plain(cfg, out) if name == "plain" else run_genexp(cfg)
                )
                wall[name].append(1000 * seconds / steps)
                cpu[name].append(1000 * cpu_seconds / steps)
                losses[name] = loss
                print(
                    f"  {name:7s} run {i}: {wall[name][-1]:.2f} ms/iter wall, {cpu[name][-1]:.2f} ms/iter CPU, "
                    f"{steps} steps, val/loss {loss:.4f}",
                    flush=True,
                )

    mode = "compiled" if args.compile else "eager"
    med = {k: {n: statistics.median(v[n]) for n in v} for k, v in (("wall", wall), ("cpu", cpu))}
    print(
        f"\nGPT speed ({mode}, {args.epochs} x {args.batches_per_epoch} steps, {torch.get_num_threads()} threads, "
        f"median of {args.repeats})"
    )
    print("| loop    | ms/iter (wall) | ms/iter (CPU time) | final val/loss |")
    print("|---------|----------------|--------------------|----------------|")
    for name in ("plain", "genexp"):
        print(f"| {name:7s} | {med['wall'][name]:14.2f} | {med['cpu'][name]:18.2f} | {losses[name]:14.4f} |")
    print(
        f"ratio genexp/plain: {med['wall']['genexp'] / med['wall']['plain']:.3f}x wall, "
        f"{med['cpu']['genexp'] / med['cpu']['plain']:.3f}x CPU time (target <= 1.05x)"
    )


if __name__ == "__main__":
    main()
