"""Kill a CLI run with SIGKILL, ``launch.py resume`` it, and get the uninterrupted run's result.

One case per resume granularity: bilevel per checkpointed round, analog_pipeline per epoch,
aimc_toy per method. After the resume every record key is in ``metrics.jsonl`` exactly once and
the final metrics and records equal those of an uninterrupted run of the same job bit for bit
(every kind here is deterministic); only wall-clock fields (``*_s``, ``*_per_s``, ``comm_share``)
differ between any two runs and are left out. Plus the failure line's resume hint: present only
when there is something to resume from.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from helpers import kill_tree, kill_when

ROOT = Path(__file__).resolve().parent.parent
CMD = [sys.executable, str(ROOT / "launch.py")]
WALL_CLOCK = re.compile(r"(_s|_per_s|^comm_share)$")

# Actor calls log each round as it ends, so a kill can land with rounds logged past the last
# checkpoint (the collective loop logs a chunk just before its checkpoint: the window is tiny).
BILEVEL = ["--set", "bilevel.rounds=30", "--set", "bilevel.checkpoint_every=10", "--set", "bilevel.baseline=false",
           "--set", "bilevel.round_loop=actor_calls"]
# Two schedules × 4 epochs: steps 1–4 sync, 5–8 async; one checkpoint per epoch.
PIPELINE = ["--set", "analog.epochs=4"]
# Four methods, one phase file each; a few seconds in all.
TOY = ["--set", "toy.steps=6000", "--set", "toy.alphas=[0.1,0.02]"]


def launch(*args, timeout=300):
    return subprocess.run([*CMD, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def only_run_dir(out: Path) -> Path:
    dirs = [p for p in out.iterdir() if p.is_dir()] if out.exists() else []
    assert len(dirs) == 1, dirs
    return dirs[0]


def records(run_dir: Path) -> list[dict]:
    """Whole lines only: a reader may see the writer's last line half written."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def timeless(d: dict) -> dict:
    return {k: v for k, v in d.items() if not WALL_CLOCK.search(k)}


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def latest_step(out: Path) -> int:
    pointers = list(out.glob("*/checkpoints/latest.json"))
    return json.loads(pointers[0].read_text())["round"] if pointers else 0


class CleanRun:
    """The uninterrupted reference run, in the background while its twin is killed and resumed: most
    of a CLI run's wall time is Ray starting up and workers importing torch, not computing."""

    def __init__(self, out: Path, job: str, sets: list[str]):
        self.out = out
        out.mkdir(parents=True)
        self.err = out.with_name(out.name + ".stderr")
        with open(self.err, "w") as fh:
            self.proc = subprocess.Popen([*CMD, "run", job, "--out", str(out), *sets, "--no-progress"], cwd=ROOT,
                                         stdout=subprocess.DEVNULL, stderr=fh)

    def wait(self) -> Path:
        self.proc.wait(timeout=300)
        assert self.proc.returncode == 0, self.err.read_text()[-3000:]
        return only_run_dir(self.out)


@pytest.fixture
def background():
    """Start reference runs; a test that fails before waiting for one leaves nothing running."""
    started: list[CleanRun] = []

    def start(out: Path, job: str, sets: list[str]) -> CleanRun:
        started.append(CleanRun(out, job, sets))
        return started[-1]

    yield start
    for run in started:
        if run.proc.poll() is None:
            kill_tree(run.proc.pid)


def kill_and_check(out: Path, job: str, sets: list[str], ready, what: str) -> Path:
    kill_when([*CMD, "run", job, "--out", str(out), *sets, "--no-progress"], ROOT, ready, 240, what)
    run_dir = only_run_dir(out)
    assert summary(run_dir)["status"] == "running"  # SIGKILL: nothing could record the end
    return run_dir


def resume(run_dir: Path) -> None:
    proc = launch("resume", str(run_dir), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary(run_dir)["status"] == "succeeded"


def assert_same_run(resumed: Path, clean: Path, key) -> None:
    got, want = records(resumed), records(clean)
    keys = [key(r) for r in got]
    assert len(keys) == len(set(keys)), "a record key appears twice"
    assert keys == [key(r) for r in want]
    assert [timeless(r) for r in got] == [timeless(r) for r in want]
    assert timeless(summary(resumed)["metrics"]) == timeless(summary(clean)["metrics"])


# ------------------------------------------------------------ bilevel: per checkpointed round
@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory) -> Path:
    """scikit-learn's digits as a user's .npz, exactly as the built-in loader prepares them."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, X=x.astype(np.float32) / 16.0, y=y.astype(np.int64))
    return path


def test_killed_bilevel_run_resumes_to_the_same_result(tmp_path, digits_npz, background):
    """Killed after the round-10 checkpoint; a resume that cannot read its data fails with the hint
    to resume (there is a checkpoint), and once the data is back the resume finishes the run."""
    data = tmp_path / "digits.npz"
    data.write_bytes(digits_npz.read_bytes())
    sets = [*BILEVEL, "--set", f"bilevel.data.path={data}"]
    clean = background(tmp_path / "clean", "jobs/quickstart.yaml", sets)
    out = tmp_path / "killed"
    def past_a_checkpoint() -> bool:  # rounds logged after the checkpoint: the resume must drop them
        step = latest_step(out)
        return step >= 10 and len(records(only_run_dir(out))) >= step + 2

    run_dir = kill_and_check(out, "jobs/quickstart.yaml", sets, past_a_checkpoint, "records past a checkpoint")
    killed_at = latest_step(out)
    assert 10 <= killed_at < 30 and len(records(run_dir)) > killed_at

    good = data.read_bytes()
    data.write_bytes(b"not an npz")
    proc = launch("resume", str(run_dir), "--no-progress")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: quickstart failed: ") and proc.stderr.count("\n") == 1
    assert proc.stderr.rstrip().endswith(f"; continue with: launch.py resume {run_dir})")
    failed = summary(run_dir)
    assert failed["status"] == "failed" and failed["checkpoint"].endswith(f"round_{killed_at:06d}")

    data.write_bytes(good)
    resume(run_dir)
    assert [r["round"] for r in records(run_dir)] == list(range(1, 31))
    clean_dir = clean.wait()
    assert_same_run(run_dir, clean_dir, key=lambda r: r["round"])
    lam = [load_file(str(d / "checkpoints" / "round_000030" / "tensors.safetensors"))["upper/lam/_"]
           for d in (run_dir, clean_dir)]
    assert np.array_equal(lam[0], lam[1])


def test_failed_run_without_a_checkpoint_has_no_resume_hint(tmp_path):
    """A data file that passes validation (it exists) but is no .npz: the run fails before round 1."""
    bad = tmp_path / "bad.npz"
    bad.write_text("not an npz")
    proc = launch("run", "jobs/quickstart.yaml", "--out", str(tmp_path / "runs"), *BILEVEL,
                  "--set", f"bilevel.data.path={bad}", "--no-progress")
    assert proc.returncode == 1
    run_dir = only_run_dir(tmp_path / "runs")
    assert proc.stderr.startswith("error: quickstart failed: ") and proc.stderr.count("\n") == 1
    assert proc.stderr.rstrip().endswith(f"(traceback in {run_dir / 'run.log'})")
    assert "continue with" not in proc.stderr
    assert summary(run_dir)["status"] == "failed" and summary(run_dir)["checkpoint"] is None


# ------------------------------------------------------------ analog_pipeline: per epoch, on Ray actors
def test_killed_pipeline_run_resumes_to_the_same_result(tmp_path, background):
    """Killed during the async schedule, the sync one finished: the resume skips sync, restarts async
    at its next epoch on fresh stage actors, and every (schedule, epoch) is there once."""
    clean = background(tmp_path / "clean", "jobs/aimc_pipeline.yaml", PIPELINE)
    out = tmp_path / "killed"
    run_dir = kill_and_check(out, "jobs/aimc_pipeline.yaml", PIPELINE, lambda: latest_step(out) >= 5,
                             "a checkpoint of the async schedule")
    killed_at = latest_step(out)
    assert 5 <= killed_at < 8
    # A kill between an epoch's record and its checkpoint leaves a record the checkpoint lacks.
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"schedule": "async", "epoch": killed_at - 4 + 1, "test_loss": -1.0}) + "\n")

    resume(run_dir)
    assert [(r["schedule"], r["epoch"]) for r in records(run_dir)] == \
        [(s, e) for s in ("sync", "async") for e in range(1, 5)]
    assert_same_run(run_dir, clean.wait(), key=lambda r: (r["schedule"], r["epoch"]))
    assert summary(run_dir)["checkpoint"].endswith("round_000008")


# ------------------------------------------------------------ aimc_toy: per method
def test_killed_toy_run_resumes_to_the_same_result(tmp_path, background):
    clean = background(tmp_path / "clean", "jobs/aimc_toy.yaml", TOY)
    out = tmp_path / "killed"
    run_dir = kill_and_check(out, "jobs/aimc_toy.yaml", TOY, lambda: bool(list(out.glob("*/phases/*.json"))),
                             "a finished method")
    finished = {p.stem for p in (run_dir / "phases").glob("*.json")}
    assert finished and len(finished) < 4
    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "phases").glob("*.json")}

    resume(run_dir)
    assert_same_run(run_dir, clean.wait(), key=lambda r: (r["method"], r["alpha"], r["transfer_scale"]))
    assert len(records(run_dir)) == 2 + 2 + 4 + 4  # α × transfer scales per method
    # the methods done before the kill were not simulated again
    assert all((run_dir / "phases" / name).stat().st_mtime_ns == t for name, t in before.items())
