"""A checkpoint save SIGKILLed midway: the previous checkpoint stays the latest and loads, what the
killed save left is never picked and is removed on resume, and a job resumed over it finishes with
the uninterrupted run's records and metrics."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dist_core import checkpoint, spec
from dist_core.runner import run_job
from dist_core.bljust import job as bljust_job
from dist_core.runs import RunDir, RunHooks
from helpers import KillAt, Killed

ROOT = Path(__file__).resolve().parent.parent
N = 25_000_000  # float32: 100 MB a save, long enough to be caught in the middle of one

WRITER = "\n".join([
    "import sys",
    "import numpy as np",
    f"sys.path.insert(0, {str(ROOT)!r})",
    "from dist_core.runs import RunDir",
    "run = RunDir(sys.argv[1])",
    "run.checkpoints.mkdir(parents=True, exist_ok=True)",
    "for r in range(1, 10_000):",
    f"    run.save_checkpoint(r, {{'w': np.full({N}, r, dtype=np.float32)}}, {{'round': r}})",
])



def partial_save(checkpoints: Path) -> Path | None:
    """A save in progress: its temporary directory, the tensors being written, meta.json not yet."""
    for tmp in checkpoints.glob(".round_*.tmp-*"):
        if tmp.is_dir() and not (tmp / checkpoint.META).exists():
            return tmp
    return None


def test_a_save_killed_midway_leaves_the_previous_checkpoint_latest(tmp_path):
    run = RunDir(tmp_path / "run")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run.path)])
    caught = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and caught is None:
            assert writer.poll() is None, "the writer ended on its own"
            pointer = run.checkpoints / "latest.json"
            if pointer.exists() and json.loads(pointer.read_text())["round"] >= 2:
                caught = partial_save(run.checkpoints)
            if caught is None:
                time.sleep(0.0005)
        assert caught is not None, "no save was caught in the middle within 120 s"
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()

    # The killed save's temporary directory is left behind (unless the kill landed just after its
    # rename, in which case that round is whole); the latest is always a whole checkpoint.
    latest = run.latest_checkpoint()
    assert not latest.name.startswith(".")
    tensors, meta = checkpoint.load(latest)
    assert latest.name == f"round_{meta['round']:06d}" and meta["round"] >= 2
    assert tensors["w"].shape == (N,) and float(tensors["w"].min()) == float(tensors["w"].max()) == meta["round"]
    assert all(checkpoint.is_complete(d) for d in run.checkpoints.glob("round_*"))
    left_behind = [caught] if caught.exists() else []
    assert run.discard_partial_checkpoints() == left_behind
    assert not list(run.checkpoints.glob(".round_*"))
    assert run.latest_checkpoint() == latest


def test_a_pointer_to_a_vanished_round_falls_back_to_the_newest_whole_one(tmp_path):
    # What a save that re-writes the same round leaves when killed between its two renames.
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    for r in (3, 4):
        run.save_checkpoint(r, {"w": np.full(4, r, dtype=np.float32)}, {"round": r})
    os.replace(run.checkpoints / "round_000004", run.checkpoints / ".round_000004.old-1")
    assert run.latest_checkpoint() == run.checkpoints / "round_000003"
    shutil.rmtree(run.checkpoints / "round_000003")
    assert run.latest_checkpoint() is None


TINY = ["bl_just.warmup.steps=5", "bl_just.joint.steps=5", "bl_just.finetune.steps=3", "bl_just.checkpoint_every=4",
        "bl_just.eval_every=3", "bl_just.compare=false"]


def test_a_job_resumed_over_a_killed_save_finishes_as_if_uninterrupted(tmp_path):
    job = spec.load(ROOT / "jobs" / "bl_just_digits.yaml", TINY)
    clean = run_job(job, out=tmp_path / "clean", progress=False, echo=lambda s: None)
    clean_dir = RunDir(next((tmp_path / "clean").iterdir()))

    # Stopped at round 10: round 8 is the latest checkpoint. Then the debris of a save of round 12
    # killed midway: its temporary directory, the tensors half-written, no meta.json.
    broken = RunDir.create(tmp_path / "broken", job.name)
    broken.write_spec(spec.dump(job))
    broken.hooks = RunHooks(progress=False, listeners=[KillAt(10)])
    with pytest.raises(Killed):
        bljust_job.run(job, broken, broken.hooks, False)
    assert broken.latest_checkpoint().name == "round_000008"
    half = broken.checkpoints / ".round_000012.tmp-999999"
    shutil.copytree(broken.latest_checkpoint(), half)
    (half / checkpoint.META).unlink()
    with open(half / checkpoint.TENSORS, "r+b") as fh:
        fh.truncate(fh.seek(0, 2) // 2)

    resumed = run_job(job, run_dir=RunDir(broken.path), progress=False, echo=lambda s: None)
    assert not half.exists()
    assert resumed["status"] == "succeeded" and resumed["metrics"] == clean["metrics"]
    assert broken.read_metrics() == clean_dir.read_metrics()
