"""One round's math for each side, with no Ray: the actors and the in-process path both call it.

Lower learner k:  θ_k ← T gradient steps on g(·, λ, shard_k);  part_k = estimator(θ_k, λ).
Upper learner:    λ ← optimizer step on mean_k part_k.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from . import estimators, tree
from .problem import BilevelProblem, lower_gd_steps


@dataclass(frozen=True)
class LowerConfig:
    method: str
    options: Any  # the estimator's options dataclass
    inner_steps: int
    inner_lr: float


@dataclass
class LowerState:
    theta: tree.Params
    est_state: dict[str, tree.Params] = field(default_factory=dict)


def lower_round(
    problem: BilevelProblem,
    state: LowerState,
    lam: tree.Params,
    lower_batch: Any,
    upper_batch: Any,
    cfg: LowerConfig,
    eval_batch: Any = None,
) -> tuple[LowerState, tree.Params, dict[str, float]]:
    """Advance θ, estimate this learner's part of dF/dλ, and report a few numbers."""
    theta = lower_gd_steps(problem, state.theta, lam, lower_batch, cfg.inner_steps, cfg.inner_lr)
    est = estimators.get(cfg.method).fn(
        problem, theta, lam, lower_batch, upper_batch, cfg.options, state.est_state
    )
    theta = est.theta if est.theta is not None else theta
    with torch.no_grad():
        metrics = {
            "lower_loss": float(problem.g(theta, lam, lower_batch)),
            "upper_loss": float(problem.f(theta, lam, upper_batch)),
        }
        if problem.evaluate is not None and eval_batch is not None:
            metrics.update(problem.evaluate(tree.as_user(theta), tree.as_user(lam), eval_batch))
    return LowerState(theta, est.state), est.grad, metrics


def train_lower_only(
    problem: BilevelProblem, state: LowerState, lam: tree.Params, lower_batch: Any, steps: int, lr: float
) -> LowerState:
    """The baseline's step: the same inner training with λ frozen."""
    return LowerState(lower_gd_steps(problem, state.theta, lam, lower_batch, steps, lr), state.est_state)


def average(parts: list[tree.Params]) -> tree.Params:
    return {k: torch.stack([p[k] for p in parts]).mean(0) for k in parts[0]}


_OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


class UpperOptimizer:
    """λ and a torch optimizer over it; the hypergradient is written into ``.grad``."""

    def __init__(self, lam: tree.Params, name: str, lr: float):
        if name not in _OPTIMIZERS:
            raise ValueError(f"unknown upper optimizer {name!r}; valid: {', '.join(sorted(_OPTIMIZERS))}")
        self.lam = tree.detached(lam, requires_grad=True)
        self.opt = _OPTIMIZERS[name](list(self.lam.values()), lr=lr)

    def step(self, grad: tree.Params) -> float:
        for k, p in self.lam.items():
            p.grad = grad[k].to(p.dtype).clone()
        self.opt.step()
        return tree.norm(grad)

    def value(self) -> tree.Params:
        return tree.detached(self.lam)
