"""measure(): parameters, non-zeros, dense and sparse serialized bytes, latency; the sparse format round-trips."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from genexp.deploy.costs import measure
from genexp.deploy.sparse_format import (
    deployable_state_dict,
    load_sparse_state_dict,
    pack_bits,
    serialized_bytes,
    sparse_state_dict,
    unpack_bits,
)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 64))


def zero_fraction(model: nn.Module, fraction: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p[torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) < fraction] = 0


def test_dense_bytes_are_four_per_fp32_parameter() -> None:
    model = mlp()
    numbers = measure(model)
    params = sum(p.numel() for p in model.parameters())
    assert numbers["params"] == params and numbers["nonzero"] == params and numbers["sparsity"] == 0.0
    assert 4 * params <= numbers["bytes_dense"] < 4 * params * 1.03
    assert numbers["bytes_sparse"] == numbers["bytes_dense"] or numbers["sparse_ratio"] > 0.99  # dense kept


def test_sparse_bytes_shrink_with_sparsity() -> None:
    sizes = {}
    for fraction in (0.5, 0.8, 0.95):
        model = mlp()
        zero_fraction(model, fraction)
        numbers = measure(model)
        assert abs(numbers["sparsity"] - fraction) < 0.02
        sizes[fraction] = numbers["bytes_sparse"]
        # bitmask (1/32 of dense) + the non-zero values
        assert numbers["sparse_ratio"] < (1 - fraction) + 1 / 32 + 0.02
    assert sizes[0.5] > sizes[0.8] > sizes[0.95]


def test_sparse_format_round_trips_and_is_what_is_counted() -> None:
    model = mlp()
    zero_fraction(model, 0.7)
    state = deployable_state_dict(model)
    sparse = sparse_state_dict(state)
    assert isinstance(sparse["0.weight"], dict) and isinstance(sparse["0.bias"], torch.Tensor)
    restored = load_sparse_state_dict(sparse)
    assert restored.keys() == state.keys() and all(torch.equal(restored[k], state[k]) for k in state)
    assert measure(model)["bytes_sparse"] == serialized_bytes(sparse)


def test_bit_packing_round_trips_odd_lengths() -> None:
    flags = torch.rand(13) > 0.5
    packed = pack_bits(flags)
    assert packed.dtype == torch.uint8 and packed.numel() == 2
    assert torch.equal(unpack_bits(packed, 13), flags)


def test_pruning_reparametrization_is_folded() -> None:
    model = mlp()
    prune.l1_unstructured(model[0], "weight", amount=0.6)
    state = deployable_state_dict(model)
    assert "0.weight" in state and not any(k.endswith(("_orig", "_mask")) for k in state)
    plain = mlp()
    plain.load_state_dict(state)  # a plain module loads what measure() measured
    numbers = measure(model, per_layer=True)
    assert abs(numbers["layers/0.weight/sparsity"] - 0.6) < 1e-4
    assert numbers["layers/2.weight/nonzero"] == 256 * 64
    assert numbers["params"] == sum(p.numel() for p in plain.parameters())


def test_latency_is_a_positive_median_and_keeps_the_mode() -> None:
    model = mlp().train()
    numbers = measure(model, torch.randn(8, 256), repeats=5, warmup=1)
    assert numbers["latency_ms"] > 0 and model.training
    assert "latency_ms" not in measure(model)


def test_pruned_int8_weights_keep_both_savings_and_round_trip() -> None:
    """A torchao Int8Tensor is stored through its inner tensors: pruned zeros cost a bit, non-zeros a byte."""
    import pytest
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    x = torch.randn(4, 256)
    for config in (Int8WeightOnlyConfig(), Int8DynamicActivationInt8WeightConfig()):
        pruned, dense = mlp(), mlp()
        for layer in (pruned[0], pruned[2]):
            prune.l1_unstructured(layer, "weight", amount=0.8)
            prune.remove(layer, "weight")
        quantize_(pruned, config)
        quantize_(dense, config)
        state = deployable_state_dict(pruned)
        sparse = sparse_state_dict(state)
        entry = sparse["0.weight"]
        assert entry["subclass"] == "torchao.quantization.Int8Tensor"
        assert isinstance(entry["inner"]["qdata"], dict)  # the int8 values went into the bitmask format
        restored = load_sparse_state_dict(sparse)
        assert type(restored["0.weight"]) is type(state["0.weight"])
        assert torch.equal(restored["0.weight"].dequantize(), state["0.weight"].dequantize())
        fresh = mlp()
        quantize_(fresh, config)
        fresh.load_state_dict(restored, assign=True)
        assert torch.equal(fresh(x), pruned(x))

        int8_dense = serialized_bytes(deployable_state_dict(dense))
        float_sparse = measure(mlp_pruned_float())["bytes_sparse"]
        int8_sparse = measure(pruned)["bytes_sparse"]
        assert int8_sparse == serialized_bytes(sparse)
        # 80% zeros: ~numel/8 + 0.2 numel bytes against numel (int8) and numel/8 + 0.8 numel (float, sparse)
        assert int8_sparse < 0.45 * int8_dense and int8_sparse < 0.5 * float_sparse

    sparse["0.weight"]["subclass"] = "os.system"
    with pytest.raises(ValueError, match="not one of torchao's"):
        load_sparse_state_dict(sparse)


def mlp_pruned_float() -> nn.Sequential:
    model = mlp()
    for layer in (model[0], model[2]):
        prune.l1_unstructured(layer, "weight", amount=0.8)
    return model


def test_tied_weights_are_stored_once() -> None:
    """A GPT-style head tied to its embedding costs its bytes once, as in torch.save of the plain state dict."""
    embedding, head = nn.Embedding(64, 256), nn.Linear(256, 64, bias=False)
    head.weight = embedding.weight
    model = nn.ModuleDict({"wte": embedding, "head": head})
    state = deployable_state_dict(model)
    sparse = sparse_state_dict(state)
    assert sparse["wte.weight"] == {"tied": "head.weight"} or sparse["head.weight"] == {"tied": "wte.weight"}
    assert serialized_bytes(sparse) < 1.1 * serialized_bytes(state) < 2 * 4 * 64 * 256
    restored = load_sparse_state_dict(sparse)
    assert restored["wte.weight"] is restored["head.weight"] and torch.equal(
        restored["wte.weight"], state["wte.weight"]
    )
