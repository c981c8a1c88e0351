"""The multi-objective family's jobs through the real CLI as a user runs them: ``launch.py run``
from the repository root, SIGKILLed once a checkpoint is written, ``launch.py resume``; every
record written once and the final metrics equal to an uninterrupted run of the same job."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import kill_when

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = [sys.executable, str(ROOT / "launch.py")]

# Reduced to a few seconds of work each, checkpointing often enough that the kill lands mid-run.
JOBS = {
    "multiobjective_digits.yaml": (["multiobjective.preferences=[[0.5,0.5],[0.7,0.3]]", "multiobjective.steps=100",
                                    "multiobjective.scalarisation=1", "multiobjective.checkpoint_every=25",
                                    "multiobjective.eval_every=50", "multiobjective.data.n_train=200"],
                                   "global_step", 25),
    "bl_just_digits.yaml": (["bl_just.warmup.steps=60", "bl_just.joint.steps=60", "bl_just.finetune.steps=20",
                             "bl_just.ramp.ramp_steps=40", "bl_just.checkpoint_every=20", "bl_just.eval_every=20",
                             "bl_just.compare=false"],
                            "round", 20),
    "stn_digits.yaml": (["stn.steps=160", "stn.warmup_steps=40", "stn.checkpoint_every=20", "stn.eval_every=40"],
                        "round", 20),
}


def sets(overrides: list[str]) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([*LAUNCH, *args], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def only_dir(out: Path) -> Path:
    dirs = [p for p in out.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", list(JOBS))
def test_killed_mid_run_resumes_to_the_uninterrupted_result(name, tmp_path):
    overrides, key, kill_after = JOBS[name]
    job = f"jobs/{name}"
    run_cli("run", job, "--out", str(tmp_path / "clean"), *sets(overrides), "--no-progress")
    clean = only_dir(tmp_path / "clean")
    reference = json.loads((clean / "summary.json").read_text())
    assert reference["status"] == "succeeded"

    out = tmp_path / "killed"

    def checkpointed() -> bool:
        pointer = list(out.glob("*/checkpoints/latest.json"))
        return bool(pointer) and json.loads(pointer[0].read_text())["round"] >= kill_after

    kill_when([*LAUNCH, "run", job, "--out", str(out), *sets(overrides), "--no-progress"], ROOT, checkpointed, 300,
              f"a checkpoint at {key} >= {kill_after}", poll=0.05)
    run_dir = only_dir(out)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"
    written = len(records(run_dir))
    assert written < len(records(clean))  # killed before the end

    run_cli("resume", str(run_dir), "--no-progress")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded"
    keys = [r[key] for r in records(run_dir)]
    assert keys == [r[key] for r in records(clean)] and len(set(keys)) == len(keys)  # each record once
    for metric, value in reference["metrics"].items():
        assert summary["metrics"][metric] == pytest.approx(value, rel=1e-6, abs=1e-9), metric
