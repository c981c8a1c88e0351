"""The run contract: the run directory, the hooks that observe a run, and what a run returns.

Every kind's entry point is ``run(job, run_dir, hooks, resume) -> JobResult``. It writes metric
records with ``run_dir.log_metrics`` (each also goes to ``hooks``: Tune, TensorBoard, MLflow) and
RunDir checkpoints with ``run_dir.save_checkpoint``; on ``resume`` it continues from
``run_dir.latest_checkpoint()`` and drops the records it will replay (``truncate_metrics``), so
every record is in ``metrics.jsonl`` exactly once.

    runs/<name>-<timestamp>/
      spec.yaml          the resolved job (every default filled in)
      metrics.jsonl      one JSON object per round, flushed as training goes
      summary.json       {kind, name, status, metrics, wall_s, checkpoint, ...}
      run.log            this run's log, with actors' tracebacks
      checkpoints/       round_000025/{tensors.safetensors, meta.json}; latest.json points at one
      plots/             PNGs
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from . import checkpoint

log = logging.getLogger("dist_core")
Record = dict[str, Any]


class RunListener(Protocol):
    """Something that watches a run: a Tune reporter, a TensorBoard writer, an MLflow run."""

    def on_record(self, record: Record) -> None: ...

    def on_checkpoint(self, step: int, path: Path) -> None: ...

    def on_end(self, summary: dict[str, Any], run_dir: "RunDir") -> None: ...


@dataclass
class RunHooks:
    """What a run tells the world besides its run directory; ``progress``: show progress bars."""

    progress: bool = True
    listeners: list[RunListener] = field(default_factory=list)

    def on_record(self, record: Record) -> None:
        for listener in self.listeners:
            listener.on_record(record)

    def on_checkpoint(self, step: int, path: Path) -> None:
        for listener in self.listeners:
            listener.on_checkpoint(step, path)

    def on_end(self, summary: dict[str, Any], run_dir: "RunDir") -> None:
        for listener in self.listeners:
            listener.on_end(summary, run_dir)


@dataclass
class JobResult:
    """What an entry point returns: final metrics, the checkpoint to cite, kind-specific fields."""

    metrics: dict[str, Any]
    checkpoint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def last_of_each(records: list[Record], key: Callable[[Record], Any]) -> list[Record]:
    """The last record of each ``key`` (a restarted worker group replays steps), in file order;
    records whose key is ``None`` (events) are all kept."""
    last = {key(r): i for i, r in enumerate(records) if key(r) is not None}
    return [r for i, r in enumerate(records) if key(r) is None or last[key(r)] == i]


class RunDir:
    def __init__(self, path: Path, hooks: RunHooks | None = None):
        self.path = Path(path)
        self.hooks = hooks or RunHooks()
        self.plots = self.path / "plots"
        self.checkpoints = self.path / "checkpoints"
        self.metrics_file = self.path / "metrics.jsonl"
        self._handler: logging.Handler | None = None

    @classmethod
    def create(cls, out_root: Path, name: str) -> "RunDir":
        stamp = time.strftime("%Y%m%d-%H%M%S")
        root = Path(out_root).resolve()  # workers and trials run elsewhere: never hand them a relative path
        path = root / f"{name}-{stamp}"
        n = 1
        while path.exists():
            n += 1
            path = root / f"{name}-{stamp}-{n}"
        run = cls(path)
        for d in (run.path, run.plots, run.checkpoints):
            d.mkdir(parents=True, exist_ok=True)
        return run

    # ------------------------------------------------------------ logging
    def attach_log(self) -> None:
        self._handler = logging.FileHandler(self.path / "run.log")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(self._handler)
        logging.getLogger().setLevel(logging.INFO)

    def detach_log(self) -> None:
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler.close()
            self._handler = None

    def write_log(self, text: str) -> None:
        with open(self.path / "run.log", "a") as fh:
            fh.write(text.rstrip() + "\n")

    # ------------------------------------------------------------ spec, metrics, summary
    def write_spec(self, text: str) -> None:
        (self.path / "spec.yaml").write_text(text)

    def spec_path(self) -> Path:
        return self.path / "spec.yaml"

    def log_metrics(self, record: Record) -> None:
        """Append one record (flushed at once) and hand it to the run's listeners."""
        with open(self.metrics_file, "a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")
            fh.flush()
        self.hooks.on_record(record)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.exists():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, last: int, key: str = "round") -> None:
        """Drop records whose ``key`` is past ``last`` (a recovery or resume replays them)."""
        self.rewrite_metrics([r for r in self.read_metrics() if r.get(key, 0) <= last])

    def rewrite_metrics(self, records: list[Record]) -> None:
        tmp = self.metrics_file.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, default=float) + "\n" for r in records))
        os.replace(tmp, self.metrics_file)

    def write_summary(self, kind: str, name: str, status: str, metrics: dict[str, Any], wall_s: float,
                      checkpoint_path: str | None, **extra: Any) -> dict[str, Any]:
        summary = {"kind": kind, "name": name, "status": status, "metrics": metrics,
                   "wall_s": round(wall_s, 3), "checkpoint": checkpoint_path, **extra}
        checkpoint.write_json_atomic(self.path / "summary.json", summary)
        return summary

    def read_summary(self) -> dict[str, Any] | None:
        p = self.path / "summary.json"
        return json.loads(p.read_text()) if p.exists() else None

    # ------------------------------------------------------------ checkpoints
    def save_checkpoint(self, round_idx: int, tensors: dict[str, np.ndarray], meta: dict[str, Any],
                        keep: int = 2) -> Path:
        target = checkpoint.save(self.checkpoints / f"round_{round_idx:06d}", tensors, meta)
        checkpoint.write_json_atomic(self.checkpoints / "latest.json", {"path": target.name, "round": round_idx})
        for old in sorted(self.checkpoints.glob("round_*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        self.hooks.on_checkpoint(round_idx, target)
        return target

    def place_checkpoint(self, source: Path, round_idx: int) -> Path:
        """Copy a checkpoint directory (one Tune restores) in as the latest, so ``resume`` continues it."""
        target = self.checkpoints / f"round_{round_idx:06d}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        checkpoint.write_json_atomic(self.checkpoints / "latest.json", {"path": target.name, "round": round_idx})
        return target

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint ``latest.json`` names; if it is gone, the newest complete ``round_*``.

        A checkpoint is renamed into place whole (``checkpoint.save``), so a ``round_*`` directory is
        never half-written: a save killed midway leaves only a hidden temporary directory, which is
        never picked. The pointer's target can be missing only when a save that re-wrote the same
        round was killed between its two renames; the previous rounds are still there."""
        pointer = self.checkpoints / "latest.json"
        if pointer.exists():
            target = self.checkpoints / json.loads(pointer.read_text())["path"]
            if checkpoint.is_complete(target):
                return target
        done = [d for d in sorted(self.checkpoints.glob("round_*")) if checkpoint.is_complete(d)]
        return done[-1] if done else None

    def discard_partial_checkpoints(self) -> list[Path]:
        """Remove what killed saves left behind (hidden temporary directories); only the one writer
        of this run directory may call it, before it saves again."""
        partial = [p for p in self.checkpoints.glob(".round_*") if p.is_dir()] if self.checkpoints.exists() else []
        for p in partial:
            shutil.rmtree(p, ignore_errors=True)
        return partial
