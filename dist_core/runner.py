"""Run one job: pick its kind's entry point, own the run directory, turn failures into one line."""

from __future__ import annotations

import logging
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

from . import runtime, spec
from .errors import RunError
from .runs import RunDir

log = logging.getLogger("dist_core")
LOCAL_KINDS = {"aimc_toy"}  # single-process numerical jobs: starting Ray would only cost seconds


def _entry(kind: str) -> Callable[..., Any]:
    if kind == "bilevel":
        from .bilevel.job import run

        return run
    if kind == "sweep":
        from .search.job import run

        return run
    if kind == "diffusion_schedule":
        from .diffusion.job import run

        return run
    if kind == "analog_pipeline":
        from .analog.job import run

        return run
    if kind == "aimc_toy":
        from .analog.toy_job import run

        return run
    if kind == "posttrain":
        from .posttrain.job import run

        return run
    raise RunError(f"kind {kind!r} has no runner")  # unreachable: spec.load checks kinds


def run_job(
    job: spec.Job,
    out: Path = Path("runs"),
    address: str | None = None,
    run_dir: RunDir | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run ``job`` (or continue it in ``run_dir``) and return its ``summary.json`` content."""
    resume = run_dir is not None
    if run_dir is None:
        run_dir = RunDir.create(out, job.name)
        run_dir.write_spec(spec.dump(job))
    run_dir.attach_log()
    echo(f"run directory: {run_dir.path}")
    log.info("%s job %s (%s)", "resuming" if resume else "starting", job.name, job.kind)
    run_dir.write_summary(job.kind, job.name, "running", {}, 0.0, None)
    t0 = time.perf_counter()
    try:
        # Tune cleans up trials' placement groups through the State API, served by the dashboard.
        session = (nullcontext() if job.kind in LOCAL_KINDS else
                   runtime.connect(address or job.cluster.address, job.resources.num_cpus, dashboard=job.kind == "sweep"))
        with session:
            result = _entry(job.kind)(job, run_dir, resume=resume, progress=progress)
    except BaseException as e:
        wall = time.perf_counter() - t0
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        run_dir.write_log(getattr(e, "traceback_text", None) or traceback.format_exc())
        latest = run_dir.latest_checkpoint()
        run_dir.write_summary(job.kind, job.name, status, {}, wall, str(latest) if latest else None,
                              error=_one_line(e))
        run_dir.detach_log()
        if isinstance(e, (KeyboardInterrupt, RunError)):
            raise
        where = run_dir.path / "run.log"
        raise RunError(f"{job.name} failed: {_one_line(e)} "
                       f"(traceback in {where}; continue with: launch.py resume {run_dir.path})") from None
    wall = time.perf_counter() - t0
    summary = run_dir.write_summary(job.kind, job.name, "succeeded", result.metrics, wall,
                                    result.checkpoint, **result.extra)
    log.info("finished in %.1f s", wall)
    run_dir.detach_log()
    return summary


def _one_line(e: BaseException) -> str:
    """The informative line of an error: Ray's wrapped errors start with 'Traceback', end with it."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    return lines[-1] if lines[0].startswith("Traceback") else lines[0]


def resume_job(path: Path, out: Path = Path("runs"), address: str | None = None, progress: bool = True,
               echo: Callable[[str], None] = print) -> dict[str, Any]:
    run_dir = RunDir(path)
    if not run_dir.spec_path().exists():
        raise RunError(f"{path}: not a run directory (no spec.yaml)")
    job = spec.load(run_dir.spec_path())
    summary = run_dir.read_summary() or {}
    if summary.get("status") == "succeeded":
        echo(f"{path}: already finished")
        return summary
    return run_job(job, out, address, run_dir=run_dir, progress=progress, echo=echo)
