"""compression=[prune] under DDP with 2 CPU processes (a real subprocess): every rank prunes the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch

FAST = [
    "compression=[prune]",
    "compression.prune.final_sparsity=0.8",
    "compression.prune.latency_repeats=2",
    "++trainer.limit_train_batches=2",
    "++trainer.limit_val_batches=1",
    "trainer.accelerator=cpu",
    "callbacks.progress_bar=null",
    "trainer.enable_model_summary=false",
    "test=false",
    "model.sample_every_n_epochs=0",
]


MASK_DUMP = '''
from pathlib import Path
import torch
from lightning.pytorch import Callback

class MaskDump(Callback):
    """Each rank saves its pruning masks before they are made permanent."""
    def on_train_end(self, trainer, pl_module):
        masks = {n: b.detach().bool().cpu() for n, b in pl_module.named_buffers() if n.endswith("weight_mask")}
        torch.save(masks, Path(trainer.default_root_dir) / f"masks_rank{trainer.global_rank}.pt")
'''


def test_ddp_two_processes_prune_identical_masks(cli, tmp_path: Path) -> None:
    (tmp_path / "maskdump.py").write_text(MASK_DUMP)
    out = tmp_path / "ddp"
    run = cli(
        [
            *FAST,
            "trainer.max_epochs=2",
            "compression.prune.end_epoch=1",
            "compression.prune.method=random_unstructured",
            "trainer.devices=2",
            "++trainer.strategy=ddp",
            "+callbacks.mask_dump._target_=maskdump.MaskDump",
            f"hydra.run.dir={out}",
        ]
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1 = (torch.load(out / f"masks_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(rank0) == 7 and rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    total = sum(m.numel() for m in rank0.values())
    assert sum(int((~m).sum()) for m in rank0.values()) == round(0.8 * total)
    assert json.loads((out / "compression.json").read_text())["sparsity"] == 0.8
