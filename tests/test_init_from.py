"""init_from: a fresh run starts from a trained run's weights (pruned widths kept) with its own optimizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import FAST, run_cli

BASE = [*FAST, "trainer.max_epochs=2", "model.sample_every_n_epochs=0", "test=false"]


def snapshot(run: Path) -> dict[str, float]:
    """Every file under ``run`` with its modification time: a run nobody wrote into keeps the same one."""
    return {str(p.relative_to(run)): p.stat().st_mtime for p in run.rglob("*") if p.is_file()}


def parameters(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trained weights of a state dict (BatchNorm's running statistics move in any training step)."""
    return {k: v for k, v in state_dict.items() if "running_" not in k and "num_batches" not in k}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny VAE run and a structured-pruned one (half the channels removed at fit end)."""
    root = tmp_path_factory.mktemp("init_from")
    base, pruned = root / "base", root / "pruned"
    prune = [
        "compression=[prune]",
        "compression.prune.method=ln_structured",
        "compression.prune.latency_repeats=0",
    ]
    for folder, extra in ((base, []), (pruned, prune)):
        result = run_cli([*BASE, *extra, f"hydra.run.dir={folder}"], cwd=root)
        assert result.returncode == 0, result.stderr[-2000:]
    return {"root": root, "base": base, "pruned": pruned}


def test_starts_from_the_base_weights_with_a_fresh_optimizer(runs: dict[str, Path]) -> None:
    base, out = runs["base"], runs["root"] / "fine_tuned"
    before = snapshot(base)
    # Adam with lr=1e-12: every step moves a weight by ~1e-12, so the weights are the base's as at step 0.
    result = run_cli(
        [*FAST, "optimizer.lr=1e-12", "test=false", f"init_from={base}", f"hydra.run.dir={out}"],
        cwd=runs["root"],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert snapshot(base) == before, "init_from wrote into the base run"
    old = torch.load(base / "checkpoints" / "last.ckpt", weights_only=True)
    new = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    for name, tensor in parameters(old["state_dict"]).items():
        torch.testing.assert_close(new["state_dict"][name], tensor, atol=1e-8, rtol=0)
    assert old["global_step"] == 6 and new["global_step"] == 3  # counted from 0, not from the base's 6 steps
    assert new["epoch"] == 0
    adam_steps = {float(s["step"]) for s in new["optimizer_states"][0]["state"].values()}
    assert adam_steps == {3.0}  # a fresh Adam: its moments start with this run


def test_a_structured_pruned_base_keeps_its_widths(runs: dict[str, Path]) -> None:
    pruned, out = runs["pruned"], runs["root"] / "from_pruned"
    result = run_cli(
        [*FAST, "test=false", f"init_from={pruned}/checkpoints/last.ckpt", f"hydra.run.dir={out}"],
        cwd=runs["root"],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    old = torch.load(pruned / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    new = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    full = torch.load(runs["base"] / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert {k: v.shape for k, v in new.items()} == {k: v.shape for k, v in old.items()}
    assert sum(v.numel() for v in new.values()) < sum(v.numel() for v in full.values())


def test_the_teacher_may_be_the_same_run_folder_as_init_from(runs: dict[str, Path]) -> None:
    base, out = runs["base"], runs["root"] / "self_distilled"
    result = run_cli(
        [*FAST, "test=false", f"init_from={base}", "compression=[distill]"]
        + [f"compression.distill.teacher={base}", f"hydra.run.dir={out}"],
        cwd=runs["root"],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Distilling from {base}" in result.stdout + result.stderr + (out / "train.log").read_text()
    bad = run_cli(
        [*FAST, "compression=[distill]", f"compression.distill.teacher={runs['root']}", "hydra.run.dir=x"],
        cwd=runs["root"],
    )
    lines = [line for line in bad.stderr.splitlines() if "error" in line.lower()]
    assert bad.returncode != 0 and len(lines) == 1 and "compression.distill.teacher=" in lines[0], bad.stderr


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "no such checkpoint file"),
        ("not_genexp", "not a genexp checkpoint"),
        ("folder", "not a genexp run folder"),
        ("family", "holds a VAE"),
    ],
)
def test_bad_init_from_is_one_line(runs: dict[str, Path], case: str, expected: str) -> None:
    root = runs["root"]
    before = snapshot(runs["base"])
    target = {
        "missing": root / "nowhere.ckpt",
        "not_genexp": root / "plain.ckpt",
        "folder": root,
        "family": runs["base"],
    }[case]
    torch.save({"weights": torch.zeros(2)}, root / "plain.ckpt")
    extra = ["model=gan"] if case == "family" else []
    out = root / f"bad_{case}"
    result = run_cli([*FAST, *extra, f"init_from={target}", f"hydra.run.dir={out}"], cwd=root)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "init_from=" in lines[0] and expected in lines[0], result.stderr[-2000:]
    assert snapshot(runs["base"]) == before
    assert not (out / "metrics.json").exists()
