"""model=diffusion: UNet shapes, DDIM sampling, the progressive-distillation target, resume, compression, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import FAST, run_dirs
from genexp.checkpoints.rebuild import load_deployable
from genexp.deploy.layers import Int8WeightConv
from genexp.models.diffusion import Diffusion, alpha_sigma, ddim_step
from genexp.models.unet import UNet
from genexp.runtime.errors import ConfigError
from genexp.train import train

pytestmark = pytest.mark.xdist_group("diffusion")  # one worker builds the module's shared runs

TINY = [
    "model=diffusion",
    "model.channels=8",
    "model.channel_mults=[1,2]",
    "model.sample_steps=4",
    "model.num_samples=4",
    "data.image_size=8",
    "data.batch_size=16",
]
QUIET = [*FAST, *TINY, "logger=csv", "model.sample_every_n_epochs=0", "callbacks.model_summary=null"]


def tiny(**kwargs) -> Diffusion:
    options = {"image_shape": (1, 8, 8), "channels": 8, "channel_mults": (1, 2), "sample_steps": 4}
    return Diffusion(**{**options, **kwargs}).eval()


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 16, 16), (3, 32, 32)])
@pytest.mark.parametrize("prediction", ["v", "eps"])
def test_unet_is_sized_from_the_image_shape_and_samples_lie_in_0_1(shape, prediction) -> None:
    model = tiny(image_shape=shape, prediction=prediction, channel_mults=(1, 2, 2))
    images = model.sample(3, steps=2)
    assert images.shape == (3, *shape)
    assert images.min() >= 0 and images.max() <= 1
    assert model.deployable() is model.ema  # the EMA denoiser samples and ships
    z, t = model.example_input(5)
    assert isinstance(z, torch.Tensor) and isinstance(t, torch.Tensor) and t.shape == (5,)
    assert model.deployable()(z, t).shape == (5, *shape)
    assert any(isinstance(m, nn.Conv2d) for m in model.deployable().modules())
    raw = tiny(ema_decay=0)
    assert raw.ema is None and raw.deployable() is raw.net


def test_ddim_is_deterministic_for_a_seed_and_the_step_count_matters() -> None:
    model = tiny()
    assert torch.equal(model.sample(4, seed=3), model.sample(4, seed=3))
    assert not torch.equal(model.sample(4, seed=3), model.sample(4, seed=4))
    assert not torch.equal(model.sample(4, steps=2, seed=3), model.sample(4, steps=4, seed=3))
    assert not torch.equal(model.sample(4), model.sample(4))  # no seed: fresh noise


def test_schedule_is_cosine_and_a_ddim_step_with_the_true_image_stays_on_its_path() -> None:
    a, s = alpha_sigma(torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(a.flatten() ** 2 + s.flatten() ** 2, torch.ones(3))
    assert a.flatten()[0] > 0.9999 and s.flatten()[-1] > 0.9999 and a.flatten()[-1] > 0
    assert a.flatten()[1] == pytest.approx(2**-0.5, abs=1e-4)
    x, eps = torch.rand(2, 1, 4, 4) * 2 - 1, torch.randn(2, 1, 4, 4)
    t, u = torch.full((2,), 0.8), torch.full((2,), 0.3)
    (at, st), (au, su) = alpha_sigma(t), alpha_sigma(u)
    assert torch.allclose(ddim_step(at * x + st * eps, x, t, u), au * x + su * eps, atol=1e-5)


class ConstantDenoiser(nn.Module):
    """A v-predictor whose clean-image estimate is always ``x0``: every DDIM path ends at ``x0``."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = alpha_sigma(t)
        return (a * z - self.x0) / s  # x̂ = a z - s v = x0


def test_progressive_distillation_target_is_the_teachers_image_and_the_loss_teaches() -> None:
    x0 = torch.rand(1, 1, 8, 8) * 2 - 1
    teacher = tiny(sample_steps=16, ema_decay=0)
    teacher.net = ConstantDenoiser(x0)
    student = tiny(sample_steps=4)
    z, t = torch.randn(6, 1, 8, 8), torch.tensor([1.0, 0.75, 0.5, 0.25, 1.0, 0.5])
    # 4 teacher steps per student step; one student step with this x̃ lands where they land
    target = student.distillation_target(teacher, z, t)
    assert torch.allclose(target, x0.expand_as(target), atol=1e-4)
    batch = (torch.rand(6, 1, 8, 8), torch.zeros(6))
    loss = student.distillation_loss(batch, teacher)
    loss.backward()
    assert loss.item() > 0 and student.net.conv_out.weight.grad is not None


def test_student_starts_from_the_teachers_weights_when_the_unets_match() -> None:
    teacher, student = tiny(sample_steps=8), tiny(sample_steps=4)
    with torch.no_grad():
        teacher.ema.conv_out.weight.add_(1.0)
    assert student.start_distillation(teacher)
    assert torch.equal(student.net.conv_out.weight, teacher.ema.conv_out.weight)
    assert torch.equal(student.ema.conv_out.weight, teacher.ema.conv_out.weight)
    assert not tiny(channels=16).start_distillation(teacher)  # another UNet: keeps its own init
    assert not tiny(prediction="eps").start_distillation(teacher)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"sample_steps": 0}, "model.sample_steps"),
        ({"prediction": "x"}, "model.prediction"),
        ({"channel_mults": (1, 2, 2, 2, 2)}, "model.channel_mults"),
        ({"channel_mults": ()}, "model.channel_mults"),
        ({"ema_decay": 1.0}, "model.ema_decay"),
        ({"channels": 0}, "model.channels"),
    ],
)
def test_bad_values_name_their_key(kwargs, key) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        tiny(**kwargs)


def test_unet_counts_its_skips() -> None:
    net = UNet((1, 16, 16), channels=8, channel_mults=(1, 2, 4), res_blocks=2, attention=False)
    assert net(torch.randn(2, 1, 16, 16), torch.rand(2)).shape == (2, 1, 16, 16)


# ----- real runs ----------------------------------------------------------------------------------------
def test_cli_fit_test_and_resume(cli, tmp_path: Path) -> None:
    """A short run logs the denoising losses, sampling speed and quality; a new run resumes from it."""
    quality = ["callbacks=quality", "callbacks.sample_quality.num_samples=50"]
    first = cli([*QUIET, *quality, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'a'}"])
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    for key in ("train/loss_epoch", "val/loss", "test/loss", "test/fid", "test/classes_covered"):
        assert key in metrics, key
    assert metrics["test/images_per_s"] > 0 and metrics["test/sample_steps"] == 4
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert int(torch.load(last, weights_only=True)["state_dict"]["ema_updates"]) == 3
    resumed = cli(
        [*QUIET, "trainer.max_epochs=2", "test=false", f"ckpt_path={last}", f"hydra.run.dir={tmp_path / 'b'}"]
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["epoch"] == 1 and int(state["state_dict"]["ema_updates"]) == 6


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny diffusion teacher sampling in 4 steps: ``<run>/checkpoints/last.ckpt``."""
    from test_distill import compose_at

    root = tmp_path_factory.mktemp("diffusion")
    train(compose_at(root / "teacher", [*QUIET, "test=false"]))
    return root / "teacher" / "checkpoints" / "last.ckpt"


def test_distillation_runs_in_the_fit_from_the_teachers_weights(
    teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_distill import Spy, compose_at

    spy = Spy(monkeypatch, Diffusion)
    starts: list[bool] = []
    original = Diffusion.start_distillation
    monkeypatch.setattr(
        Diffusion, "start_distillation", lambda m, t: starts.append(original(m, t)) or starts[-1]
    )
    distill = [
        "compression=[distill]",
        f"compression.distill.teacher={teacher}",
        "compression.distill.alpha=0.9",
    ]
    student = ["experiment=diffusion_digits_distill", *QUIET, "test=false", "model.sample_steps=2", *distill]
    train(compose_at(tmp_path / "student", student))
    assert starts == [True] and len(spy.calls) == 3 and all(kd > 0 for _, _, kd in spy.calls)
    (used,) = {t for _, t, _ in spy.calls}
    assert used.sample_steps == 4 and not any(p.requires_grad for p in used.parameters())
    last = tmp_path / "student" / "checkpoints" / "last.ckpt"
    train(compose_at(tmp_path / "resumed", [*student, "trainer.max_epochs=2", f"ckpt_path={last}"]))
    assert starts == [True] and len(spy.calls) == 6  # a resumed student keeps its own weights


def test_the_report_knows_the_family() -> None:
    from genexp.report.family import family_of

    family = family_of({"model": {"_target_": "genexp.models.diffusion.Diffusion"}})
    assert family.name == "diffusion" and family.primary == "test/fid"
    assert "test/images_per_s" in family.metrics


def test_prune_and_quantize_the_denoiser(tmp_path: Path) -> None:
    from test_distill import compose_at

    run = tmp_path / "run"
    compress = [
        "compression=[prune,quantize]",
        "compression.prune.final_sparsity=0.5",
        "compression.prune.end_epoch=0",
        "compression.prune.latency_repeats=0",
        "compression.quantize.latency_repeats=0",
        "model.ema_decay=0",  # prune the net that trains
    ]
    train(compose_at(run, [*QUIET, "test=false", *compress]))
    report = json.loads((run / "compression.json").read_text())
    assert report["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)
    net = load_deployable(run / "quantized")
    convs = [m for m in net.modules() if isinstance(m, Int8WeightConv)]
    assert len(convs) > 10
    z, t = tiny().example_input(2)
    assert net(z, t).shape == (2, 1, 8, 8)


# ----- bad values through the CLI: one line, exit 2 -------------------------------------------------------
def test_cli_bad_values_are_one_line_errors(cli, tmp_path: Path, teacher: Path) -> None:
    from test_distill import compose_at

    vae = tmp_path / "vae"
    train(compose_at(vae, [*FAST, "logger=csv", "test=false", "model.sample_every_n_epochs=0"]))
    vae_ckpt = vae / "checkpoints" / "last.ckpt"
    cases = [
        (["model.sample_steps=0"], "model.sample_steps=0: expected a positive integer"),
        (["compression=[distill]", f"compression.distill.teacher={vae_ckpt}"], "(it holds a VAE)"),
        (
            ["compression=[distill]", f"compression.distill.teacher={teacher}", "model.sample_steps=8"],
            "a multiple (>= 2x) of this student's model.sample_steps=8",
        ),
    ]
    for i, (overrides, message) in enumerate(cases):
        result = cli([*QUIET, *overrides, f"hydra.run.dir={tmp_path / str(i)}"])
        assert result.returncode == 2, result.stderr[-2000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("genexp: error:")]
        assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert not run_dirs(tmp_path / str(i)) or not (tmp_path / str(i) / "checkpoints").exists()


def test_the_denoiser_exports_to_onnx_with_its_example_input(tmp_path: Path) -> None:
    """``example_input`` is a plain (z_t, t) tensor pair: the ONNX graph runs any batch and matches torch."""
    import onnxruntime

    from genexp.deploy.onnx_export import Graph, export_graph, float_copy

    model = tiny()
    batch = {0: "batch"}
    graph = Graph(
        "model",
        float_copy(model.deployable()),
        model.example_input(2),
        ["z", "t"],
        ["prediction"],
        {"z": batch, "t": batch, "prediction": batch},
    )
    session = onnxruntime.InferenceSession(str(export_graph(graph, tmp_path / "model.onnx", 18)))
    z, t = model.example_input(5)
    (out,) = session.run(None, {"z": z.numpy(), "t": t.numpy()})
    assert torch.allclose(torch.from_numpy(out), model.deployable()(z, t), atol=1e-4)
