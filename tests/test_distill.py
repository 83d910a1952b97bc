"""compression=[distill]: a frozen teacher from an earlier run, KD only in the scheduled epochs, resume, bad input.

Teachers are tiny runs of a few batches, trained once per module in a temporary folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from conftest import CONF, FAST
from genexp.checkpoints.rebuild import load_checkpoint
from genexp.compression.distill import DistillationCallback, load_teacher
from genexp.models.base import GenerativeModule
from genexp.models.gan import GAN
from genexp.models.vae import VAE
from genexp.runtime.build import build_callbacks, build_datamodule, build_loggers, build_model, build_trainer
from genexp.runtime.errors import CheckpointError, ConfigError
from genexp.train import train

pytestmark = pytest.mark.xdist_group("distill")  # one worker builds the module's shared runs

QUIET = [*FAST, "test=false", "model.sample_every_n_epochs=0", "logger=csv"]
SMALL_VAE = ["model.hidden_channels=8", "model.latent_dim=4"]
TINY_GPT = [
    "model=gpt",
    "data=text",
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=16",
    "data.block_size=8",
    "data.batch_size=4",
    "data.val_batches=1",
    "model.num_samples=1",
    "model.sample_tokens=4",
]
TINY_GAN = [
    "model=gan",
    "model.latent_dim=8",
    "model.g_channels=8",
    "model.d_channels=8",
    "data.batch_size=16",
]


def compose_at(out: Path, overrides: list[str]) -> DictConfig:
    """``conf/train.yaml`` composed as genexp-train would, with the run folder at ``out``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.data_dir = str(out.parent / "data")
        cfg.paths.log_dir = str(out.parent / "outputs")
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, list[str]], Path]:
    """``runs(name, overrides)``: train (once per module) and return ``<run>/checkpoints/last.ckpt``."""
    root = tmp_path_factory.mktemp("distill")
    (root / "a.txt").write_text("the quick brown fox jumps over the lazy dog.\n" * 30)
    (root / "b.txt").write_text("PACK MY BOX WITH FIVE DOZEN LIQUOR JUGS!\n" * 30)
    done: dict[str, Path] = {}

    def _run(name: str, overrides: list[str]) -> Path:
        if name not in done:
            overrides = [o.replace("{root}", str(root)) for o in overrides]
            train(compose_at(root / name, [*QUIET, *overrides]))
            done[name] = root / name / "checkpoints" / "last.ckpt"
        return done[name]

    yield _run
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def vae_teacher(runs) -> Path:
    return runs("vae_teacher", ["trainer.limit_train_batches=2", "test=true"])  # test=true: metrics.json


def distill(teacher: Path, *extra: str) -> list[str]:
    return ["compression=[distill]", f"compression.distill.teacher={teacher}", *extra]


class Spy:
    """Records, per call of ``distillation_loss``, the epoch, the teacher object and the KD value."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: type[GenerativeModule]) -> None:
        self.calls: list[tuple[int, GenerativeModule, float]] = []
        original = cls.distillation_loss

        def spy(model, batch, teacher, **options):
            loss = original(model, batch, teacher, **options)
            self.calls.append((model.current_epoch, teacher, float(loss)))
            return loss

        monkeypatch.setattr(cls, "distillation_loss", spy)

    @property
    def epochs(self) -> list[int]:
        return sorted({epoch for epoch, _, _ in self.calls})


def test_frozen_teacher_only_in_scheduled_epochs_and_absent_from_checkpoints(
    tmp_path: Path, vae_teacher: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """distill+prune, KD in epoch 1 of 0..2: teacher frozen and unchanged, in no checkpoint or optimizer."""
    spy = Spy(monkeypatch, VAE)
    cfg = compose_at(
        tmp_path / "student",
        [
            *QUIET,
            *SMALL_VAE,
            "trainer.max_epochs=3",
            "trainer.limit_train_batches=2",
            "compression=[distill,prune]",
            f"compression.distill.teacher={vae_teacher}",
            "compression.distill.start_epoch=1",
            "compression.distill.end_epoch=1",
            "compression.prune.end_epoch=2",
            "compression.prune.latency_repeats=0",
        ],
    )
    datamodule = build_datamodule(cfg)
    student = build_model(cfg, datamodule)
    callbacks = build_callbacks(cfg)
    trainer = build_trainer(cfg, callbacks, build_loggers(cfg))
    distiller = next(c for c in callbacks if isinstance(c, DistillationCallback))
    teacher = distiller.teacher
    saved = load_checkpoint(vae_teacher)["state_dict"]
    trainer.fit(student, datamodule=datamodule)

    assert spy.epochs == [1] and len(spy.calls) == 2  # KD only inside the window: zero (not run) outside
    assert all(t is teacher for _, t, _ in spy.calls) and all(kd > 0 for _, _, kd in spy.calls)
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(saved[k], v) for k, v in teacher.state_dict().items())  # weights unchanged
    teacher_ids = {id(p) for p in teacher.parameters()}
    optimized = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
    assert optimized and not teacher_ids & {id(p) for p in optimized}
    assert not teacher_ids & {id(p) for p in student.parameters()}
    assert student.distiller is None  # detached after fit

    checkpoint = torch.load(tmp_path / "student" / "checkpoints" / "last.ckpt", weights_only=True)
    assert set(checkpoint["state_dict"]) == set(
        VAE(image_shape=(1, 16, 16), hidden_channels=8, latent_dim=4).state_dict()
    )
    student_numel = sum(p.numel() for p in student.parameters())
    assert sum(v.numel() for v in checkpoint["state_dict"].values()) == student_numel
    states = checkpoint["optimizer_states"][0]["state"]
    assert sum(s["exp_avg"].numel() for s in states.values()) == student_numel  # no optimizer state for it
    assert checkpoint["callbacks"]["DistillationCallback"] == {"teacher": str(vae_teacher)}
    pruned = next(v for k, v in checkpoint["state_dict"].items() if k.endswith("head.weight"))
    assert (pruned == 0).float().mean() > 0.3  # prune composed with distill
    logged = trainer.callback_metrics
    assert {"train/kd_loss_epoch", "train/task_loss_epoch", "train/kd_alpha_epoch"} <= set(logged)
    header = (tmp_path / "student" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"teacher/test/nelbo", "teacher/val/loss", "train/kd_loss_epoch"} <= set(header)  # teacher figures


def test_with_distillation_mixes_the_losses(vae_teacher: Path) -> None:
    distiller = DistillationCallback(teacher=str(vae_teacher), alpha=0.25, initial_alpha=0.75, end_epoch=2)
    assert [distiller.alpha(e) for e in range(4)] == [0.75, 0.5, 0.25, 0.0]
    torch.manual_seed(0)
    student = VAE(hidden_channels=8, latent_dim=4)
    batch = (torch.rand(4, 1, 16, 16).round(),)
    task = torch.tensor(3.0)
    assert student.with_distillation(task, batch) is task  # no distiller: untouched
    student.distiller = distiller
    student.log_dict = lambda *a, **k: None  # outside a Trainer
    torch.manual_seed(1)
    mixed = student.with_distillation(task, batch)
    torch.manual_seed(1)
    kd = student.distillation_loss(batch, distiller.teacher, temperature=2.0)
    assert mixed.item() == pytest.approx(0.25 * 3.0 + 0.75 * kd.item(), rel=1e-5)
    assert mixed.requires_grad


def test_kd_terms_vanish_for_an_identical_teacher_and_teach_otherwise() -> None:
    torch.manual_seed(0)
    vae = VAE(hidden_channels=8, latent_dim=4)
    batch = (torch.rand(4, 1, 16, 16).round(),)
    assert vae.distillation_loss(batch, vae).item() == pytest.approx(0.0, abs=1e-4)
    other = VAE(hidden_channels=4, latent_dim=3)  # another latent size: only the reconstructions are matched
    loss = vae.distillation_loss(batch, other, temperature=2.0)
    assert loss.item() > 0 and loss.requires_grad
    gan = GAN(latent_dim=8, g_channels=8, d_channels=8).eval().requires_grad_(False)  # as a teacher
    assert gan.distillation_loss(batch, gan).item() == pytest.approx(0.0, abs=1e-6)
    small = GAN(latent_dim=8, g_channels=4, d_channels=8)
    loss = small.distillation_loss(batch, gan, feature_weight=1.0)
    loss.backward()
    assert loss.item() > 0 and small.generator.net[0].weight.grad is not None
    assert all(p.grad is None for p in gan.parameters())  # the frozen D passes gradients, keeps none


def test_resumed_student_continues_distilling_with_a_reloaded_teacher(
    tmp_path: Path, vae_teacher: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch, VAE)
    common = [
        *QUIET,
        *SMALL_VAE,
        "trainer.limit_train_batches=2",
        *distill(vae_teacher, "compression.distill.end_epoch=2"),
    ]
    train(compose_at(tmp_path / "first", [*common, "trainer.max_epochs=1"]))
    first = {t for _, t, _ in spy.calls}
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    spy.calls.clear()
    train(compose_at(tmp_path / "resumed", [*common, "trainer.max_epochs=3", f"ckpt_path={last}"]))
    assert spy.epochs == [1, 2]  # picks up mid-window, on the same schedule
    (reloaded,) = {t for _, t, _ in spy.calls}
    assert reloaded not in first
    saved = load_checkpoint(vae_teacher)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in reloaded.state_dict().items())


def test_gan_and_gpt_students_distil(runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Manual optimization (GAN: KD in G's loss) and the GPT's KL both run inside a real fit."""
    gan_spy, teacher = Spy(monkeypatch, GAN), runs("gan_teacher", TINY_GAN)
    train(compose_at(tmp_path / "gan", [*QUIET, *TINY_GAN, "model.g_channels=4", *distill(teacher)]))
    assert gan_spy.epochs == [0] and len(gan_spy.calls) == 3
    from genexp.models.gpt import GPT

    gpt_spy, teacher = Spy(monkeypatch, GPT), runs("gpt_teacher", [*TINY_GPT, "data.path={root}/a.txt"])
    corpus = teacher.parents[2] / "a.txt"
    train(
        compose_at(
            tmp_path / "gpt", [*QUIET, *TINY_GPT, f"data.path={corpus}", "model.n_embd=8", *distill(teacher)]
        )
    )
    assert gpt_spy.epochs == [0] and all(kd > 0 for _, _, kd in gpt_spy.calls)


# ----- bad input: before training, naming the key ------------------------------------------------
def test_teacher_path_missing_null_or_not_genexp(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"compression.distill.teacher=None: expected the path"):
        DistillationCallback(teacher=None)
    with pytest.raises(CheckpointError, match=r"compression.distill.teacher=.*nope.ckpt: no such checkpoint"):
        DistillationCallback(teacher=str(tmp_path / "nope.ckpt"))
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(
        CheckpointError, match=r"compression.distill.teacher=.*plain.ckpt: not a genexp checkpoint"
    ):
        load_teacher(tmp_path / "plain.ckpt")
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"compression.distill.teacher=.*junk.ckpt: not a readable"):
        load_teacher(tmp_path / "junk.ckpt")


def test_bad_values_name_their_key(vae_teacher: Path) -> None:
    for kwargs, key in (
        ({"alpha": 1.5}, "compression.distill.alpha=1.5"),
        ({"initial_alpha": -0.1}, "compression.distill.initial_alpha=-0.1"),
        ({"temperature": 0}, "compression.distill.temperature=0"),
        ({"start_epoch": 3, "end_epoch": 1}, "compression.distill.start_epoch=3"),
        ({"ramp": "zigzag"}, "compression.distill.ramp='zigzag'"),
    ):
        with pytest.raises(ConfigError, match=key):
            DistillationCallback(teacher=str(vae_teacher), **kwargs)


def check(callback: DistillationCallback, student: GenerativeModule) -> None:
    callback.setup(SimpleNamespace(max_epochs=2), student, "fit")  # type: ignore[arg-type]


def test_teacher_of_another_shape_vocabulary_or_latent_size(runs, vae_teacher: Path) -> None:
    callback = DistillationCallback(teacher=str(vae_teacher))
    with pytest.raises(
        ConfigError,
        match=r"teacher=.*: expected a teacher trained on images of this run's shape \(1, 32, 32\)",
    ):
        check(callback, VAE(image_shape=(1, 32, 32)))
    with pytest.raises(ConfigError, match=r"model.likelihood=gaussian"):
        check(callback, VAE(likelihood="gaussian"))
    with pytest.raises(ConfigError, match=r"feature_weight=1.0: expected 0 for VAE"):
        check(DistillationCallback(teacher=str(vae_teacher), feature_weight=1.0), VAE())
    check(callback, VAE(hidden_channels=4, latent_dim=2))  # smaller student: fine

    gan = DistillationCallback(teacher=str(runs("gan_teacher", TINY_GAN)))
    with pytest.raises(ConfigError, match=r"model.latent_dim=16 \(student and teacher share z\)"):
        check(gan, GAN(latent_dim=16))
    with pytest.raises(ConfigError, match=r"same model family as this run \(VAE\) \(it holds a GAN\)|family"):
        check(gan, VAE())

    from genexp.models.gpt import GPT

    gpt = DistillationCallback(teacher=str(runs("gpt_teacher", [*TINY_GPT, "data.path={root}/a.txt"])))
    other = sorted(set("PACK MY BOX WITH FIVE DOZEN LIQUOR JUGS!\n"))
    with pytest.raises(ConfigError, match=r"expected a teacher trained on this run's vocabulary"):
        check(gpt, GPT(vocab_size=len(other), vocab=other, block_size=8, n_layer=1, n_head=1, n_embd=8))
    same = gpt.teacher.vocab
    with pytest.raises(ConfigError, match=r"covers data.block_size=32"):
        check(gpt, GPT(vocab_size=len(same), vocab=same, block_size=32, n_layer=1, n_head=1, n_embd=8))


def test_cli_teacher_of_another_family_fails_cleanly(cli, tmp_path: Path, vae_teacher: Path) -> None:
    """A GPT student given a VAE teacher: exit 2 before training, the key named, no traceback."""
    corpus = vae_teacher.parents[2] / "a.txt"
    run = cli(
        [*QUIET, *TINY_GPT, f"data.path={corpus}", *distill(vae_teacher), f"hydra.run.dir={tmp_path / 'x'}"]
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert "compression.distill.teacher=" in run.stderr and "(it holds a VAE)" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "x" / "checkpoints").exists()
