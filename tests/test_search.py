"""Sweeps through the real CLI (Ray Tune with nested learner actors), resume, and PBT's guard."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dist_core import cli
from dist_core.search.schedulers import make_scheduler, may_exploit
from dist_core.search.config import SchedulerSpec

from helpers import kill_when

ROOT = Path(__file__).resolve().parent.parent
CMD = [sys.executable, str(ROOT / "launch.py")]
# Six short trials, K=1 learner each at 0.99 CPU: two trials run at once on 2 CPUs.
SMALL = ["--set", "overrides.bilevel.rounds=20", "--set", "overrides.bilevel.lower.learners=1",
         "--set", "overrides.resources.cpus_per_learner=0.99", "--no-progress"]


def sweep_dirs(out: Path) -> Path:
    dirs = [p for p in out.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def finished_trials(run_dir: Path) -> dict[str, float]:
    """Trial directory -> mtime of its metrics, for trials that wrote their own summary (finished)."""
    return {s.parent.name: (s.parent / "metrics.jsonl").stat().st_mtime_ns
            for s in run_dir.glob("trials/*/summary.json")}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweeps")
    proc = subprocess.run([*CMD, "run", "jobs/sweep_quickstart.yaml", "--out", str(out), *SMALL],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, sweep_dirs(out)


def test_six_trials_with_asha_and_nested_actors(sweep):
    proc, run_dir = sweep
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["kind"] == "sweep"
    assert summary["metrics"]["trials"] == 6 and summary["metrics"]["errored"] == 0
    assert set(summary["best_config"]) == {"bilevel.lower.lr", "bilevel.lower.inner_steps", "bilevel.method"}
    rows = (run_dir / "trials.csv").read_text().splitlines()
    assert len(rows) == 7 and rows[0].startswith("trial,bilevel.lower.lr")
    # Every trial ran its learner on an actor of its own and reported every round.
    trials = list(run_dir.glob("trials/*"))
    assert len(trials) == 6
    for trial in trials:
        metrics = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
        assert [m["round"] for m in metrics] == list(range(1, len(metrics) + 1))
    assert "best val_loss" in proc.stdout
    for png in ("metric_by_trial.png", "best_trial.png"):
        assert (run_dir / "plots" / png).read_bytes()[:4] == b"\x89PNG"


def test_asha_stopped_some_trials_early(sweep):
    _, run_dir = sweep
    with open(run_dir / "trials.csv", newline="") as fh:
        rounds = [int(row["iterations"]) for row in csv.DictReader(fh)]
    assert max(rounds) == 20 and min(rounds) < 20


def test_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    # Three trials one after another (a trial costs its start-up, not its rounds): killed once the first
    # has finished, the resume runs the others and leaves the finished one alone.
    out = tmp_path / "sweeps"
    def a_trial_done() -> bool:
        return out.exists() and any(out.iterdir()) and len(finished_trials(sweep_dirs(out))) >= 1

    kill_when([*CMD, "run", "jobs/sweep_quickstart.yaml", "--out", str(out), *SMALL, "--set", "search.max_concurrent=1",
               "--set", "search.scheduler.name=fifo", "--set", "search.num_samples=3"], ROOT, a_trial_done, 400,
              "a finished trial")
    run_dir = sweep_dirs(out)
    before = finished_trials(run_dir)
    assert 1 <= len(before) < 3

    proc = subprocess.run([*CMD, "resume", str(run_dir), "--no-progress"], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = finished_trials(run_dir)
    assert len(after) == 3
    assert all(after[name] == mtime for name, mtime in before.items())  # not re-run
    assert json.loads((run_dir / "summary.json").read_text())["metrics"]["trials"] == 3


def test_cluster_too_small_fails_before_starting(tmp_path):
    proc = subprocess.run([*CMD, "run", "jobs/sweep_quickstart.yaml", "--out", str(tmp_path),
                           "--set", "resources.num_cpus=1", "--set", "search.trial_cpus=1", "--no-progress"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 1
    assert ("one trial needs 1.98 CPUs (the base job: bundles [1, 0.49, 0.49]) but the cluster has 1; "
            "lower the job's workers or CPUs per actor, or add CPUs") in proc.stderr


# ------------------------------------------------------------ PBT never copies a trial without a checkpoint
class _Trial:
    def __init__(self, name):
        self.name = name
        self.experiment_tag = name

    def __str__(self):
        return self.name


def test_pbt_rule():
    assert may_exploit(None) is False
    assert may_exploit("/some/checkpoint") is True


def test_pbt_refuses_to_exploit_a_trial_without_checkpoint(monkeypatch):
    from ray.tune import uniform
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers.pbt import _PBTTrialState

    sched = make_scheduler(SchedulerSpec(name="pbt"), {"bilevel.lower.lr": uniform(0.1, 1.0)}, max_t=20)
    copied = []
    monkeypatch.setattr(PopulationBasedTraining, "_exploit", lambda self, tc, t, src: copied.append((t, src)))
    weak, strong = _Trial("weak"), _Trial("strong")
    sched._trial_state[weak] = _PBTTrialState(weak)
    sched._trial_state[strong] = _PBTTrialState(strong)

    sched._exploit(None, weak, strong)  # strong has not reported a checkpoint yet
    assert copied == []
    sched._trial_state[strong].last_checkpoint = "checkpoint_000001"
    sched._exploit(None, weak, strong)
    assert copied == [(weak, strong)]


# ------------------------------------------------------------ sweep files that are wrong
SWEEP = """\
kind: sweep
name: s
base: jobs/quickstart.yaml
search:
  space:
    bilevel.lower.lr: {type: loguniform, low: 0.05, high: 1.0}
  searcher: random
"""


@pytest.mark.parametrize("text,expected", [
    (SWEEP.replace("bilevel.lower.lr:", "bilevel.lower.lrr:"),
     "6: search.space.bilevel.lower.lrr: names no field of jobs/quickstart.yaml"),
    (SWEEP.replace("low: 0.05", "low: 2.0"),
     "6: search.space.bilevel.lower.lr: low must be < high, got low=2.0, high=1.0"),
    (SWEEP.replace("type: loguniform, low: 0.05", "type: uniform, low: -0.5"),
     "6: search.space.bilevel.lower.lr: value -0.5 is invalid in jobs/quickstart.yaml: must be > 0.0, got -0.5"),
    (SWEEP.replace("searcher: random", "searcher: grid"),
     "6: search.space.bilevel.lower.lr.type: the grid searcher needs grid or choice, got 'loguniform'"),
    (SWEEP.replace("searcher: random", "searcher: smac"),
     "7: search.searcher: must be one of 'random', 'grid', 'optuna', 'hyperopt' or 'bohb', got 'smac'"),
    (SWEEP.replace("base: jobs/quickstart.yaml", "base: jobs/missing.yaml"),
     "3: base: no such file: jobs/missing.yaml"),
    (SWEEP + "overrides:\n  bilevel:\n    rounds: 0\n",
     "8: overrides: makes jobs/quickstart.yaml invalid: bilevel.rounds: must be >= 1, got 0"),
])
def test_bad_sweep_files(tmp_path, capsys, monkeypatch, text, expected):
    monkeypatch.chdir(ROOT)
    job = tmp_path / "sweep.yaml"
    job.write_text(text)
    assert cli.main(["validate", str(job)]) == 2
    assert capsys.readouterr().err == f"{job}:{expected}\n"


# ------------------------------------------------------------ every searcher suggests configs of our space
@pytest.mark.parametrize("name", ["optuna", "hyperopt", "bohb"])
def test_searcher_suggests_points_of_the_space(name):
    from dist_core.search.searchers import make_searcher
    from dist_core.search.space import tune_space
    from dist_core.search.config import Distribution

    space = tune_space({
        "bilevel.lower.lr": Distribution(type="loguniform", low=0.05, high=1.0),
        "bilevel.lower.inner_steps": Distribution(type="int", low=5, high=30),
        "bilevel.upper.optimizer": Distribution(type="choice", values=["adam", "sgd"]),
    })
    searcher = make_searcher(name, max_concurrent=2, seed=0)
    assert searcher.set_search_properties("val_loss", "min", space)
    for i in range(3):
        config = searcher.suggest(f"t{i}")
        assert 0.05 <= config["bilevel.lower.lr"] <= 1.0
        assert 5 <= config["bilevel.lower.inner_steps"] <= 30
        assert config["bilevel.upper.optimizer"] in ("adam", "sgd")
        searcher.on_trial_complete(f"t{i}", {"val_loss": 1.0 / (i + 1), "training_iteration": 1})


def test_pbt_explores_categorical_and_integer_dimensions_validly():
    """Ray's own PBT explore step on our mutations: choices stay choices, ints stay ints."""
    from ray.tune.schedulers.pbt import _explore

    from dist_core.search.space import tune_space
    from dist_core.search.config import Distribution

    methods = [{"name": "penalty"}, {"name": "implicit_cg", "iters": 10}]
    spec_space = {
        "bilevel.method": Distribution(type="choice", values=methods),
        "bilevel.lower.inner_steps": Distribution(type="int", low=5, high=30),
    }
    sched = make_scheduler(SchedulerSpec(name="pbt"), tune_space(spec_space), max_t=20,
                           values={"bilevel.method": methods})
    config = {"bilevel.method": methods[0], "bilevel.lower.inner_steps": 17}
    for _ in range(50):
        new, _ = _explore(config, sched._hyperparam_mutations, 0.25, [1.2, 0.8], None)
        assert new["bilevel.method"] in methods
        assert isinstance(new["bilevel.lower.inner_steps"], int)
