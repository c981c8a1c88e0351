"""Run one job: look its kind up in the registry, own the run directory, turn failures into one line."""

from __future__ import annotations

import logging
import re
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

from . import kinds, runtime, spec
from .errors import RunError, SpecError
from .runs import RunDir, RunHooks, RunListener
from .specbase import JobBase

log = logging.getLogger("dist_core")


def run_job(
    job: JobBase,
    out: Path = Path("runs"),
    address: str | None = None,
    run_dir: RunDir | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    listeners: list[RunListener] | None = None,
) -> dict[str, Any]:
    """Run ``job`` (or continue it in ``run_dir``) and return its ``summary.json`` content."""
    kind = kinds.get(job.kind)
    resume = run_dir is not None
    if run_dir is None:
        run_dir = RunDir.create(out, job.name)
        run_dir.write_spec(spec.dump(job))
    hooks = RunHooks(progress=progress, listeners=list(listeners or []))
    run_dir.hooks = hooks
    run_dir.attach_log()
    echo(f"run directory: {run_dir.path}")
    log.info("%s job %s (%s)", "resuming" if resume else "starting", job.name, job.kind)
    run_dir.write_summary(job.kind, job.name, "running", {}, 0.0, None)
    if resume:
        for partial in run_dir.discard_partial_checkpoints():
            log.info("removed %s, left by a checkpoint save that was killed", partial.name)
    t0 = time.perf_counter()
    try:
        hooks.listeners.extend(_trackers(job, run_dir, resume))
        session = (runtime.connect(address or job.cluster.address, job.resources.num_cpus, dashboard=kind.dashboard)
                   if kind.needs_ray else nullcontext())
        with session:
            result = kinds.entry(job.kind)(job, run_dir, hooks, resume)
    except BaseException as e:
        wall = time.perf_counter() - t0
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        run_dir.write_log(getattr(e, "traceback_text", None) or traceback.format_exc())
        latest = run_dir.latest_checkpoint()
        summary = run_dir.write_summary(job.kind, job.name, status, {}, wall, str(latest) if latest else None,
                                        error=one_line(e))
        _end(hooks, summary, run_dir)
        run_dir.detach_log()
        if isinstance(e, (KeyboardInterrupt, RunError, SpecError)):
            raise
        where = run_dir.path / "run.log"
        again = f"; continue with: launch.py resume {run_dir.path}" if resumable(run_dir) else ""
        raise RunError(f"{job.name} failed: {one_line(e)} (traceback in {where}{again})") from None
    wall = time.perf_counter() - t0
    summary = run_dir.write_summary(job.kind, job.name, "succeeded", result.metrics, wall,
                                    result.checkpoint, **result.extra)
    _end(hooks, summary, run_dir)
    log.info("finished in %.1f s", wall)
    run_dir.detach_log()
    return summary


def _trackers(job: JobBase, run_dir: RunDir, resume: bool) -> list[RunListener]:
    """TensorBoard / MLflow listeners for a job's ``tracking:`` section (sweeps use Tune's own)."""
    tracking = job.tracking
    if not tracking.enabled or job.kind == "sweep":
        return []
    from . import tracking as trackers

    return trackers.listeners(job, tracking, run_dir, resume)


def _end(hooks: RunHooks, summary: dict[str, Any], run_dir: RunDir) -> None:
    try:
        hooks.on_end(summary, run_dir)
    except Exception:  # a tracking store that fails at the end must not hide the run's own result
        log.exception("a run listener failed at the end of the run")


def resumable(run_dir: RunDir) -> bool:
    """Whether ``resume`` has anything to continue from (a checkpoint, or a finished phase)."""
    return run_dir.latest_checkpoint() is not None or any(run_dir.path.glob("phases/*.json")) or \
        any(run_dir.path.glob("train/*/checkpoint_*")) or (run_dir.path / "tune").is_dir()


_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Failure|Interrupt)):\s*\S")


def one_line(e: BaseException) -> str:
    """The informative line of an error.

    Ray wraps a worker's or actor's error in text that starts with a header ('Training failed due
    to worker errors:', 'Traceback ...', 'ray::Actor.method() ...') and carries the cause further
    down as ``SomeError: message``: take the last such line; otherwise the first line.
    """
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    causes = [line for line in lines[1:] if _ERROR_LINE.match(line)]
    if causes and (len(lines) > 1 and (lines[0].endswith(":") or lines[0].startswith(("Traceback", "ray::")))):
        return causes[-1]
    return lines[-1] if lines[0].startswith("Traceback") else lines[0]


def resume_job(path: Path, out: Path = Path("runs"), address: str | None = None, progress: bool = True,
               echo: Callable[[str], None] = print) -> dict[str, Any]:
    run_dir = RunDir(Path(path).resolve())
    if not run_dir.spec_path().exists():
        raise RunError(f"{path}: not a run directory (no spec.yaml)")
    job = spec.load(run_dir.spec_path())
    summary = run_dir.read_summary() or {}
    if summary.get("status") == "succeeded":
        echo(f"{path}: already finished")
        return summary
    return run_job(job, out, address, run_dir=run_dir, progress=progress, echo=echo)
