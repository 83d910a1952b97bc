"""PruningCallback on a tiny generic LightningModule (in-process) and through the real CLI (bad input)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from genexp.compression.prune import PruningCallback
from genexp.compression.targets import find_targets
from genexp.runtime.errors import ConfigError


class Tiny(L.LightningModule):
    """Conv -> Linear -> LayerNorm -> Linear: a generic module with deployable() and example_input()."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(128, 32),
            nn.LayerNorm(32),
            nn.Linear(32, 4),
        )

    def deployable(self) -> nn.Module:
        return self.net

    def example_input(self, batch_size: int) -> torch.Tensor:
        return torch.randn(batch_size, 1, 4, 4, generator=torch.Generator().manual_seed(0))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(1)
        return DataLoader(
            TensorDataset(torch.randn(32, 1, 4, 4, generator=g), torch.randn(32, 4, generator=g)),
            batch_size=8,
        )


def fit(tmp_path: Path, callback: PruningCallback, epochs: int, *extra, **trainer_kwargs) -> Tiny:
    model = Tiny()
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[callback, *extra],
        **trainer_kwargs,
    )
    trainer.fit(model)
    return model


class Recorder(L.Callback):
    """Per epoch: the achieved sparsity; per step: that masked weights are exactly zero."""

    def __init__(self, pruning: PruningCallback) -> None:
        self.pruning, self.sparsity, self.steps_checked = pruning, {}, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for module in self.pruning.targets.values():
            if hasattr(module, "weight_mask"):
                masked = module.weight_mask == 0  # module.weight: what this step's forward used
                assert torch.all(module.weight.detach()[masked] == 0)
                self.steps_checked += 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.sparsity[trainer.current_epoch] = self.pruning.achieved_sparsity()


def cubic(t: int, t0: int, t_end: int, sf: float) -> float:
    return 0.0 if t < t0 else sf if t >= t_end else sf * (1 - (1 - (t - t0) / (t_end - t0)) ** 3)


def test_sparsity_follows_the_cubic_schedule_each_epoch(tmp_path: Path) -> None:
    cb = PruningCallback(final_sparsity=0.8, start_epoch=1, end_epoch=5, latency_repeats=2)
    rec = Recorder(cb)
    model = fit(tmp_path, cb, 7, rec)
    assert set(cb.targets) == {"0", "3", "5"}  # Conv + Linears; LayerNorm excluded
    for epoch, value in rec.sparsity.items():
        assert value == pytest.approx(cubic(epoch, 1, 5, 0.8), abs=0.005), epoch
    assert rec.sparsity[5] == pytest.approx(0.8, abs=0.005) and rec.sparsity[6] == rec.sparsity[5]
    report = json.loads((tmp_path / "compression.json").read_text())
    assert report["sparsity"] == 0.8 and report["achieved_sparsity"] == pytest.approx(0.8, abs=0.005)
    assert [h["epoch"] for h in report["history"]] == [2, 3, 4, 5]  # epoch 1 is the ramp's 0
    assert (
        report["deployable/latency_ms"] > 0
        and report["deployable/bytes_sparse"] < report["deployable/bytes_dense"]
    )
    assert set(report["layers"]) == {"0", "3", "5"}
    # made permanent: plain parameters, zeros where the masks were
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())
    zeros = sum(int((model.net[i].weight == 0).sum()) for i in (0, 3, 5))
    assert zeros == round(0.8 * sum(model.net[i].weight.numel() for i in (0, 3, 5)))


def test_pruned_weights_stay_zero_through_optimizer_steps(tmp_path: Path) -> None:
    cb = PruningCallback(
        final_sparsity=0.6, start_epoch=0, end_epoch=1, make_permanent=False, latency_repeats=0
    )
    rec = Recorder(cb)
    seen: dict[str, torch.Tensor] = {}

    class Snapshot(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):  # runs after the pruning callback
            seen.update(
                {n: m.weight_mask.clone() for n, m in cb.targets.items() if hasattr(m, "weight_mask")}
            )

    model = fit(tmp_path, cb, 3, rec, Snapshot())
    assert rec.steps_checked >= 8  # 4 steps x 3 epochs x layers, pruned from epoch 1 on
    for name, module in cb.targets.items():
        effective = module.weight.detach()  # still reparametrized: weight = weight_orig * weight_mask
        assert torch.all(effective[seen[name] == 0] == 0)
    out = model.net(model.example_input(2))
    assert torch.isfinite(out).all()


def test_layer_scope_prunes_each_layer_exactly(tmp_path: Path) -> None:
    cb = PruningCallback(scope="layer", final_sparsity=0.5, end_epoch=0, ramp="one_shot", latency_repeats=0)
    model = fit(tmp_path, cb, 1)
    for i in (0, 3, 5):
        weight = model.net[i].weight
        assert int((weight == 0).sum()) == round(0.5 * weight.numel())


def test_structured_prunes_whole_output_channels(tmp_path: Path) -> None:
    cb = PruningCallback(
        method="ln_structured", dim=0, n=2, scope="layer", final_sparsity=0.5, end_epoch=0, latency_repeats=0
    )
    model = fit(tmp_path, cb, 1)
    for i in (0, 3, 5):
        rows = model.net[i].weight.detach().flatten(1)
        dead = (rows == 0).all(1)
        assert int(dead.sum()) == rows.shape[0] // 2 and bool((rows[~dead] != 0).any(1).all())
    glob = PruningCallback(method="ln_structured", dim=0, final_sparsity=0.5, end_epoch=0, latency_repeats=0)
    fit(tmp_path / "global", glob, 1)
    assert glob.achieved_sparsity() == pytest.approx(0.5, abs=0.05)  # whole channels: close, not exact


def test_random_masks_are_seeded(tmp_path: Path) -> None:
    def masks(seed: int) -> dict[str, torch.Tensor]:
        cb = PruningCallback(method="random_unstructured", final_sparsity=0.5, seed=seed)
        cb.targets = find_targets(Tiny().net, [], [])
        return cb.compute_masks(0.5, epoch=3)

    a, b, c = masks(7), masks(7), masks(8)
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)
    total = sum(m.numel() for m in a.values())
    assert sum(int((~m).sum()) for m in a.values()) == round(0.5 * total)


def test_checkpoint_holds_plain_weights_and_masks(tmp_path: Path) -> None:
    cb = PruningCallback(final_sparsity=0.7, end_epoch=1, make_permanent=False, latency_repeats=0)
    model = Tiny()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[cb],
    )
    trainer.fit(model)
    trainer.save_checkpoint(tmp_path / "pruned.ckpt")
    ckpt = torch.load(tmp_path / "pruned.ckpt", weights_only=True)
    assert not any(k.endswith(("_orig", "_mask")) for k in ckpt["state_dict"])
    plain = Tiny()
    plain.load_state_dict(ckpt["state_dict"])  # strict: a plain, unpruned module loads it
    x = model.example_input(4)
    assert torch.allclose(plain.net(x), model.net(x))
    masks = ckpt["callbacks"]["PruningCallback"]["masks"]
    assert set(masks) == {"0", "3", "5"} and masks["3"].dtype == torch.bool
    assert torch.equal(masks["3"], plain.net[3].weight != 0)
    # the still-pruned module also accepts the plain checkpoint (as trainer.test(ckpt_path=best) does)
    model.load_state_dict(ckpt["state_dict"])
    assert torch.allclose(model.net(x), plain.net(x))


def test_bf16_mixed_reaches_the_target(tmp_path: Path) -> None:
    cb = PruningCallback(final_sparsity=0.8, end_epoch=1, latency_repeats=0)
    model = fit(tmp_path, cb, 2, precision="bf16-mixed")
    assert cb.achieved_sparsity() == pytest.approx(0.8, abs=0.005)
    assert (
        model.net[3].weight.dtype == torch.float32 and torch.isfinite(model.net(model.example_input(2))).all()
    )


def test_targets_include_exclude_and_tied_weights() -> None:
    net = Tiny().net
    assert set(find_targets(net, [], ["^5$"])) == {"0", "3"}
    assert set(find_targets(net, ["^4$"], [])) == {"4"}  # a norm only when asked
    tied = nn.ModuleDict(
        {"emb": nn.Embedding(10, 6), "head": nn.Linear(6, 10, bias=False), "mlp": nn.Linear(6, 6)}
    )
    tied.head.weight = tied.emb.weight
    assert set(find_targets(tied, [], [])) == {"mlp"}
    assert set(find_targets(tied, ["emb"], [])) == {"emb"}
    with pytest.raises(ConfigError, match=r"^compression\.prune\.include='attn'"):
        find_targets(net, ["attn"], [])
    with pytest.raises(ConfigError, match=r"^compression\.prune\.exclude="):
        find_targets(net, [], ["."])


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"final_sparsity": 1.0}, "final_sparsity"),
        ({"final_sparsity": -0.2}, "final_sparsity"),
        ({"initial_sparsity": 1.5}, "initial_sparsity"),
        ({"start_epoch": 6, "end_epoch": 3}, "start_epoch"),
        ({"method": "magnitude"}, "method"),
        ({"method": "ln_structured", "dim": "rows"}, "dim"),
        ({"scope": "model"}, "scope"),
        ({"ramp": "steps"}, "ramp"),
        ({"include": ["("]}, "include"),
        ({"initial_sparsity": 0.5, "final_sparsity": 0.3}, "final_sparsity"),
    ],
)
def test_bad_values_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        PruningCallback(**kwargs)
    assert str(err.value).startswith(f"compression.prune.{key}=")


def test_include_matching_no_layer_fails_at_setup(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"compression\.prune\.include='blocks'"):
        fit(tmp_path, PruningCallback(include=["blocks"]), 1)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("compression.prune.final_sparsity=1.0", "compression.prune.final_sparsity"),
        ("compression.prune.include=[nothing_here]", "compression.prune.include"),
    ],
)
def test_cli_bad_input_names_the_key(cli, override: str, key: str) -> None:
    result = cli(
        [
            "compression=[prune]",
            override,
            "trainer.max_epochs=1",
            "++trainer.limit_train_batches=1",
            "++trainer.limit_val_batches=1",
            "trainer.accelerator=cpu",
            "callbacks.progress_bar=null",
            "logger=csv",
        ]
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert key in result.stderr and "Traceback" not in result.stderr
