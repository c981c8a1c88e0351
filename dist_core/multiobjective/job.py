"""``kind: multiobjective``: FERERO along each preference ray, then linear scalarisation for the front.

The runs go one after another through one pool of shard learners: ray 1 … R with FERERO, then
``scalarisation`` runs with fixed weights. Every step is a record keyed by ``global_step`` (run
index × steps + step); checkpoints come every ``checkpoint_every`` steps and at the end of each
run. ``resume`` continues the run in progress from the latest checkpoint, recomputes the finished
runs' results from their saved θ, and replays no record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import checkpoint
from ..plots import _plt
from ..runs import JobResult, RunDir, RunHooks
from . import digits
from .direction import DualConfig
from .solver import PreferenceState, make_pool, solve_preference

log = logging.getLogger("dist_core.multiobjective")


@dataclass(frozen=True)
class Plan:
    """One run of the job: a method and its preference (FERERO's ray, or the scalarisation weights)."""

    method: str
    preference: list[float]


def plans(job) -> list[Plan]:
    """FERERO along each ray, then the scalarisation runs with weights (t, 1 − t), t spread over (0, 1)."""
    m = job.multiobjective
    n = m.scalarisation
    ts = np.linspace(0.1, 0.9, n).tolist() if n > 1 else [0.5] * n
    return [Plan(m.method, list(r)) for r in m.preferences] + [Plan("linear", [t, 1.0 - t]) for t in ts]


def _theta_tensors(prefix: str, theta: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {f"{prefix}/{k}": v.detach().numpy() for k, v in theta.items()}


@dataclass
class SavedRuns:
    """The latest checkpoint of a job made of runs one after another (this kind's and semivectorial's)."""

    path: str
    run: int  # the run in progress; the number of runs once all have finished
    finished: dict[int, dict[str, torch.Tensor]]  # run index -> final θ
    state: dict[str, np.ndarray]  # the run in progress's state tensors, without their "state/" prefix
    meta: dict


def load_runs(run_dir: RunDir) -> SavedRuns | None:
    ckpt = run_dir.latest_checkpoint()
    if ckpt is None:
        return None
    flat, meta = checkpoint.load(ckpt)
    finished = {i: {k: torch.from_numpy(np.array(flat[f"final/{i}/{k}"])) for k in meta["theta_keys"]}
                for i in meta["finished"]}
    state = {k[len("state/"):]: v for k, v in flat.items() if k.startswith("state/")}
    return SavedRuns(str(ckpt), meta["run"], finished, state, meta)


def run(job, run_dir: RunDir, hooks: RunHooks, resume: bool = False) -> JobResult:
    from tqdm.auto import tqdm

    m = job.multiobjective
    data = digits.make_data(m.data.n_train, job.seed)
    batches = digits.shards(data, m.learners, m.batch_size, job.seed)
    theta0 = digits.init_params(m.model.hidden, job.seed, data.x_train.shape[1])
    dual = DualConfig(m.dual.lr, m.dual.iters, m.dual.tol, m.dual.h_scale, m.dual.steps, m.dual.normalize)
    todo = plans(job)

    finished: dict[int, dict[str, torch.Tensor]] = {}  # run index -> final θ
    start: PreferenceState | None = None
    current = 0
    if resume:
        saved = load_runs(run_dir)
        if saved is not None:
            current, finished = saved.run, saved.finished
            start = PreferenceState.from_flat(saved.state, saved.meta["state"])
            log.info("resuming run %d of %d at step %d (%s)", current + 1, len(todo), start.step, saved.path)
        last = current * m.steps + (start.step if start else 0)
        run_dir.truncate_metrics(last, key="global_step")

    pool = make_pool(digits.make_problem(None), batches, m.backend, job.resources.cpus_per_learner)
    bar = tqdm(total=len(todo) * m.steps, initial=current * m.steps + (start.step if start else 0),
               desc="steps", disable=not hooks.progress, leave=False, mininterval=1.0)
    try:
        for i in range(current, len(todo)):
            plan = todo[i]
            problem = digits.make_problem(plan.preference)

            def on_step(step: int, record: dict[str, float], state: PreferenceState, i=i, plan=plan) -> None:
                rec: dict[str, Any] = {"global_step": i * m.steps + step, "run": i, "method": plan.method,
                                       **{k: v for k, v in record.items() if k != "step_s"}}
                if step % m.eval_every == 0 or step == m.steps:
                    rec.update(digits.evaluate(state.theta, data))
                run_dir.log_metrics(rec)
                bar.update(1)

            def on_checkpoint(state: PreferenceState, i=i) -> None:
                done = dict(finished)
                ended = state.step == m.steps
                if ended:  # hand over to the next run: resume then starts it from θ0
                    done[i] = state.theta
                    state = PreferenceState(0, theta0)
                flat, meta = state.to_flat()
                tensors = {f"state/{k}": v for k, v in flat.items()}
                for j, theta in done.items():
                    tensors.update(_theta_tensors(f"final/{j}", theta))
                run_dir.save_checkpoint(i * m.steps + (m.steps if ended else state.step), tensors, {
                    "run": i + 1 if ended else i, "finished": sorted(done), "theta_keys": list(theta0),
                    "state": meta})

            result = solve_preference(problem, dict(theta0), batches, steps=m.steps, lr=m.lr, learners=m.learners,
                                      method=plan.method, dual=dual, start=start, pool=pool,
                                      checkpoint_every=m.checkpoint_every, on_checkpoint=on_checkpoint,
                                      on_step=on_step, max_restarts=m.max_restarts)
            finished[i] = result.state.theta
            start = None
    finally:
        bar.close()
        pool.close()

    return _report(job, run_dir, todo, finished, data)


def _report(job, run_dir: RunDir, todo: list[Plan], finished: dict[int, dict[str, torch.Tensor]],
            data: digits.DigitsData) -> JobResult:
    rows = []
    for i, plan in enumerate(todo):
        ev = digits.evaluate(finished[i], data)
        problem = digits.make_problem(plan.preference)
        row = {"method": plan.method, "preference": plan.preference, **ev,
               "ray_residual": problem.ray_residual(np.array([ev["train_f1"], ev["train_f2"]]))}
        rows.append(row)
    rays = [r for r in rows if r["method"] != "linear"]
    front = [r for r in rows if r["method"] == "linear"]
    metrics: dict[str, Any] = {
        "ray_residual_mean": float(np.mean([r["ray_residual"] for r in rays])),
        "ray_residual_max": float(np.max([r["ray_residual"] for r in rays])),
        "test_acc_digit_mean": float(np.mean([r["test_acc_digit"] for r in rays])),
        "test_acc_ge5_mean": float(np.mean([r["test_acc_ge5"] for r in rays])),
        "rays": len(rays),
    }
    if front:
        metrics["scalarisation_runs"] = len(front)
    _plot(run_dir, job, rays, front)
    latest = run_dir.latest_checkpoint()
    return JobResult(metrics, str(latest) if latest else None,
                     {"method": job.multiobjective.method, "learners": job.multiobjective.learners,
                      "rays": rays, "scalarisation": front})


def _plot(run_dir: RunDir, job, rays: list[dict], front: list[dict]) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    f1s = [r["train_f1"] for r in rays + front]
    f2s = [r["train_f2"] for r in rays + front]
    reach = 1.15 * max(max(f1s), max(f2s))
    for k, r in enumerate(rays):
        p = np.asarray(r["preference"], dtype=float)
        p = p / np.linalg.norm(p)
        ax.plot([0, reach * p[0]], [0, reach * p[1]], linestyle=":", color=f"C{k % 10}", linewidth=1)
        ax.plot(r["train_f1"], r["train_f2"], "o", color=f"C{k % 10}", markersize=8,
                label=f"{r['method']} r=({r['preference'][0]:.2f}, {r['preference'][1]:.2f})")
    if front:
        order = sorted(front, key=lambda r: r["train_f1"])
        ax.plot([r["train_f1"] for r in order], [r["train_f2"] for r in order], "s--", color="gray",
                label="linear scalarisation")
    ax.set_xlim(0, reach)
    ax.set_ylim(0, reach)
    ax.set_xlabel("f1: digit cross-entropy (training split)")
    ax.set_ylabel("f2: \"≥ 5\" cross-entropy (training split)")
    ax.set_title(f"{job.name}: final (f1, f2) per preference ray")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run_dir.plots / "front.png", dpi=110)
    plt.close(fig)
