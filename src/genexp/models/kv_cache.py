"""Generation with a key/value cache: each new token costs one position, not the whole context.

``Transformer.forward_cached`` takes the keys and values of the positions already seen (one
``(2, batch, n_head, past, head_size)`` tensor per block) and returns the logits of the new positions and the
grown cache. ``generate_cached`` drives any such step (the torch network here, ONNX Runtime's
``decoder_with_past.onnx`` through the same loop), and ``CachedDecoder`` is the module that export writes.

**Past the window.** The position embeddings are learned for ``0 .. block_size - 1`` and every cached key
carries the position it was computed at, so a cache cannot slide: its first key would have to move to position
0. When the next token would not fit (``past + 1 > block_size``), the cache is dropped and re-filled in one call
from the last ``block_size // 2`` ids, at positions ``0 .. block_size // 2 - 1``; then it grows one token per
step again. Every token still sees at least ``block_size // 2`` ids of context (crop-every-step sees
``block_size``), so the positions stay the ones the model learned, and a re-fill costs one forward pass of half a
window every ``block_size // 2`` tokens. While prompt and new tokens fit in ``block_size`` the ids are the
crop-every-step path's exactly (same logits up to float rounding).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Step = Callable[[torch.Tensor, list[torch.Tensor]], tuple[torch.Tensor, list[torch.Tensor]]]
Pick = Callable[[torch.Tensor], torch.Tensor]


def refill_length(block_size: int) -> int:
    """How many of the last ids re-fill a full cache: ``block_size // 2`` (at least one)."""
    return max(1, block_size // 2)


@torch.no_grad()
def generate_cached(
    step: Step,
    empty_past: Callable[[int], list[torch.Tensor]],
    idx: torch.Tensor,
    max_new_tokens: int,
    block_size: int,
    pick: Pick,
) -> torch.Tensor:
    """Extend each row of ``idx`` (B, T) by ``max_new_tokens`` ids with a key/value cache.

    Args:
        step: ``step(new_ids, past) -> (logits (B, T, vocab), present)``.
        empty_past: ``empty_past(batch)`` the cache of no positions.
        pick: last-position logits (B, vocab) -> next ids (B, 1) (sampling or argmax).
    """
    past = empty_past(idx.shape[0])
    new = idx[:, -block_size:]  # a longer prompt: its last window (the next step re-fills)
    for _ in range(max_new_tokens):
        if past[0].shape[3] + new.shape[1] > block_size:  # full: re-fill from the last block_size // 2 ids
            past, new = empty_past(idx.shape[0]), idx[:, -refill_length(block_size) :]
        logits, past = step(new, past)
        new = pick(logits[:, -1, :])
        idx = torch.cat([idx, new], dim=1)
    return idx


def net_step(net: nn.Module) -> tuple[Step, Callable[[int], list[torch.Tensor]]]:
    """``(step, empty_past)`` of a torch ``Transformer`` for ``generate_cached``."""
    device = next(net.parameters()).device
    return net.forward_cached, lambda batch: net.empty_past(batch, device)


class CachedDecoder(nn.Module):
    """The exported cached decoder: ``tokens`` and ``past_<i>`` in, ``logits`` and ``present_<i>`` out.

    Wraps a ``Transformer`` (or an export copy of it): ``forward(tokens, past_0, ..., past_{L-1})`` returns
    ``(logits, present_0, ..., present_{L-1})`` as ``Transformer.forward_cached`` computes them.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, tokens: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, present = self.net.forward_cached(tokens, list(past))
        return (logits, *present)
