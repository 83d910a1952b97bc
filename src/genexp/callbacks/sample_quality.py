"""SampleQuality: FID/KID and class coverage of an image model's samples, in TensorBoard and metrics.json.

It runs on the test stage (``genexp-train`` tests right after fit; ``genexp-eval`` tests a checkpoint),
logging ``test/fid``, ``test/kid``, ``test/classes_covered``, ``test/class_kl``, ``test/fid_ratio``
(score / ceiling) and the scale ``fid/floor``, ``fid/ceiling``; with ``every_n_epochs`` it also logs
``val/fid`` ... against the validation split during fit (so a checkpoint can monitor ``val/fid``).
Models whose ``sample()`` returns text, and data modules without image splits, are skipped.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch import Callback

from genexp.checks.values import int_at_least
from genexp.metrics.features import (
    Classifier,
    DomainFeatures,
    InceptionFeatures,
    load_or_train_classifier,
)
from genexp.metrics.scores import QualityScorer

log = logging.getLogger(__name__)


class SampleQuality(Callback):
    """Scores ``num_samples`` samples of the model against a held-out real split.

    Args:
        cache_dir: where the domain classifier is cached (``paths.data_dir``).
        seed: the classifier's seed (the run's seed), and the seed of the sampling noise: every model scored
            draws the same noise, so rows of a comparison differ by their models only.
        num_samples: how many samples are scored (and real train images for the floor).
        every_n_epochs: also score against the validation split every N epochs during fit (0: never).
        inception_weights: path to local Inception-v3 FID weights; null uses the domain classifier.
        key: this callback's config key, used in error messages.
    """

    def __init__(
        self,
        cache_dir: str = "data",
        seed: int = 0,
        num_samples: int = 1000,
        every_n_epochs: int = 0,
        inception_weights: str | None = None,
        key: str = "callbacks.sample_quality",
    ) -> None:
        super().__init__()
        int_at_least(f"{key}.num_samples", num_samples, 2)
        int_at_least(f"{key}.every_n_epochs", every_n_epochs, 0)
        if inception_weights is not None:
            InceptionFeatures(inception_weights, key=f"{key}.inception_weights")  # fail fast, before fit
        self.cache_dir, self.seed, self.num_samples = cache_dir, seed, num_samples
        self.every_n_epochs, self.inception_weights, self.key = every_n_epochs, inception_weights, key
        self._scorers: dict[str, QualityScorer] = {}
        self._floor_ceiling: dict[str, float] | None = None
        self._classifier: Classifier | None = None
        self.last: dict[str, float] = {}

    @property
    def val_metric_names(self) -> tuple[str, ...]:
        """What this callback logs in validation every ``every_n_epochs`` (not in Lightning's sanity check)."""
        return ("val/fid", "val/kid", "val/classes_covered", "val/class_kl") if self.every_n_epochs else ()

    # ----- hooks -----------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        every = self.every_n_epochs
        if not every or trainer.sanity_checking or (trainer.current_epoch + 1) % every:
            return
        scores = self.measure(trainer, pl_module, "val")
        if scores:
            pl_module.log_dict({f"val/{k}": v for k, v in scores.items() if "/" not in k}, sync_dist=True)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        scores = self.measure(trainer, pl_module, "test")
        if not scores:
            return
        scale = self.floor_and_ceiling(trainer)
        logs = {f"test/{k}": v for k, v in scores.items()}
        logs["test/fid_ratio"] = scores["fid"] / scale["ceiling"]
        logs.update({f"fid/{k}": v for k, v in scale.items()})
        logs["fid/classifier_accuracy"] = self._classifier.accuracy if self._classifier else float("nan")
        pl_module.log_dict(logs, sync_dist=True)
        self.last = logs
        log.info(
            "Sample quality (%d samples): FID %.3f  [floor %.3f (real train), ceiling %.3f (noise)] = "
            "%.1f%% of ceiling; KID %.4f; classes covered %d/%d; KL(samples||real) %.3f",
            self.num_samples,
            scores["fid"],
            scale["floor"],
            scale["ceiling"],
            100 * logs["test/fid_ratio"],
            scores["kid"],
            scores["classes_covered"],
            len([k for k in scores if k.startswith("class_share/")]),
            scores["class_kl"],
        )

    # ----- measuring -------------------------------------------------------------------------------
    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> dict[str, float]:
        """Scores of fresh samples against the ``stage`` split; {} when the run has no image samples."""
        scorer = self.scorer(trainer, stage)
        if scorer is None or not hasattr(pl_module, "sample"):
            return {}
        was_training = pl_module.training
        pl_module.eval()
        with (
            torch.no_grad(),
            torch.random.fork_rng(),
        ):  # the same noise for every model scored: rows compare models
            torch.manual_seed(self.seed)
            samples = pl_module.sample(self.num_samples)
        pl_module.train(was_training)
        if not isinstance(samples, torch.Tensor) or samples.dim() != 4:
            return {}
        return scorer.score(samples.detach().float().cpu().clamp(0, 1))

    def floor_and_ceiling(self, trainer: L.Trainer) -> dict[str, float]:
        """FID of real train images (floor) and of uniform noise (ceiling) against the test split."""
        if self._floor_ceiling is None:
            train_x, _ = _split(trainer.datamodule, "train")  # type: ignore[arg-type]
            self._floor_ceiling = self._scorers["test"].calibrate(train_x, self.num_samples, seed=self.seed)
        return self._floor_ceiling

    def scorer(self, trainer: L.Trainer, stage: str) -> QualityScorer | None:
        if stage in self._scorers:
            return self._scorers[stage]
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or _split(datamodule, "train") is None or _split(datamodule, stage) is None:
            return None
        train, held_out = _split(datamodule, "train"), _split(datamodule, "test")
        classifier = self._classifier or load_or_train_classifier(
            self.cache_dir,
            getattr(datamodule, "name", type(datamodule).__name__),
            getattr(datamodule, "resize", "none"),
            getattr(
                datamodule, "seed", self.seed
            ),  # the split's seed: the classifier never sees held-out data
            train=train,  # type: ignore[arg-type]
            test=held_out,  # type: ignore[arg-type]
            num_classes=getattr(datamodule, "num_classes", 10),
        )
        if self._classifier is None:
            log.info("Domain classifier test accuracy: %.4f (%s)", classifier.accuracy, classifier.path)
        self._classifier = classifier
        features = (
            InceptionFeatures(self.inception_weights, key=f"{self.key}.inception_weights")
            if self.inception_weights
            else DomainFeatures(classifier.model)
        )
        self._scorers[stage] = QualityScorer(
            features,
            classifier.model,
            _split(datamodule, stage),
            num_classes=classifier.model.head.out_features,
        )  # type: ignore[arg-type]
        return self._scorers[stage]


def _split(datamodule: Any, stage: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(images, labels) of a data module's image split, or None if it has none (e.g. text data)."""
    dataset = getattr(datamodule, f"{stage}_set", None)
    tensors = getattr(dataset, "tensors", None)
    if not tensors or len(tensors) < 2 or tensors[0].dim() != 4 or not tensors[0].is_floating_point():
        return None
    return tensors[0], tensors[1]
