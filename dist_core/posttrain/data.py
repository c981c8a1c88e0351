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

from ..errors import SpecError
from .losses import IGNORE

SFT_FIELDS = ("prompt", "completion")
PREF_FIELDS = ("prompt", "chosen", "rejected")


# ---------------------------------------------------------------- reading and checking
def read_rows(path: Path) -> list[dict[str, Any]]:
    """All rows of a JSONL/JSON file, a Parquet file, or a ``save_to_disk`` directory."""
    import datasets

    datasets.disable_progress_bars()
    path = Path(path)
    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"]
    else:
        builder = "parquet" if path.suffix == ".parquet" else "json"
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    return ds.to_list()


def _row_lines(path: Path, n: int) -> list[int]:
    """1-based file line of each row: JSONL skips blank lines; other formats use the row number."""
    if path.is_file() and path.suffix in (".jsonl", ".json"):
        with open(path, "rb") as fh:
            lines = [i + 1 for i, raw in enumerate(fh) if raw.strip()]
        if len(lines) == n:
            return lines
    return list(range(1, n + 1))


def _is_chat(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def check_rows(rows: list[dict[str, Any]], path: Path, kind: str) -> None:
    """Raise ``SpecError(path, line, field, ...)`` for the first row that cannot be trained on."""
    lines = _row_lines(Path(path), len(rows))
    if not rows:
        raise SpecError(str(path), 1, "(rows)", f"no rows: {kind} data must not be empty")
    for i, row in enumerate(rows):
        fields = ("messages",) if kind == "sft" and "messages" in row else (SFT_FIELDS if kind == "sft" else PREF_FIELDS)
        for name in fields:
            value = row.get(name)
            if value is None:
                raise SpecError(str(path), lines[i], name, f"required field missing in this {kind} row "
                                f"(rows need {' / '.join(fields)}; got {', '.join(sorted(k for k, v in row.items() if v is not None)) or 'nothing'})")
            if not (isinstance(value, str) and value) and not _is_chat(value):
                raise SpecError(str(path), lines[i], name, f"must be a non-empty string or a chat list, "
                                f"got {type(value).__name__}")
        if "messages" in fields and row["messages"][-1].get("role") != "assistant":
            raise SpecError(str(path), lines[i], "messages", "the last message must be the assistant's")


def load_checked(path: Path, kind: str) -> list[dict[str, Any]]:
    rows = read_rows(path)
    check_rows(rows, path, kind)
    return rows


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
