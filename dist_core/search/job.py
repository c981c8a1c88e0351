"""``kind: sweep``: Ray Tune over a base job; a table, a CSV, a summary and plots at the end."""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Any

from .. import plots, spec
from ..bilevel.job import JobResult
from ..errors import RunError
from ..runs import RunDir
from .schedulers import make_scheduler
from .searchers import make_searcher
from .space import max_value, tune_space
from .trainable import run_trial, trial_bundles

log = logging.getLogger("dist_core.search")
EXPERIMENT = "tune"


def check_capacity(job: spec.SweepJob, base: spec.BilevelJob) -> None:
    """Fail before starting when not even one trial fits, with the numbers."""
    import ray

    learners = int(max_value(job.search.space, "bilevel.lower.learners", base.bilevel.lower.learners))
    per = max_value(job.search.space, "resources.cpus_per_learner", base.resources.cpus_per_learner)
    worst = base.model_copy(deep=True)
    worst.bilevel.lower.learners, worst.resources.cpus_per_learner = learners, per
    need = sum(b["CPU"] for b in trial_bundles(worst, job.search.trial_cpus))
    have = ray.cluster_resources().get("CPU", 0.0)
    if need > have:
        raise RunError(
            f"one trial needs {need:g} CPUs ({job.search.trial_cpus:g} for the trial + {learners} learners x {per:g}) "
            f"but the cluster has {have:g}; lower bilevel.lower.learners or resources.cpus_per_learner, or add CPUs"
        )


def run(job: spec.SweepJob, run_dir: RunDir, resume: bool = False, progress: bool = True) -> JobResult:
    from ray import tune

    s = job.search
    fixed = job.fixed_overrides()
    base = spec.load(job.base, fixed)
    base_path = str(Path(job.base).resolve())  # trials run in their own directories
    check_capacity(job, base)

    def resources(config: dict[str, Any]):
        from ray.tune import PlacementGroupFactory

        from .trainable import trial_job

        return PlacementGroupFactory(trial_bundles(trial_job(base_path, fixed, config), s.trial_cpus))

    trainable = tune.with_resources(tune.with_parameters(run_trial, base=base_path, fixed=fixed), resources)
    storage = run_dir.path.resolve()
    experiment = storage / EXPERIMENT
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
                search_alg=make_searcher(s.searcher, s.max_concurrent, s.seed if s.seed is not None else job.seed),
                scheduler=make_scheduler(s.scheduler, space, max_t=base.bilevel.rounds,
                                         values={k: d.values for k, d in s.space.items() if d.values is not None}),
                max_concurrent_trials=s.max_concurrent,
                # Off, although reuse cuts Tune's per-trial overhead on 1-second trials from 208% to
                # 12% (bench/tune.py): in Ray 2.60 a reused function-trainable actor did not write
                # its later trials into their own directories (seen: 2 of 4 trials had no run/).
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT, storage_path=str(storage), verbose=1 if progress else 0,
                failure_config=tune.FailureConfig(max_failures=s.max_failures),
                # PBT copies other trials' checkpoints: keep a few more than the newest two.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=4 if s.scheduler.name == "pbt" else 2),
            ),
        )
    grid = tuner.fit()
    rows = trial_rows(grid, s.metric, s.mode, list(s.space))
    if not rows:
        raise RunError("the sweep produced no trial results")
    write_csv(run_dir.path / "trials.csv", rows)
    print_table(rows, s.metric)
    best = _best(rows, s.mode)
    plot_sweep(run_dir, job, rows, grid, best)
    errors = sum(r["status"] == "ERROR" for r in rows)
    metrics = {f"best_{s.metric}": best["metric"], "trials": len(rows), "errored": errors,
               "rounds_total": sum(r["rounds"] for r in rows)}
    return JobResult(metrics, best.get("checkpoint"),
                     {"best_config": {k: best[k] for k in s.space}, "best_trial": best["trial"],
                      "table": str(run_dir.path / "trials.csv")})


def trial_rows(grid: Any, metric: str, mode: str, keys: list[str]) -> list[dict[str, Any]]:
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        series = df[metric].dropna().tolist() if df is not None and metric in df else []
        best = (min(series) if mode == "min" else max(series)) if series else float("nan")
        # From the trial's own directory: after a PBT exploit, its metrics carry the source's id.
        match = re.search(r"_([0-9a-f]+_\d{5})", Path(result.path).name)
        trial = match.group(1) if match else Path(result.path).name
        rows.append({
            "trial": trial, **{k: result.config.get(k) for k in keys},
            "metric": best, "last": series[-1] if series else float("nan"), "rounds": len(series),
            "status": "ERROR" if result.error else "TERMINATED",
            "checkpoint": result.checkpoint.path if result.checkpoint else None,
            "path": result.path,
        })
    return sorted(rows, key=lambda r: r["trial"])


def _best(rows: list[dict], mode: str) -> dict:
    ok = [r for r in rows if r["metric"] == r["metric"]] or rows  # NaN != NaN
    return (min if mode == "min" else max)(ok, key=lambda r: r["metric"])


def write_csv(path: Path, rows: list[dict]) -> None:
    cols = [c for c in rows[0] if c not in ("path",)]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def print_table(rows: list[dict], metric: str) -> None:
    keys = [k for k in rows[0] if k not in ("trial", "metric", "last", "rounds", "status", "checkpoint", "path")]
    head = ["trial", *[k.split(".")[-1] for k in keys], f"best {metric}", "rounds", "status"]
    body = [[r["trial"], *[_fmt(r[k]) for k in keys], _fmt(r["metric"]), str(r["rounds"]), r["status"]] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    for line in [head, *body]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ",".join(f"{k}={v[k]}" for k in v)
    return str(v)


def plot_sweep(run_dir: RunDir, job: spec.SweepJob, rows: list[dict], grid: Any, best: dict) -> None:
    metric = job.search.metric
    order = list(range(1, len(rows) + 1))
    plots.curves(run_dir.plots / "metric_by_trial.png", f"{job.name}: best {metric} per trial", order,
                 [{"ylabel": metric, "xlabel": "trial", "series": [(metric, [r["metric"] for r in rows])]}],
                 markers=True)
    for result in grid:
        df = result.metrics_dataframe
        if result.path == best["path"] and df is not None and metric in df and "training_iteration" in df:
            plots.curves(run_dir.plots / "best_trial.png", f"{job.name}: best trial {best['trial']}",
                         df["training_iteration"].tolist(),
                         [{"ylabel": metric, "series": [(metric, df[metric].tolist())]}])
