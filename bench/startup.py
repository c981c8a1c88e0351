"""Post-training start-up: one Ray Train worker group per job against a ``TorchTrainer.fit()`` per phase.

    python bench/startup.py               # 3 alternating repeats of each arm, ~15 min on 2 cores
    python bench/startup.py --repeats 1   # one of each

The work is the shipped ALRIGHT job (``jobs/sft_dpo_alright.yaml``: ``estimate_optima`` gives an
SFT-only and a DPO-only phase before ALRIGHT, 128 steps each, 2 workers x 1 CPU, ZeRO-2).

* ``cli``: ``python launch.py run jobs/sft_dpo_alright.yaml`` from the repository root, as a user
  types it (only ``--out`` points into a temporary directory): the process's wall and the run's
  ``startup_s`` (``fit()`` to the first training step; Ray is already up).
* ``one group`` / ``fit per phase``: the same three phases after one ``ray.init`` in a child
  process, either in one worker group (what ``kind: posttrain`` does) or as three Ray Train runs,
  one per phase (what a hand-made script of ``TorchTrainer.fit()`` calls does).
* ``empty fit``: a ``TorchTrainer`` whose loop returns at once — Ray Train's own start-up and
  shutdown on this machine, the floor under any ``fit()``.

Arms alternate, the 1-min load average and the share of busy CPU are recorded before each run.
Writes ``bench/results/startup.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import median, write  # noqa: E402
from bench.posttrain import cpu_busy, loadavg, log  # noqa: E402

JOB = ROOT / "jobs" / "sft_dpo_alright.yaml"


def conditions() -> dict[str, Any]:
    return {"load_1min": loadavg()[0] if loadavg() else None, "cpu_busy": round(cpu_busy(1.0), 3)}


def run_cli(out: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "launch.py", "run", str(JOB.relative_to(ROOT)), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"launch.py failed:\n{proc.stderr[-2000:]}")
    summary = json.loads(max(out.glob("*/summary.json"), key=lambda p: p.stat().st_mtime).read_text())
    m = summary["metrics"]
    return {"wall_s": wall, "startup_s": m["startup_s"], "ray_train_start_s": m.get("ray_train_start_s")}


def child(arm: str, out: str) -> dict[str, Any]:
    """One arm in this process: one ``ray.init``, then the job's phases."""
    from dist_core import runtime, spec
    from dist_core.posttrain.job import _phase, absolute, job_phases, run_phases
    from dist_core.runs import RunDir

    t0 = time.perf_counter()
    job = absolute(spec.load(JOB, ["name=bench-startup"]))
    with runtime.connect(None, 2):
        t_ray = time.perf_counter()
        if arm == "empty fit":
            from ray.train import RunConfig, ScalingConfig
            from ray.train.torch import TorchConfig, TorchTrainer

            TorchTrainer(lambda cfg: None, scaling_config=ScalingConfig(num_workers=2),
                         torch_config=TorchConfig(backend="gloo"),
                         run_config=RunConfig(name="empty", storage_path=out)).fit()
            return {"ray_init_s": t_ray - t0, "fit_s": time.perf_counter() - t_ray}
        run_dir = RunDir.create(Path(out), job.name)
        model_dir = run_dir.path / "init_model"
        phases = job_phases(job)
        if arm == "one group":
            finals = run_phases(job, run_dir, phases, model_dir, False, run_dir.path / "model")
        else:
            finals = {}
            for p in phases:
                optima = (finals["opt_sft"]["f_sft"], finals["opt_dpo"]["f_dpo"]) if p.get("estimated") else None
                finals[p["name"]] = _phase(job, run_dir, p["name"], p["method"], optima, model_dir, False,
                                           run_dir.path / "model")
        phases_s = time.perf_counter() - t_ray
    return {"ray_init_s": t_ray - t0, "phases_s": phases_s,
            "startup_s_by_phase": {k: v.get("startup_s") for k, v in finals.items()},
            "phase_wall_s": {k: v["wall_s"] for k, v in finals.items()},
            "f": {k: [v["f_sft"], v["f_dpo"]] for k, v in finals.items()}}


def run_child(arm: str, out: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", arm, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{arm} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        print(json.dumps(child(args.child, args.out)))
        return
    arms = ["cli", "one group", "fit per phase", "empty fit"]
    runs: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        for r in range(args.repeats):
            for arm in arms:
                out = Path(tmp, f"{arm.replace(' ', '-')}-{r}")
                out.mkdir()
                before = conditions()
                res = run_cli(out) if arm == "cli" else run_child(arm, out)
                runs[arm].append({**before, **res})
                log(f"{arm} #{r}: {json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)})}")
    one = [x["phases_s"] for x in runs["one group"]]
    per = [x["phases_s"] for x in runs["fit per phase"]]
    summary = {
        "cli_wall_s": median(x["wall_s"] for x in runs["cli"]),
        "cli_startup_s": median(x["startup_s"] for x in runs["cli"]),
        "cli_ray_train_start_s": median(x["ray_train_start_s"] for x in runs["cli"]),
        "one_group_s": median(one), "fit_per_phase_s": median(per),
        "speedup_median": median(p / o for p, o in zip(per, one)),
        "speedup_spread": [min(p / o for p, o in zip(per, one)), max(p / o for p, o in zip(per, one))],
        "empty_fit_s": median(x["fit_s"] for x in runs["empty fit"]),
    }
    path = write("startup", {"job": str(JOB.relative_to(ROOT)), "repeats": args.repeats, "runs": runs,
                             "summary": summary})
    log(f"wrote {path}: {json.dumps(summary)}")


if __name__ == "__main__":
    main()
