"""The table of bad input: every case is a real genexp-train / genexp-eval subprocess that must exit non-zero
with a short message naming the key or path and what was expected, print no traceback (unless
HYDRA_FULL_ERROR=1), and leave every earlier run folder exactly as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from conftest import FAST, run_cli, run_dirs

pytestmark = pytest.mark.xdist_group("bad_input")  # one worker builds the module's shared runs

TRAIN, EVAL = "genexp.train", "genexp.evaluate"
GPT = [
    "model=gpt",
    "data=text",
    "data.path=small.txt",
    "model.n_layer=1",
    "model.n_embd=16",
    "model.n_head=2",
    "data.block_size=8",
    "data.batch_size=4",
]

# name: (module, overrides, fragments that must all appear in stderr)
CASES: dict[str, tuple[str, list[str], list[str]]] = {
    # groups: Hydra lists the valid options
    "unknown model": (TRAIN, ["model=nope"], ["model", "nope", "vae", "gan", "gpt"]),
    "unknown optimizer": (TRAIN, ["optimizer=nope"], ["optimizer", "adamw", "rmsprop"]),
    "unknown scheduler": (TRAIN, ["scheduler=nope"], ["scheduler", "plateau", "onecycle"]),
    "unknown data": (TRAIN, ["data=nope"], ["data", "digits", "shakespeare"]),
    # optimizer / scheduler values
    "negative lr": (TRAIN, ["optimizer.lr=-1"], ["optimizer.lr=-1", "positive number"]),
    "text lr": (TRAIN, ["optimizer.lr=fast"], ["optimizer.lr='fast'", "positive number"]),
    "negative warmup": (
        TRAIN,
        ["scheduler=warmup_cosine", "scheduler.scheduler.warmup_steps=-1"],
        ["scheduler.scheduler.warmup_steps=-1", "integer >= 0"],
    ),
    # trainer
    "non-numeric epochs": (TRAIN, ["trainer.max_epochs=abc"], ["trainer.max_epochs='abc'", "integer"]),
    "epochs below -1": (TRAIN, ["trainer.max_epochs=-5"], ["trainer.max_epochs=-5", "integer >= -1"]),
    "unknown precision": (TRAIN, ["trainer.precision=13"], ["trainer.precision", "bf16-mixed"]),
    "checkpoint monitors an unlogged metric": (
        TRAIN,
        ["callbacks.model_checkpoint.monitor=val/fid"],
        ["ModelCheckpoint(monitor='val/fid')", "val/nelbo"],
    ),
    "negative clip": (TRAIN, ["trainer.gradient_clip_val=-1"], ["trainer.gradient_clip_val", ">= 0"]),
    "bad seed": (TRAIN, ["seed=minus"], ["seed='minus'", "integer >= 0"]),
    # image data
    "zero batch size": (TRAIN, ["data.batch_size=0"], ["data.batch_size=0", "positive integer"]),
    "image too small": (TRAIN, ["data.image_size=4"], ["data.image_size=4", "native size 8"]),
    "unknown resize": (TRAIN, ["data.resize=stretch"], ["data.resize='stretch'", "interpolate", "pad"]),
    "val fraction above 1": (
        TRAIN,
        ["data.val_fraction=1.5"],
        ["data.val_fraction=1.5", "fraction in (0, 1)"],
    ),
    "cifar10 offline": (TRAIN, ["data=cifar10"], ["cifar10", "cifar-10-batches-py", "data.download=true"]),
    "mnist offline": (TRAIN, ["data=mnist"], ["mnist", "train-images-idx3-ubyte", "data.download=true"]),
    # models
    "unknown likelihood": (TRAIN, ["model.likelihood=poisson"], ["model.likelihood='poisson'", "bernoulli"]),
    "zero latent": (TRAIN, ["model.latent_dim=0"], ["model.latent_dim=0", "positive integer"]),
    "negative beta": (TRAIN, ["model.beta=-1"], ["model.beta=-1", ">= 0"]),
    "gpt heads": (TRAIN, [*GPT, "model.n_embd=30", "model.n_head=4"], ["model.n_embd=30", "model.n_head=4"]),
    "text file missing": (TRAIN, [*GPT, "data.path=absent.txt"], ["data.path", "absent.txt"]),
    "text file empty": (TRAIN, [*GPT, "data.path=empty.txt"], ["data.path", "empty.txt", "empty"]),
    "text not utf-8": (TRAIN, [*GPT, "data.path=latin1.txt"], ["data.path", "latin1.txt", "UTF-8"]),
    # callbacks
    "nan guard policy": (TRAIN, ["callbacks.nan_guard.policy=maybe"], ["callbacks.nan_guard.policy", "skip"]),
    "prune sparsity": (
        TRAIN,
        ["compression=[prune]", "compression.prune.final_sparsity=1.5"],
        ["compression.prune.final_sparsity=1.5"],
    ),
    "prune epochs reversed": (
        TRAIN,
        ["compression=[prune]", "compression.prune.start_epoch=5", "compression.prune.end_epoch=2"],
        ["compression.prune.start_epoch=5"],
    ),
    "prune method": (
        TRAIN,
        ["compression=[prune]", "compression.prune.method=magic"],
        ["compression.prune.method='magic'", "l1_unstructured"],
    ),
    "prune structured bad dim": (
        TRAIN,
        ["compression=[prune]", "compression.prune.method=ln_structured", "compression.prune.dim=abc"],
        ["compression.prune.dim"],
    ),
    "prune include matches nothing": (
        TRAIN,
        ["compression=[prune]", "compression.prune.include=[nomatch]"],
        ["compression.prune.include", "nomatch"],
    ),
    # checkpoints
    "missing checkpoint": (
        TRAIN,
        ["ckpt_path=missing.ckpt"],
        ["ckpt_path=missing.ckpt", "no such checkpoint"],
    ),
    "corrupt checkpoint": (
        TRAIN,
        ["ckpt_path=corrupt.ckpt"],
        ["ckpt_path=corrupt.ckpt", "corrupt or truncated"],
    ),
    "truncated checkpoint": (
        TRAIN,
        ["ckpt_path=truncated.ckpt"],
        ["ckpt_path=truncated.ckpt", "corrupt or truncated"],
    ),
    "foreign checkpoint": (
        TRAIN,
        ["ckpt_path=foreign.ckpt"],
        ["ckpt_path=foreign.ckpt", "not a genexp checkpoint"],
    ),
    "eval missing checkpoint": (EVAL, ["ckpt_path=missing.ckpt"], ["ckpt_path=missing.ckpt"]),
    "eval truncated checkpoint": (
        EVAL,
        ["ckpt_path=truncated.ckpt"],
        ["ckpt_path=truncated.ckpt", "truncated"],
    ),
    "eval without checkpoint": (EVAL, [], ["ckpt_path"]),
}


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding one finished run plus the bad files the cases point at."""
    root = tmp_path_factory.mktemp("bad_input")
    finished = run_cli([*FAST, "model.hidden_channels=8"], cwd=root)
    assert finished.returncode == 0, finished.stderr
    [run] = run_dirs(root)
    good = (run / "checkpoints" / "last.ckpt").read_bytes()
    (root / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    (root / "corrupt.ckpt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    torch.save({"state_dict": {}, "epoch": 0}, root / "foreign.ckpt")
    (root / "small.txt").write_text("to be or not to be, that is the question\n" * 20)
    (root / "empty.txt").write_text("")
    (root / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 20)
    return root


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(workdir: Path, name: str) -> None:
    module, overrides, fragments = CASES[name]
    before = _snapshot(workdir / "outputs")
    result = run_cli([*FAST, *overrides] if module == TRAIN else overrides, cwd=workdir, module=module)
    assert result.returncode != 0, result.stdout[-1500:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr[-1500:])
    message = [line for line in result.stderr.splitlines() if any(f in line for f in fragments)]
    assert message and all(len(line) < 400 for line in message), message
    after = _snapshot(workdir / "outputs")
    assert {k: v for k, v in after.items() if k in before} == before, "an earlier run folder changed"


def test_full_traceback_on_request(workdir: Path) -> None:
    result = run_cli([*FAST, "optimizer.lr=-1"], cwd=workdir, env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr and "optimizer.lr=-1" in result.stderr


def test_failed_multirun_job_lets_the_others_finish(workdir: Path) -> None:
    result = run_cli(["-m", *FAST, "test=false", "optimizer.lr=1e-3,-1,2e-3"], cwd=workdir)
    assert result.returncode != 0
    assert "optimizer.lr=-1: expected a positive number" in result.stderr
    sweep = max((workdir / "outputs" / "train" / "multiruns").iterdir())
    finished = sorted(p.name for p in sweep.iterdir() if (p / "metrics.json").is_file())
    assert finished == ["0", "2"], "jobs before and after the failing one both finish"
