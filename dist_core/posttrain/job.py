"""``kind: posttrain``: the driver side of a post-training run on Ray Train + DeepSpeed.

A run has phases: with ``estimate_optima`` first an SFT-only and a DPO-only run whose final losses
become (f*_SFT, f*_DPO), then the job's method. All phases run in one ``TorchTrainer.fit()``, in
the same worker processes (``worker.train_loop``), so Ray Train's and DeepSpeed's start-up is paid
once per job. Workers stream records to a ``MetricsSink`` actor that the driver drains into
``metrics.jsonl`` while a progress bar moves. Finished phases are recorded in
``phases/<phase>.json``, so ``launch.py resume`` skips them and the unfinished phase continues from
the newest Ray Train checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import ray

from ..checkpoint import write_json_atomic
from ..errors import RunError
from ..runs import JobResult, RunDir, RunHooks, last_of_each
from .config import PosttrainJob, total_steps


log = logging.getLogger("dist_core")


@ray.remote(num_cpus=0)
class MetricsSink:
    """Rank 0 puts records; the driver drains them (works wherever the actor lands)."""

    def __init__(self) -> None:
        self.buffer: list[dict[str, Any]] = []

    def put(self, record: dict[str, Any]) -> None:
        self.buffer.append(record)

    def drain(self) -> list[dict[str, Any]]:
        out, self.buffer = self.buffer, []
        return out


def reference_cache_dir() -> Path:
    return Path(os.environ.get("DIST_CORE_CACHE", Path.home() / ".cache" / "dist_core")) / "ref_logps"


def absolute(job: PosttrainJob) -> PosttrainJob:
    """The job with every path absolute: workers do not share the driver's working directory."""
    data = job.model_dump(mode="json")
    if data["model"].get("path"):
        data["model"]["path"] = str(Path(data["model"]["path"]).resolve())
    data["tokenizer"]["path"] = str(Path(data["tokenizer"]["path"]).resolve())
    for section in ("sft", "preference"):
        split = data["data"].get(section)
        for key in ("train", "eval"):
            if split and split.get(key):
                split[key] = str(Path(split[key]).resolve())
    return PosttrainJob.model_validate(data)


TRAIN_RUN = "run"  # the Ray Train run's name: checkpoints under <run dir>/train/run/


def _fit(job: PosttrainJob, run_dir: RunDir, phases: list[dict[str, Any]], done: dict[str, dict[str, Any]],
         model_dir: Path, progress: bool, export_to: Path, name: str = TRAIN_RUN,
         resume_from: Path | None = None) -> dict[str, dict[str, Any]]:
    """One TorchTrainer run of ``phases`` (``worker.train_loop``); returns every phase's final metrics
    and copies the model the last phase exports to ``export_to``."""
    from .worker import train_loop

    sink = MetricsSink.remote()
    cfg = {"job": job.model_dump(mode="json"), "phases": phases, "done": done, "model_dir": str(model_dir),
           "build_model": job.model.path is None,
           "ref_cache": str(reference_cache_dir()), "sink": sink,
           # Where the workers start when the Ray Train run has no checkpoint of its own yet.
           "resume_from": str(resume_from) if resume_from else None}
    descs = {p["name"]: f"{p['name']} ({p['method']})" for p in phases}
    first = next(p["name"] for p in phases if p["name"] not in done)
    t0 = time.time()
    final = fit_workers(train_loop, cfg, sink, run_dir, name, total_steps(job), descs[first],
                        job.workers, job.cpus_per_worker, job.max_failures, progress, export_to,
                        postfix=("sft_loss", "dpo_loss"), descs=descs, placement=job.placement)
    finals = final.pop("phases")
    # The first phase this fit() trained (a resumed one also returns phases of the run it continues).
    ran = [f for f in finals.values() if f.get("first_step_unix", 0.0) >= t0]
    if ran:
        head = min(ran, key=lambda f: f["first_step_unix"])
        # From fit() to the first step: Ray Train's worker group, then (in the workers) imports, model
        # build and load, DeepSpeed engine and reference set-up.
        head["startup_s"] = head["first_step_unix"] - t0
        head["ray_train_start_s"] = head["entered_unix"] - t0
    return finals


def fit_workers(loop: Any, cfg: dict[str, Any], sink: Any, run_dir: RunDir, phase: str, total: int, desc: str,
                workers: int, cpus_per_worker: float, max_failures: int, progress: bool,
                export_to: Path | None = None, postfix: tuple[str, ...] = (),
                descs: dict[str, str] | None = None, placement: str = "pack") -> dict[str, Any]:
    """Run ``loop`` on a ``TorchTrainer`` (gloo) while draining ``sink`` into ``metrics.jsonl``.

    Returns the ``final.json`` of the last checkpoint; its ``model/`` is copied to ``export_to`` if given.
    Any kind whose workers end with ``worker.export_model`` can use it. ``phase`` names the Ray Train
    run; when records carry a phase listed in ``descs``, the progress bar restarts under its name.
    Checkpoints of the ``main`` phase are handed to the run's listeners (a Tune trial reports them).
    ``placement`` is Ray Train's strategy for the workers; each rank's node goes to ``workers.json``.
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from tqdm import tqdm

    try:
        check_fits(workers, cpus_per_worker, placement)
    except RunError:
        ray.kill(sink)
        raise
    storage = (run_dir.path / "train").resolve()
    trainer = TorchTrainer(
        loop, train_loop_config=cfg, torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=False,
                                     resources_per_worker={"CPU": cpus_per_worker},
                                     placement_strategy=placement.upper()),
        run_config=RunConfig(name=phase, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=max_failures)))
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as e:  # re-raised in the driver thread
            box["error"] = e

    thread = threading.Thread(target=target, name=f"fit-{phase}", daemon=True)
    thread.start()
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress, leave=False)
    shown = None
    nodes: dict[int, str] = {}
    while thread.is_alive():
        thread.join(timeout=1.0)
        for record in ray.get(sink.drain.remote()):
            if record.get("event") == "worker_node":  # where a rank runs: for workers.json, not a metric
                nodes[record["rank"]] = record["node"]
                continue
            run_dir.log_metrics(record)
            if descs and record.get("phase") in descs and record["phase"] != shown:
                shown = record["phase"]
                bar.reset(total=total)
                bar.set_description(descs[shown])
            if record.get("event") == "phase_done":
                log.info("phase %s (%s) finished in %.1f s: %s", record["phase"], record["method"],
                         record["wall_s"], {k: round(record[k], 4) for k in ("f_sft", "f_dpo") if k in record})
            if "step" in record and "event" not in record:
                bar.n = record["step"]
                bar.set_postfix({k: f"{record[k]:.3f}" for k in postfix if k in record})
                bar.refresh()
            if record.get("event") == "checkpoint" and record.get("phase") == "main":
                run_dir.hooks.on_checkpoint(record["step"], storage / phase / record["dir"])
            if record.get("event") == "resumed":
                log.info("%s: resumed at step %d", phase, record["step"])
    bar.close()
    for record in ray.get(sink.drain.remote()):
        if record.get("event") != "worker_node":
            run_dir.log_metrics(record)
    ray.kill(sink)
    if nodes:
        write_json_atomic(run_dir.path / WORKERS_FILE,
                          {"placement": placement, "nodes": [nodes[r] for r in sorted(nodes)]})
    if "error" in box:
        raise box["error"]
    result = box["result"]
    with result.checkpoint.as_directory() as d:
        final = json.loads(Path(d, "final.json").read_text())
        if export_to is not None:
            tmp = export_to.with_name(export_to.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(Path(d, "model"), tmp)
            shutil.rmtree(export_to, ignore_errors=True)
            os.replace(tmp, export_to)
    return final


def check_fits(workers: int, cpus_per_worker: float, placement: str = "pack") -> None:
    """Ray Train would wait forever for workers the cluster cannot place: say so up front."""
    need = workers * cpus_per_worker
    have = ray.cluster_resources().get("CPU", 0.0)
    if need > have:
        raise RunError(f"{workers} workers x {cpus_per_worker} CPUs = {need:g} CPUs, but the cluster has "
                       f"{have:g}; lower workers or cpus_per_worker")
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    if placement == "strict_spread" and nodes < workers:
        raise RunError(f"placement strict_spread needs {workers} nodes (one per worker), the cluster has {nodes}; "
                       "use spread, or add nodes")


WORKERS_FILE = "workers.json"  # the placement and each rank's node, written by ``fit_workers``


def worker_nodes(run_dir: RunDir) -> dict[str, Any] | None:
    path = run_dir.path / WORKERS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def run_phases(job: PosttrainJob, run_dir: RunDir, phases: list[dict[str, Any]], model_dir: Path,
               progress: bool, export_to: Path, name: str = TRAIN_RUN,
               resume_from: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every phase's final metrics: read from ``phases/<name>.json`` when an earlier run finished it,
    else trained (all unfinished phases in one worker group, the Ray Train run ``name``) and recorded
    there."""
    finished = run_dir.path / "phases"
    done = {p["name"]: json.loads((finished / f"{p['name']}.json").read_text())
            for p in phases if (finished / f"{p['name']}.json").exists()}
    if len(done) == len(phases):
        return done
    finals = _fit(job, run_dir, phases, done, model_dir, progress, export_to, name, resume_from)
    finished.mkdir(exist_ok=True)
    for phase, final in finals.items():
        if phase not in done:
            write_json_atomic(finished / f"{phase}.json", final)
    return finals


def _phase(job: PosttrainJob, run_dir: RunDir, phase: str, method: str, optima: tuple[float, float] | None,
           model_dir: Path, progress: bool, export_to: Path) -> dict[str, Any]:
    """A one-phase run (another kind's warm-up, e.g. distillation's SFT of the teacher)."""
    spec = {"name": phase, "method": method, "optima": list(optima) if optima else None}
    return run_phases(job, run_dir, [spec], model_dir, progress, export_to, name=phase)[phase]


def restored_checkpoint(run_dir: RunDir, phases: list[dict[str, Any]]) -> Path | None:
    """A checkpoint placed in ``checkpoints/`` (a Tune trial restored, or a PBT exploit copying another
    trial's), made the only place this run continues from: the trial's own Ray Train run, finished
    phases and records past the checkpoint's step are dropped."""
    from .worker import PROGRESS

    placed = run_dir.latest_checkpoint()
    if placed is None or not (placed / "meta.json").exists() or not (placed / PROGRESS).exists():
        return None
    meta = json.loads((placed / "meta.json").read_text())
    shutil.rmtree(run_dir.path / "train" / TRAIN_RUN, ignore_errors=True)
    shutil.rmtree(run_dir.path / "phases", ignore_errors=True)
    order = [p["name"] for p in phases]
    at = order.index(meta["phase"]) if meta["phase"] in order else len(order)

    def before(r: dict[str, Any]) -> bool:
        i = order.index(r["phase"]) if r.get("phase") in order else -1
        return i < at or (i == at and "event" not in r and r.get("step", 0) <= meta["step"])

    run_dir.rewrite_metrics([r for r in run_dir.read_metrics() if before(r)])
    return placed


def job_phases(job: PosttrainJob) -> list[dict[str, Any]]:
    """The phases of a job: with ``estimate_optima`` (and no given optima) the SFT-only and DPO-only
    runs first, whose finals become the main phase's (f*_SFT, f*_DPO)."""
    given = [job.optima.sft, job.optima.dpo] if job.optima else None
    if job.estimate_optima and given is None:
        return [{"name": "opt_sft", "method": "sft", "optima": None},
                {"name": "opt_dpo", "method": "dpo", "optima": None},
                {"name": "main", "method": job.method, "estimated": True}]
    return [{"name": "main", "method": job.method, "optima": given}]


def dedupe_metrics(run_dir: RunDir) -> list[dict[str, Any]]:
    """Keep the last record of each (phase, step): a restarted worker group replays steps."""
    kept = last_of_each(run_dir.read_metrics(), lambda r: None if "event" in r else (r.get("phase"), r.get("step")))
    run_dir.rewrite_metrics(kept)
    return kept


def plane_png(path: Path, records: list[dict[str, Any]], optima: tuple[float, float] | None, title: str) -> Path:
    """The run's trajectory in the (f_SFT, f_DPO) plane with the ideal point (the paper's figure)."""
    from ..plots import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    styles = {"opt_sft": ("SFT only", "tab:gray"), "opt_dpo": ("DPO only", "tab:olive"), "main": (title, "tab:blue")}
    for phase, (label, colour) in styles.items():
        pts = [(r["f_sft"], r["f_dpo"]) for r in records
               if r.get("phase") == phase and "f_sft" in r and "f_dpo" in r and "event" not in r]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "-o", ms=3, color=colour, label=label, alpha=1.0 if phase == "main" else 0.5)
            ax.plot(xs[-1:], ys[-1:], "s", ms=7, color=colour)
    if optima is not None:
        ax.plot([optima[0]], [optima[1]], "*", ms=14, color="tab:red", label="ideal (f*_SFT, f*_DPO)")
    ax.set_xscale("log")  # a DPO-only run forgets SFT by an order of magnitude
    ax.set_xlabel("f_SFT (eval, log scale)")
    ax.set_ylabel("f_DPO (eval)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("trajectory in the objective plane")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def losses_png(path: Path, records: list[dict[str, Any]]) -> Path:
    from ..plots import curves

    main = [r for r in records if r.get("phase") == "main" and "event" not in r and r.get("step", 0) > 0]
    panels = []
    for key, label in (("sft_loss", "SFT loss (train batch)"), ("dpo_loss", "DPO loss (train batch)"),
                       ("reward_acc", "reward accuracy")):
        pts = [(r["step"], r[key]) for r in main if key in r]
        if pts:
            xs, ys = zip(*pts)
            panels.append({"ylabel": label, "xlabel": "step", "series": [(key, list(xs), list(ys))]})
    if panels:
        curves(path, "post-training", [], panels)
    return path


def run(job: PosttrainJob, run_dir: RunDir, hooks: RunHooks, resume: bool = False) -> JobResult:
    progress = hooks.progress
    job = absolute(job)
    # A model given as a config is built by rank 0 of the worker group, which imports transformers anyway.
    model_dir = job.model.path or run_dir.path / "init_model"
    phases = job_phases(job)
    start_from = restored_checkpoint(run_dir, phases) if resume else None
    finals = run_phases(job, run_dir, phases, model_dir, progress, run_dir.path / "model", resume_from=start_from)
    optima: tuple[float, float] | None = (job.optima.sft, job.optima.dpo) if job.optima else None
    if "opt_sft" in finals:
        optima = (finals["opt_sft"]["f_sft"], finals["opt_dpo"]["f_dpo"])
        write_json_atomic(run_dir.path / "optima.json", {"sft": optima[0], "dpo": optima[1]})
    final = finals["main"]
    records = dedupe_metrics(run_dir)
    plane_png(run_dir.plots / "plane.png", records, optima, f"{job.method} λ={job.lam}")
    losses_png(run_dir.plots / "losses.png", records)
    metrics = summarize(final, optima, records)
    metrics.update(startup_times(finals, phases))
    return JobResult(metrics, str(run_dir.path / "model"),
                     {"method": job.method, "lam": job.lam, "optima": list(optima) if optima else None,
                      "workers": worker_nodes(run_dir)})


def startup_times(finals: dict[str, dict[str, Any]], phases: list[dict[str, Any]]) -> dict[str, float]:
    """``startup_s`` (fit() to the first step) and its Ray Train part, of the run's first fit(); on
    resume, the original start."""
    for p in phases:
        head = finals[p["name"]]
        if "startup_s" in head:
            return {k: head[k] for k in ("startup_s", "ray_train_start_s") if k in head}
    return {}


def summarize(final: dict[str, Any], optima: tuple[float, float] | None,
              records: list[dict[str, Any]]) -> dict[str, Any]:
    """Final losses, the gaps to (f*_SFT, f*_DPO) and the ideal distance, and throughput."""
    # The phase's own wall_s stays in phases/*.json: the run reports one wall time, the runner's.
    out = {k: final[k] for k in ("f_sft", "f_dpo", "eval_reward_acc", "steps", "peak_rss_mb_by_rank")
           if k in final}
    rates = [r["tokens_per_s"] for r in records if r.get("phase") == "main" and "tokens_per_s" in r]
    if rates:
        out["tokens_per_s"] = statistics.median(rates[1:] or rates)  # step 1 includes warm-up
    if optima is not None and "f_sft" in out and "f_dpo" in out:
        out["gap_sft"] = out["f_sft"] - optima[0]
        out["gap_dpo"] = out["f_dpo"] - optima[1]
        out["ideal_distance"] = math.hypot(out["gap_sft"], out["gap_dpo"])
    return out


def plot_pareto(run_dir: RunDir, rows: list[dict[str, Any]], sweep: Any) -> Path | None:
    """A λ sweep's trade-off: every trial's final (f_SFT, f_DPO), the single-objective ends and the
    ideal point (the best f_SFT and the best f_DPO any trial reached), in ``plots/pareto.png``."""
    from ..plots import _plt

    points = [(r["final"]["f_sft"], r["final"]["f_dpo"], r.get("lam", r["final"].get("lam")))
              for r in rows if {"f_sft", "f_dpo"} <= set(r.get("final", {}))]
    if not points:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.4, 4.4))
    points.sort(key=lambda p: (p[2] is None, p[2]))
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    ax.plot(xs, ys, "-", color="tab:blue", alpha=0.4)
    ax.plot(xs, ys, "o", color="tab:blue", label="trials (final)")
    for x, y, lam in points:
        if lam is not None:
            ax.annotate(f"λ={lam:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ends = {0.0: ("SFT only (λ=0)", "tab:gray"), 1.0: ("DPO only (λ=1)", "tab:olive")}
    for x, y, lam in points:
        if lam in ends:
            label, colour = ends[lam]
            ax.plot([x], [y], "s", ms=9, color=colour, label=label)
    ax.plot([min(xs)], [min(ys)], "*", ms=14, color="tab:red", label="ideal (best f_SFT, best f_DPO)")
    ax.set_xscale("log")
    ax.set_xlabel("f_SFT (eval, log scale)")
    ax.set_ylabel("f_DPO (eval)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{sweep.name}: trade-off over λ")
    fig.tight_layout()
    path = run_dir.plots / "pareto.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
