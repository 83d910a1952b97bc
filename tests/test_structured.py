"""Structured pruning removes heads, MLP units and conv channels: the smaller network computes what the gated
one did, counts are exact, and a pruned run's checkpoint resumes, evaluates, quantizes and exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import FAST
from genexp.checkpoints.rebuild import load_any
from genexp.compression.structured import UnitPruner
from genexp.models.dcgan import Generator
from genexp.models.transformer import Transformer
from genexp.models.vae_net import VAENet
from test_onnx_export import TEXT, compose_cfg

NETS = {
    "gpt": (lambda: Transformer(65, 16, 2, 4, 32, 0.0, False), lambda: torch.randint(65, (3, 16))),
    "gan": (lambda: Generator((1, 16, 16), 8, 8), lambda: torch.randn(3, 8)),
    "vae": (lambda: VAENet((1, 16, 16), 8, 4), lambda: torch.rand(3, 1, 16, 16)),
}


@pytest.mark.parametrize("family", sorted(NETS))
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_removed_units_leave_the_function_of_the_gated_network(family: str, scope: str) -> None:
    torch.manual_seed(0)
    make, example = NETS[family]
    net, x = make().eval(), example()
    pruner = UnitPruner(scope)
    pruner.setup(net, x[:2])
    kinds = {g.kind for g in pruner.groups}
    assert kinds == ({"heads", "channels"} if family == "gpt" else {"channels"})
    pruner.apply(pruner.masks(0.5))
    before = sum(p.numel() for p in net.parameters())
    owned = sum(g.size * g.weights for g in pruner.groups)
    pruned = sum(int(g.pruned.sum()) * g.weights for g in pruner.groups)
    if scope == "global":  # half of the units' parameters, to within half of the largest unit
        assert abs(pruned - 0.5 * owned) <= max(g.weights for g in pruner.groups) / 2
    else:
        assert all(int(g.pruned.sum()) == min(round(0.5 * g.size), g.size - 1) for g in pruner.groups)
    assert pruner.fraction() == pytest.approx(pruned / owned)
    assert all(int(g.pruned.sum()) < g.size for g in pruner.groups)  # never a group's last unit
    with torch.no_grad():
        gated = net(x)
    record = pruner.remove(x[:2])
    with torch.no_grad():
        assert torch.allclose(net(x), gated, atol=1e-5)
    # the removal saves the parameters the pruned units were counted as owning (in a conv chain a weight between
    # two pruned channels is counted with each, so a little less)
    removed = before - sum(p.numel() for p in net.parameters())
    assert removed == pruned if family == "gpt" else 0.8 * pruned <= removed <= pruned
    if family == "gpt":
        heads = {g.name: g.size - int(g.pruned.sum()) for g in pruner.groups if g.kind == "heads"}
        assert {k: v["n_head"] for k, v in record["attributes"].items()} == heads
        fc = net.blocks[0].mlp.fc
        assert fc.out_features == fc.weight.shape[0] == net.blocks[0].mlp.proj.in_features


@pytest.mark.parametrize("family", sorted(NETS))
def test_finding_the_units_leaves_a_training_network_in_training_mode(family: str) -> None:
    make, example = NETS[family]
    net = make().train()
    UnitPruner("layer").setup(net, example()[:2])
    assert all(m.training for m in net.modules())  # torch-pruning's trace calls eval() and does not undo it


@pytest.mark.parametrize("family", sorted(NETS))
def test_a_frozen_network_an_ema_copy_finds_the_same_groups(family: str) -> None:
    """The GAN's and the diffusion model's deployable is a frozen EMA copy: no autograd graph of its own."""
    make, example = NETS[family]
    torch.manual_seed(0)
    trained, frozen = make().eval(), make().eval().requires_grad_(False)
    found = {}
    for name, net in (("trained", trained), ("frozen", frozen)):
        pruner = UnitPruner("layer")
        pruner.setup(net, example()[:2])
        found[name] = [(g.name, g.kind, g.size) for g in pruner.groups]
    assert found["frozen"] == found["trained"] and found["frozen"]
    assert not any(p.requires_grad for p in frozen.parameters())  # still frozen after the trace


def test_a_structured_run_resumes_evaluates_quantizes_and_exports(tmp_path: Path) -> None:
    from genexp.export import export
    from genexp.train import train

    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    base = [
        *FAST,
        "model.sample_every_n_epochs=0",
        "logger=csv",
        "model=gpt",
        "data=text",
        f"data.path={tmp_path / 'text.txt'}",
        "model.n_layer=2",
        "model.n_embd=32",
        "data.block_size=16",
        "data.batches_per_epoch=3",
        "data.val_batches=2",
        "compression=[prune,quantize]",
        "compression.prune.method=ln_structured",
        "compression.prune.end_epoch=1",
        "compression.prune.latency_repeats=0",
        "compression.quantize.latency_repeats=0",
    ]

    def run(name: str, extra: list[str]) -> Path:
        cfg = compose_cfg("train", [*base, *extra], tmp_path / name)
        (tmp_path / name / ".hydra").mkdir(parents=True)
        OmegaConf.save(cfg, tmp_path / name / ".hydra" / "config.yaml")
        train(cfg)
        return tmp_path / name

    first = run("first", ["trainer.max_epochs=2"])
    report = json.loads((first / "compression.json").read_text())
    assert report["removed"] and report["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)
    slim = load_any(first / "checkpoints" / "last.ckpt")
    dense_params = sum(
        p.numel() for p in Transformer(slim.model.hparams.vocab_size, 16, 2, 4, 32, 0.0, False).parameters()
    )
    params = sum(p.numel() for p in slim.model.deployable().parameters())
    assert params < 0.8 * dense_params
    artifact = load_any(first / "quantized")  # the torch int8 artifact of the smaller network rebuilds too
    x = slim.model.example_input(2)
    with torch.no_grad():
        assert (artifact.model.deployable()(x) - slim.model.deployable().eval()(x)).abs().max() < 0.1

    resumed = run("resumed", ["trainer.max_epochs=3", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}"])
    assert json.loads((resumed / "metrics.json").read_text())["val/loss"] > 0
    info = export(
        compose_cfg("export", [f"target={resumed}", "measure=false", "calibration_batches=1"], tmp_path / "x")
    )
    assert info["graphs"]["model.onnx"]["params"] < 0.8 * dense_params


def test_a_gan_with_an_ema_generator_trains_under_the_gates_and_ships_smaller(tmp_path: Path) -> None:
    """experiment=gan_digits prunes its EMA generator: the gates' buffers there must not break the EMA update."""
    from genexp.train import train

    cfg = compose_cfg(
        "train",
        [
            *FAST,
            "model=gan",
            "model.ema_decay=0.9",
            "model.g_channels=8",
            "model.d_channels=8",
            "model.latent_dim=8",
            "logger=csv",
            "trainer.max_epochs=3",
            "compression=[prune]",
            "compression.prune.method=ln_structured",
            "compression.prune.start_epoch=0",
            "compression.prune.end_epoch=1",
            "compression.prune.latency_repeats=0",
        ],
        tmp_path / "gan",
    )
    train(cfg)  # epoch 2 updates the EMA generator while its channels are gated
    report = json.loads((tmp_path / "gan" / "compression.json").read_text())
    assert report["removed"] and report["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)
    slim = load_any(tmp_path / "gan" / "checkpoints" / "last.ckpt").model
    # G trained under the same gates as its EMA copy, and lost the same channels: the EMA can keep following it
    shapes = {name: p.shape for name, p in slim.generator.named_parameters()}
    assert shapes == {name: p.shape for name, p in slim.generator_ema.named_parameters()}
    assert sum(p.numel() for p in slim.deployable().parameters()) < 0.6 * sum(
        p.numel() for p in Generator((1, 16, 16), 8, 8).parameters()
    )
