"""``solve_semivectorial``: min_x f0(x) over the weakly Pareto-optimal x of (f1..fM), on shard learners.

The penalty form of semivectorial bilevel learning (arXiv 2504.02854):

    min_x  f0(x) + γ·v_ℓ,τ(x)          v_ℓ,τ the smoothed Pareto merit (``merit.py``), ≥ 0, ≈ 0 on the set

One step alternates ``y_steps`` ascent steps on the merit's inner max over y (backtracking, warm-
started at the previous y) with one x-step on f0 + γ·v, whose merit gradient is Danskin's
J(x)ᵀw − ℓ(x − y). The M + 1 functions' values and Jacobians come from the multi-objective shard
learners (``multiobjective.solver``), one pool call per evaluation point; learners hold only their
data, so a dead one is replaced and its call redone, and the run stays the run it would have been.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..bilevel import tree
from ..bilevel.learners import Arrays
from ..multiobjective.problem import MultiObjectiveProblem, Objective
from ..multiobjective.solver import LocalPool, RayPool, Restarting, make_pool
from .merit import ascent_step, merit_gap, merit_gradient

DTYPE = torch.float64


@dataclass(frozen=True)
class SemivectorialProblem:
    """f0 (the upper objective) and f1..fM (the lower level's objectives), each f(theta, batch) -> scalar."""

    upper: Objective
    objectives: Sequence[Objective]

    def __post_init__(self) -> None:
        object.__setattr__(self, "objectives", tuple(self.objectives))
        if len(self.objectives) < 2:
            raise ValueError(f"the lower level needs at least 2 objectives, got {len(self.objectives)}")

    @property
    def m(self) -> int:
        return len(self.objectives)

    def stacked(self) -> MultiObjectiveProblem:
        """All M + 1 functions as one problem, row 0 being f0: what a shard learner evaluates."""
        return MultiObjectiveProblem([self.upper, *self.objectives])


@dataclass(frozen=True)
class PenaltyConfig:
    gamma: float = 10.0  # γ: the penalty weight; the solution is within O(1/γ) of the constrained optimum
    ell: float = 1.0  # ℓ: the merit's proximal weight
    tau: float = 0.01  # τ: the softmin's temperature; v overestimates u by at most τ·log M
    lr: float = 0.1  # η of the x-step
    curvature: float = 1.0  # first L of the y-steps' majorisation (then adapted by backtracking)
    y_steps: int = 1  # ascent steps on y per x-step

    def __post_init__(self) -> None:
        for name in ("gamma", "ell", "lr", "curvature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.tau >= 0:
            raise ValueError(f"tau must be >= 0, got {self.tau}")
        if self.y_steps < 1:
            raise ValueError(f"y_steps must be >= 1, got {self.y_steps}")


@dataclass
class SemivectorialState:
    """Everything a run needs to continue exactly: x, y, F(y), J(y) and the y-steps' L."""

    step: int
    x: torch.Tensor  # (P,) float64, θ flattened in key order
    y: torch.Tensor
    Fy: torch.Tensor | None = None  # F(y), J(y) of the last y evaluation (None: not evaluated yet)
    Jy: torch.Tensor | None = None
    curvature: float = 1.0

    def to_flat(self) -> tuple[Arrays, dict]:
        flat = {"x": self.x.numpy(), "y": self.y.numpy()}
        if self.Fy is not None:
            flat.update(Fy=self.Fy.numpy(), Jy=self.Jy.numpy())
        return flat, {"step": self.step, "curvature": self.curvature}

    @classmethod
    def from_flat(cls, flat: Arrays, meta: dict) -> "SemivectorialState":
        t = lambda k: torch.from_numpy(np.array(flat[k], dtype=np.float64))  # noqa: E731 - writable copies
        has_y = "Fy" in flat
        return cls(int(meta["step"]), t("x"), t("y"), t("Fy") if has_y else None, t("Jy") if has_y else None,
                   float(meta["curvature"]))


@dataclass
class SemivectorialResult:
    theta: tree.ParamsLike
    upper: float  # f0 at the final x
    values: list[float]  # f1..fM at the final x
    merit: float  # the inner objective at the final (x, y): a lower estimate of v_ℓ,τ(x)
    history: list[dict[str, float]] = field(default_factory=list)
    state: SemivectorialState | None = None
    restarts: int = 0


StepCallback = Callable[[int, dict[str, float], SemivectorialState], None]


def as_params(vec: torch.Tensor, like: tree.Params) -> tree.Params:
    """A flat float64 point back as θ's dict, in θ's own dtypes."""
    return {k: v.to(like[k].dtype) for k, v in tree.unflatten(vec, like).items()}


class _Evaluator:
    """F and J of all M + 1 functions at a flat point, averaged over the shards (float64)."""

    def __init__(self, pool: Restarting, like: tree.Params):
        self.pool, self.like = pool, like

    def __call__(self, point: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        arrays = {k: v.numpy() for k, v in as_params(point, self.like).items()}
        outs = self.pool.compute(arrays, step)
        F = np.mean(np.stack([o[0] for o in outs]), axis=0)
        J = np.mean(np.stack([o[1] for o in outs]), axis=0)
        return torch.from_numpy(F), torch.from_numpy(J)


def _record(step: int, F: torch.Tensor, merit: float, w: torch.Tensor, cfg: PenaltyConfig, grad: torch.Tensor,
            evaluations: int, wall: float) -> dict[str, float]:
    rec: dict[str, float] = {"step": step, "f0": float(F[0])}
    rec.update({f"f{i + 1}": float(v) for i, v in enumerate(F[1:])})
    rec["merit"] = merit
    rec["penalised"] = float(F[0]) + cfg.gamma * merit
    rec.update({f"w{i + 1}": float(v) for i, v in enumerate(w)})
    rec["grad_norm"] = float(torch.linalg.vector_norm(grad))
    rec["evaluations"] = evaluations
    rec["step_s"] = wall
    return rec


def solve_semivectorial(
    problem: SemivectorialProblem,
    theta: tree.ParamsLike,
    batches: Sequence[Any],
    *,
    steps: int,
    config: PenaltyConfig | None = None,
    learners: int = 2,
    backend: str = "ray",
    cpus_per_learner: float = 1.0,
    start: SemivectorialState | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[SemivectorialState], None] | None = None,
    on_step: StepCallback | None = None,
    pool: LocalPool | RayPool | None = None,
    max_restarts: int = 1,
    fail_at: dict[int, int] | None = None,
) -> SemivectorialResult:
    """Run ``steps`` penalty steps from θ (a tensor or a dict of tensors).

    ``batches``: one entry per learner, as in ``solve_preference`` (a list is a cycle of batches,
    anything else one batch every step); a batch is what every f receives. ``pool``: learners built
    by ``make_pool(problem.stacked(), …)``, reused across calls and not closed here. ``start``
    continues a saved state; ``on_checkpoint`` gets the state every ``checkpoint_every`` steps and
    after the last; ``fail_at={learner: call}`` kills a learner on purpose, for tests.
    """
    cfg = config or PenaltyConfig()
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    own_pool = pool is None
    if own_pool:
        if len(batches) != learners:
            raise ValueError(f"batches: expected {learners} entries (one per learner), got {len(batches)}")
        pool = make_pool(problem.stacked(), batches, backend, cpus_per_learner, fail_at)
    params, was_tensor = tree.wrap(theta)
    like = tree.detached(params)
    retry = Restarting(pool, max_restarts)
    evaluate = _Evaluator(retry, like)
    x0 = tree.flatten(like).to(DTYPE)
    state = start or SemivectorialState(0, x0, x0.clone(), curvature=cfg.curvature)
    history: list[dict[str, float]] = []

    try:
        while state.step < steps:
            t0 = time.perf_counter()
            step = state.step
            x, y, L = state.x, state.y, state.curvature
            Fx_all, Jx_all = evaluate(x, step)
            Fx, Jx, J0 = Fx_all[1:], Jx_all[1:], Jx_all[0]
            calls = 1
            Fy, Jy = state.Fy, state.Jy
            if Fy is None or float(merit_gap(Fx, Fy, x, y, cfg.ell, cfg.tau)[0]) < 0.0:
                # Start (again) from y = x, where the inner objective is 0: after x moved, the old y
                # may be worse than that, and Danskin's gradient at a bad y points the wrong way.
                y, Fy, Jy = x.clone(), Fx, Jx

            def lower(point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                F_all, J_all = evaluate(point, step)
                return F_all[1:], J_all[1:]

            for _ in range(cfg.y_steps):
                moved = ascent_step(lower, Fx, x, y, Fy, Jy, cfg.ell, cfg.tau, L)
                y, Fy, Jy, L, w = moved.y, moved.Fy, moved.Jy, moved.curvature, moved.weights
                calls += moved.evaluations
            gap, _ = merit_gap(Fx, Fy, x, y, cfg.ell, cfg.tau)
            grad = J0 + cfg.gamma * merit_gradient(Jx, w, x, y, cfg.ell)
            state = SemivectorialState(step + 1, (x - cfg.lr * grad).detach(), y, Fy, Jy, L)
            record = _record(state.step, Fx_all, float(gap), w, cfg, grad, calls, time.perf_counter() - t0)
            history.append(record)
            if on_step is not None:
                on_step(state.step, record, state)
            if on_checkpoint is not None and ((checkpoint_every and state.step % checkpoint_every == 0)
                                              or state.step == steps):
                on_checkpoint(state)
        F_all, _ = evaluate(state.x, state.step)
        merit = float(merit_gap(F_all[1:], state.Fy if state.Fy is not None else F_all[1:], state.x, state.y,
                                cfg.ell, cfg.tau)[0])
        theta_out = as_params(state.x, like)
        return SemivectorialResult(tree.unwrap(theta_out, was_tensor), float(F_all[0]),
                                   [float(v) for v in F_all[1:]], merit, history, state, retry.restarts)
    finally:
        if own_pool:
            pool.close()
