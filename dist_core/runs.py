"""The run directory: what a run leaves behind for people and for ``resume``.

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
from pathlib import Path
from typing import Any

import numpy as np

from . import checkpoint

log = logging.getLogger("dist_core")


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.plots = self.path / "plots"
        self.checkpoints = self.path / "checkpoints"
        self.metrics_file = self.path / "metrics.jsonl"
        self._handler: logging.Handler | None = None

    @classmethod
    def create(cls, out_root: Path, name: str) -> "RunDir":
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(out_root) / f"{name}-{stamp}"
        n = 1
        while path.exists():
            n += 1
            path = Path(out_root) / f"{name}-{stamp}-{n}"
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

    def log_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_file, "a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")
            fh.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.exists():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, last_round: int) -> None:
        """Drop records after ``last_round`` (a recovery or resume replays them)."""
        kept = [r for r in self.read_metrics() if r.get("round", 0) <= last_round]
        tmp = self.metrics_file.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
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
        return target

    def latest_checkpoint(self) -> Path | None:
        pointer = self.checkpoints / "latest.json"
        if not pointer.exists():
            return None
        target = self.checkpoints / json.loads(pointer.read_text())["path"]
        return target if target.exists() else None
