"""The small GPT: causality, sampling, training, checkpoints and the errors users can hit."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import pytest
import torch

from conftest import FAST, run_dirs
from genexp.checkpoints.rebuild import load_checkpoint
from genexp.models.gpt import GPT
from genexp.models.transformer import Transformer
from genexp.runtime.build import build_datamodule, build_model, build_trainer
from genexp.runtime.errors import ConfigError
from genexp.train import train

CORPUS = "the quick brown fox jumps over the lazy dog.\n" * 60
TINY = [
    "model=gpt",
    "data=text",
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "data.block_size=16",
    "data.batch_size=8",
    "data.val_batches=2",
    "model.num_samples=1",
    "model.sample_tokens=20",
]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


def tiny_gpt(**kwargs) -> GPT:
    torch.manual_seed(0)
    vocab = sorted(set(CORPUS))
    kwargs = {
        "vocab_size": len(vocab),
        "vocab": vocab,
        "block_size": 16,
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 32,
        **kwargs,
    }
    return GPT(**kwargs)


def test_causal_mask_future_tokens_do_not_change_earlier_logits() -> None:
    net = Transformer(
        vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True
    ).eval()
    x = torch.randint(11, (3, 16), generator=torch.Generator().manual_seed(0))
    changed = x.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 11
    before, after = net(x), net(changed)
    assert before.shape == (3, 16, 11)
    torch.testing.assert_close(before[:, :9], after[:, :9])
    assert not torch.allclose(before[:, 9:], after[:, 9:])  # the change is visible where it should be


def test_weight_tying_and_param_groups() -> None:
    model = tiny_gpt(optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.1))
    assert model.net.lm_head.weight is model.net.wte.weight
    decay, no_decay = model.optimizer_param_groups()
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decayed = {id(p) for p in decay["params"]}
    assert all(p.dim() == 2 for p in decay["params"])
    for name, p in model.net.named_parameters():  # each parameter once; no decay on norms/biases/embeddings
        assert (id(p) in decayed) == (
            name.endswith("weight") and "ln" not in name and name[:3] not in ("wte", "wpe")
        )
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.net.parameters()))


def test_generate_respects_max_new_tokens_and_top_k() -> None:
    model = tiny_gpt().eval()
    torch.manual_seed(1)
    text = model.generate("the ", max_new_tokens=40, temperature=1.0)  # longer than block_size: context crops
    assert isinstance(text, str) and text.startswith("the ") and len(text) == 4 + 40
    assert set(text) <= set(model.vocab)

    # top_k=1 is greedy: the same text whatever the seed, and equal to argmax decoding.
    greedy = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        greedy.append(model.generate("fox", max_new_tokens=10, top_k=1))
    ids = model.encode("fox")[None]
    for _ in range(10):
        ids = torch.cat([ids, model.net(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert greedy[0] == greedy[1] == model.decode(ids[0])

    # top_k=3: every first sampled character is one of the 3 most likely.
    top3 = set(model.net(model.encode("the lazy")[None])[0, -1].topk(3).indices.tolist())
    samples = model.generate("the lazy", max_new_tokens=1, top_k=3, num_samples=200)
    firsts = {model.index[s[-1]] for s in samples}
    assert firsts <= top3 and len(firsts) > 1
    assert model.sample(2) and len(model.sample(2)[1]) == 1 + model.sample_tokens


def test_bad_model_values_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"model.n_embd=30: expected a multiple of model.n_head=4"):
        tiny_gpt(n_embd=30, n_head=4)
    with pytest.raises(ConfigError, match=r"model.sample_prompt=.*not in it: '@'"):
        tiny_gpt(sample_prompt="@the")
    model = tiny_gpt()
    with pytest.raises(ConfigError, match=r"prompt='Zebra€': expected only characters .*not in it: 'Z€'"):
        model.generate("Zebra€", max_new_tokens=5)
    with pytest.raises(ConfigError, match="top_k=0"):
        model.generate("the", max_new_tokens=5, top_k=0)


def test_distillation_loss() -> None:
    student, teacher = tiny_gpt(), tiny_gpt()
    batch = (student.example_input(2), None)
    assert student.distillation_loss(batch, teacher).item() == pytest.approx(0.0, abs=1e-6)  # same seed
    other = tiny_gpt(n_embd=16)
    loss = student.distillation_loss(batch, other, temperature=2.0)
    assert loss.item() > 0 and loss.requires_grad


def test_few_batches_lower_the_loss(compose_train, corpus: Path) -> None:
    cfg = compose_train(
        [
            *FAST,
            *TINY,
            f"data.path={corpus}",
            "optimizer.lr=3e-3",
            "data.batches_per_epoch=40",
            "trainer.limit_train_batches=40",
            "logger=csv",
        ]
    )
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    datamodule.setup("fit")
    x, y = next(iter(datamodule.val_dataloader()))
    before = model.loss(model(x), y).item()
    assert before == pytest.approx(math.log(len(set(CORPUS))), rel=0.1)  # uniform at init
    build_trainer(cfg, [], []).fit(model, datamodule=datamodule)
    after = model.loss(model.eval()(x), y).item()
    assert after < before - 0.8


def test_train_run_metrics_samples_and_vocab_in_checkpoint(
    compose_train, corpus: Path, tmp_path: Path
) -> None:
    cfg = compose_train([*FAST, *TINY, f"data.path={corpus}", "trainer.log_every_n_steps=1"])
    value = train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert value == metrics["val/loss"]
    for stage in ("val", "test"):
        loss = metrics[f"{stage}/loss"]
        assert metrics[f"{stage}/bpc"] == pytest.approx(loss / math.log(2), rel=1e-4)
        assert metrics[f"{stage}/ppl"] == pytest.approx(math.exp(loss), rel=1e-3)
    assert "train/loss" in metrics
    assert (tmp_path / "run" / "samples.txt").read_text().startswith("step 3")
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert checkpoint["TextDataModule"] == {"chars": sorted(set(CORPUS))}


@pytest.mark.slow
def test_cli_train_then_eval_prints_samples_with_the_saved_vocab(cli, corpus: Path, tmp_path: Path) -> None:
    done = cli([*FAST, *TINY, f"data.path={corpus}", "test=false"])
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = run_dirs(tmp_path)[0] / "checkpoints" / "last.ckpt"
    # A file with fewer characters would give a smaller vocabulary: eval must use the checkpoint's.
    corpus.write_text(CORPUS.replace(".", ""), encoding="utf-8")
    evaluated = cli(
        [
            f"ckpt_path={ckpt}",
            "num_samples=2",
            "prompt=the lazy",
            "trainer.accelerator=cpu",
            "trainer.enable_model_summary=false",
        ],
        module="genexp.evaluate",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "test/bpc" in evaluated.stdout and evaluated.stdout.count("the lazy") == 2
    bad = cli(
        [f"ckpt_path={ckpt}", "num_samples=1", "prompt=Zebra", "trainer.accelerator=cpu"],
        module="genexp.evaluate",
    )
    assert bad.returncode == 2 and "prompt='Zebra'" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "content", "message"),
    [
        ("model.n_embd=33", CORPUS.encode(), "model.n_embd=33: expected a multiple of model.n_head=2"),
        ("data.block_size=16", b"\xff\xfe not utf-8 " * 10, "is not UTF-8"),
    ],
    ids=["n_embd_not_multiple_of_n_head", "non_utf8_file"],
)
def test_cli_bad_input_is_a_short_error(
    cli, tmp_path: Path, override: str, content: bytes, message: str
) -> None:
    path = tmp_path / "input.txt"
    path.write_bytes(content)
    done = cli([*FAST, *TINY, f"data.path={path}", override])
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
