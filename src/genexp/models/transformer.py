"""The GPT's network: a decoder-only Transformer for characters (after nanoGPT's ``model.py``).

Pre-LayerNorm blocks of causal self-attention (``scaled_dot_product_attention``) and a GELU MLP, learned
position embeddings, and an output layer tied to the token embedding. ``Transformer`` is the whole network
(token ids ``(B, T)`` in, logits ``(B, T, vocab)`` out) and is what ships (``GPT.deployable()``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees only itself and the positions before it."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        width = (
            self.proj.in_features
        )  # n_head * head size: below n_embd once structured pruning removed heads
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(B, T, self.n_head, width // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, width)
        return self.resid_dropout(self.proj(y))

    def forward_cached(self, x: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, T, C) at positions after the ``P`` cached ones -> output and the present keys/values.

        ``past``: this layer's keys and values, ``(2, B, n_head, P, head_size)`` (``P`` may be 0); the present
        is ``(2, B, n_head, P + T, head_size)``. Position ``P + i`` sees the cache and new positions ``<= i``.
        """
        B, T, _ = x.shape
        width = self.proj.in_features
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(B, T, self.n_head, width // self.n_head).transpose(1, 2) for t in (q, k, v))
        present = torch.stack([torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)])
        y = F.scaled_dot_product_attention(
            q, present[0], present[1], attn_mask=_offset_causal_mask(q, present)
        )
        y = y.transpose(1, 2).contiguous().view(B, T, width)
        return self.resid_dropout(self.proj(y)), present


def _offset_causal_mask(q: torch.Tensor, present: torch.Tensor) -> torch.Tensor | None:
    """(T, P + T) booleans: new position ``i`` (absolute ``P + i``) sees keys ``j <= P + i``; None for one new
    position (it sees all), except while tracing for export, where the graph must hold any ``T``."""
    T, total = q.shape[2], present.shape[3]
    if T == 1 and not torch.jit.is_tracing():
        return None
    keys = torch.arange(total, device=q.device)
    queries = torch.arange(T, device=q.device) + (total - T)
    return keys[None, :] <= queries[:, None]


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x: torch.Tensor, recompute_mlp: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        if recompute_mlp:  # keep x only; LayerNorm, fc and GELU run again in backward
            return x + checkpoint(self._mlp, x, use_reentrant=False)
        return x + self._mlp(x)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_2(x))

    def forward_cached(self, x: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` for new positions after a cache (``CausalSelfAttention.forward_cached``)."""
        y, present = self.attn.forward_cached(self.ln_1(x), past)
        x = x + y
        return x + self._mlp(x), present


class Transformer(nn.Module):
    """The GPT network: token ids ``(B, T)`` with ``T <= block_size`` -> next-token logits ``(B, T, vocab)``."""

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float,
        bias: bool,
    ) -> None:
        super().__init__()
        self.block_size = block_size
        self.activation_checkpointing = "none"  # "block" | "mlp": recompute in backward (see GPT)
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(n_embd, n_head, dropout, bias) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        mode = self.activation_checkpointing if self.training and torch.is_grad_enabled() else "none"
        for i, block in enumerate(self.blocks):  # not the last block: backward would recompute it at once
            mode_i = mode if i < len(self.blocks) - 1 else "none"
            x = checkpoint(block, x, use_reentrant=False) if mode_i == "block" else block(x, mode_i == "mlp")
        return self.lm_head(self.ln_f(x))

    def forward_cached(
        self, idx: torch.Tensor, past: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits of new token ids ``idx`` (B, T) that follow ``P`` cached positions, and the present cache.

        ``past``: one ``(2, B, n_head, P, head_size)`` tensor of keys and values per block (``empty_past`` for
        ``P = 0``); positions ``P .. P + T - 1`` must lie inside ``block_size`` (``models/kv_cache.py`` keeps
        them there). Same logits as ``forward`` on the whole sequence, without recomputing the cached part.
        """
        start = past[0].shape[3]
        pos = torch.arange(idx.shape[1], device=idx.device) + start
        x = self.drop(self.wte(idx) + self.wpe(pos))
        present = []
        for block, layer_past in zip(self.blocks, past, strict=True):
            x, layer_present = block.forward_cached(x, layer_past)
            present.append(layer_present)
        return self.lm_head(self.ln_f(x)), present

    def empty_past(self, batch_size: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """An empty cache: ``(2, batch_size, n_head, 0, head_size)`` zeros per block (heads as pruning left them)."""
        dtype = self.wte.weight.dtype
        return [
            torch.zeros(
                2,
                batch_size,
                b.attn.n_head,
                0,
                b.attn.proj.in_features // b.attn.n_head,
                dtype=dtype,
                device=device,
            )
            for b in self.blocks
        ]
