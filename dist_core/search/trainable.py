"""One sweep trial: the base job with the sampled fields set, its learners as nested actors.

Each trial reports every round to Tune (so ASHA can stop it and PBT can compare it) and attaches
a checkpoint on the job's checkpoint rounds, from which Tune restores or PBT exploits it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import checkpoint, spec
from ..bilevel.executors import Snapshot
from ..bilevel.job import RunHooks
from ..runs import RunDir
from .space import overrides


class TuneReporter(RunHooks):
    """Round metrics go to ``tune.report``; on a checkpoint round they wait for the checkpoint."""

    def __init__(self, rounds: int, checkpoint_every: int):
        self.rounds, self.every = rounds, checkpoint_every
        self._pending: dict[str, float] | None = None

    def checkpoint_due(self, round_idx: int) -> bool:
        return bool(self.every) and (round_idx % self.every == 0 or round_idx >= self.rounds)

    def on_round(self, round_idx: int, metrics: dict[str, float]) -> None:
        from ray import tune

        record = {k: v for k, v in metrics.items() if k != "compute_s"}
        if self.checkpoint_due(round_idx):
            self._pending = record
        else:
            tune.report(record)

    def on_checkpoint(self, round_idx: int, path: Path) -> None:
        from ray import tune

        record = self._pending or {"round": round_idx}
        self._pending = None
        tune.report(record, checkpoint=tune.Checkpoint.from_directory(str(path)))


def trial_job(base: str, fixed: list[str], config: dict[str, Any]) -> spec.BilevelJob:
    return spec.load(base, fixed + overrides(config))


def run_trial(config: dict[str, Any], base: str, fixed: list[str]) -> None:
    from ray import tune

    from ..bilevel import job as bilevel_job

    job = trial_job(base, fixed, config)
    run_dir = RunDir(Path(tune.get_context().get_trial_dir()) / "run")
    for d in (run_dir.path, run_dir.plots, run_dir.checkpoints):
        d.mkdir(parents=True, exist_ok=True)
    run_dir.write_spec(spec.dump(job))
    snapshot = None
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            snapshot = Snapshot.from_flat(*checkpoint.load(Path(d)))
    reporter = TuneReporter(job.bilevel.rounds, job.bilevel.checkpoint_every)
    result = bilevel_job.run(job, run_dir, progress=False, resume_from=snapshot, hooks=reporter)
    run_dir.write_summary(job.kind, job.name, "succeeded", result.metrics, 0.0, result.checkpoint, config=config)


def trial_bundles(job: spec.BilevelJob, trial_cpus: float) -> list[dict[str, float]]:
    """The trial's own driver plus one bundle per lower learner, so no trial waits on its siblings."""
    if job.bilevel.backend == "local":
        return [{"CPU": max(trial_cpus, 1.0)}]
    per = job.resources.cpus_per_learner
    return [{"CPU": trial_cpus}] + [{"CPU": per}] * job.bilevel.lower.learners
