"""``teacher_cache: topk``: the teacher's top-k table over the training pairs, computed once and cached.

One Ray task loads the teacher with ``from_pretrained``, runs a no-grad forward over every training
pair (TGO rows, then SGO rows, each padded to ``max_length``) and keeps per position the top-k
log-probs plus the rest's mass (``posttrain.teacher_topk``, which states the error bound of the
(k + 1)-bucket losses). The table is written as safetensors under a fingerprint of the teacher's
weights, the tokenizer, the pairs, ``max_length`` and k, so a second run with the same inputs loads
it and never builds the teacher at all: training workers then hold no teacher in memory.

``teacher_cache: online`` needs nothing here: the worker's teacher is ``posttrain.worker.frozen_model``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import ray

from ..posttrain.reference import fingerprint


def topk_cache_dir() -> Path:
    return Path(os.environ.get("DIST_CORE_CACHE", Path.home() / ".cache" / "dist_core")) / "distill_topk"


def topk_key(teacher_dir: Path, tokenizer_dir: Path, pairs: Path, max_length: int, k: int) -> str:
    return fingerprint([Path(teacher_dir), Path(tokenizer_dir), Path(pairs)],
                       {"max_length": max_length, "k": k, "format": 1})


@ray.remote
def build_table(teacher_dir: str, tokenizer_dir: str, pairs: str, max_length: int, k: int, micro: int,
                out: str, key: str, threads: int = 1) -> int:
    """Write the (2N, max_length, k) top-k table of the N pairs in ``pairs`` to ``out``; returns N."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..posttrain import data as D
    from ..posttrain.teacher_topk import TopKTeacher, save_topk, topk_teacher

    torch.set_num_threads(max(1, threads))
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    tgo, sgo = D.encode_preference(tok, D.read_rows(Path(pairs)), max_length)
    ids, labels = tgo.ids + sgo.ids, tgo.labels + sgo.labels
    parts = []
    with torch.no_grad():
        for start in range(0, len(ids), micro):
            batch = D.collate(ids[start:start + micro], labels[start:start + micro], pad)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            width = logits.shape[1]
            if width < max_length:  # one table width: positions past a row's end are never counted
                logits = torch.nn.functional.pad(logits, (0, 0, 0, max_length - width))
            parts.append(topk_teacher(logits, k))
    table = TopKTeacher(*(torch.cat([getattr(p, f) for p in parts]) for f in
                          ("logp", "index", "log_rest", "log_min_rest")))
    save_topk(out, table, fingerprint=key)
    return len(tgo)


def ensure_table(teacher_dir: Path, tokenizer_dir: Path, pairs: Path, max_length: int, k: int, micro: int,
                 cpus: float = 1.0) -> tuple[Path, bool]:
    """The cached table's path, built first if missing; and whether it was a cache hit."""
    key = topk_key(teacher_dir, tokenizer_dir, pairs, max_length, k)
    path = topk_cache_dir() / f"{key}.safetensors"
    if path.exists():
        return path, True
    ray.get(build_table.options(num_cpus=cpus).remote(str(teacher_dir), str(tokenizer_dir), str(pairs), max_length,
                                                      k, micro, str(path), key, int(cpus)))
    return path, False


def load_table(path: Path):
    from ..posttrain.teacher_topk import load_topk

    return load_topk(path, fingerprint=path.stem)


def lookup(table, rows, width: int) -> Callable[[slice], object]:
    """The teacher for a ``preference_batch`` of ``rows`` padded to ``width``: a function of the half
    (TGO rows first, then SGO) that returns that half's ``TopKTeacher`` on the shifted positions."""
    import torch

    from ..posttrain.teacher_topk import TopKTeacher

    n = table.logp.shape[0] // 2
    index = torch.as_tensor(rows, dtype=torch.long)
    both = torch.cat([index, index + n])

    def half(sl: slice) -> TopKTeacher:
        r = both[sl]
        return TopKTeacher(table.logp[r, :width - 1], table.index[r, :width - 1], table.log_rest[r, :width - 1],
                           table.log_min_rest[r, :width - 1])

    return half
