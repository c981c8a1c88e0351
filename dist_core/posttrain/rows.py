"""Post-training rows: read them through ``datasets`` and check them, without torch.

Rows follow TRL's conventions (``data.py`` has them). A bad row is reported as
``file:line: field: reason`` (JSONL lines are counted; for Parquet and ``save_to_disk``
directories the "line" is the row number). Validating a job file reads its data through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import SpecError

SFT_FIELDS = ("prompt", "completion")
PREF_FIELDS = ("prompt", "chosen", "rejected")


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
