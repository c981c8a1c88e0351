"""``kind: semivectorial``: the penalty run, then linear scalarisation runs that trace the front it is judged on.

Run 0 minimises f0 + γ·v (``solver.py``); runs 1 … n are linear scalarisations of (f1, f2) with
weights (t, 1 − t), each a Pareto point scored by f0, so the report can say how the penalty run's
f0 compares with the best point of the front and how far each point is from the Pareto set (the
exact merit u_ℓ on the full training split). All runs share one pool of shard learners. Records
are keyed by ``global_step`` (run index × steps + step); ``resume`` continues the run in progress
from the latest checkpoint and replays no record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..bilevel import tree
from ..multiobjective.direction import DualConfig
from ..multiobjective.job import load_runs
from ..multiobjective.problem import MultiObjectiveProblem
from ..multiobjective.solver import PreferenceState, make_pool, solve_preference
from ..plots import _plt
from ..runs import JobResult, RunDir, RunHooks
from . import digits
from .merit import smoothed_merit
from .solver import PenaltyConfig, SemivectorialState, as_params, solve_semivectorial

log = logging.getLogger("dist_core.semivectorial")
PENALTY = "semivectorial"


@dataclass(frozen=True)
class Plan:
    method: str  # "semivectorial" or "linear"
    weights: list[float] | None = None  # the scalarisation's (t, 1 − t)


def plans(job) -> list[Plan]:
    n = job.semivectorial.scalarisation
    ts = np.linspace(0.1, 0.9, n).tolist() if n > 1 else [0.5] * n
    return [Plan(PENALTY)] + [Plan("linear", [t, 1.0 - t]) for t in ts]


def penalty_config(job) -> PenaltyConfig:
    p = job.semivectorial.penalty
    return PenaltyConfig(p.gamma, p.ell, p.tau, p.lr, p.curvature, p.y_steps)


def theta_of(state: SemivectorialState | PreferenceState, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(state, PreferenceState):
        return dict(state.theta)
    return as_params(state.x, like)


def _restore(state: dict, meta: dict, method: str) -> SemivectorialState | PreferenceState:
    return SemivectorialState.from_flat(state, meta) if method == PENALTY else PreferenceState.from_flat(state, meta)


def run(job, run_dir: RunDir, hooks: RunHooks, resume: bool = False) -> JobResult:
    from tqdm.auto import tqdm

    s = job.semivectorial
    data = digits.make_data(s.data.n_train, s.data.n_val, job.seed)
    shards = digits.shards(data, s.learners, job.seed)
    theta0 = digits.digits.init_params(s.model.hidden, job.seed, data.train.x_train.shape[1])
    problem = digits.make_problem()
    todo = plans(job)

    finished: dict[int, dict[str, torch.Tensor]] = {}  # run index -> final θ
    start: SemivectorialState | PreferenceState | None = None
    current = 0
    if resume:
        saved = load_runs(run_dir)
        if saved is not None:
            current, finished = saved.run, saved.finished
            if current < len(todo):
                start = _restore(saved.state, saved.meta["state"], todo[current].method)
            log.info("resuming run %d of %d at step %d (%s)", current + 1, len(todo), start.step if start else 0,
                     saved.path)
        run_dir.truncate_metrics(current * s.steps + (start.step if start else 0), key="global_step")

    pool = make_pool(problem.stacked(), shards, s.backend, job.resources.cpus_per_learner)
    bar = tqdm(total=len(todo) * s.steps, initial=current * s.steps + (start.step if start else 0),
               desc="steps", disable=not hooks.progress, leave=False, mininterval=1.0)
    try:
        for i in range(current, len(todo)):
            plan = todo[i]

            def on_step(step: int, record: dict[str, float], state, i=i, plan=plan) -> None:
                rec: dict[str, Any] = {"global_step": i * s.steps + step, "run": i, "method": plan.method,
                                       **_named(record, plan.method)}
                if step % s.eval_every == 0 or step == s.steps:
                    rec.update(digits.evaluate(theta_of(state, theta0), data))
                run_dir.log_metrics(rec)
                bar.update(1)

            def on_checkpoint(state, i=i, plan=plan) -> None:
                ended = state.step == s.steps
                done = dict(finished)
                if ended:  # hand over to the next run, which resume starts from θ0
                    done[i] = theta_of(state, theta0)
                tensors: dict[str, np.ndarray] = {}
                meta_state: dict = {}
                if not ended:
                    flat, meta_state = state.to_flat()
                    tensors = {f"state/{k}": v for k, v in flat.items()}
                for j, theta in done.items():
                    tensors.update({f"final/{j}/{k}": v.detach().numpy() for k, v in theta.items()})
                run_dir.save_checkpoint(i * s.steps + state.step, tensors, {
                    "run": i + 1 if ended else i, "finished": sorted(done), "theta_keys": list(theta0),
                    "state": meta_state})

            common = dict(steps=s.steps, learners=s.learners, pool=pool, checkpoint_every=s.checkpoint_every,
                          on_checkpoint=on_checkpoint, on_step=on_step, max_restarts=s.max_restarts)
            if plan.method == PENALTY:
                result = solve_semivectorial(problem, dict(theta0), shards, config=penalty_config(job),
                                             start=start, **common)
                finished[i] = theta_of(result.state, theta0)
            else:
                weighted = MultiObjectiveProblem(problem.stacked().objectives, preference=[0.0, *plan.weights])
                result = solve_preference(weighted, dict(theta0), shards, lr=s.scalarisation_lr, method="linear",
                                          dual=DualConfig(), start=start, **common)
                finished[i] = dict(result.state.theta)
            start = None
    finally:
        bar.close()
        pool.close()

    return _report(job, run_dir, todo, finished, data)


def _named(record: dict[str, float], method: str) -> dict[str, float]:
    """One naming for both solvers: f0 the upper objective, f1/f2 the lower ones, w1/w2 their weights."""
    out = {k: v for k, v in record.items() if k not in ("step", "step_s")}
    if method == PENALTY:
        return out
    # solve_preference sees the stacked problem (f0, f1, f2) as its f1, f2, f3 and λ as lam1..3
    renamed = {f"f{i}": out.pop(f"f{i + 1}") for i in range(3)}
    renamed.update({f"w{i}": out.pop(f"lam{i + 1}") for i in (1, 2)})
    out.pop("lam1", None)
    out.pop("ray_residual", None)
    out.pop("dual_iters", None)
    return {**renamed, **out}


def pareto_gap(theta: dict[str, torch.Tensor], data: digits.SplitData, ell: float) -> float:
    """The exact merit u_ℓ(θ) (τ = 0) of (f1, f2) on the full training split, single process."""
    lower = digits.lower_problem()
    batch = {"x": data.train.x_train, "y": data.train.y_train}
    like = tree.detached(theta)

    def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lower.values_and_jacobian(as_params(x, like), batch)

    return smoothed_merit(fn, tree.flatten(like).to(torch.float64), ell=ell, tau=0.0, iters=200, tol=1e-9).value


def _report(job, run_dir: RunDir, todo: list[Plan], finished: dict[int, dict[str, torch.Tensor]],
            data: digits.SplitData) -> JobResult:
    ell = job.semivectorial.penalty.ell
    rows = []
    for i, plan in enumerate(todo):
        ev = digits.evaluate(finished[i], data)
        rows.append({"method": plan.method, "weights": plan.weights, **ev,
                     "pareto_gap": pareto_gap(finished[i], data, ell)})
    penalty, front = rows[0], rows[1:]
    metrics: dict[str, Any] = {"val_f0": penalty["val_f0"], "test_f0": penalty["test_f0"], "train_f1": penalty["train_f1"],
                               "train_f2": penalty["train_f2"], "pareto_gap": penalty["pareto_gap"],
                               "test_acc_digit": penalty["test_acc_digit"], "test_acc_ge5": penalty["test_acc_ge5"]}
    if front:
        best = min(front, key=lambda r: r["val_f0"])
        metrics.update(front_best_val_f0=best["val_f0"], front_best_weights=best["weights"],
                       front_pareto_gap_max=max(r["pareto_gap"] for r in front),
                       val_f0_minus_front_best=penalty["val_f0"] - best["val_f0"],
                       front_best_test_f0=min(r["test_f0"] for r in front), scalarisation_runs=len(front))
    _plot(run_dir, job, penalty, front)
    latest = run_dir.latest_checkpoint()
    return JobResult(metrics, str(latest) if latest else None,
                     {"penalty": penalty, "scalarisation": front, "gamma": job.semivectorial.penalty.gamma})


def _plot(run_dir: RunDir, job, penalty: dict, front: list[dict]) -> None:
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.4))
    if front:
        order = sorted(front, key=lambda r: r["train_f1"])
        left.plot([r["train_f1"] for r in order], [r["train_f2"] for r in order], "s--", color="gray",
                  label="linear scalarisation (the front)")
        ts = [r["weights"][0] for r in front]
        right.plot(ts, [r["val_f0"] for r in front], "s--", color="gray", label="scalarisation run")
    left.plot(penalty["train_f1"], penalty["train_f2"], "o", color="C3", markersize=9,
              label=f"penalty, γ = {job.semivectorial.penalty.gamma:g}")
    left.set_xlabel("f1: digit cross-entropy (training split)")
    left.set_ylabel("f2: \"≥ 5\" cross-entropy (training split)")
    left.set_title("where the runs end")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.axhline(penalty["val_f0"], color="C3", label="penalty run")
    right.set_xlabel("scalarisation weight t on f1")
    right.set_ylabel("f0: validation cross-entropy (f1 + f2)")
    right.set_title("the upper objective over the front")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(f"{job.name}: min f0 over the Pareto set of (f1, f2)")
    fig.tight_layout()
    fig.savefig(run_dir.plots / "front.png", dpi=110)
    plt.close(fig)
