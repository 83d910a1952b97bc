"""The baby GPT recipe as one plain PyTorch script (torch and TensorBoard only: no Lightning, no Hydra, no genexp).

What ``genexp-train experiment=gpt_shakespeare_cpu`` does, written by hand: a 4-layer x 4-head x 128 GPT with
tied embeddings, context 64, batch 12, random training windows from the first 90% of the text (then 5% validation, 5% test), AdamW (lr 1e-3,
betas 0.9/0.99, weight decay 0.1 on matrices), 100 warm-up steps then cosine to 1e-4, gradient clipping 1.0;
every 200 steps a validation on 20 fixed batches, a last checkpoint and a best one (when validation improves);
train loss and lr to TensorBoard every 20 steps; two 200-character samples at the end, then a test pass of the
best weights on 20 fixed batches of the test split. ``benchmarks/gpt_speed.py --e2e`` times it,
process start to exit, against the genexp command.

    python benchmarks/plain_gpt.py --data input.txt --out /tmp/plain [--epochs 10]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.tensorboard import SummaryWriter


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width, bias=False), nn.LayerNorm(width, bias=False)
        self.qkv, self.out = nn.Linear(width, 3 * width, bias=False), nn.Linear(width, width, bias=False)
        self.up, self.down = nn.Linear(width, 4 * width, bias=False), nn.Linear(4 * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        heads = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(heads[0], heads[1], heads[2], is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(b, t, c))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, context: int, layers: int = 4, heads: int = 4, width: int = 128) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(width, bias=False)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.tokens.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("out.weight", "down.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tokens(idx) + self.positions(torch.arange(idx.shape[1]))
        return self.head(self.norm(self.blocks(x)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of 200 steps")
    parser.add_argument(
        "--fused", action="store_true", help="AdamW(fused=True), the kernel genexp picks on 32-true"
    )
    args = parser.parse_args()
    torch.manual_seed(12345)
    text = args.data.read_text(encoding="utf-8")
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([lookup[c] for c in text], dtype=torch.long)
    context, batch, steps_per_epoch = 64, 12, 200
    val_start, test_start = len(data) - 2 * int(0.05 * len(data)), len(data) - int(0.05 * len(data))
    train_windows = data[:val_start].unfold(0, context + 1, 1)

    def fixed(part: torch.Tensor) -> torch.Tensor:
        windows = part.unfold(0, context + 1, 1)
        return windows[torch.linspace(0, len(windows) - 1, 20 * batch).round().long()]

    val, test = fixed(data[val_start:test_start]), fixed(data[test_start:])

    def evaluate(windows: torch.Tensor) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            losses = [
                F.cross_entropy(model(w[:, :-1]).flatten(0, 1), w[:, 1:].flatten())
                for w in windows.split(batch)
            ]
        return torch.stack(losses).mean()

    model = TinyGPT(len(chars), context)
    matrices = [
        p for n, p in model.named_parameters() if p.dim() >= 2 and "tokens" not in n and "positions" not in n
    ]
    others = [p for n, p in model.named_parameters() if p.dim() < 2 or "tokens" in n or "positions" in n]
    optimizer = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.99),
        **({"fused": True} if args.fused else {}),
    )
    total, warmup, floor = args.epochs * steps_per_epoch, 100, 0.1

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    args.out.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(args.out / "tensorboard"))
    generator, step, best = torch.Generator().manual_seed(12345), 0, math.inf
    for epoch in range(args.epochs):
        model.train()
        for _ in range(steps_per_epoch):
            chunk = train_windows[torch.randint(len(train_windows), (batch,), generator=generator)]
            logits = model(chunk[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            if step % 20 == 0:
                writer.add_scalar("train/loss", loss.item(), step)
                writer.add_scalar("lr", scheduler.get_last_lr()[0], step)
        val_loss = evaluate(val)
        writer.add_scalar("val/loss", val_loss.item(), step)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
        torch.save(state, args.out / "last.pt")
        if val_loss.item() < best:
            best = val_loss.item()
            torch.save(state, args.out / "best.pt")
        print(f"epoch {epoch}: val loss {val_loss.item():.4f}", flush=True)
    with torch.no_grad():  # two samples of 200 characters after a newline, as genexp's GPT logs them
        idx = torch.full((2, 1), lookup.get("\n", 0), dtype=torch.long)
        for _ in range(200):
            probs = F.softmax(model(idx[:, -context:])[:, -1], dim=-1)
            idx = torch.cat([idx, torch.multinomial(probs, 1)], dim=1)
    samples = ["".join(chars[i] for i in row) for row in idx.tolist()]
    writer.add_text("samples", "\n\n".join(samples), step)
    model.load_state_dict(torch.load(args.out / "best.pt")["model"])
    test_loss = evaluate(test).item()
    writer.add_scalar("test/loss", test_loss, step)
    writer.close()
    print(f"test loss {test_loss:.4f} (best val {best:.4f})", flush=True)


if __name__ == "__main__":
    main()
