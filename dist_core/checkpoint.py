"""Checkpoints as safetensors + JSON, written atomically (temp directory + rename).

A checkpoint is a directory ``<name>/{tensors.safetensors, meta.json}``. It is written under a
temporary name and renamed into place, so a reader sees either the old one or the whole new one;
nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

TENSORS = "tensors.safetensors"
META = "meta.json"


def write_json_atomic(path: Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, default=_jsonable)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def save(directory: Path, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp / TENSORS))
    write_json_atomic(tmp / META, meta)
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)
    return directory


def is_complete(directory: Path) -> bool:
    """A checkpoint directory with its ``meta.json``, the file a save writes last (a placed copy of
    a post-training checkpoint has one too, beside DeepSpeed's files instead of ours)."""
    return (Path(directory) / META).is_file()


def load(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    directory = Path(directory)
    tensors = load_file(str(directory / TENSORS))
    meta = json.loads((directory / META).read_text())
    return tensors, meta
