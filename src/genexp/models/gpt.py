"""A small GPT: a decoder-only Transformer for character-level language modelling (after nanoGPT).

Pre-LayerNorm blocks of causal self-attention (``scaled_dot_product_attention``) and a GELU MLP, learned
position embeddings, and an output layer tied to the token embedding. ``Transformer`` is the whole network
(``models/transformer.py``: token ids ``(B, T)`` in, logits ``(B, T, vocab)`` out) and ships; ``GPT`` is the LightningModule
around it: losses in nats per character, bits per character and perplexity, AdamW parameter groups,
sampling with temperature and top-k, and text samples in TensorBoard.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.text import Perplexity

from genexp.checks.values import in_range, int_at_least, is_number, positive_int
from genexp.data.text import CharVocab
from genexp.models.base import GenerativeModule
from genexp.models.kv_cache import Step, generate_cached, net_step
from genexp.models.transformer import Transformer
from genexp.runtime.errors import ConfigError

LN2 = math.log(2.0)


class GPT(GenerativeModule):
    """Decoder-only Transformer language model over characters.

    Args:
        vocab_size, block_size: given by the data module (``data.block_size`` is the context length).
        vocab: the characters behind token ids (given by the data module); needed to sample text.
        n_layer, n_head, n_embd: depth, attention heads and width (``n_embd % n_head == 0``).
        dropout: dropout on embeddings, attention and residual branches.
        bias: biases in Linear and LayerNorm layers.
        compile: ``torch.compile`` the network (state-dict keys stay the same).
        activation_checkpointing: recompute activations in backward instead of keeping them
            (``torch.utils.checkpoint``; not the last block, where backward starts): ``block`` (or ``true``)
            keeps only each block's input and recomputes the block; ``mlp`` recomputes each MLP's LayerNorm, fc
            and GELU only (about half the saving for a fraction of the time); ``false`` keeps everything.
        sample_prompt, sample_tokens, temperature, top_k: the text samples logged each validation epoch.
        **base: ``optimizer``, ``scheduler``, ``sample_every_n_epochs``, ``num_samples`` (GenerativeModule).
    """

    data_kind = "text"

    def __init__(
        self,
        vocab_size: int = 65,
        block_size: int = 64,
        vocab: list[str] | None = None,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        bias: bool = False,
        compile: bool = False,
        activation_checkpointing: bool | str = False,
        sample_prompt: str = "\n",
        sample_tokens: int = 200,
        temperature: float = 1.0,
        top_k: int | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        for key, value in (
            ("model.vocab_size", vocab_size),
            ("data.block_size", block_size),
            ("model.n_layer", n_layer),
            ("model.n_head", n_head),
            ("model.n_embd", n_embd),
            ("model.sample_tokens", sample_tokens),
        ):
            positive_int(key, value)
        if n_embd % n_head:
            raise ConfigError("model.n_embd", n_embd, f"a multiple of model.n_head={n_head}")
        in_range("model.dropout", dropout, 0, 1)
        # A plain list (not Hydra's ListConfig), so that checkpoints load with weights_only=True.
        vocab = [str(c) for c in vocab] if vocab is not None else None
        if vocab is not None and len(vocab) != vocab_size:
            raise ConfigError("model.vocab", f"{len(vocab)} characters", f"{vocab_size} (model.vocab_size)")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        self.vocab = vocab
        self.chars = CharVocab(vocab) if vocab is not None else None  # the data's vocabulary, not a copy
        self.block_size = block_size
        self.sample_prompt, self.sample_tokens = sample_prompt, sample_tokens
        self.temperature, self.top_k = temperature, top_k
        _check_sampling(temperature, top_k, "model.")
        if self.vocab is not None:
            _check_context(
                self.encode(sample_prompt, key="model.sample_prompt"), block_size, "model.sample_prompt"
            )
        self.net = Transformer(vocab_size, block_size, n_layer, n_head, n_embd, dropout, bias)
        self.net.activation_checkpointing = _recompute_mode(activation_checkpointing)
        if compile:
            self.net.compile()  # compiles forward in place; parameter names are unchanged
        self.perplexity = nn.ModuleDict({"val": Perplexity(), "test": Perplexity()})

    # ----- text <-> token ids ---------------------------------------------------------------------
    def encode(self, text: str, key: str = "prompt") -> torch.Tensor:
        """Token ids of ``text``; a ConfigError naming ``key`` lists characters outside the vocabulary."""
        if self.vocab is None:
            raise ConfigError(key, text, "a model trained on text data (this one has no vocabulary)")
        unknown = self.chars.unknown(text)
        if unknown:
            raise ConfigError(
                key,
                text,
                f"only characters from the training text's vocabulary (not in it: {''.join(unknown)!r})",
            )
        return (
            self.chars.encode(text).to(self.device)
            if text
            else torch.zeros(0, dtype=torch.long, device=self.device)
        )

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        assert self.chars is not None
        return self.chars.decode(ids)

    @property
    def index(self) -> dict[str, int]:
        """Character -> token id."""
        return self.chars.index if self.chars is not None else {}

    # ----- training ----------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.net(idx)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy in nats per character."""
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # Text batches are cut on the CPU: skip Lightning's per-batch collection walk when training there.
        if device.type == "cpu":
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss(self.net(x), y)
        # Log only on the steps the logger writes: no per-step bookkeeping in between.
        if (self.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0:
            detached = loss.detach()
            self.log_dict({"train/loss": detached, "train/bpc": detached / LN2}, on_step=True, on_epoch=False)
        return self.with_distillation(loss, batch)

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        logits = self.net(x)
        loss = self.loss(logits, y)
        perplexity = self.perplexity[stage]
        perplexity.update(logits, y)
        self.log_dict(
            {f"{stage}/loss": loss, f"{stage}/bpc": loss / LN2},
            on_epoch=True,
            prog_bar=True,
            batch_size=x.numel(),
        )
        self.log(f"{stage}/ppl", perplexity, on_epoch=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def optimizer_param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: weight decay (the optimizer's ``weight_decay``) on Linear weights only;
        none on LayerNorms, biases and embeddings (the output layer shares the token embedding)."""
        weight_decay = getattr(self.optimizer_factory, "keywords", {}).get("weight_decay", 0.0)
        embeddings = {id(m.weight) for m in self.net.modules() if isinstance(m, nn.Embedding)}
        decay, no_decay = [], []
        for p in self.net.parameters():
            (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    # ----- sampling ----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_ids(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        cache: bool = True,
    ) -> torch.Tensor:
        """Extend each row of ``idx`` (B, T) by ``max_new_tokens`` sampled ids.

        ``cache``: with a key/value cache (``models/kv_cache.py``: exact inside ``block_size``, re-filled from
        the last ``block_size // 2`` ids when full), where the network has one (the torch ``Transformer``, or
        an installed ``cached_decoder``); else the whole context, cropped to ``block_size``, every step.
        """

        def pick(logits: torch.Tensor) -> torch.Tensor:
            logits = logits / temperature
            if top_k is not None and top_k < logits.shape[-1]:
                kth = torch.topk(logits, top_k).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            return torch.multinomial(F.softmax(logits, dim=-1), 1)

        stepper = self.cached_step() if cache else None
        if stepper is not None:
            return generate_cached(*stepper, idx, max_new_tokens, self.block_size, pick)
        for _ in range(max_new_tokens):
            idx = torch.cat([idx, pick(self.net(idx[:, -self.block_size :])[:, -1, :])], dim=1)
        return idx

    def cached_step(self) -> tuple[Step, Any] | None:
        """``(step, empty_past)`` for ``generate_cached``: the torch network's, an installed ONNX Runtime
        ``cached_decoder``'s, or None (no cache: e.g. only ``model.onnx`` installed)."""
        decoder = getattr(self, "cached_decoder", None)
        if decoder is not None:
            return decoder.step, decoder.empty_past
        if isinstance(self.net, Transformer):
            return net_step(self.net)
        return None

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 200,
        temperature: float = 1.0,
        top_k: int | None = None,
        num_samples: int = 1,
        key: str = "prompt",
    ) -> str | list[str]:
        """Continue ``prompt`` by ``max_new_tokens`` characters; a list when ``num_samples > 1``.

        Characters of ``prompt`` outside the vocabulary, or more of them than the context holds, raise a
        ConfigError naming ``key``.
        """
        int_at_least("max_new_tokens", max_new_tokens, 0)
        _check_sampling(temperature, top_k)
        ids = self.check_prompt(prompt, key)
        was_training = self.training
        self.eval()
        out = self.generate_ids(ids.expand(num_samples, -1), max_new_tokens, temperature, top_k)
        self.train(was_training)
        texts = [prompt + self.decode(row[len(ids) :]) for row in out]
        return texts[0] if num_samples == 1 else texts

    def check_prompt(self, prompt: str, key: str = "prompt") -> torch.Tensor:
        """The ids of ``prompt``: one to ``block_size`` characters of the vocabulary, else a ConfigError."""
        ids = self.encode(prompt, key=key)
        if len(ids) == 0:
            raise ConfigError(key, prompt, "at least one character to start from")
        _check_context(ids, self.block_size, key)
        return ids

    def sample(self, n: int, prompt: str | None = None) -> list[str]:
        """``n`` continuations of ``prompt`` (default ``model.sample_prompt``) with the configured settings."""
        texts = self.generate(
            self.sample_prompt if prompt is None else prompt,
            self.sample_tokens,
            self.temperature,
            self.top_k,
            num_samples=n,
            key="model.sample_prompt" if prompt is None else "prompt",
        )
        return [texts] if isinstance(texts, str) else texts

    @torch.no_grad()
    def log_samples(self) -> None:
        """Text samples to TensorBoard (``samples``) and ``samples.txt`` in the run folder."""
        if self.vocab is None:
            return
        texts = self.sample(self.num_samples)
        writer = self.tensorboard()
        if writer is not None:  # TensorBoard renders markdown: indent four spaces to keep the line breaks
            markdown = "\n\n---\n\n".join("    " + t.replace("\n", "\n    ") for t in texts)
            writer.add_text("samples", markdown, self.global_step)
        if self.trainer.default_root_dir:
            path = Path(self.trainer.default_root_dir) / "samples.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(
                f"step {self.global_step}\n\n" + "\n\n-----\n\n".join(texts) + "\n", encoding="utf-8"
            )

    # ----- GenerativeModule hooks ------------------------------------------------------------------------
    def deployable(self) -> nn.Module:
        return self.net

    def example_input(self, batch_size: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return torch.randint(self.hparams.vocab_size, (batch_size, self.block_size), generator=generator)

    def distillation_loss(
        self, batch: tuple[torch.Tensor, torch.Tensor], teacher: GenerativeModule, temperature: float = 2.0
    ) -> torch.Tensor:
        """KL(teacher || student) between temperature-softened next-character distributions, times T²."""
        x = batch[0]
        student = self.net(x) / temperature
        with torch.no_grad():
            target = teacher.deployable()(x) / temperature
        if target.shape != student.shape:
            raise ConfigError(
                "compression.distill", tuple(target.shape), f"teacher logits of {tuple(student.shape)}"
            )
        kl = F.kl_div(
            F.log_softmax(student, -1).flatten(0, 1),
            F.log_softmax(target, -1).flatten(0, 1),
            reduction="batchmean",
            log_target=True,
        )
        return kl * temperature**2

    def check_teacher(self, teacher: GenerativeModule, key: str) -> None:
        """A GPT teacher over the same characters, with a context at least as long as this model's."""
        super().check_teacher(teacher, key)
        assert isinstance(teacher, GPT)
        if teacher.vocab != self.vocab:
            ours, theirs = set(self.vocab or []), set(teacher.vocab or [])
            raise ConfigError(
                key,
                f"a GPT over {len(theirs)} characters",
                f"a teacher trained on this run's vocabulary ({len(ours)} characters; "
                f"only in the teacher: {''.join(sorted(theirs - ours))[:20]!r}, "
                f"only here: {''.join(sorted(ours - theirs))[:20]!r}; same characters in another order "
                "also differ): train the teacher on the same text",
            )
        if teacher.block_size < self.block_size:
            raise ConfigError(
                key,
                f"a GPT with block_size {teacher.block_size}",
                f"a teacher whose context covers data.block_size={self.block_size}",
            )


def _check_sampling(temperature: Any, top_k: Any, prefix: str = "") -> None:
    if not is_number(temperature) or temperature <= 0:
        raise ConfigError(f"{prefix}temperature", temperature, "a number > 0")
    int_at_least(f"{prefix}top_k", top_k, 1, allow_none=True)


def _recompute_mode(value: Any) -> str:
    """``model.activation_checkpointing`` as the Transformer's mode: ``none``, ``block`` (also ``true``) or ``mlp``."""
    modes = {False: "none", True: "block", "block": "block", "mlp": "mlp"}
    if not isinstance(value, (bool, str)) or value not in modes:
        raise ConfigError("model.activation_checkpointing", value, "false, true (= block), block or mlp")
    return modes[value]


def _check_context(ids: torch.Tensor, block_size: int, key: str) -> None:
    """A prompt must fit in the model's context: at most ``block_size`` ids, else a ConfigError naming ``key``."""
    if len(ids) > block_size:
        raise ConfigError(
            key,
            f"{len(ids)} characters",
            f"at most data.block_size={block_size} characters (the model's context)",
        )
