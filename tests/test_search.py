"""genexp-optimize end to end through the real CLI: a tiny VAE base, 2-3 trials of one short fine-tune each."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONF, FAST, REPO, run_cli

pytestmark = pytest.mark.xdist_group("search")  # the trials share the module's base run
BASE = [*FAST, "trainer.max_epochs=2", "model.sample_every_n_epochs=0"]
TIMING = ["latency.repeats=4", "latency.rounds=2", "latency.warmup=1"]


def snapshot(run: Path) -> dict[str, float]:
    return {str(p.relative_to(run)): p.stat().st_mtime for p in run.rglob("*") if p.is_file()}


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stderr + result.stdout).splitlines() if "error" in line.lower()]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny VAE base run and a one-epoch copy of the VAE's search space (``space=``)."""
    root = tmp_path_factory.mktemp("search")
    result = run_cli([*BASE, f"hydra.run.dir={root / 'base'}"], cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    one_epoch_space("vae", root / "space.yaml")
    return root


def one_epoch_space(family: str, path: Path) -> None:
    """``conf/search/<family>.yaml`` with its fine-tunes cut to one epoch, written to ``path``."""
    space = OmegaConf.load(CONF / "search" / f"{family}.yaml")
    space.params.epochs.low = space.params.epochs.high = 1
    OmegaConf.save(space, path)


def search(root: Path, out: str, *args: str) -> subprocess.CompletedProcess:
    return run_cli(
        [f"base={root / 'base'}", f"space={root / 'space.yaml'}", f"out={root / out}", *TIMING, *args],
        cwd=root,
        module="genexp.optimize",
        timeout=600,
    )


def test_the_search_writes_the_study_table_plot_and_best(root: Path) -> None:
    before = snapshot(root / "base")
    result = search(root, "opt", "n_trials=2", "parallel=2", "budget=10", "objective=latency")
    assert result.returncode == 0, result.stderr[-3000:]
    out = root / "opt"
    assert "genexp-optimize: best: trial" in result.stdout
    for name in ("study.db", "trials.md", "trials.json", "pareto.png", "best/model.json"):
        assert (out / name).is_file(), name
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert [t["number"] for t in trials] == [0, 1]
    for t in trials:  # every backend timed with the base in the same rounds; the fastest is the trial's
        assert t["backend"] == min(t["backends"], key=lambda b: t["backends"][b]["median_ms"])
        assert {"torch fp32 eager", "onnxruntime fp32"} <= set(t["backends"]) and t["base_latency_ms"] > 0
        assert t["base_batch1_ms"] > 0 and all(b["batch1_ms"] > 0 for b in t["backends"].values())
        assert (Path(t["run"]) / "metrics.json").is_file()  # each trial is an ordinary genexp-train run
        assert "openvino fp32" in t["backends"]  # OpenVINO (a dev dependency) is timed as one more backend
        fp32 = t["backends"]["onnxruntime fp32"]["quality"]
        assert "onnxruntime fp32 subpixel" in t["backends"]  # the VAE decoder's sub-pixel graph is timed too
        for name in {"openvino bf16", "openvino bf16 subpixel", "openvino int8", "onnxruntime int8"} & set(
            t["backends"]
        ):
            mine = t["backends"][name]["quality"]  # scored through its own kernels, not copied from fp32
            assert mine != fp32 and mine == pytest.approx(fp32, rel=0.05), name
    best = json.loads((out / "best" / "model.json").read_text())
    assert best["within_budget"] and best["backend"] in trials[best["trial"]]["backends"]
    # both within budget=10: the final round times them again side by side with the base, and its figures ship
    assert all("final" in t for t in trials) and best["timed_in"] == "final round"
    fastest = min(t["final"]["ratio"] for t in trials)
    near = [t for t in trials if t["final"]["ratio"] <= fastest * 1.03]  # within 3%: the better quality
    assert best["trial"] == min(near, key=lambda t: t["quality_change"])["number"]
    assert best["latency_ms"] == trials[best["trial"]]["final"]["ms"]
    assert "final round: the 2 fastest within budget" in (out / "trials.md").read_text()
    assert all((out / "best" / f).is_file() for f in best["files"]) and "quality" in best["test"]
    assert "| trial | recipe | backend |" in (out / "trials.md").read_text()
    assert snapshot(root / "base") == before, "the search wrote into the base run"


def test_budget_not_met_says_so_and_exits_3(root: Path) -> None:
    # lr=1 wrecks every fine-tune: no trial comes within 0.1% of the base
    result = search(
        root,
        "wrecked",
        "n_trials=1",
        "budget=0.001",
        "objective=size",
        "trial_overrides=['optimizer.lr=1.0']",
    )
    assert result.returncode == 3, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("genexp-optimize:")]
    assert len(lines) == 1 and "no trial within budget=0.001" in lines[0], result.stdout[-2000:]
    assert json.loads((root / "wrecked" / "closest" / "model.json").read_text())["within_budget"] is False
    assert not (root / "wrecked" / "best").exists()


def test_a_killed_search_resumes_without_losing_or_repeating_a_trial(root: Path) -> None:
    out = root / "killed"
    args = [
        f"base={root / 'base'}",
        f"space={root / 'space.yaml'}",
        f"out={out}",
        *TIMING,
        "n_trials=2",
        "budget=10",
    ]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "genexp.optimize", *args],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the kill reaches the trial's genexp-train too
    )
    try:  # kill it once trial 0 is complete and trial 1 is running
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "study.db").is_file() and states(out) == ["complete", "running"]:
                break
            time.sleep(0.5)
        assert states(out) == ["complete", "running"], states(out)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = snapshot(out / "trials" / "000")
    result = run_cli(args, cwd=root, module="genexp.optimize", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert snapshot(out / "trials" / "000") == first  # trial 0 kept, not rerun
    folders = {p.name for p in (out / "trials").iterdir() if p.is_dir()}
    assert (
        {"000", "002"} <= folders <= {"000", "001", "002"}
    )  # 001: cut off (its folder, if any, kept as it was)
    assert states(out) == ["complete", "running", "complete"]  # 1: interrupted, left as it was
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert [t["number"] for t in trials] == [0, 2]
    assert trials[0]["recipe"] != trials[1]["recipe"]  # the resumed launch draws anew, not launch 1's recipes


def states(out: Path) -> list[str]:
    """The trial states recorded in ``<out>/study.db``, in trial order."""
    try:
        with sqlite3.connect(out / "study.db") as db:
            return [s for _, s in sorted(db.execute("SELECT number, state FROM trials"))]
    except sqlite3.Error:
        return []


@pytest.fixture(scope="module")
def own_base(root: Path) -> tuple[Path, dict[str, str]]:
    """A finished run of a user's own model family (``test_own_model``'s TinyAE), which has no search space."""
    from test_own_model import PACKAGE

    (root / "lib" / "mypkg").mkdir(parents=True, exist_ok=True)
    (root / "lib" / "mypkg" / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    (root / "myconf" / "model").mkdir(parents=True, exist_ok=True)
    (root / "myconf" / "model" / "tiny.yaml").write_text("_target_: mypkg.TinyAE\nsample_every_n_epochs: 0\n")
    env = {"PYTHONPATH": str(root / "lib")}
    args = ["--config-dir", str(root / "myconf"), "model=tiny", *FAST, f"hydra.run.dir={root / 'own'}"]
    result = run_cli(args, cwd=root, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "own", env


@pytest.mark.parametrize(
    "case, expected",
    [
        ("budget=-1", "budget=-1"),
        ("objective=speed", "objective='speed'"),
        ("unfinished", "not a finished genexp-train run"),
        ("own", "has no search space"),
        ("objective=tokens_per_s", "has no cached text decoder"),
        ("sampler=random", "sampler='random'"),
    ],
)
def test_bad_input_is_one_line(
    root: Path, own_base: tuple[Path, dict[str, str]], case: str, expected: str
) -> None:
    unfinished = root / "unfinished"
    unfinished.mkdir(exist_ok=True)
    base = {"unfinished": unfinished, "own": own_base[0]}.get(case, root / "base")
    args = [f"base={base}", f"out={root / 'bad'}"] + ([case] if "=" in case else [])
    if case == "own":
        args.append("trust=[mypkg.]")
    before = snapshot(base)
    result = run_cli(args, cwd=root, module="genexp.optimize", env=own_base[1] if case == "own" else None)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = error_lines(result)
    assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]
    if case == "own":
        assert "a tinyae run" in lines[0] and "space=" in lines[0]  # says how to give one
    assert snapshot(base) == before
    assert not (root / "bad" / "study.db").exists()


@pytest.fixture(scope="module")
def gpt_root(root: Path) -> Path:
    """A tiny GPT base run on a small text, and a one-epoch copy of the GPT's search space."""
    text = root / "text.txt"
    text.write_text("ROMEO:\nBut soft, what light through yonder window breaks?\n" * 40, encoding="utf-8")
    tiny = ["model=gpt", "data=text", f"data.path={text}", "model.n_layer=1", "model.n_embd=32"]
    tiny += ["model.n_head=4", "data.block_size=16", "data.batches_per_epoch=2", "data.val_batches=1"]
    result = run_cli([*BASE, *tiny, f"hydra.run.dir={root / 'gpt'}"], cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    one_epoch_space("gpt", root / "gpt_space.yaml")
    return root


def test_a_gpt_search_can_maximize_cached_tokens_per_s(gpt_root: Path) -> None:
    out = gpt_root / "tokens"
    args = [f"base={gpt_root / 'gpt'}", f"space={gpt_root / 'gpt_space.yaml'}", f"out={out}", *TIMING]
    result = run_cli(
        [*args, "n_trials=1", "budget=10", "objective=tokens_per_s"],
        cwd=gpt_root,
        module="genexp.optimize",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trial = json.loads((out / "trials.json").read_text())["trials"][0]
    assert trial["batch_size"] == 1  # generation: one sequence, one new token a step, through the cache
    for figures in trial["backends"].values():  # ms per generated token and its inverse, per backend
        assert figures["tokens_per_s"] == pytest.approx(1e3 / figures["median_ms"])
    assert trial["latency_ratio"] == pytest.approx(trial["latency_ms"] / trial["base_latency_ms"])
    best = json.loads((out / "best" / "model.json").read_text())
    assert best["objective"] == "tokens_per_s" and best["backend"] == trial["backend"]
    assert "ms/token (batch 1, cached)" in (out / "trials.md").read_text()


def test_an_image_score_is_measured_by_the_runs_own_sample_quality_settings() -> None:
    """``metric: fid`` (the GAN's space): the run's SampleQuality settings, built directly; never a saved
    ``_target_`` of another callable, and nothing for a metric the model logs itself."""
    from types import SimpleNamespace

    from genexp.callbacks.sample_quality import SampleQuality
    from genexp.search.measure import sample_scorer

    spec = {
        "_target_": "genexp.callbacks.sample_quality.SampleQuality",
        "cache_dir": "data",
        "seed": 7,
        "num_samples": 300,
        "every_n_epochs": 0,
    }
    run = SimpleNamespace(config={"callbacks": {"sample_quality": spec}})
    [scorer] = sample_scorer(run, "fid")
    assert isinstance(scorer, SampleQuality) and scorer.every_n_epochs == 1  # scores every validation
    assert (scorer.seed, scorer.num_samples, scorer.cache_dir) == (7, 300, "data")
    assert sample_scorer(run, "nelbo") == []  # the VAE's -ELBO: the model logs it
    crafted = SimpleNamespace(config={"callbacks": {"sample_quality": {**spec, "_target_": "os.system"}}})
    assert sample_scorer(crafted, "fid") == []


def test_the_diffusion_space_distils_to_fewer_steps_with_its_own_overrides(tmp_path: Path) -> None:
    """``conf/search/diffusion.yaml``: every recipe sets ``model.sample_steps`` and distils from the base, with
    the space's ``overrides`` (a distillation learning rate); a malformed ``overrides`` is one ConfigError."""
    from genexp.runtime.errors import ConfigError
    from genexp.search.space import describe, load_space, recipe_overrides

    space = load_space("diffusion", None, "base")
    assert space.metric == "fid" and "optimizer.lr=5.0e-4" in space.overrides
    recipe = {"steps": 8, "distill": True, "alpha": 0.95, "sparsity": 0.0, "scope": "global", "int8": True}
    groups, values = recipe_overrides({**recipe, "epochs": 6}, tmp_path / "last.ckpt")
    assert groups == ["distill"] and "model.sample_steps=8" in values
    assert f"compression.distill.teacher={tmp_path / 'last.ckpt'}" in values
    assert describe({**recipe, "epochs": 6}).endswith("+int8 8 steps e6")
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONF / "search" / "gan.yaml").read_text() + "overrides: optimizer.lr=1\n")
    with pytest.raises(ConfigError, match="overrides: a list of genexp-train overrides"):
        load_space("gan", str(bad), "base")


def test_the_default_sampler_models_every_stored_trial_after_its_random_start(tmp_path: Path) -> None:
    """``sampler=tpe`` (default): multi-objective TPE with ``startup_trials`` random draws, so a search of
    20-30 trials is model-guided (NSGA-II's first population of 50 would all be random); ``nsga2`` stays."""
    import optuna

    from genexp.search.settings import Settings
    from genexp.search.study import sampler_of

    settings = Settings(tmp_path, 0.02, "relative", "latency", 4, None, None, tmp_path, 0, startup_trials=3)
    sampler = sampler_of(settings, seed=1)
    assert isinstance(sampler, optuna.samplers.TPESampler) and sampler._n_startup_trials == 3

    def later_median(sampler: optuna.samplers.BaseSampler) -> float:
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
        for _ in range(25):  # both objectives are lowest at x = 0
            trial = study.ask()
            x = trial.suggest_float("x", 0.0, 1.0)
            study.tell(trial, [x, x * x])
        later = sorted(t.params["x"] for t in study.trials[15:])
        return later[len(later) // 2]

    guided, random = later_median(sampler), later_median(optuna.samplers.RandomSampler(seed=1))
    assert guided < 0.5 * random, (guided, random)  # after 3 random draws TPE concentrates near x = 0
    settings.sampler = "nsga2"
    assert isinstance(sampler_of(settings, seed=1), optuna.samplers.NSGAIISampler)
