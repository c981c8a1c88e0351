"""``kind: sweep``: Ray Tune over a base job of any kind; a table, a CSV, a summary and plots.

What a trial costs, how often it reports and whether it can be restored come from the base kind's
``SweepHooks`` (``kinds.py``); this module knows no kind.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

from .. import kinds, plots, spec
from ..errors import RunError
from ..runs import JobResult, RunDir, RunHooks
from ..specbase import JobBase
from .config import SweepJob
from .schedulers import make_scheduler
from .searchers import make_searcher
from .space import tune_space
from .trainable import TRIALS, run_trial, trial_bundles, trial_job

log = logging.getLogger("dist_core.search")
EXPERIMENT = "tune"


def trial_cpus(job: JobBase, trial_cpus: float) -> float:
    """CPUs one trial holds: its bundles plus what its job reserves outside them (Ray Train's workers)."""
    hooks = kinds.sweep_hooks(job.kind)
    outside = hooks.outside(job) if hooks.outside else 0.0
    return sum(b.get("CPU", 0.0) for b in hooks.bundles(job, trial_cpus)) + outside


def worst_trial(job: SweepJob, base: JobBase) -> tuple[float, str]:
    """The most CPUs any single searched value makes a trial hold, and which value that is."""
    fixed = job.fixed_overrides()
    worst, why = trial_cpus(base, job.search.trial_cpus), "the base job"
    for key, dist in job.search.space.items():
        for value in dist.representatives():
            need = trial_cpus(spec.load(job.base, fixed + [f"{key}={spec.yaml_value(value)}"]), job.search.trial_cpus)
            if need > worst:
                worst, why = need, f"{key}={value}"
    return worst, why


def check_capacity(job: SweepJob, base: JobBase) -> int:
    """Fail before starting when not even one trial fits, with the numbers; else the trials that fit at once."""
    import ray

    need, why = worst_trial(job, base)
    have = ray.cluster_resources().get("CPU", 0.0)
    if need > have + 1e-9:
        cpus = ", ".join(f"{b.get('CPU', 0):g}" for b in trial_bundles(base, job.search.trial_cpus))
        raise RunError(f"one trial needs {need:g} CPUs ({why}: bundles [{cpus}]"
                       f"{' plus its Train workers' if kinds.sweep_hooks(base.kind).outside else ''}) but the cluster "
                       f"has {have:g}; lower the job's workers or CPUs per actor, or add CPUs")
    return max(1, int(math.floor(have / need + 1e-9)))


class TrialProgress:
    """A Tune callback: one progress bar over trials instead of Tune's status tables."""

    def __init__(self, total: int, enabled: bool):
        from ray.tune import Callback
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="trials", unit="trial", disable=not enabled, leave=False)

        class _Callback(Callback):
            def on_trial_complete(cb, iteration, trials, trial, **info):  # noqa: N805 (Ray's signature)
                self.bar.update(1)

            def on_trial_error(cb, iteration, trials, trial, **info):  # noqa: N805
                self.bar.update(1)

        self.callback = _Callback()

    def close(self) -> None:
        self.bar.close()


def _tracking_callbacks(job: SweepJob, run_dir: RunDir) -> list[Any]:
    """Ray Tune's own TensorBoard and MLflow logger callbacks, for every trial."""
    from .. import tracking

    t = job.tracking
    out: list[Any] = []
    if t.tensorboard:  # event files in each trial's Tune directory, tune/<trial>/events.out.tfevents.*
        tracking.require("tensorboard")
        from ray.tune.logger import TBXLoggerCallback

        out.append(TBXLoggerCallback())
    if t.mlflow is not None:  # one MLflow run per trial, named after it, its config as params
        tracking.require("mlflow")
        from mlflow.tracking import MlflowClient
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        uri, name = tracking.mlflow_uri(t.mlflow, run_dir), t.mlflow.experiment or job.name
        # Created here so its artefacts sit beside a SQLite store, not in the working directory.
        tracking.ensure_experiment(MlflowClient(tracking_uri=uri), name, uri)
        out.append(MLflowLoggerCallback(tracking_uri=uri, experiment_name=name, save_artifact=False))
    return out


def run(job: SweepJob, run_dir: RunDir, hooks: RunHooks, resume: bool = False) -> JobResult:
    from ray import tune

    s = job.search
    fixed = job.fixed_overrides()
    base = spec.load(job.base, fixed)
    kind_hooks = kinds.sweep_hooks(base.kind)
    base_path = str(Path(job.base).resolve())  # trials run in their own directories
    fits = check_capacity(job, base)
    concurrent = min(s.max_concurrent, fits) if kind_hooks.outside else s.max_concurrent
    if concurrent < s.max_concurrent:
        log.info("running %d trials at once (not %d): each holds %g CPUs", concurrent, s.max_concurrent,
                 trial_cpus(base, s.trial_cpus))

    def resources(config: dict[str, Any]):
        from ray.tune import PlacementGroupFactory

        return PlacementGroupFactory(trial_bundles(trial_job(base_path, fixed, config), s.trial_cpus))

    storage = run_dir.path.resolve()
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base_path, fixed=fixed, storage=str(storage),
                             kind=kinds.get(base.kind)), resources)
    experiment = storage / EXPERIMENT
    grid_size = math.prod(len(d.values) for d in s.space.values() if d.type == "grid")
    progress = TrialProgress(s.num_samples * grid_size, hooks.progress)
    callbacks = [progress.callback, *_tracking_callbacks(job, run_dir)]
    if resume and tune.Tuner.can_restore(str(experiment)):
        log.info("restoring the sweep from %s", experiment)
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        space = tune_space(s.space)
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=s.metric, mode=s.mode, num_samples=s.num_samples,
                search_alg=make_searcher(s.searcher, concurrent, s.seed if s.seed is not None else job.seed),
                scheduler=make_scheduler(s.scheduler, space, max_t=kind_hooks.iterations(base),
                                         values={k: d.values for k, d in s.space.items() if d.values is not None}),
                # Concurrency is the searcher's (BasicVariantGenerator's own limit, or a
                # ConcurrencyLimiter): Tune ignores max_concurrent_trials beside a search algorithm.
                # Reused actors are safe here: trials write to paths computed from the storage path
                # and the trial id, never to get_trial_dir() or the working directory.
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT, storage_path=str(storage), verbose=0, callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=s.max_failures),
                # PBT copies other trials' checkpoints: keep a few more than the newest two.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=4 if s.scheduler.name == "pbt" else 2),
            ),
        )
    try:
        grid = tuner.fit()
    finally:
        progress.close()
    rows = trial_rows(grid, s.metric, s.mode, list(s.space), storage)
    if not rows:
        raise RunError("the sweep produced no trial results")
    write_csv(run_dir.path / "trials.csv", rows)
    best = _best(rows, s.mode)
    plot_sweep(run_dir, job, rows, grid, best)
    if kind_hooks.plot:
        kinds.resolve(kind_hooks.plot)(run_dir, rows, job)
    errors = sum(r["status"] == "ERROR" for r in rows)
    metrics = {f"best_{s.metric}": best["metric"], "trials": len(rows), "errored": errors,
               "iterations_total": sum(r["iterations"] for r in rows)}
    return JobResult(metrics, best.get("checkpoint"),
                     {"best_config": {k: best[k] for k in s.space}, "best_trial": best["trial"],
                      "base_kind": base.kind, "table": str(run_dir.path / "trials.csv"),
                      "trials_table": format_table(rows, s.metric)})


def trial_rows(grid: Any, metric: str, mode: str, keys: list[str], storage: Path) -> list[dict[str, Any]]:
    rows = []
    ids = sorted((p.name for p in (storage / TRIALS).iterdir()), key=len, reverse=True) \
        if (storage / TRIALS).is_dir() else []
    for result in grid:
        df = result.metrics_dataframe
        series = df[metric].dropna().tolist() if df is not None and metric in df else []
        best = (min(series) if mode == "min" else max(series)) if series else float("nan")
        # The id from Tune's own trial directory name (after a PBT exploit the reported metrics
        # carry the source's id), matched against the trial directories this sweep wrote.
        name = Path(result.path).name
        trial = next((t for t in ids if f"_{t}_" in f"_{name}_"), name)
        summary_file = storage / TRIALS / trial / "summary.json"
        final = json.loads(summary_file.read_text()).get("metrics", {}) if summary_file.exists() else {}
        rows.append({
            "trial": trial, **{k: result.config.get(k) for k in keys},
            "metric": best, "last": series[-1] if series else float("nan"), "iterations": len(series),
            "status": "ERROR" if result.error else "TERMINATED",
            "checkpoint": result.checkpoint.path if result.checkpoint else None,
            "path": str(storage / TRIALS / trial), "final": final,
        })
    return sorted(rows, key=lambda r: r["trial"])


def _best(rows: list[dict], mode: str) -> dict:
    ok = [r for r in rows if r["metric"] == r["metric"]] or rows  # NaN != NaN
    return (min if mode == "min" else max)(ok, key=lambda r: r["metric"])


def write_csv(path: Path, rows: list[dict]) -> None:
    cols = [c for c in rows[0] if c not in ("path", "final")]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def format_table(rows: list[dict], metric: str) -> str:
    keys = [k for k in rows[0] if k not in ("trial", "metric", "last", "iterations", "status", "checkpoint", "path",
                                            "final")]
    head = ["trial", *[_column(k) for k in keys], f"best {metric}", "iterations", "status"]
    body = [[r["trial"], *[_fmt(r[k]) for k in keys], _fmt(r["metric"]), str(r["iterations"]), r["status"]]
            for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head, *body])


def _column(key: str) -> str:
    """A searched key's column head: its last part, or the last two for a list item (psi0.1)."""
    parts = key.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ",".join(f"{k}={v[k]}" for k in v)
    return str(v)


def plot_sweep(run_dir: RunDir, job: SweepJob, rows: list[dict], grid: Any, best: dict) -> None:
    metric = job.search.metric
    order = list(range(1, len(rows) + 1))
    plots.curves(run_dir.plots / "metric_by_trial.png", f"{job.name}: best {metric} per trial", order,
                 [{"ylabel": metric, "xlabel": "trial", "series": [(metric, [r["metric"] for r in rows])]}],
                 markers=True)
    for result in grid:
        df = result.metrics_dataframe
        if Path(result.path).name.find(best["trial"]) >= 0 and df is not None and metric in df \
                and "training_iteration" in df:
            plots.curves(run_dir.plots / "best_trial.png", f"{job.name}: best trial {best['trial']}",
                         df["training_iteration"].tolist(),
                         [{"ylabel": metric, "series": [(metric, df[metric].tolist())]}])
