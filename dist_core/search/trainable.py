"""One sweep trial: the base job with the sampled fields set, run through its kind's entry point.

The trial reports the records its kind's hooks mark as iterations (so ASHA can stop it and PBT can
compare it), attaches RunDir checkpoints to those reports (so Tune can restore a trial and PBT copy
one), and ends with one report that carries the job's final metrics. Trial outputs go to
``<sweep run dir>/trials/<trial id>/``, computed from the experiment's storage and the trial id:
``get_trial_dir()`` and the working directory differ between a fresh and a reused actor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import kinds, spec
from ..runs import Record, RunDir, RunHooks
from ..specbase import JobBase
from .space import overrides

TRIALS = "trials"


def scalars(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numbers of a (nested) metrics dict as flat ``a/b`` keys: what Tune and its loggers take."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)):
            out[name] = value
        elif isinstance(value, dict):
            out.update(scalars(value, f"{name}/"))
    return out


class TuneReporter:
    """Hands a trial's iterations to ``tune.report``, one record behind.

    A kind logs a record and then, on checkpoint steps, saves a checkpoint: holding each record until
    the next one (or the end) lets the checkpoint ride on the report of its own step, and lets the
    last report carry the final metrics as well.
    """

    def __init__(self, is_report):
        self.is_report = is_report
        self._pending: tuple[dict[str, Any], Path | None] | None = None
        self.reports = 0

    def on_record(self, record: Record) -> None:
        if self.is_report(record):
            self._flush()
            self._pending = (scalars(record), None)

    def on_checkpoint(self, step: int, path: Path) -> None:
        if self._pending is None or self._pending[1] is not None:
            self._flush()
            self._pending = ({"step": step}, path)
        else:
            self._pending = (self._pending[0], path)

    def on_end(self, summary: dict[str, Any], run_dir: RunDir) -> None:
        pass

    def finish(self, metrics: dict[str, Any]) -> None:
        record, path = self._pending or ({}, None)
        self._pending = (record | scalars(metrics), path)
        self._flush()

    def _flush(self) -> None:
        if self._pending is None:
            return
        from ray import tune

        record, path = self._pending
        self._pending = None
        self.reports += 1
        tune.report(record, checkpoint=tune.Checkpoint.from_directory(str(path)) if path is not None else None)


def trial_job(base: str, fixed: list[str], config: dict[str, Any]) -> JobBase:
    return spec.load(base, fixed + overrides(config))


def trial_dir(storage: str, trial_id: str) -> RunDir:
    run_dir = RunDir(Path(storage) / TRIALS / trial_id)
    for d in (run_dir.path, run_dir.plots, run_dir.checkpoints):
        d.mkdir(parents=True, exist_ok=True)
    return run_dir


def run_trial(config: dict[str, Any], base: str, fixed: list[str], storage: str, kind: kinds.Kind) -> None:
    from ray import tune

    kinds.register(kind)  # a kind registered at run time in the driver exists in this worker too
    job = trial_job(base, fixed, config)
    hooks_of_kind = kinds.sweep_hooks(job.kind)
    run_dir = trial_dir(storage, tune.get_context().get_trial_id())
    reporter = TuneReporter(hooks_of_kind.is_report)
    done = run_dir.read_summary()
    if done is not None and done.get("status") == "succeeded":
        # Finished before a driver was killed, but after Tune's last snapshot of the experiment:
        # hand Tune the final result again instead of training the trial a second time.
        last = [r for r in run_dir.read_metrics() if hooks_of_kind.is_report(r)][-1:]
        reporter._pending = (scalars(last[0]) if last else {}, None)
        reporter.finish(done.get("metrics", {}))
        return
    run_dir.hooks = RunHooks(progress=False, listeners=[reporter])
    run_dir.write_spec(spec.dump(job))
    resume = False
    restored = tune.get_checkpoint()
    if restored is not None and hooks_of_kind.restorable:
        # A restored trial (or a PBT exploit) continues from the checkpoint; the kind's resume
        # drops this trial's records past the checkpoint's step.
        with restored.as_directory() as d:
            meta = json.loads((Path(d) / "meta.json").read_text()) if (Path(d) / "meta.json").exists() else {}
            run_dir.place_checkpoint(Path(d), int(meta.get("round", meta.get("step", 0))))
        resume = True
    else:
        run_dir.rewrite_metrics([])  # a retried trial without a checkpoint starts over
    result = kinds.entry(job.kind)(job, run_dir, run_dir.hooks, resume)
    # Before the last report: a scheduler may stop the trial on it (ASHA at max_t). A trial that
    # finds its own summary on a restore re-reports it instead of training again (above).
    run_dir.write_summary(job.kind, job.name, "succeeded", result.metrics, 0.0, result.checkpoint,
                          config=config, **result.extra)
    reporter.finish(result.metrics)


def trial_bundles(job: JobBase, trial_cpus: float) -> list[dict[str, float]]:
    return kinds.sweep_hooks(job.kind).bundles(job, trial_cpus)
