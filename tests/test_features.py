"""Offline sample-quality metrics: the cached domain classifier, FID/KID calibration, class scores, errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import FAST as _FAST
from genexp.callbacks.sample_quality import SampleQuality
from genexp.data.images import ImageDataModule
from genexp.metrics import features
from genexp.metrics.features import DomainFeatures, InceptionFeatures, load_or_train_classifier
from genexp.metrics.scores import QualityScorer, kl_divergence
from genexp.runtime.errors import ConfigError, GenexpError

pytestmark = pytest.mark.xdist_group("features")  # one worker builds the module's shared runs

# ++: trainer/default.yaml has no limit_*_batches keys, so FAST's plain overrides cannot apply
FAST = ["++" + o for o in _FAST]


@pytest.fixture(scope="module")
def digits() -> ImageDataModule:
    datamodule = ImageDataModule("digits", image_size=8, seed=3)  # native 8x8: the cheapest classifier
    datamodule.setup()
    return datamodule


@pytest.fixture(scope="module")
def classifier(digits, tmp_path_factory):
    cache = tmp_path_factory.mktemp("data")
    return load_or_train_classifier(
        cache, "digits", "interpolate", 3, digits.train_set.tensors, digits.test_set.tensors
    ), cache


def test_classifier_is_trained_once_then_loaded_from_the_cache(digits, classifier, monkeypatch) -> None:
    first, cache = classifier
    assert first.trained_now and first.path.is_file() and first.path.is_relative_to(cache)
    assert first.accuracy > 0.85  # held-out test split of the digits

    def no_training(*args, **kwargs):
        raise AssertionError("retrained instead of loading the cache")

    monkeypatch.setattr(features, "train_classifier", no_training)
    again = load_or_train_classifier(
        cache, "digits", "interpolate", 3, digits.train_set.tensors, digits.test_set.tensors
    )
    assert not again.trained_now and again.path == first.path and again.accuracy == first.accuracy
    x = digits.test_set.tensors[0][:16]
    assert torch.equal(again.model(x), first.model(x))
    # another seed (another split) is another cache entry: it would train
    with pytest.raises(AssertionError, match="retrained"):
        load_or_train_classifier(
            cache, "digits", "interpolate", 4, digits.train_set.tensors, digits.test_set.tensors
        )


def test_fid_is_zero_against_itself_and_large_against_noise(digits, classifier) -> None:
    model = classifier[0].model
    test_x, test_y = digits.test_set.tensors
    scorer = QualityScorer(DomainFeatures(model), model, (test_x, test_y))
    assert abs(scorer.fid_of(test_x)) < 1e-3
    scale = scorer.calibrate(digits.train_set.tensors[0], n=300)
    assert scale["ceiling"] > 20 * max(scale["floor"], 1e-3)  # noise is far, real train images are near
    noise = torch.rand(300, *test_x.shape[1:])
    assert scorer.kid_of(noise) > 10 * abs(scorer.kid_of(digits.train_set.tensors[0][:300]))

    real = scorer.score(digits.train_set.tensors[0][:300])
    assert real["classes_covered"] == 10 and real["class_kl"] < 0.1
    one_class = test_x[test_y == 3]
    collapsed = scorer.score(one_class)
    assert collapsed["classes_covered"] <= 3 and collapsed["class_kl"] > 1.5  # 3% of ~27 images is one image


def test_kl_divergence_direction_and_values() -> None:
    uniform = torch.full((10,), 0.1)
    assert kl_divergence(uniform, uniform) == pytest.approx(0.0)
    assert kl_divergence(torch.eye(10)[0], uniform) == pytest.approx(math.log(10))  # KL(samples || real)


def test_inception_weights_configured_but_missing_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"callbacks\.sample_quality\.inception_weights"):
        SampleQuality(inception_weights=str(tmp_path / "pt_inception.pth"))
    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"not really weights")
    try:
        import torch_fidelity  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(GenexpError, match="torch-fidelity"):
            InceptionFeatures(weights)


def test_text_models_and_data_are_skipped() -> None:
    class Text:
        train_set = None

    class Trainer:
        datamodule = Text()

    assert SampleQuality().measure(Trainer(), object(), "test") == {}  # type: ignore[arg-type]


@pytest.mark.slow
def test_cli_missing_inception_weights_is_a_clear_error(cli) -> None:
    result = cli(
        ["callbacks=quality", "callbacks.sample_quality.inception_weights=/no/such/inception.pth", *FAST]
    )
    assert result.returncode != 0
    assert "callbacks.sample_quality.inception_weights" in result.stderr
    assert "/no/such/inception.pth" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_model_scored_draws_the_same_noise_and_the_global_rng_is_left_alone() -> None:
    """Rows of a comparison (torch vs ONNX, dense vs pruned) differ by their models, not by their noise."""
    from genexp.models.gan import GAN

    class Stub:
        def score(self, samples: torch.Tensor) -> dict[str, float]:
            return {"sum": float(samples.sum())}

    callback = SampleQuality(seed=3, num_samples=8)
    callback.scorer = lambda trainer, stage: Stub()  # type: ignore[method-assign]
    model = GAN(image_shape=(1, 8, 8), latent_dim=4, g_channels=4, d_channels=4)
    first = callback.measure(None, model, "test")  # type: ignore[arg-type]
    state = torch.random.get_rng_state()
    torch.randn(5)  # the global stream moves on between two scorings
    assert callback.measure(None, model, "test") == first  # type: ignore[arg-type]
    torch.random.set_rng_state(state)
    expected = torch.randn(5)
    torch.random.set_rng_state(state)
    callback.measure(None, model, "test")  # type: ignore[arg-type]
    assert torch.equal(torch.randn(5), expected)  # scoring did not consume the global stream
