"""The GPT's key/value cache (issue 29): cached greedy ids equal crop-every-step inside the window, the re-fill
strategy past it, the exported ``decoder_with_past.onnx`` against torch (fp32, standard and fused attention),
a cached graph of another model refused in one line, and state-dict keys unchanged (old checkpoints load)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import FAST, REPO, run_cli
from genexp.deploy.onnx_export import export_graph
from genexp.exporters.gpt import GPTExporter, OrtCachedDecoder
from genexp.models.gpt import GPT
from genexp.models.kv_cache import refill_length
from genexp.runtime.errors import ConfigError, GenexpError

VOCAB = ["\n", *(chr(c) for c in range(32, 96))]  # 65 characters, as Tiny Shakespeare


def small_gpt(block_size: int = 64, n_head: int = 4, bias: bool = False) -> GPT:
    """A random GPT whose logits are peaked enough that float rounding never flips an argmax."""
    torch.manual_seed(0)
    model = GPT(len(VOCAB), block_size, VOCAB, n_layer=2, n_head=n_head, n_embd=32, bias=bias).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    return model


def greedy(model: GPT, prompt: torch.Tensor, new: int, cache: bool) -> torch.Tensor:
    return model.generate_ids(prompt, new, top_k=1, cache=cache)


def test_cached_greedy_ids_equal_crop_every_step_for_a_prompt_and_60_tokens_at_block_64() -> None:
    model = small_gpt(64)
    prompt = torch.tensor([[5, 17, 40, 2], [9, 9, 31, 60]])  # 4 + 60 = 64: the whole window
    expected = greedy(model, prompt, 60, cache=False)
    assert torch.equal(greedy(model, prompt, 60, cache=True), expected)
    torch.manual_seed(1)
    sampled = model.generate_ids(prompt, 60, temperature=0.9, cache=False)
    torch.manual_seed(1)
    assert torch.equal(model.generate_ids(prompt, 60, temperature=0.9, cache=True), sampled)
    assert model.generate("ABCD", 60, top_k=1) == "ABCD" + model.decode(
        greedy(model, model.encode("ABCD")[None], 60, False)[0, 4:]
    )


def test_past_the_window_the_cache_refills_from_the_last_half_window() -> None:
    model = small_gpt(16)
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    got = greedy(model, prompt, 80, cache=True)
    # The strategy written out: a token sees the ids since the window's start; when they would overflow
    # block_size, the window restarts block_size // 2 ids back (positions 0, 1, ... again).
    ids, start, refills = prompt[0].tolist(), 0, 0
    for _ in range(80):
        if len(ids) - start > 16:
            start, refills = len(ids) - refill_length(16), refills + 1
        with torch.no_grad():
            ids.append(int(model.net(torch.tensor([ids[start:]]))[0, -1].argmax()))
    assert got[0].tolist() == ids and refills >= 8
    assert refill_length(16) == 8 and refill_length(1) == 1


def test_the_cache_adds_no_parameters_or_buffers() -> None:
    """A checkpoint of the code before the cache has exactly these keys (recorded from it): it loads strictly."""
    model = GPT(len(VOCAB), 16, VOCAB, n_layer=1, n_head=2, n_embd=16)
    assert list(model.net.state_dict()) == [
        "wte.weight",
        "wpe.weight",
        "blocks.0.ln_1.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.proj.weight",
        "blocks.0.ln_2.weight",
        "blocks.0.mlp.fc.weight",
        "blocks.0.mlp.proj.weight",
        "ln_f.weight",
        "lm_head.weight",
    ]


def test_bad_generation_input_names_the_key() -> None:
    model = small_gpt(16)
    with pytest.raises(ConfigError, match=r"max_new_tokens=-1: expected .*>= 0"):
        model.generate("AB", max_new_tokens=-1)
    with pytest.raises(ConfigError, match=r"prompt='17 characters': expected at most data.block_size=16"):
        model.generate("A" * 17, max_new_tokens=2)
    with pytest.raises(
        ConfigError, match=r"model.sample_prompt='17 characters': expected at most data.block_size"
    ):
        GPT(len(VOCAB), 16, VOCAB, n_layer=1, n_head=2, n_embd=16, sample_prompt="A" * 17)


@pytest.mark.parametrize("fused", [False, True], ids=["standard_ops", "fused_attention"])
def test_the_exported_cached_decoder_matches_torch_and_gives_the_same_greedy_ids(
    tmp_path: Path, fused: bool
) -> None:
    model = small_gpt(64, bias=True)
    graph = GPTExporter().graphs(model, 2, fused_attention=fused)[1]
    assert graph.stem == "decoder_with_past" and graph.inputs == ["tokens", "past_0", "past_1"]
    path = export_graph(graph, tmp_path / graph.file, 17)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ("Attention" in ops) == fused
    net = model.net
    ids = torch.randint(len(VOCAB), (3, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = net(ids)
        for past_len, new in ((0, 64), (0, 1), (10, 1), (20, 7), (63, 1)):
            past = (
                net.forward_cached(ids[:, :past_len], net.empty_past(3))[1] if past_len else net.empty_past(3)
            )
            logits, present = net.forward_cached(ids[:, past_len : past_len + new], past)
            feeds = {"tokens": ids[:, past_len : past_len + new].numpy()}
            feeds.update({f"past_{i}": p.numpy() for i, p in enumerate(past)})
            out = session.run(None, feeds)
            assert np.abs(out[0] - full[:, past_len : past_len + new].numpy()).max() < 1e-4
            assert np.abs(out[0] - logits.numpy()).max() < 1e-4
            for got, want in zip(out[1:], present, strict=True):
                assert got.shape == (2, 3, 4, past_len + new, 8) and np.abs(got - want.numpy()).max() < 1e-4
    onnx_model = copy.deepcopy(model)
    onnx_model.cached_decoder = OrtCachedDecoder(session, [list(p.shape) for p in net.empty_past(1)])
    prompt = torch.tensor([[5, 17, 40, 2]])
    assert torch.equal(greedy(onnx_model, prompt, 60, cache=True), greedy(model, prompt, 60, cache=False))


def test_a_cached_decoder_of_another_model_is_refused_in_one_line(tmp_path: Path) -> None:
    other = small_gpt(16, n_head=2)
    path = export_graph(GPTExporter().graphs(other, 1)[1], tmp_path / "decoder_with_past.onnx", 17)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = [list(p.shape) for p in small_gpt(16, n_head=4).net.empty_past(1)]
    with pytest.raises(GenexpError) as caught:
        OrtCachedDecoder(session, wanted)
    message = str(caught.value)
    assert (
        "\n" not in message
        and "(2, 'batch', 2, 'past', 16)" in message
        and "(2, 'batch', 4, 'past', 8)" in message
    )
    decoder = OrtCachedDecoder(session)  # no model to check against: the first call names the bad feed
    with pytest.raises(GenexpError, match=r"^decoder_with_past graph: fed .*past_\d.* Expected: \d+"):
        decoder.step(torch.tensor([[1]]), [torch.zeros(2, 1, 4, 0, 8), torch.zeros(2, 1, 4, 0, 8)])


def test_generation_benchmark_prints_tokens_per_s_with_and_without_the_cache_and_the_quality(
    tmp_path: Path,
) -> None:
    """``benchmarks/generation.py`` as docs/deploy.md shows it, at a tiny scale (a 2-step run, short generations)."""
    text = tmp_path / "text.txt"
    text.write_text("ROMEO:\nBut soft, what light through yonder window breaks?\n" * 40, encoding="utf-8")
    tiny = [
        "model=gpt",
        "data=text",
        f"data.path={text}",
        "model.n_layer=1",
        "model.n_embd=32",
        "model.n_head=4",
    ]
    tiny += [
        "data.block_size=16",
        "data.batches_per_epoch=2",
        "data.val_batches=1",
        "model.sample_every_n_epochs=0",
    ]
    trained = run_cli([*FAST, *tiny, "test=false", "logger=csv", "hydra.run.dir=run"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    script = REPO / "benchmarks" / "generation.py"
    done = subprocess.run(
        [sys.executable, str(script), "--run", str(tmp_path / "run"), "--new-tokens", "40", "--rounds", "1"]
        + ["--long-tokens", "50", "--long-samples", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.lstrip().startswith("CPU: ") and "x = cache / no cache" in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| run | 16 |")]
    assert [row[2] for row in rows[:3]] == ["torch fp32 eager", "onnxruntime fp32", "onnxruntime int8"]
    for row in rows[:3]:
        no_cache, cache, ratio = (float(cell.strip(" |").replace(",", "")) for cell in row[3:6])
        assert no_cache > 0 and cache > 0 and ratio > 0  # (the cells are rounded: no exact quotient)
    quality = rows[3]
    crop, cached, ratio = (float(cell.strip(" |")) for cell in quality[2:5])
    assert 0 < crop < 10 and 0 < cached < 10 and ratio == pytest.approx(cached / crop, abs=1e-3)


def test_the_256_recipe_is_the_baby_gpt_with_a_4x_context_and_trains(compose_train, tmp_path: Path) -> None:
    from genexp.train import train

    baby = compose_train(["experiment=gpt_shakespeare_cpu"])
    text = tmp_path / "text.txt"
    text.write_text("ROMEO:\nBut soft, what light through yonder window breaks?\n" * 40, encoding="utf-8")
    full = compose_train(["experiment=gpt_shakespeare_256"])
    assert full.data.block_size == 256 and baby.data.block_size == 64
    for key in ("n_layer", "n_head", "n_embd", "dropout", "bias"):
        assert full.model[key] == baby.model[key], key
    assert full.scheduler.scheduler.total_steps == full.trainer.max_epochs * full.data.batches_per_epoch
    small = ["data.batch_size=2", "data.val_batches=1", "model.sample_tokens=10", "test=false"]
    cfg = compose_train(["experiment=gpt_shakespeare_256", f"data.path={text}", *FAST, *small])
    train(cfg)
    model = GPT.load_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert model.block_size == 256 and len(model.generate("ROMEO:", 260)) == 266  # past the window, cached


def test_the_int8_cached_decoder_is_weight_only_and_drives_generation(tmp_path: Path) -> None:
    """int8 for one token a step: MatMulNBits (8-bit weights, fp32 compute), no per-step activation quantization."""
    from genexp.deploy.onnx_quantize import quantize_graph

    model = small_gpt(64, bias=True)
    graph = GPTExporter().graphs(model, 2, fused_attention=True)[1]
    assert graph.int8 == "weight_only"
    path = export_graph(graph, tmp_path / graph.file, 17)
    net = model.net
    ids = torch.randint(len(VOCAB), (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        past = net.forward_cached(ids[:, :30], net.empty_past(2))[1]
    feeds = {"tokens": ids[:, 30:].numpy(), **{f"past_{i}": p.numpy() for i, p in enumerate(past)}}
    target = tmp_path / graph.int8_file()
    recipe = quantize_graph(path, target, "weight_only", feeds, tolerance=0.02)
    ops = [node.op_type for node in onnx.load(str(target)).graph.node]
    assert ops.count("MatMulNBits") == recipe["nodes"] >= 4  # 2 blocks: MLP in and out, attention out
    assert "DynamicQuantizeLinear" not in ops and "MatMul" not in ops
    assert 0 < recipe["check"]["relative_error"] < 0.02 and recipe["check"]["top1_agreement"] >= 0.9
    assert target.stat().st_size < 0.6 * path.stat().st_size  # 8-bit MLP weights (the fused QKV stays fp32)
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    int8_model = copy.deepcopy(model)
    int8_model.cached_decoder = OrtCachedDecoder(session, [list(p.shape) for p in net.empty_past(1)])
    ids = greedy(int8_model, torch.tensor([[5, 17, 40, 2]]), 80, cache=True)  # past the window: a re-fill
    assert ids.shape == (1, 84) and int(ids.max()) < len(VOCAB)


def test_a_run_trained_before_the_cache_resumes_evaluates_and_exports_the_cached_decoder(
    tmp_path: Path,
) -> None:
    """``tests/fixtures/gpt_before_cache``: a run written by the code before the cache (its README says how)."""
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(REPO / "tests" / "fixtures" / "gpt_before_cache", old)
    overrides = [line[2:] for line in (old / ".hydra" / "overrides.yaml").read_text().splitlines()]
    resumed = run_cli(
        [*overrides, "ckpt_path=checkpoints/last.ckpt", "trainer.max_epochs=2", "hydra.run.dir=more"], old
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Restoring states from the checkpoint" in resumed.stdout + resumed.stderr
    assert (old / "more" / "checkpoints" / "epoch001.ckpt").is_file()  # the second epoch ran
    evaluated = run_cli(["target=.", "hydra.run.dir=eval"], old, module="genexp.evaluate")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "tokens_per_s" in (old / "eval" / "report.json").read_text()
    exported = run_cli(["target=.", "quantize=int8", "out=export"], old, module="genexp.export")
    assert exported.returncode == 0, exported.stderr[-2000:]
    info = json.loads((old / "export" / "model.json").read_text())
    assert info["usage"]["cached"]["graph"] == "decoder_with_past.onnx"
    assert (old / "export" / "decoder_with_past.int8.onnx").is_file()
