"""model=gan: shapes, two independent optimizers and schedulers, EMA sampling, errors, a short real run."""

from __future__ import annotations

import json
import math
import tempfile
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback
from torch.utils.data import DataLoader, TensorDataset

from conftest import FAST as _FAST
from genexp.models.dcgan import dcgan_layout
from genexp.models.gan import GAN
from genexp.runtime.errors import ConfigError

# ++: trainer/default.yaml has no limit_*_batches keys, so FAST's plain overrides cannot apply
FAST = ["++" + o for o in _FAST]


@pytest.mark.parametrize(
    ("shape", "start", "ups", "out"),
    [((1, 8, 8), 4, 1, 8), ((1, 16, 16), 4, 2, 16), ((1, 28, 28), 7, 2, 28), ((3, 32, 32), 4, 3, 32)],
)
def test_nets_are_sized_from_the_image_shape(shape, start, ups, out) -> None:
    assert dcgan_layout(shape) == (start, ups)
    model = GAN(image_shape=shape, latent_dim=8, g_channels=8, d_channels=8)
    images = model.sample(5)
    assert images.shape == (5, *shape[:1], out, out)
    assert 0 <= images.min() and images.max() <= 1
    assert model.discriminator(images * 2 - 1).shape == (5,)
    assert model.deployable() is model.generator
    assert model.deployable()(model.example_input(3)).shape == (3, shape[0], out, out)


@pytest.mark.parametrize("shape", [(1, 9, 9), (1, 6, 6), (1, 36, 36), (1, 16, 8)])
def test_impossible_image_shape_names_the_data_key(shape) -> None:
    with pytest.raises(ConfigError, match=r"data\.image_size"):
        GAN(image_shape=shape)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"loss": "wasserstein"}, "model.loss"),
        ({"d_steps": 0}, "model.d_steps"),
        ({"ema_decay": 1.5}, "model.ema_decay"),
        ({"grad_clip": -1.0}, "model.grad_clip"),
        ({"label_smoothing": 0.1, "loss": "hinge"}, "model.label_smoothing"),
        ({"optimizer_d": partial(torch.optim.SGD, lr=-1.0)}, "model.optimizer_d.lr"),
    ],
)
def test_bad_model_values_name_their_key(kwargs, key) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        GAN(**kwargs)


class _Digits(L.LightningDataModule):
    """Random 8x8 'images': enough to drive the optimizers."""

    def __init__(self, n: int = 64, batch_size: int = 16) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.data = TensorDataset(torch.rand(n, 1, 8, 8, generator=g), torch.zeros(n, dtype=torch.long))
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size)


class _StepRecorder(Callback):
    """For every optimizer step: which of G's and D's parameters changed."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, bool, bool]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        opt_g, opt_d = trainer.optimizers
        snapshot = {}

        def params():
            return [p.detach().clone() for p in pl_module.generator.parameters()], [
                p.detach().clone() for p in pl_module.discriminator.parameters()
            ]

        def changed(before, after) -> bool:
            return any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))

        for name, opt in (("G", opt_g), ("D", opt_d)):

            def pre(optimizer, args, kwargs, name=name):
                snapshot[name] = params()

            def post(optimizer, args, kwargs, name=name):
                (g0, d0), (g1, d1) = snapshot[name], params()
                self.steps.append((name, changed(g0, g1), changed(d0, d1)))

            opt.register_step_pre_hook(pre)
            opt.register_step_post_hook(post)


def _fit(model: GAN, callbacks: list[Callback], epochs: int = 2, batches: int = 4) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs,
        limit_train_batches=batches,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        default_root_dir=tempfile.mkdtemp(
            prefix="genexp-gan-"
        ),  # samples.png goes there, not into the checkout
    )
    trainer.fit(model, datamodule=_Digits())
    return trainer


def _tiny_gan(**kwargs) -> GAN:
    """A GAN on 8x8 digits small enough to fit a few batches in a test."""
    return GAN(
        image_shape=(1, 8, 8), latent_dim=8, g_channels=8, d_channels=8, sample_every_n_epochs=0, **kwargs
    )


def test_the_two_optimizers_step_independently() -> None:
    recorder = _StepRecorder()
    model = _tiny_gan(d_steps=2)
    _fit(model, [recorder], epochs=1, batches=4)
    assert [name for name, _, _ in recorder.steps] == ["D", "D", "G", "D", "D", "G"]  # d_steps=2
    for name, g_changed, d_changed in recorder.steps:
        assert (g_changed, d_changed) == ((True, False) if name == "G" else (False, True)), name
    assert (model.g_updates, model.d_updates) == (2, 4)


def test_each_optimizer_has_its_own_scheduler_and_both_step() -> None:
    lr = 1e-3
    epoch_decay = {
        "scheduler": partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
        "interval": "epoch",
    }
    step_decay = {
        "scheduler": partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.9),
        "interval": "step",
    }
    model = _tiny_gan(
        optimizer=partial(torch.optim.Adam, lr=lr),
        scheduler=epoch_decay,
        optimizer_d=partial(torch.optim.SGD, lr=lr),
        scheduler_d=step_decay,
    )
    trainer = _fit(model, [], epochs=2, batches=3)
    opt_g, opt_d = trainer.optimizers
    assert isinstance(opt_g, torch.optim.Adam) and isinstance(opt_d, torch.optim.SGD)
    assert math.isclose(opt_g.param_groups[0]["lr"], lr * 0.5**2)  # per epoch, 2 epochs
    assert math.isclose(opt_d.param_groups[0]["lr"], lr * 0.9**6)  # per D step, 6 steps

    # scheduler_d: null means D gets its own instance of G's schedule
    model = _tiny_gan(
        optimizer=partial(torch.optim.Adam, lr=lr),
        scheduler=epoch_decay,
    )
    trainer = _fit(model, [], epochs=2, batches=3)
    assert [o.param_groups[0]["lr"] for o in trainer.optimizers] == pytest.approx([lr * 0.25, lr * 0.25])
    assert len({id(c.scheduler) for c in trainer.lr_scheduler_configs}) == 2

    # ReduceLROnPlateau steps on its monitored validation metric (Lightning leaves it to manual optimization)
    plateau = {
        "scheduler": partial(
            torch.optim.lr_scheduler.ReduceLROnPlateau, patience=0, factor=0.5, threshold=10.0
        ),
        "interval": "epoch",
        "monitor": "val/d_real",
    }
    model = _tiny_gan(
        optimizer=partial(torch.optim.Adam, lr=lr),
        scheduler=plateau,
    )
    trainer = _fit(model, [], epochs=3, batches=2)
    assert [c.scheduler.last_epoch for c in trainer.lr_scheduler_configs] == [3, 3]
    assert all(o.param_groups[0]["lr"] < lr for o in trainer.optimizers)  # threshold=10: never "improves"


class _GradRMS(Callback):
    """As each optimizer steps (after any clipping): the largest RMS gradient of its parameter tensors."""

    def __init__(self) -> None:
        self.rms: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        def pre(optimizer, args, kwargs) -> None:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            self.rms.append(max(float(p.grad.norm()) / p.numel() ** 0.5 for p in params))

        for opt in trainer.optimizers:
            opt.register_step_pre_hook(pre)


@pytest.mark.parametrize("clip", [None, 1e-5])
def test_grad_clip_caps_each_tensors_rms_gradient(clip) -> None:
    recorder = _GradRMS()
    _fit(
        _tiny_gan(optimizer=partial(torch.optim.SGD, lr=0.1), grad_clip=clip), [recorder], epochs=1, batches=3
    )
    assert len(recorder.rms) == 6  # one D and one G step per batch
    if clip is None:
        assert min(recorder.rms) > 1e-5  # unclipped gradients are larger than the cap below
    else:
        assert max(recorder.rms) <= clip * 1.001


def test_ema_generator_samples_and_ships() -> None:
    model = _tiny_gan(
        ema_decay=0.9,
        loss="hinge",
    )
    _fit(model, [], epochs=1, batches=4)
    assert model.deployable() is model.generator_ema
    assert not any(p.requires_grad for p in model.generator_ema.parameters())
    g = torch.cat([p.flatten() for p in model.generator.parameters()])
    ema = torch.cat([p.flatten() for p in model.generator_ema.parameters()])
    assert not torch.equal(g, ema)  # it lags behind G
    with model._fixed_noise():  # the TensorBoard grid always uses the same z
        model.eval()
        assert torch.equal(model.sample(4), model.sample(4))
    assert not torch.equal(model.sample(4), model.sample(4))


def test_gan_trains_through_the_config_with_sample_quality(compose_train, tmp_path_factory) -> None:
    from genexp.runtime.build import build_datamodule, build_model
    from genexp.train import train

    cache = tmp_path_factory.mktemp("features")
    cfg = compose_train(
        [
            "model=gan",
            "callbacks=quality",
            f"callbacks.sample_quality.cache_dir={cache}",
            "callbacks.sample_quality.num_samples=200",
            "callbacks.sample_quality.every_n_epochs=1",
            "data.image_size=8",
            "model.ema_decay=0.99",
            "model.g_channels=16",
            "model.d_channels=16",
            "+optimizer@model.optimizer_d=sgd",
            "scheduler=cosine",
            *FAST,
        ]
    )
    model = build_model(cfg, build_datamodule(cfg))  # D's optimizer picked from the optimizer group
    assert (
        model.optimizer_d_factory.func is torch.optim.SGD and model.optimizer_factory.func is torch.optim.Adam
    )
    train(cfg)
    run = Path(cfg.paths.output_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    for key in (
        "val/loss",
        "val/d_real",
        "val/d_fake",
        "val/fid",
        "test/loss",
        "test/fid",
        "test/kid",
        "test/classes_covered",
        "test/class_kl",
        "fid/floor",
        "fid/ceiling",
    ):
        assert key in metrics, key
    assert metrics["fid/floor"] < metrics["fid/ceiling"]
    assert (run / "samples.png").is_file()
    assert list((run / "checkpoints").glob("*.ckpt"))


@pytest.mark.slow
def test_cli_impossible_image_shape_is_a_clear_error(cli) -> None:
    result = cli(["model=gan", "data.image_size=9", *FAST])
    assert result.returncode != 0
    assert "data.image_size" in result.stderr
    assert "Traceback" not in result.stderr
