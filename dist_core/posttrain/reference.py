"""The frozen reference π_ref: a sharded model, or log-prob tables computed once.

``table`` mode (``precompute_ref: true``, and Sequential's DPO phase) runs one no-grad pass over the
preference rows and keeps log π_ref(chosen), log π_ref(rejected) per row. Tables are cached on disk
under a fingerprint of the model weights, tokenizer, data and max_length, so a second run with the
same inputs skips the pass (what TRL users ask for in trl#3985). ``model`` mode keeps a frozen copy:
a DeepSpeed ZeRO-3 inference engine when the policy is ZeRO-3 (sharded like the policy), else a
plain per-rank module, as TRL does.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from .data import Encoded, preference_batch
from .losses import sequence_logps

Forward = Callable[[dict[str, torch.Tensor]], torch.Tensor]  # batch -> logits


def fingerprint(files: list[Path], extra: dict[str, Any]) -> str:
    """sha256 over the bytes of every file (directories: their files, sorted) and ``extra``."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for f in files:
        paths = sorted(p for p in Path(f).rglob("*") if p.is_file()) if Path(f).is_dir() else [Path(f)]
        for p in paths:
            h.update(p.name.encode())
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:24]


@torch.no_grad()
def logps_table(forward: Forward, chosen: Encoded, rejected: Encoded, rows: int, micro: int, pad_id: int,
                rank: int, world: int) -> torch.Tensor:
    """(rows, 2) reference log-probs of the first ``rows`` pairs, computed in rank-strided shards.

    Every rank runs the same number of forwards (the last shard is padded by repeating row 0):
    ZeRO-3 gathers parameters collectively, so a rank that skipped a forward would hang the others.
    """
    per_rank = -(-rows // world)
    mine = [r if r < rows else 0 for r in range(rank, per_rank * world, world)]
    out = torch.zeros(per_rank, 2)
    for start in range(0, per_rank, micro):
        index = np.asarray(mine[start:start + micro])
        batch = preference_batch(chosen, rejected, index, pad_id)
        lp = sequence_logps(forward(batch), batch["labels"])
        out[start:start + len(index)] = torch.stack(lp.chunk(2), dim=1).float()
    if world > 1:
        parts = [torch.zeros_like(out) for _ in range(world)]
        dist.all_gather(parts, out)
    else:
        parts = [out]
    # Row r lives in part r % world at position r // world.
    full = torch.stack(parts, dim=1).reshape(per_rank * world, 2)
    return full[:rows].clone()


def cached_table(cache_dir: Path | None, key: str, compute: Callable[[], torch.Tensor], rank: int) -> tuple[torch.Tensor, bool]:
    """The table for ``key`` from ``cache_dir`` if present, else computed (rank 0 writes it atomically)."""
    from safetensors.torch import load_file, save_file

    path = cache_dir / f"{key}.safetensors" if cache_dir is not None else None
    if path is not None and path.exists():
        return load_file(str(path))["logps"], True
    table = compute()
    if path is not None and rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"logps": table.contiguous()}, str(tmp))
        os.replace(tmp, path)
    return table, False


class Reference:
    """log π_ref for a preference batch: looked up in a table by row, or a forward of the frozen model."""

    def __init__(self, table: torch.Tensor | None = None, forward: Forward | None = None):
        if (table is None) == (forward is None):
            raise ValueError("a reference is a table or a model, exactly one")
        self.table = table
        self.forward = forward

    @torch.no_grad()
    def logps(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.table is not None:
            rows = self.table[batch["rows"]]
            return rows[:, 0], rows[:, 1]
        lp = sequence_logps(self.forward(batch), batch["labels"])
        chosen, rejected = lp.chunk(2)
        return chosen, rejected
