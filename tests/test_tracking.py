"""Experiment tracking: real jobs through the real CLI, read back with TensorBoard's and MLflow's own readers.

What the run directory's ``metrics.jsonl`` says is the reference: TensorBoard must hold the same
scalars at the same steps (to float32, the precision of its events) and MLflow the same metric
history, for a plain job and for every trial of a sweep. The listeners' resume rule (each
(tag, step) once, the same MLflow run) and the per-phase tags are checked in-process.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dist_core import cli, spec, tracking
from dist_core.errors import ConfigError
from dist_core.runs import RunDir

ROOT = Path(__file__).resolve().parent.parent
CMD = [sys.executable, str(ROOT / "launch.py")]
TRACK = ["--set", "tracking.tensorboard=true", "--set", "tracking.mlflow={}", "--no-progress"]
# No usage reports from a test run (the machine has no network, and a test should not try).
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
os.environ.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1")


def launch(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CMD, *args], capture_output=True, text=True, cwd=ROOT, timeout=400, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def only_dir(out: Path, name: str) -> Path:
    dirs = list(out.glob(f"{name}-*"))
    assert len(dirs) == 1, dirs
    return dirs[0]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tb_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    out: dict[str, dict[int, float]] = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        assert len({e.step for e in events}) == len(events), f"{tag}: a step written twice"
        out[tag] = {e.step: e.value for e in events}
    return out


def mlflow_client(db: Path):
    from mlflow.tracking import MlflowClient

    assert db.exists(), f"no MLflow store at {db}"
    return MlflowClient(tracking_uri=f"sqlite:///{db}")


def history(client, run_id: str, key: str) -> dict[int, float]:
    points = client.get_metric_history(run_id, key)
    assert len({m.step for m in points}) == len(points), f"{key}: a step logged twice"
    return {m.step: m.value for m in points}


def close32(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)  # float32 keeps ~7 significant digits


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """One --out for the module: its runs share one MLflow store (creating one costs seconds)."""
    return tmp_path_factory.mktemp("runs")


# ------------------------------------------------------------ a plain job
@pytest.fixture(scope="module")
def quickstart(out):
    launch("run", "jobs/quickstart.yaml", "--out", str(out), "--set", "bilevel.rounds=6",
           "--set", "bilevel.baseline=false", *TRACK)
    run_dir = only_dir(out, "quickstart")
    return out, run_dir, records(run_dir / "metrics.jsonl"), json.loads((run_dir / "summary.json").read_text())


def test_tensorboard_scalars_equal_the_metrics_file(quickstart):
    _, run_dir, recs, summary = quickstart
    assert [r["round"] for r in recs] == [1, 2, 3, 4, 5, 6]
    scalars = tb_scalars(run_dir / "tensorboard")
    fields = [k for k in recs[0] if k != "round"]
    assert fields and set(fields) <= set(scalars)
    assert "round" not in scalars  # the step field is the step, not a scalar
    for name in fields:
        assert sorted(scalars[name]) == [1, 2, 3, 4, 5, 6], name
        for r in recs:
            assert close32(scalars[name][r["round"]], r[name]), (name, r["round"])
    # The summary's metrics at the last step, under final/.
    assert close32(scalars["final/val_loss"][6], summary["metrics"]["val_loss"])
    assert scalars["final/rounds"] == {6: 6.0}


def test_mlflow_run_has_params_history_artefacts_and_status(quickstart):
    out, run_dir, recs, summary = quickstart
    client = mlflow_client(out / "mlflow.db")  # beside the run directories
    stored = json.loads((run_dir / "mlflow_run.json").read_text())
    run = client.get_run(stored["run_id"])
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "quickstart"
    # Params: the resolved job, flattened to dotted keys, as spec.yaml has it.
    job = spec.load(run_dir / "spec.yaml")
    p = run.data.params
    assert p["kind"] == "bilevel" and p["name"] == "quickstart"
    assert p["bilevel.rounds"] == "6" and float(p["bilevel.lower.lr"]) == job.bilevel.lower.lr
    assert p["bilevel.method.name"] == job.bilevel.method.name and p["tracking.tensorboard"] == "true"
    # Metric history: every field of every record at its round, nothing else, nothing twice.
    for name in (k for k in recs[0] if k != "round"):
        h = history(client, run.info.run_id, name)
        assert h.keys() == {r["round"] for r in recs}, name
        assert all(math.isclose(h[r["round"]], r[name], rel_tol=1e-12) for r in recs), name
    assert math.isclose(run.data.metrics["final/test_acc"], summary["metrics"]["test_acc"], rel_tol=1e-12)
    # Artefacts, in the store's own artefact folder beside the database (not in the working directory).
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "spec.yaml", "plots"} <= names
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/curves.png"]
    local = Path(client.download_artifacts(run.info.run_id, "summary.json", str(out / "dl")))
    assert json.loads(local.read_text())["status"] == "succeeded"
    assert run.info.artifact_uri.startswith((out / "mlartifacts").as_uri())


# ------------------------------------------------------------ a sweep: Tune's own callbacks, per trial
@pytest.fixture(scope="module")
def sweep(out):
    launch("run", "jobs/sweep_quickstart.yaml", "--out", str(out), "--set", "search.num_samples=2",
           "--set", "overrides.bilevel.rounds=4", "--set", "overrides.bilevel.lower.learners=1",
           "--set", "overrides.resources.cpus_per_learner=0.99", *TRACK)
    return out, only_dir(out, "sweep_quickstart")


def test_every_trial_has_event_files_and_an_mlflow_run(sweep):
    out, run_dir = sweep
    trials = sorted(p.name for p in (run_dir / "trials").iterdir())
    assert len(trials) == 2
    client = mlflow_client(out / "mlflow.db")
    experiment = client.get_experiment_by_name("sweep_quickstart")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == [f"run_trial_{t}" for t in trials]
    for trial in trials:
        recs = records(run_dir / "trials" / trial / "metrics.jsonl")
        assert [r["round"] for r in recs] == [1, 2, 3, 4]
        want = {r["round"]: r["val_loss"] for r in recs}
        tune_dirs = [d for d in (run_dir / "tune").iterdir() if d.is_dir() and f"_{trial}_" in d.name]
        assert len(tune_dirs) == 1 and list(tune_dirs[0].glob("events.out.tfevents.*")), trial
        got = tb_scalars(tune_dirs[0])["ray/tune/val_loss"]  # Tune's tag; step = training iteration
        assert got.keys() == want.keys() and all(close32(got[k], want[k]) for k in want), trial
        run = runs[f"run_trial_{trial}"]
        assert run.info.status == "FINISHED"
        assert {"bilevel.lower.lr", "bilevel.lower.inner_steps"} <= set(run.data.params)
        h = history(client, run.info.run_id, "val_loss")
        assert h.keys() == want.keys() and all(math.isclose(h[k], want[k], rel_tol=1e-12) for k in want), trial


# ------------------------------------------------------------ the listeners: phases and resume
def test_phases_get_their_own_tags_and_a_resume_logs_each_step_once(out):
    job = spec.load(ROOT / "jobs" / "quickstart.yaml",
                    ["tracking.tensorboard=true", "tracking.mlflow={experiment: phases}"])
    run_dir = RunDir.create(out, "phases")
    first = [{"phase": "sft", "step": 1, "loss": 2.0}, {"phase": "sft", "step": 2, "loss": 1.5},
             {"phase": "main", "step": 1, "loss": 1.25, "ok": True, "note": "text is not a scalar"},
             {"phase": "main", "step": 2, "loss": 1.125}, {"alpha": 0.5}, {"alpha": 0.25}]
    trackers = tracking.listeners(job, job.tracking, run_dir, resume=False)
    for r in first[:4]:
        for t in trackers:
            t.on_record(r)
    for t in trackers:
        t.on_checkpoint(2, run_dir.checkpoints)
    # Killed here (no on_end); the resumed run replays main step 2, then goes on.
    again = tracking.listeners(job, job.tracking, run_dir, resume=True)
    for r in [first[3], {"phase": "main", "step": 3, "loss": 1.0}, *first[4:]]:
        for t in again:
            t.on_record(r)
    for t in again:
        t.on_end({"status": "succeeded", "metrics": {"loss": 1.0, "by": {"x (s=1)": 3}, "curve": [1, 2]}}, run_dir)

    scalars = tb_scalars(run_dir.path / "tensorboard")
    assert scalars["sft/loss"] == {1: 2.0, 2: 1.5}
    assert scalars["main/loss"] == {1: 1.25, 2: 1.125, 3: 1.0}
    assert scalars["main/ok"] == {1: 1.0}
    assert scalars["alpha"] == {1: 0.5, 2: 0.25}  # no step field: a running count
    assert scalars["final/by/x _s_1_"] == {3: 3.0}  # characters MLflow refuses become "_"
    assert not any("note" in t or "curve" in t for t in scalars)

    client = mlflow_client(out / "mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("phases").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the resume reused the run
    rid = runs[0].info.run_id
    assert history(client, rid, "sft/loss") == {1: 2.0, 2: 1.5}
    assert history(client, rid, "main/loss") == {1: 1.25, 2: 1.125, 3: 1.0}
    assert history(client, rid, "final/loss") == {3: 1.0}


def test_a_failed_run_is_failed_in_mlflow(out):
    job = spec.load(ROOT / "jobs" / "quickstart.yaml", ["tracking.mlflow={experiment: failed}"])
    run_dir = RunDir.create(out, "failed")
    (listener,) = tracking.listeners(job, job.tracking, run_dir, resume=False)
    listener.on_record({"round": 1, "val_loss": 1.0})
    listener.on_end({"status": "failed", "metrics": {}}, run_dir)
    client = mlflow_client(out / "mlflow.db")
    run = client.get_run(json.loads((run_dir.path / "mlflow_run.json").read_text())["run_id"])
    assert run.info.status == "FAILED" and history(client, run.info.run_id, "val_loss") == {1: 1.0}


# ------------------------------------------------------------ a missing package: one line, exit 2
@pytest.mark.parametrize("tracker,module,where", [
    ("mlflow", "mlflow", "file"),
    ("tensorboard", "tensorboardX", "set"),
])
def test_missing_package_is_one_line_naming_the_install(tmp_path, capsys, monkeypatch, tracker, module, where):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    job = tmp_path / "job.yaml"
    body = "kind: bilevel\nname: t\nbilevel:\n  rounds: 3\n"
    if where == "file":
        job.write_text(body + "tracking:\n  mlflow: {}\n")
        extra, line, tail = [], 6, ""
    else:
        job.write_text(body)
        extra, line, tail = ["--set", "tracking.tensorboard=true"], 1, " (from --set)"
    assert cli.main(["validate", str(job), *extra]) == 2
    err = capsys.readouterr().err
    assert err == (f"{job}:{line}: tracking.{tracker}: {tracker} is not installed (missing: {module}): "
                   f'pip install -e ".[tracking]"{tail}\n')
    with pytest.raises(ConfigError, match=r'^tracking\.\w+: .*pip install -e "\.\[tracking\]"$'):
        tracking.require(tracker)


def test_validate_stays_free_of_torch_and_the_trackers():
    code = ("import sys; from dist_core import cli; "
            "assert cli.main(['validate', 'jobs/quickstart.yaml', '--quiet', '--set', 'tracking.tensorboard=true', "
            "'--set', 'tracking.mlflow={}']) == 0; "
            "print(sorted(m for m in ('torch', 'ray', 'mlflow', 'tensorboardX', 'tensorboard') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
