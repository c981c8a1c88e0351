"""Shipped job files run as a user runs them: from the repository root with the default ``--out``
(runs/), and from another working directory by absolute paths. Reduced with ``--set`` to CI size:
bilevel 10 rounds, aimc_toy 2,000 steps, aimc_pipeline 1 epoch, diffusion 6 outer steps, posttrain
1 epoch of 8 steps (the first 256 rows of each shipped training file, 32 eval rows) without the optima
runs, the λ sweep (post-training inside Tune trials, from another directory) 2 trials on the same rows:
λ = 0 and λ = 1."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = str(ROOT / "launch.py")

REDUCED = {
    "quickstart.yaml": ["bilevel.rounds=10", "bilevel.baseline=false"],
    "aimc_toy.yaml": ["toy.steps=2000", "toy.alphas=[0.1,0.01]"],
    "aimc_pipeline.yaml": ["analog.epochs=1"],
    "diffusion_schedule.yaml": ["diffusion.bilevel.outer_steps=6", "diffusion.bilevel.warmup_steps=20",
                                "diffusion.compare_cosine=false"],
    "sft_dpo_alright.yaml": ["epochs=1", "estimate_optima=false"],
}


# The post-training jobs train on the first 256 rows of each shipped training file (8 global batches of
# 32) and evaluate on 32 rows, the files still found through the job's own relative paths: a job's
# start-up, not its steps, is what CI pays.
POSTTRAIN_ROWS = ["data.train_rows=256", "data.eval_rows=32"]


def launch(args: list[str], cwd: Path, overrides: list[str]) -> tuple[subprocess.CompletedProcess, Path]:
    sets = [x for o in overrides for x in ("--set", o)]
    proc = subprocess.run([sys.executable, LAUNCH, *args, *sets, "--no-progress"], capture_output=True, text=True,
                          cwd=cwd, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    match = re.search(r"run directory: (\S+)", proc.stdout)
    assert match, proc.stdout
    return proc, Path(match.group(1))


@pytest.mark.parametrize("name", list(REDUCED))
def test_runs_from_the_repository_root_with_the_default_out(name):
    extra = POSTTRAIN_ROWS if name == "sft_dpo_alright.yaml" else []
    proc, run_dir = launch(["run", f"jobs/{name}"], ROOT, REDUCED[name] + extra)
    try:
        assert run_dir.parent == ROOT / "runs"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "succeeded", summary
        assert f"{summary['name']}: succeeded in" in proc.stdout
        assert summary["metrics"]
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def test_posttrain_lambda_sweep_from_another_directory_draws_the_front(tmp_path):
    proc, run_dir = launch(["run", str(ROOT / "jobs" / "sweep_posttrain_lambda.yaml")], tmp_path,
                           ["search.space.lam.values=[0.0,1.0]", "overrides.epochs=1",
                            *(f"overrides.{s}" for s in POSTTRAIN_ROWS)])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["metrics"]["trials"] == 2
    assert summary["base_kind"] == "posttrain"
    finals = [json.loads(p.read_text())["metrics"] for p in run_dir.glob("trials/*/summary.json")]
    assert len(finals) == 2
    # λ = 0 trains SFT only and λ = 1 DPO only: each end wins its own objective.
    by_lam = {json.loads(p.read_text())["lam"]: json.loads(p.read_text())["metrics"]
              for p in run_dir.glob("trials/*/summary.json")}
    assert by_lam[0.0]["f_sft"] < by_lam[1.0]["f_sft"] and by_lam[1.0]["f_dpo"] < by_lam[0.0]["f_dpo"]
    assert (run_dir / "plots" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert all((p / "model" / "model.safetensors").exists() for p in run_dir.glob("trials/*"))
    assert "best f_dpo" in proc.stdout  # the trials table
