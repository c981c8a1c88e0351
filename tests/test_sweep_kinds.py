"""Sweeps over the analog kinds through the real CLI (bilevel's are in test_search.py), and the
sweep files the registry's hooks refuse.

analog_pipeline checkpoints every epoch, so its sweep runs under PBT (a trial PBT exploits is
restored from another's checkpoint); aimc_toy reports once and has no checkpoints, so PBT over
it is refused before anything starts.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dist_core import cli, kinds

ROOT = Path(__file__).resolve().parent.parent
CMD = [sys.executable, str(ROOT / "launch.py")]

PIPELINE_SWEEP = f"""\
kind: sweep
name: sweep_pipeline
base: {ROOT / "jobs" / "aimc_pipeline.yaml"}
overrides:
  analog: {{epochs: 3, schedules: [async]}}
search:
  space:
    analog.lr: {{type: grid, values: [0.002, 0.1]}}
  searcher: grid
  scheduler: {{name: pbt, perturbation_interval: 1}}
  metric: test_acc
  mode: max
  num_samples: 1
"""

TOY_SWEEP = f"""\
kind: sweep
name: sweep_toy
base: {ROOT / "jobs" / "aimc_toy.yaml"}
overrides:
  toy: {{steps: 400, alphas: [0.1, 0.02], methods: [digital, analog_sgd]}}
search:
  space:
    toy.tau: {{type: grid, values: [2.0, 3.0]}}
  searcher: grid
  metric: error_drop/analog_sgd
  mode: max
  num_samples: 1
"""


@pytest.mark.parametrize("text,base_kind,records", [
    (PIPELINE_SWEEP, "analog_pipeline", lambda rs: [(r["schedule"], r["epoch"]) for r in rs]),
    (TOY_SWEEP, "aimc_toy", lambda rs: [(r["method"], r["alpha"], r["transfer_scale"]) for r in rs]),
], ids=["analog_pipeline", "aimc_toy"])
def test_two_trial_sweep(tmp_path, text, base_kind, records):
    job = tmp_path / "sweep.yaml"
    job.write_text(text)
    proc = subprocess.run([*CMD, "run", str(job), "--out", str(tmp_path / "runs"), "--no-progress"],
                          capture_output=True, text=True, cwd=ROOT, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["base_kind"] == base_kind
    assert summary["metrics"]["trials"] == 2 and summary["metrics"]["errored"] == 0
    assert summary["best_trial"] and set(summary["best_config"]) == {next(iter(_space(text)))}
    trials = sorted((run_dir / "trials").iterdir())
    assert len(trials) == 2 and summary["best_trial"] in {t.name for t in trials}
    for trial in trials:
        trial_summary = json.loads((trial / "summary.json").read_text())
        assert trial_summary["kind"] == base_kind and trial_summary["status"] == "succeeded"
        keys = records([json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()])
        assert keys and len(keys) == len(set(keys))  # every record once, also in a trial PBT restored


def _space(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)["search"]["space"]


# ------------------------------------------------------------ sweep files the hooks refuse
def _validate(tmp_path, capsys, monkeypatch, text: str, name: str = "sweep.yaml") -> tuple[Path, int, str]:
    monkeypatch.chdir(ROOT)
    job = tmp_path / name
    job.write_text(text)
    code = cli.main(["validate", "--quiet", str(job)])
    return job, code, capsys.readouterr().err


def test_a_sweep_over_a_sweep_is_one_line(tmp_path, capsys, monkeypatch):
    inner = tmp_path / "inner.yaml"
    inner.write_text(TOY_SWEEP)
    outer = (f"kind: sweep\nname: outer\nbase: {inner}\n"
             "search:\n  space:\n    search.num_samples: {type: int, low: 1, high: 3}\n")
    job, code, err = _validate(tmp_path, capsys, monkeypatch, outer)
    assert code == 2
    assert err == (f"{job}:3: base: {inner} is itself a sweep; a sweep's base is one job of kind "
                   f"{', '.join(kinds.sweepable())}\n")


def test_pbt_over_a_kind_without_checkpoints_is_one_line(tmp_path, capsys, monkeypatch):
    assert not kinds.sweep_hooks("aimc_toy").restorable and kinds.sweep_hooks("analog_pipeline").restorable
    job, code, err = _validate(tmp_path, capsys, monkeypatch,
                               TOY_SWEEP.replace("  searcher: grid\n", "  searcher: grid\n  scheduler: {name: pbt}\n"))
    assert code == 2
    assert err == (f"{job}:10: search.scheduler.name: pbt copies trials' checkpoints, and aimc_toy trials "
                   "report none; use fifo or asha\n")


def test_the_pipeline_sweep_files_are_valid(tmp_path, capsys, monkeypatch):
    """PBT over analog_pipeline passes validation: its trials checkpoint every epoch."""
    _, code, err = _validate(tmp_path, capsys, monkeypatch, PIPELINE_SWEEP)
    assert (code, err) == (0, "")
