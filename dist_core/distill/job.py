"""``kind: distill``: the driver side of a DistiLLM-2 run on Ray Train + DeepSpeed.

A run goes in phases, each recorded in ``phases/<phase>.json`` so ``launch.py resume`` skips the
finished ones and the unfinished training phase continues from its newest Ray Train checkpoint:

1. models: teacher and student are local directories or tiny configs built and saved; a model with
   ``sft:`` is first fine-tuned by a ``posttrain`` SFT phase (``teacher_sft``, ``student_sft``), the
   result cached by fingerprint so later runs reuse it;
2. pairs: per prompt one teacher and one student response, sampled by Ray tasks (``generate.py``),
   cached by fingerprint; or the job's ready pairs;
3. the top-k teacher table (``teacher_cache: topk``), cached by fingerprint (``teacher.py``);
4. ``main``: the distillation itself (``worker.py``), the student exported with ``save_pretrained``;
5. exact-match accuracy of the teacher, the undistilled and the distilled student on held-out
   prompts (greedy decoding in Ray tasks), a plot and ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

from ..checkpoint import write_json_atomic
from ..runs import JobResult, RunDir, RunHooks
from .config import DistillJob, DistillModel

log = logging.getLogger("dist_core")


def cache_root() -> Path:
    return Path(os.environ.get("DIST_CORE_CACHE", Path.home() / ".cache" / "dist_core"))


def _done(run_dir: RunDir, phase: str) -> Path:
    return run_dir.path / "phases" / f"{phase}.json"


def _record(run_dir: RunDir, phase: str, value: dict[str, Any]) -> dict[str, Any]:
    path = _done(run_dir, phase)
    path.parent.mkdir(exist_ok=True)
    write_json_atomic(path, value)
    return value


# ------------------------------------------------------------ 1. models
def _posttrain_sft_job(job: DistillJob, side: str, base: Path, data: Path) -> Any:
    """The ``posttrain`` job of a model's SFT warm-up, on the distillation job's workers and ZeRO stage."""
    from ..posttrain.config import PosttrainJob

    warm = getattr(job, side).sft
    micro = warm.batch // job.workers
    return PosttrainJob.model_validate({
        "kind": "posttrain", "name": f"{job.name}-{side}-sft", "seed": job.seed, "model": {"path": str(base)},
        "tokenizer": {"path": str(job.tokenizer.path)}, "data": {"sft": {"train": str(data)},
                                                                 "max_length": job.data.max_length},
        "method": "sft", "epochs": warm.epochs, "optim": {"lr": warm.lr},
        "deepspeed": {"train_batch_size": micro * job.workers, "train_micro_batch_size_per_gpu": micro,
                      "gradient_accumulation_steps": 1,
                      "zero_optimization": {"stage": job.deepspeed.zero_optimization.stage}},
        "workers": job.workers, "cpus_per_worker": job.cpus_per_worker, "eval_every": 10**6,
        "checkpoint_every": 0, "max_failures": job.max_failures})


def model_dir(job: DistillJob, side: str, run_dir: RunDir, progress: bool) -> Path:
    """The directory ``from_pretrained`` loads ``side``'s model from (built, and SFT'd, as the job asks)."""
    from ..posttrain.init_model import build_model_dir
    from ..posttrain.job import _phase
    from ..posttrain.reference import fingerprint

    source: DistillModel = getattr(job, side)
    base = source.path or build_model_dir(source.config, job.tokenizer.path, run_dir.path / f"init_{side}", job.seed)
    if source.sft is None:
        return Path(base)
    warm = source.sft
    data = warm.data
    if warm.rows is not None:
        from ..posttrain.rows import read_rows

        data = run_dir.path / f"{side}_sft_rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in read_rows(warm.data)[:warm.rows]))
    key = fingerprint([Path(base), job.tokenizer.path, data],
                      {**warm.model_dump(mode="json", exclude={"data"}), "seed": job.seed, "workers": job.workers,
                       "max_length": job.data.max_length, "stage": job.deepspeed.zero_optimization.stage})
    target = cache_root() / "distill_models" / key
    if (target / "config.json").exists():
        log.info("%s: SFT warm-up from the cache (%s)", side, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _phase(_posttrain_sft_job(job, side, Path(base), data), run_dir, f"{side}_sft", "sft", None, Path(base),
           progress, export_to=target)
    return target


# ------------------------------------------------------------ 2. pairs
def pair_files(job: DistillJob, teacher: Path, student: Path, run_dir: RunDir) -> dict[str, Path]:
    """{"train", "eval"}: JSONL files of prompt/chosen/rejected rows."""
    from .generate import curate

    if job.data.pairs is not None:
        return {"train": job.data.pairs.train, "eval": job.data.pairs.eval or job.data.pairs.train}
    prompts = job.data.prompts
    t0 = time.perf_counter()
    made = curate(teacher, student, job.tokenizer.path, {"train": prompts.train, "eval": prompts.eval or prompts.train},
                  job.generation, job.seed)
    for split, (path, hit) in made.items():
        run_dir.log_metrics({"phase": "pairs", "event": "pairs", "split": split, "cache_hit": hit, "path": str(path),
                             "wall_s": time.perf_counter() - t0})
    return {split: path for split, (path, _) in made.items()}


# ------------------------------------------------------------ 4. training
def _train(job: DistillJob, run_dir: RunDir, teacher: Path, student: Path, pairs: dict[str, Path],
           topk: Path | None, progress: bool) -> dict[str, Any]:
    from ..posttrain.job import MetricsSink, fit_workers
    from ..posttrain.rows import read_rows
    from .worker import train_loop

    done = _done(run_dir, "main")
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    sink = MetricsSink.remote()
    cfg = {"job": job.model_dump(mode="json"), "phase": "main", "teacher_dir": str(teacher),
           "student_dir": str(student), "pairs": {k: str(v) for k, v in pairs.items()},
           "topk": str(topk) if topk else None, "sink": sink}
    total = job.steps_per_epoch(len(read_rows(pairs["train"]))) * job.epochs
    final = fit_workers(train_loop, cfg, sink, run_dir, "main", total, f"distill ({job.loss.name})", job.workers,
                        job.cpus_per_worker, job.max_failures, progress, export_to=run_dir.path / "model",
                        postfix=("loss",), placement=job.placement)
    final["wall_s"] = time.perf_counter() - t0
    return _record(run_dir, "main", final)


# ------------------------------------------------------------ 5. report
def _answers(job: DistillJob) -> list[dict[str, Any]] | None:
    from ..posttrain.rows import read_rows

    path = job.data.answers
    if path is None and job.data.prompts is not None and job.data.prompts.eval is not None:
        path = job.data.prompts.eval
    if path is None:
        return None
    rows = [r for r in read_rows(path) if isinstance(r.get("completion"), str)][:job.data.eval_rows]
    return rows or None


def accuracy(job: DistillJob, run_dir: RunDir, models: dict[str, Path]) -> dict[str, float]:
    from .generate import exact_match

    done = _done(run_dir, "exact_match")
    if done.exists():
        return json.loads(done.read_text())
    rows = _answers(job)
    if rows is None:
        return {}
    acc = exact_match(models, job.tokenizer.path, rows, job.generation.max_new_tokens, job.generation.actors,
                      job.generation.cpus_per_actor)
    return _record(run_dir, "exact_match", {f"exact_match_{k}": v for k, v in acc.items()})


def plot(path: Path, records: list[dict[str, Any]], title: str) -> Path | None:
    from ..plots import curves

    main = [r for r in records if r.get("phase") == "main" and "event" not in r]
    panels = []
    ll = [(key, label) for key, label in (("eval_ll_teacher", "teacher responses (TGO)"),
                                         ("eval_ll_student", "student's own responses (SGO)"))]
    series = []
    for key, label in ll:
        pts = [(r["step"], r[key]) for r in main if key in r]
        if pts:
            xs, ys = zip(*pts)
            series.append((label, list(xs), list(ys)))
    if series:
        panels.append({"ylabel": "student mean log-likelihood per token (held out)", "xlabel": "step",
                       "series": series})
    pts = [(r["step"], r["loss"]) for r in main if "loss" in r]
    if pts:
        xs, ys = zip(*pts)
        panels.append({"ylabel": "training loss", "xlabel": "step", "series": [("loss", list(xs), list(ys))]})
    return curves(path, title, [], panels) if panels else None


def summarize(final: dict[str, Any], records: list[dict[str, Any]], acc: dict[str, float]) -> dict[str, Any]:
    main = [r for r in records if r.get("phase") == "main" and "event" not in r]
    first = next((r for r in main if r.get("step") == 0), {})
    out: dict[str, Any] = {}
    for key in ("eval_ll_teacher", "eval_ll_student"):
        if key in first:
            out[f"{key}_before"] = first[key]
        if key in final:
            out[f"{key}_after"] = final[key]
    out.update({k: final[k] for k in ("loss", "steps", "peak_rss_mb_by_rank") if k in final})
    rates = [r["tokens_per_s"] for r in main if "tokens_per_s" in r]
    if rates:
        out["tokens_per_s"] = statistics.median(rates[1:] or rates)  # step 1 includes warm-up
    out.update(acc)
    return out


def absolute(job: DistillJob) -> DistillJob:
    """Every path absolute: workers and tasks do not share the driver's working directory."""
    data = job.model_dump(mode="json")

    def fix(node: dict[str, Any] | None, *keys: str) -> None:
        for key in keys:
            if node is not None and node.get(key):
                node[key] = str(Path(node[key]).resolve())

    for side in ("teacher", "student"):
        fix(data[side], "path")
        fix(data[side].get("sft"), "data")
    fix(data["tokenizer"], "path")
    for section in ("prompts", "pairs"):
        fix(data["data"].get(section), "train", "eval")
    fix(data["data"], "answers")
    return DistillJob.model_validate(data)


def run(job: DistillJob, run_dir: RunDir, hooks: RunHooks, resume: bool = False) -> JobResult:
    from ..posttrain.distill_losses import get as loss_entry
    from ..posttrain.job import dedupe_metrics, worker_nodes
    from .teacher import ensure_table

    job = absolute(job)
    teacher = model_dir(job, "teacher", run_dir, hooks.progress)
    student = model_dir(job, "student", run_dir, hooks.progress)
    pairs = pair_files(job, teacher, student, run_dir)
    topk = None
    if job.teacher_cache == "topk" and loss_entry(job.loss.name).needs_teacher:
        t0 = time.perf_counter()
        topk, hit = ensure_table(teacher, job.tokenizer.path, pairs["train"], job.data.max_length, job.topk_k,
                                 job.deepspeed.train_micro_batch_size_per_gpu)
        run_dir.log_metrics({"phase": "topk", "event": "topk_table", "cache_hit": hit, "path": str(topk),
                             "k": job.topk_k, "wall_s": time.perf_counter() - t0})
    final = _train(job, run_dir, teacher, student, pairs, topk, hooks.progress)
    acc = accuracy(job, run_dir, {"teacher": teacher, "student_before": student, "student_after": run_dir.path / "model"})
    records = dedupe_metrics(run_dir)
    plot(run_dir.plots / "distill.png", records, f"{job.name}: {job.loss.name}")
    metrics = summarize(final, records, acc)
    return JobResult(metrics, str(run_dir.path / "model"),
                     {"loss": job.loss.name, "teacher_cache": job.teacher_cache, "teacher": str(teacher),
                      "student": str(student), "pairs": {k: str(v) for k, v in pairs.items()},
                      "workers": worker_nodes(run_dir)})
