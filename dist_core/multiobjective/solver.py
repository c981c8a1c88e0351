"""``solve_preference``: FERERO (and its peers) with the objectives' gradients computed on actors.

K ``ShardLearner``s each own a data shard. A step: θ goes into the object store once, every
learner returns the values F_k and the Jacobian J_k (M × P) of all objectives on its shard's batch
for that step, the driver averages them (equal shards: the full batch's mean), solves the M × M
dual on G = J Jᵀ and steps θ ← θ + η·d with d = −Jᵀλ. Learners hold no state besides their data,
so a dead one is replaced and the step retried: the run stays exactly the run it would have been.
The arrays cross process boundaries as numpy (``bilevel.learners.to_arrays``: zero-copy in Ray).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..bilevel import tree
from ..bilevel.learners import Arrays, to_arrays, to_params
from ..errors import ActorFailure, LearnerError, RunError
from .direction import DualConfig, DualState, DualWeights, weights_for
from .problem import MultiObjectiveProblem


# ---------------------------------------------------------------------------------------- learners
def batch_at(shard: Any, step: int) -> Any:
    """A list is a cycle of batches (step t takes entry t mod n); anything else is one batch, every step."""
    return shard[step % len(shard)] if isinstance(shard, list) else shard


class ShardLearner:
    """Owns a shard; returns (F, J) of every objective at θ on that step's batch, as float64 arrays."""

    def __init__(self, problem: MultiObjectiveProblem, shard: Any, threads: int | None = None,
                 fail_at_step: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.problem, self.shard, self.fail_at_step = problem, shard, fail_at_step

    def values_and_jacobian(self, theta: Arrays, step: int) -> tuple[np.ndarray, np.ndarray]:
        if self.fail_at_step is not None and step == self.fail_at_step:
            os._exit(1)  # fault injection for recovery tests: a real process death
        F, J = self.problem.values_and_jacobian(to_params(theta), batch_at(self.shard, step))
        return F.numpy(), J.numpy()


class LocalPool:
    """The learners in this process, one after another: the single-process reference."""

    def __init__(self, problem: MultiObjectiveProblem, shards: Sequence[Any]):
        self.learners = [ShardLearner(problem, s) for s in shards]

    def compute(self, theta: Arrays, step: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return [lw.values_and_jacobian(theta, step) for lw in self.learners]

    def respawn(self) -> None:
        pass

    def close(self) -> None:
        pass


class RayPool:
    """One ``ShardLearner`` actor per shard."""

    def __init__(self, problem: MultiObjectiveProblem, shards: Sequence[Any], cpus_per_learner: float = 1.0,
                 fail_at: dict[int, int] | None = None):
        import ray

        self.ray, self.problem, self.shards, self.cpus = ray, problem, list(shards), cpus_per_learner
        self._spawn(dict(fail_at or {}))

    def _spawn(self, fail_at: dict[int, int]) -> None:
        cls = self.ray.remote(num_cpus=self.cpus, max_restarts=0)(ShardLearner)
        threads = max(1, int(self.cpus))
        self.actors = [cls.remote(self.problem, s, threads=threads, fail_at_step=fail_at.get(i))
                       for i, s in enumerate(self.shards)]

    def compute(self, theta: Arrays, step: int) -> list[tuple[np.ndarray, np.ndarray]]:
        ref = self.ray.put(theta)  # once, read by every learner
        refs = [a.values_and_jacobian.remote(ref, step) for a in self.actors]
        return self._get(refs, f"shard learners in step {step + 1}")

    def _get(self, refs: Any, who: str) -> Any:
        ray = self.ray
        try:
            return ray.get(refs)
        except ray.exceptions.RayActorError as e:
            raise ActorFailure(f"{who}: actor died ({type(e).__name__})") from e
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if getattr(e, "cause", None) is not None else e
            first = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
            raise LearnerError(f"{who} raised {type(cause).__name__}: {first}", str(e)) from None

    def respawn(self) -> None:
        self.close()
        self._spawn({})  # a replacement carries no injected fault

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)


class Restarting:
    """A pool whose dead learner is replaced and the call redone, up to ``max_restarts`` times.

    Learners hold nothing but their data, so a redone call returns what the lost one would have."""

    def __init__(self, pool: "LocalPool | RayPool", max_restarts: int):
        self.pool, self.max_restarts, self.restarts = pool, max_restarts, 0

    def compute(self, theta: Arrays, step: int) -> list[tuple[np.ndarray, np.ndarray]]:
        while True:
            try:
                return self.pool.compute(theta, step)
            except ActorFailure as e:
                if self.restarts >= self.max_restarts:
                    raise RunError(f"{e}; gave up after {self.restarts} restart(s)") from None
                self.restarts += 1
                self.pool.respawn()


def make_pool(problem: MultiObjectiveProblem, shards: Sequence[Any], backend: str = "ray",
              cpus_per_learner: float = 1.0, fail_at: dict[int, int] | None = None) -> LocalPool | RayPool:
    if backend == "ray":
        return RayPool(problem, shards, cpus_per_learner, fail_at)
    if backend == "local":
        if fail_at:
            raise ValueError("fail_at kills a process: use it with backend='ray' only")
        return LocalPool(problem, shards)
    raise ValueError(f"unknown backend {backend!r}; valid: local, ray")


# ---------------------------------------------------------------------------------------- state
@dataclass
class PreferenceState:
    """Everything a run needs to continue exactly: the step count, θ and the dual (``ferero_single``)."""

    step: int
    theta: tree.Params
    dual: DualState | None = None

    def to_flat(self) -> tuple[Arrays, dict]:
        flat = {f"theta/{k}": v for k, v in to_arrays(self.theta).items()}
        if self.dual is not None:
            flat["dual/lam_f"] = np.asarray(self.dual.lam_f, dtype=np.float64)
            flat["dual/lam_h"] = np.asarray(self.dual.lam_h, dtype=np.float64)
        return flat, {"step": self.step, "theta_keys": list(self.theta)}

    @classmethod
    def from_flat(cls, flat: Arrays, meta: dict) -> "PreferenceState":
        params = to_params({k: flat[f"theta/{k}"] for k in meta["theta_keys"]})  # keep θ's own key order
        dual = None
        if "dual/lam_f" in flat:
            dual = DualState(np.array(flat["dual/lam_f"]), np.array(flat["dual/lam_h"]))
        return cls(int(meta["step"]), params, dual)


@dataclass
class PreferenceResult:
    theta: tree.ParamsLike
    values: list[float]  # F at the final θ (mean over shards, at the batch of step ``steps``)
    weights: DualWeights  # λ of the last step
    history: list[dict[str, float]] = field(default_factory=list)
    state: PreferenceState | None = None
    restarts: int = 0


StepCallback = Callable[[int, dict[str, float], PreferenceState], None]


def _mean(outs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    F = np.mean(np.stack([o[0] for o in outs]), axis=0)
    J = np.mean(np.stack([o[1] for o in outs]), axis=0)
    return torch.from_numpy(F), torch.from_numpy(J)


def _record(problem: MultiObjectiveProblem, step: int, F: torch.Tensor, J: torch.Tensor, weights: DualWeights,
            d: torch.Tensor, wall: float) -> dict[str, float]:
    rec: dict[str, float] = {"step": step}
    rec.update({f"f{i + 1}": float(v) for i, v in enumerate(F)})
    rec.update({f"lam{i + 1}": float(v) for i, v in enumerate(weights.lam)})
    rec["ray_residual"] = problem.ray_residual(F)
    rec["d_norm"] = float(torch.linalg.vector_norm(d))
    rec["dual_iters"] = weights.iters
    rec["step_s"] = wall
    return rec


def solve_preference(
    problem: MultiObjectiveProblem,
    theta: tree.ParamsLike,
    batches: Sequence[Any],
    *,
    steps: int,
    lr: float,
    learners: int = 2,
    method: str = "ferero",
    dual: DualConfig | None = None,
    backend: str = "ray",
    cpus_per_learner: float = 1.0,
    start: PreferenceState | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[PreferenceState], None] | None = None,
    on_step: StepCallback | None = None,
    pool: LocalPool | RayPool | None = None,
    max_restarts: int = 1,
    fail_at: dict[int, int] | None = None,
) -> PreferenceResult:
    """Run ``steps`` steps of ``method`` (``ferero``, ``ferero_single``, ``mgda``, ``linear``).

    ``batches`` has one entry per learner: a list of batches (step t uses entry t mod n) or one batch
    used every step. ``backend="ray"`` puts each learner on an actor (Ray must be initialised or is
    started); ``"local"`` runs the same learners here. ``start`` continues a saved state;
    ``on_checkpoint`` receives the state every ``checkpoint_every`` steps and after the last.
    ``pool`` reuses learners across calls (it is then not closed here; its shards win over
    ``batches``). A learner that dies is replaced and its step redone, up to ``max_restarts`` times;
    ``fail_at={learner: step}`` kills one on purpose, for tests.
    """
    if steps < 0 or not lr > 0:
        raise ValueError(f"steps must be >= 0 and lr > 0, got steps={steps}, lr={lr}")
    cfg = dual or DualConfig()
    own_pool = pool is None
    if own_pool:
        if len(batches) != learners:
            raise ValueError(f"batches: expected {learners} entries (one per learner), got {len(batches)}")
        pool = make_pool(problem, batches, backend, cpus_per_learner, fail_at)
    params, was_tensor = tree.wrap(theta)
    state = start or PreferenceState(0, tree.detached(params))
    geo = problem.geometry()
    history: list[dict[str, float]] = []
    retry = Restarting(pool, max_restarts)

    try:
        weights = None
        while state.step < steps:
            t0 = time.perf_counter()
            F, J = _mean(retry.compute(to_arrays(state.theta), state.step))
            weights, dual_state = weights_for(method, J @ J.T, F, geo, cfg, state.dual)
            d = -(J.T @ weights.lam)
            update = tree.unflatten(d, state.theta)
            theta_next = {k: (v + lr * update[k].to(v.dtype)).detach() for k, v in state.theta.items()}
            state = PreferenceState(state.step + 1, theta_next, dual_state)
            record = _record(problem, state.step, F, J, weights, d, time.perf_counter() - t0)
            history.append(record)
            if on_step is not None:
                on_step(state.step, record, state)
            if on_checkpoint is not None and ((checkpoint_every and state.step % checkpoint_every == 0)
                                              or state.step == steps):
                on_checkpoint(state)
        F, J = _mean(retry.compute(to_arrays(state.theta), state.step))
        if weights is None:  # nothing to run (steps reached already): the weights at the final point
            weights, _ = weights_for(method, J @ J.T, F, geo, cfg, state.dual)
        return PreferenceResult(tree.unwrap(dict(state.theta), was_tensor), [float(v) for v in F], weights,
                                history, state, retry.restarts)
    finally:
        if own_pool:
            pool.close()
