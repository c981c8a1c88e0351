"""The README's main job through the real CLI on embedded Ray, then kill-and-resume."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from helpers import kill_when

ROOT = Path(__file__).resolve().parent.parent
CMD = [sys.executable, str(ROOT / "launch.py")]
COMMON = ["--set", "bilevel.checkpoint_every=10", "--no-progress"]


def launch(*args, timeout=300):
    return subprocess.run([*CMD, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def only_run_dir(out: Path) -> Path:
    dirs = [p for p in out.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def final_lam(run_dir: Path):
    latest = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    return latest["round"], load_file(str(run_dir / "checkpoints" / latest["path"] / "tensors.safetensors"))["upper/lam/_"]


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    proc = launch("run", "jobs/quickstart.yaml", "--out", str(out), *COMMON)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, only_run_dir(out)


def test_quickstart_meets_its_contract(quickstart_run):
    proc, run_dir = quickstart_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["kind"] == "bilevel" and summary["name"] == "quickstart" and summary["status"] == "succeeded"
    m = summary["metrics"]
    assert m["test_acc"] >= m["test_acc_noisy_baseline"] + 0.05
    assert m["corruption_f1"] > 0.7
    assert summary["wall_s"] < 180
    assert summary["checkpoint"].endswith("round_000150")
    assert "test_acc" in proc.stdout and "Traceback" not in proc.stderr


def test_run_directory_has_everything(quickstart_run):
    _, run_dir = quickstart_run
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["round"] for r in records] == list(range(1, 151))
    assert {"val_loss", "test_acc", "hypergrad_norm", "round_s", "comm_share"} <= set(records[0])
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    assert (run_dir / "plots" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "kind: bilevel" in (run_dir / "spec.yaml").read_text()
    assert (run_dir / "run.log").exists()


def test_killed_run_resumes_to_the_same_lambda(quickstart_run, tmp_path):
    _, clean_dir = quickstart_run
    out = tmp_path / "runs"
    def checkpoint_at_40() -> bool:
        pointer = list(out.glob("*/checkpoints/latest.json"))
        return bool(pointer) and json.loads(pointer[0].read_text())["round"] >= 40

    kill_when([*CMD, "run", "jobs/quickstart.yaml", "--out", str(out), *COMMON], ROOT, checkpoint_at_40, 240,
              "a checkpoint at round >= 40")
    run_dir = only_run_dir(out)
    killed_at, _ = final_lam(run_dir)
    assert 40 <= killed_at < 150
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"

    proc = launch("resume", str(run_dir), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded"
    rounds = [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds == list(range(1, 151))  # no duplicates from the replayed rounds

    r1, lam_clean = final_lam(clean_dir)
    r2, lam_resumed = final_lam(run_dir)
    assert r1 == r2 == 150
    assert abs(lam_clean - lam_resumed).max() < 1e-6


def test_resume_of_a_finished_run_is_a_no_op(quickstart_run):
    _, run_dir = quickstart_run
    proc = launch("resume", str(run_dir))
    assert proc.returncode == 0 and "already finished" in proc.stdout


def test_resume_of_a_non_run_directory_is_one_line(tmp_path):
    proc = launch("resume", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr == f"error: {tmp_path}: not a run directory (no spec.yaml)\n"


@pytest.mark.parametrize("command", ["run", "validate", "submit", "status", "logs", "stop", "resume"])
def test_every_command_has_help(command):
    proc = launch(command, "--help", timeout=60)
    assert proc.returncode == 0 and "usage: launch.py" in proc.stdout
