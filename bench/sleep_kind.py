"""A bench-only job kind, ``bench_sleep``: sleep ``seconds`` and log ``records`` metric records.

bench/tune.py sweeps over it to measure what dist_core's sweep machinery (``kind: sweep``) costs
per trial beyond the trial's own work. Register it at run time with ``register()``; the sweep hands
the Kind to its trial workers, which import this module, so ``bench`` must be importable there
(``register()`` puts the repository root on ``PYTHONPATH`` for Ray workers started afterwards).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from dist_core import kinds
from dist_core.kinds import SweepHooks
from dist_core.runs import JobResult, RunDir, RunHooks
from dist_core.specbase import JobBase

NAME = "bench_sleep"
ROOT = Path(__file__).resolve().parent.parent


class SleepJob(JobBase):
    kind: Literal["bench_sleep"]
    seconds: float = Field(1.0, ge=0.0, description="total time the trial sleeps")
    records: int = Field(3, ge=1, description="metric records, spread evenly over the sleep")
    dummy: float = Field(0.0, description="a searched dimension that changes nothing")


def run(job: SleepJob, run_dir: RunDir, hooks: RunHooks, resume: bool = False) -> JobResult:
    # start: when the entry point began (bench/tune.py reads the steady-state cycle off the starts);
    # pid: which Ray worker ran the trial (bench/tune.py counts them to see whether actors were reused)
    start = time.time()
    for i in range(1, job.records + 1):
        time.sleep(job.seconds / job.records)
        run_dir.log_metrics({"step": i, "value": job.dummy * i, "pid": os.getpid(), "start": start})
    return JobResult({"value": job.dummy * job.records})


HOOKS = SweepHooks(bundles=lambda job, trial_cpus: [{"CPU": trial_cpus}],
                   iterations=lambda job: job.records,
                   is_report=lambda record: "value" in record)


def register() -> kinds.Kind:
    # Ray adds the driver's working directory to workers' sys.path, which covers a driver started
    # from the repository root; this covers any other working directory (workers inherit the
    # environment of the raylet, which inherits the driver's when ray.init starts it).
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *paths])
    return kinds.register(kinds.Kind(NAME, f"{__name__}:SleepJob", f"{__name__}:run", needs_ray=False,
                                     sweep=f"{__name__}:HOOKS"))


def write_jobs(folder: Path, seconds: float, trials: int, records: int = 3, max_concurrent: int = 2) -> Path:
    """A base job and a sweep over it in ``folder``; returns the sweep file."""
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / "sleep.yaml"
    base.write_text(f"kind: {NAME}\nname: sleep\nseconds: {seconds}\nrecords: {records}\n")
    sweep = folder / "sweep_sleep.yaml"
    sweep.write_text(
        "kind: sweep\nname: sweep_sleep\n"
        f"base: {base}\n"
        "search:\n"
        "  space:\n"
        f"    seconds: {{type: choice, values: [{seconds}]}}\n"
        "    dummy: {type: uniform, low: 0.0, high: 1.0}\n"
        "  searcher: random\n"
        "  scheduler: {name: fifo}\n"
        "  metric: value\n"
        "  mode: max\n"
        f"  num_samples: {trials}\n"
        f"  max_concurrent: {max_concurrent}\n"
        "  trial_cpus: 1\n")
    return sweep
