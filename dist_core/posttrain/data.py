"""Post-training data: read rows through ``datasets``, check them, tokenize, and cut batches.

Rows follow TRL's conventions. SFT: ``prompt``/``completion`` strings, or ``messages`` (a chat
whose last turn is the assistant's). Preference: ``prompt``/``chosen``/``rejected`` strings, or
chat lists. A bad row is reported as ``file:line: field: reason`` (JSONL lines are counted; for
Parquet and ``save_to_disk`` directories the "line" is the row number).

Batches are deterministic in (seed, epoch, step) and independent of the method, so every method
sees the same data order. A global batch is cut into micro-batches so that the micro-batch sets are
the same for any (workers × accumulation) split of one global batch: that is what makes 1 worker
and 2 workers follow the same loss trajectory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .losses import IGNORE
from .rows import PREF_FIELDS, SFT_FIELDS, check_rows, load_checked, read_rows  # noqa: F401  (re-exported)


# ---------------------------------------------------------------- tokenizing
@dataclass
class Encoded:
    """Token ids and labels per row (labels: -100 on the prompt), unpadded."""

    ids: list[list[int]]
    labels: list[list[int]]

    def __len__(self) -> int:
        return len(self.ids)


def _text_pair(tokenizer: Any, prompt: Any, answer: Any) -> tuple[str, str, bool]:
    """(prompt text, answer text, whether the answer already ends with EOS) for strings or chats."""
    if isinstance(prompt, str) and isinstance(answer, str):
        return prompt, answer, False
    chat = (prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}])
    turn = answer if isinstance(answer, list) else [{"role": "assistant", "content": answer}]
    head = tokenizer.apply_chat_template(chat, tokenize=False)
    full = tokenizer.apply_chat_template(chat + turn, tokenize=False)
    return head, full[len(head):], True


def encode(tokenizer: Any, prompt: Any, answer: Any, max_length: int) -> tuple[list[int], list[int]]:
    head, tail, has_eos = _text_pair(tokenizer, prompt, answer)
    p = tokenizer(head, add_special_tokens=False)["input_ids"]
    a = tokenizer(tail, add_special_tokens=False)["input_ids"]
    if not has_eos:
        a = a + [tokenizer.eos_token_id]
    ids = (p + a)[:max_length]
    labels = ([IGNORE] * len(p) + a)[:max_length]
    return ids, labels


def encode_sft(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> Encoded:
    out = Encoded([], [])
    for row in rows:
        if "messages" in row:
            prompt, answer = row["messages"][:-1], [row["messages"][-1]]
        else:
            prompt, answer = row["prompt"], row["completion"]
        ids, labels = encode(tokenizer, prompt, answer, max_length)
        out.ids.append(ids)
        out.labels.append(labels)
    return out


def encode_preference(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> tuple[Encoded, Encoded]:
    """(chosen, rejected), row-aligned."""
    chosen, rejected = Encoded([], []), Encoded([], [])
    for row in rows:
        for side, enc in (("chosen", chosen), ("rejected", rejected)):
            ids, labels = encode(tokenizer, row["prompt"], row[side], max_length)
            enc.ids.append(ids)
            enc.labels.append(labels)
    return chosen, rejected


def collate(ids: list[list[int]], labels: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding)."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    lab = torch.full((len(ids), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, (x, y) in enumerate(zip(ids, labels)):
        input_ids[i, : len(x)] = torch.tensor(x)
        lab[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": lab}


def sft_batch(enc: Encoded, index: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    return collate([enc.ids[i] for i in index], [enc.labels[i] for i in index], pad_id)


def preference_batch(chosen: Encoded, rejected: Encoded, index: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows in one padded batch: one forward gives both (TRL's layout)."""
    ids = [chosen.ids[i] for i in index] + [rejected.ids[i] for i in index]
    labels = [chosen.labels[i] for i in index] + [rejected.labels[i] for i in index]
    batch = collate(ids, labels, pad_id)
    batch["rows"] = torch.as_tensor(np.asarray(index), dtype=torch.long)
    return batch


# ---------------------------------------------------------------- batching
def global_batch(n_rows: int, batch: int, seed: int, epoch: int, step: int) -> np.ndarray:
    """Row indices of global batch ``step`` of ``epoch``: a fresh permutation per epoch, last partial dropped."""
    order = np.random.default_rng([seed, epoch]).permutation(n_rows)
    return order[step * batch:(step + 1) * batch]


def micro_slice(indices: np.ndarray, micro: int, accum: int, rank: int, world: int) -> np.ndarray:
    """Rank ``rank``'s ``accum``-th micro-batch: slot (accum·world + rank) of the global batch."""
    slot = accum * world + rank
    return indices[slot * micro:(slot + 1) * micro]
