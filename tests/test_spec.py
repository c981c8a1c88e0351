"""Bad job files: one line ``file:line: field: reason`` on stderr, exit 2, nothing left behind."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dist_core import checkpoint, cli, kinds, spec
from dist_core.runs import RunDir

ROOT = Path(__file__).resolve().parent.parent

GOOD = """\
kind: bilevel
name: t
bilevel:
  lower:
    learners: 2
    lr: 0.5
  upper:
    optimizer: adam
  method:
    name: penalty
    gamma: 10.0
  rounds: 5
"""

# (name, file text, extra args, expected line after "FILE:")
CASES = [
    ("unknown top-level key", GOOD + "epochs: 3\n", [],
     "13: epochs: unknown field (valid: name, seed, cluster, resources, tracking, kind, bilevel)"),
    ("unknown nested key", GOOD.replace("    lr: 0.5", "    lrr: 0.5"), [],
     "6: bilevel.lower.lrr: unknown field (valid: learners, inner_steps, lr)"),
    ("negative learning rate", GOOD.replace("lr: 0.5", "lr: -0.1"), [],
     "6: bilevel.lower.lr: must be > 0.0, got -0.1"),
    ("wrong type", GOOD.replace("rounds: 5", "rounds: many"), [],
     "12: bilevel.rounds: must be an integer, got 'many'"),
    ("zero rounds", GOOD.replace("rounds: 5", "rounds: 0"), [],
     "12: bilevel.rounds: must be >= 1, got 0"),
    ("zero learners", GOOD.replace("learners: 2", "learners: 0"), [],
     "5: bilevel.lower.learners: must be >= 1, got 0"),
    ("corruption out of range", GOOD + "  data:\n    corruption: 1.5\n", [],
     "14: bilevel.data.corruption: must be < 1.0, got 1.5"),
    ("unknown estimator", GOOD.replace("name: penalty", "name: darts"), [],
     "10: bilevel.method.name: unknown 'darts' (valid: implicit_cg, implicit_neumann, unrolled, penalty, finite_difference, sama)"),
    ("option of another estimator", GOOD.replace("gamma: 10.0", "iters: 10"), [],
     "11: bilevel.method.iters: unknown field (valid: name, gamma, steps, lr)"),
    ("unknown optimizer", GOOD.replace("optimizer: adam", "optimizer: rmsprop"), [],
     "8: bilevel.upper.optimizer: must be one of 'adam' or 'sgd', got 'rmsprop'"),
    ("missing name", GOOD.replace("name: t\n", ""), [],
     "1: name: required field missing"),
    ("missing kind", GOOD.replace("kind: bilevel\n", ""), [],
     f"1: kind: required field missing (valid kinds: {', '.join(kinds.names())})"),
    ("unknown kind", GOOD.replace("kind: bilevel", "kind: bilevle"), [],
     f"1: kind: unknown kind 'bilevle' (valid: {', '.join(kinds.names())})"),
    ("bad YAML", GOOD.replace("    gamma: 10.0", "    gamma: [10.0"), [],
     "12: yaml: invalid YAML: expected ',' or ']', but got ':'"),
    ("missing data file", GOOD + "  data:\n    path: nowhere.npz\n", [],
     "14: bilevel.data.path: no such file: nowhere.npz"),
    ("name with a space", GOOD.replace("name: t", "name: my job"), [],
     "2: name: must match ^[A-Za-z0-9][A-Za-z0-9_.-]*$, got 'my job'"),
    ("not a mapping", "- kind: bilevel\n", [],
     "1: (top): a job file is a mapping of fields, got list"),
    ("section of wrong type", GOOD.replace("  lower:\n    learners: 2\n    lr: 0.5\n", "  lower: 3\n"), [],
     "4: bilevel.lower: must be a mapping, got 3"),
    ("--set out of range", GOOD, ["--set", "bilevel.lower.lr=0"],
     "6: bilevel.lower.lr: must be > 0.0, got 0 (from --set)"),
    ("--set unknown field", GOOD, ["--set", "bilevel.upper.momentum=0.9"],
     "7: bilevel.upper.momentum: unknown field (valid: optimizer, lr, init, hypergradient) (from --set)"),
    ("infeasible schedule", "kind: diffusion_schedule\nname: d\ndiffusion:\n  psi0: [0.5, 0.2, 1.0, 0.01]\n", [],
     "4: diffusion.psi0: needs 0 <= s < e <= 1, tau > 0, 0 < eps <= 1, got [0.5, 0.2, 1.0, 0.01]"),
    ("more DDIM steps than timesteps", "kind: diffusion_schedule\nname: d\ndiffusion:\n  T: 10\n  ddim_steps: 20\n", [],
     "3: diffusion: ddim_steps (20) must be <= T (10)"),
    ("device with w_min >= w_max", "kind: analog_pipeline\nname: a\nanalog:\n  device:\n    name: soft_bounds\n    params: {w_min: 0.5, w_max: 0.2}\n", [],
     "4: analog.device: w_min must be < w_max, got w_min=0.5, w_max=0.2"),
    ("more stages than layers", "kind: analog_pipeline\nname: a\nanalog:\n  hidden: [32]\n  stages: 3\n", [],
     "5: analog.stages: more stages (3) than layers (2); add hidden layers or use fewer stages"),
    ("device with dw_min <= 0", "kind: analog_pipeline\nname: a\nanalog:\n  device: {name: constant_step, params: {dw_min: -0.001}}\n", [],
     "4: analog.device: dw_min must be > 0, got -0.001"),
    ("toy with dw_min <= 0", "kind: aimc_toy\nname: a\ntoy:\n  d: 40\n  dw_min: -1.0e-4\n", [],
     "5: toy.dw_min: must be > 0.0, got -0.0001"),
    ("toy with no step sizes", "kind: aimc_toy\nname: a\ntoy:\n  alphas: []\n", [],
     "4: toy.alphas: alphas must be a non-empty list of numbers > 0, got []"),
    ("toy with a step size <= 0 (--set)", "kind: aimc_toy\nname: a\n", ["--set", "toy.alphas=[0.1,0]"],
     "1: toy.alphas: alphas must be a non-empty list of numbers > 0, got [0.1, 0.0] (from --set)"),
    ("--set without '='", GOOD, ["--set", "bilevel.rounds"],
     "1: --set: expected dotted.key=value, got 'bilevel.rounds'"),
]


@pytest.mark.parametrize("name,text,extra,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_job_file_is_one_line_and_exit_2(tmp_path, capsys, name, text, extra, expected):
    job = tmp_path / "job.yaml"
    job.write_text(text)
    out = tmp_path / "runs"
    code = cli.main(["run", str(job), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"{job}:{expected}\n"
    assert not out.exists()  # no run directory left behind


def test_missing_job_file(tmp_path, capsys):
    assert cli.main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err == f"{tmp_path / 'nope.yaml'}:1: file: no such file\n"


def test_table_is_large_enough():
    assert len(CASES) >= 15


def test_cli_prints_no_traceback(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(GOOD.replace("lr: 0.5", "lr: -0.1"))
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), "run", str(job), "--out", str(tmp_path / "runs")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"{job}:6: bilevel.lower.lr: must be > 0.0, got -0.1"]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "runs").exists()


def test_every_shipped_job_file_validates():
    for path in sorted((ROOT / "jobs").glob("*.yaml")):
        spec.load(path)


def test_resolved_spec_round_trips(tmp_path):
    job = spec.load(ROOT / "jobs" / "quickstart.yaml", ["bilevel.rounds=7"])
    again = spec.load_text(spec.dump(job), "resolved.yaml")
    assert again == job and again.bilevel.rounds == 7


def test_set_creates_nested_fields():
    job = spec.load(ROOT / "jobs" / "quickstart.yaml", ["bilevel.method={name: implicit_cg, iters: 5}"])
    assert job.bilevel.method.name == "implicit_cg" and job.bilevel.method.iters == 5


def test_unrolled_and_penalty_default_to_the_lower_step_size():
    job = spec.load(ROOT / "jobs" / "quickstart.yaml", ["bilevel.method={name: unrolled}", "bilevel.lower.lr=0.25"])
    assert job.bilevel.method_options()["lr"] == 0.25


# ------------------------------------------------------------ checkpoints and run directories
def test_checkpoint_round_trip_is_exact_and_atomic(tmp_path):
    tensors = {"upper/lam/_": np.arange(5, dtype=np.float32), "lower/0/theta/w": np.ones((2, 3))}
    target = checkpoint.save(tmp_path / "round_000001", tensors, {"round": 1})
    loaded, meta = checkpoint.load(target)
    assert meta == {"round": 1}
    assert all(np.array_equal(loaded[k], v) for k, v in tensors.items())
    # Overwrite: the directory is replaced whole and no temporary is left around.
    checkpoint.save(target, {"x": np.zeros(1)}, {"round": 2})
    assert sorted(os.listdir(tmp_path)) == ["round_000001"]
    assert checkpoint.load(target)[1] == {"round": 2}


def test_run_dir_keeps_latest_checkpoints_and_truncates_metrics(tmp_path):
    run = RunDir.create(tmp_path, "t")
    for r in (10, 20, 30):
        run.save_checkpoint(r, {"x": np.full(2, r, dtype=np.float32)}, {"round": r})
        run.log_metrics({"round": r, "val_loss": 1.0 / r})
    assert run.latest_checkpoint().name == "round_000030"
    assert sorted(p.name for p in run.checkpoints.glob("round_*")) == ["round_000020", "round_000030"]
    run.truncate_metrics(20)
    assert [m["round"] for m in run.read_metrics()] == [10, 20]
