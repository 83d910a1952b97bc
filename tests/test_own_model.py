"""Your own model and configs, no fork: a GenerativeModule from a package made here, a config folder joined with
--config-dir; it trains, resumes, compresses and is evaluated, and its checkpoints are trusted only when asked."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from conftest import FAST, run_dirs

pytestmark = pytest.mark.slow

PACKAGE = '''
"""A user's own model: an MLP autoencoder over images, on genexp's rails."""
from math import prod

import torch
import torch.nn.functional as F
from torch import nn

from genexp.runtime.errors import ConfigError
from genexp.models.base import GenerativeModule


class TinyAE(GenerativeModule):
    data_kind = "images"

    def __init__(self, image_shape=(1, 16, 16), width=16, **base):
        super().__init__(**base)
        if not isinstance(width, int) or width < 1:
            raise ConfigError("width", width, "a positive integer")  # a bare name: genexp adds "model."
        self.image_shape = tuple(image_shape)
        size = prod(self.image_shape)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(size, width), nn.ReLU(), nn.Linear(width, size))

    def forward(self, x):
        return torch.sigmoid(self.net(x)).view(-1, *self.image_shape)

    def _loss(self, batch, stage):
        loss = F.mse_loss(self(batch[0]), batch[0])
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val")
        return loss

    def training_step(self, batch, batch_idx):
        return self._loss(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._loss(batch, "val")

    def test_step(self, batch, batch_idx):
        self._loss(batch, "test")

    def sample(self, n):
        return self(torch.rand(n, *self.image_shape, device=self.device))

    def deployable(self):
        return self.net

    def example_input(self, batch_size):
        return torch.rand(batch_size, *self.image_shape, generator=torch.Generator().manual_seed(0))
'''


@pytest.fixture
def user_project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """``mypkg`` on PYTHONPATH and a config folder with ``model/tiny.yaml``, outside the genexp tree."""
    (tmp_path / "lib" / "mypkg").mkdir(parents=True)
    (tmp_path / "lib" / "mypkg" / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    conf = tmp_path / "myconf" / "model"
    conf.mkdir(parents=True)
    (conf / "tiny.yaml").write_text("_target_: mypkg.TinyAE\nwidth: 16\nsample_every_n_epochs: 0\n")
    return tmp_path / "myconf", {"PYTHONPATH": str(tmp_path / "lib")}


def test_own_model_trains_resumes_compresses_and_is_trusted_only_when_asked(
    cli, tmp_path, user_project
) -> None:
    conf, env = user_project
    base = ["--config-dir", str(conf), "model=tiny", *FAST, "callbacks.model_summary=null"]
    first = cli([*base, "compression=[prune]", "compression.prune.final_sparsity=0.5"], env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    assert (run / "compression.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()

    resumed = cli([*base, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=2"], env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in (Path(run_dirs(tmp_path)[-1]) / "train.log").read_text()

    refused = cli([f"target={run}"], module="genexp.evaluate", env=env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("genexp: error:")]
    assert "mypkg.TinyAE" in line and "last.ckpt" in line and "trust=[yourpkg.]" in line

    trusted = cli([f"target={run}", "trust=[mypkg.]"], module="genexp.evaluate", env=env)
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    (report,) = [p for p in run_dirs(tmp_path, "eval") if (p / "report.json").is_file()]
    assert '"model": "TinyAE"' in (report / "report.json").read_text()
    by_env = cli([f"target={run}"], module="genexp.evaluate", env={**env, "GENEXP_TRUST": "mypkg."})
    assert by_env.returncode == 0, by_env.stderr[-3000:]


def test_own_model_bad_value_gets_its_config_path(cli, user_project) -> None:
    conf, env = user_project
    bad = cli(["--config-dir", str(conf), "model=tiny", "model.width=0", *FAST], env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "genexp: error: model.width=0: expected a positive integer" in bad.stderr


def test_trust_values_are_checked(cli) -> None:
    bad = cli(["target=nowhere", "trust=[1bad]"], module="genexp.evaluate")
    assert bad.returncode == 2 and "trust=" in bad.stderr and "module prefixes" in bad.stderr


def test_own_model_exports_to_onnx_and_is_measured_there(cli, tmp_path, user_project) -> None:
    """The export registry's default: a model nobody registered ships its deployable() on its example_input(),
    runs in ONNX Runtime, and genexp-eval measures the graph like a built-in family's."""
    import json

    conf, env = user_project
    trained = cli(["--config-dir", str(conf), "model=tiny", *FAST, "callbacks.model_summary=null"], env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run,) = run_dirs(tmp_path)

    exported = cli(
        [
            f"target={run}",
            "trust=[mypkg.]",
            "quantize=int8",
            "calibration_batches=1",
            "batch_size=4",
            "report.repeats=2",
            "report.rounds=1",
            "report.warmup=1",
        ],
        module="genexp.export",
        env=env,
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    info = json.loads((run / "export" / "model.json").read_text())
    assert info["model"] == "TinyAE" and info["family"] == "tinyae"
    assert info["graphs"]["model.onnx"]["inputs"][0]["name"] == "input"
    assert set(info["graphs"]) == {"model.onnx", "model.int8.onnx"}
    assert info["usage"]["kind"] == "deployable"
    assert set(info["quality"]) == {"torch", "fp32", "int8"}
    torch_loss, onnx_loss = info["quality"]["torch"]["test/loss"], info["quality"]["fp32"]["test/loss"]
    assert abs(torch_loss - onnx_loss) < 1e-4 * max(1.0, abs(torch_loss))

    measured = cli(
        [f"target={run / 'export' / 'model.onnx'}", "trust=[mypkg.]"], module="genexp.evaluate", env=env
    )
    assert measured.returncode == 0, measured.stderr[-3000:]
    (report,) = [p for p in run_dirs(tmp_path, "eval") if (p / "report.json").is_file()]
    text = (report / "report.json").read_text()
    assert '"model": "TinyAE"' in text and "onnxruntime" in text
