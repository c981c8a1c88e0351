"""``kind: bilevel``: build the task of a job file, train the baseline, solve on actors, report."""

from __future__ import annotations

import logging
from typing import Any

import torch

from .. import plots
from ..runs import JobResult, RunDir, RunHooks
from .config import BilevelJob
from .executors import Snapshot
from .solver import solve
from .step import LowerState, train_lower_only
from .tasks import hyper_cleaning as hc

log = logging.getLogger("dist_core.bilevel")


def steps_per_round(job: BilevelJob) -> int:
    """Lower-level gradient steps per round (unrolled steps train θ too): the baseline's budget."""
    b = job.bilevel
    return b.lower.inner_steps + (b.method.steps if b.method.name == "unrolled" else 0)


def run(job: BilevelJob, run_dir: RunDir, hooks: RunHooks, resume: bool = False,
        resume_from: Snapshot | None = None) -> JobResult:
    """Run a bilevel job into ``run_dir``.

    ``resume`` continues from the run directory's latest checkpoint (where Tune also places the
    checkpoint of a trial it restores or exploits); ``resume_from`` from a given snapshot.
    """
    progress = hooks.progress
    b = job.bilevel
    k = b.lower.learners
    path = str(b.data.path) if b.data.path is not None else None
    data = hc.make_data(b.data.n_train, b.data.n_val, b.data.corruption, job.seed, path)
    n_features = data.x_train.shape[1]
    problem = hc.make_problem(b.model.weight_decay)
    shards = hc.shards(data, k)
    upper_batch = {"x": data.x_val, "y": data.y_val}
    eval_batch = hc.eval_batch(data)
    thetas = [hc.init_model(n_features, b.model.hidden, job.seed + i) for i in range(k)]
    lam0 = torch.full((b.data.n_train,), b.upper.init)
    upper_lr = b.upper.lr if b.upper.hypergradient else 0.0  # "off": λ stays where it starts

    baseline = _baseline(job, problem, thetas, shards, eval_batch, progress) if b.baseline else None

    if resume and resume_from is None:
        ckpt = run_dir.latest_checkpoint()
        if ckpt is not None:
            from .. import checkpoint

            resume_from = Snapshot.from_flat(*checkpoint.load(ckpt))
            log.info("resuming from %s (round %d)", ckpt, resume_from.round)
    if resume or resume_from is not None:
        run_dir.truncate_metrics(resume_from.round if resume_from else 0)

    def on_round(round_idx: int, metrics: dict[str, float]) -> None:
        run_dir.log_metrics({k: v for k, v in metrics.items() if k != "compute_s"})

    def on_checkpoint(snap: Snapshot) -> None:
        run_dir.save_checkpoint(snap.round, *snap.to_flat())

    result = solve(
        problem, thetas, lam0, shards, upper_batch,
        lower_learners=k, method=b.method.name, method_options=b.method_options(),
        rounds=b.rounds, inner_steps=b.lower.inner_steps, inner_lr=b.lower.lr,
        upper_lr=upper_lr, upper_optimizer=b.upper.optimizer, eval_batch=eval_batch,
        backend=b.backend, round_loop=b.round_loop, cpus_per_learner=job.resources.cpus_per_learner,
        placement=job.resources.placement,
        checkpoint_every=b.checkpoint_every, on_checkpoint=on_checkpoint, resume_from=resume_from,
        max_restarts=b.max_restarts, on_round=on_round,
        on_recover=lambda r: run_dir.truncate_metrics(r), progress=progress,
    )

    history = run_dir.read_metrics()
    final = [problem.evaluate(t, None, eval_batch) for t in result.thetas]
    metrics: dict[str, Any] = {
        "test_acc": sum(m["test_acc"] for m in final) / k,
        "val_loss": sum(m["val_loss"] for m in final) / k,
        **hc.corruption_f1(result.lam, data.corrupted),
        "rounds": b.rounds,
        "restarts": result.restarts,
        "mean_round_s": _mean(h["round_s"] for h in history),
        "comm_share": _mean(h["comm_share"] for h in history),
    }
    if baseline is not None:
        metrics["test_acc_noisy_baseline"] = baseline["test_acc"]
        metrics["val_loss_noisy_baseline"] = baseline["val_loss"]
    _plot(run_dir, job, history, baseline)
    latest = run_dir.latest_checkpoint()
    return JobResult(metrics, str(latest) if latest else None,
                     {"method": b.method.name, "learners": k, "learner_nodes": result.nodes})


def _baseline(job, problem, thetas, shards, eval_batch, progress: bool) -> dict[str, float]:
    """The same K models and step budget on unweighted noisy labels (λ = 0: all weights equal).

    On Ray the K baselines run as parallel tasks of one learner's CPUs each (which also starts the
    worker processes that the learner actors then take over); locally one after another."""
    from tqdm.auto import tqdm

    b = job.bilevel
    args = [(problem, thetas[i], shards[i], b.data.n_train, b.rounds * steps_per_round(job), b.lower.lr, eval_batch)
            for i in range(len(thetas))]
    bar = tqdm(total=len(thetas), desc="noisy baseline", disable=not progress, leave=False)
    if b.backend == "ray":
        import ray

        task = ray.remote(num_cpus=job.resources.cpus_per_learner)(_baseline_learner)
        refs = [task.remote(*a) for a in args]
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(len(done))
        results = ray.get(refs)
    else:
        results = []
        for a in args:
            results.append(_baseline_learner(*a))
            bar.update(1)
    bar.close()
    return {key: sum(r[key] for r in results) / len(results) for key in results[0]}


def _baseline_learner(problem, theta, shard, n_train: int, steps: int, lr: float, eval_batch) -> dict[str, float]:
    lam = {"_": torch.zeros(n_train)}
    state = train_lower_only(problem, LowerState(dict(theta)), lam, shard, steps, lr)
    return problem.evaluate(state.theta, None, eval_batch)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def _plot(run_dir: RunDir, job: BilevelJob, history: list[dict], baseline: dict | None) -> None:
    if not history:
        return
    rounds = [h["round"] for h in history]
    val = {"ylabel": "validation loss", "series": [("hyper-cleaned", [h["val_loss"] for h in history])]}
    acc = {"ylabel": "test accuracy", "series": [("hyper-cleaned", [h["test_acc"] for h in history])]}
    if baseline is not None:
        val["hlines"] = [("noisy baseline (end)", baseline["val_loss"])]
        acc["hlines"] = [("noisy baseline (end)", baseline["test_acc"])]
    title = f"{job.name}: {job.bilevel.method.name}, K={job.bilevel.lower.learners}"
    plots.curves(run_dir.plots / "curves.png", title, rounds, [val, acc])
