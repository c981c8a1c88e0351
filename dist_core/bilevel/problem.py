"""The bilevel problem a user hands to ``hypergradient`` and ``solve``.

    min_λ  F(λ) = f(θ*(λ), λ)     s.t.  θ*(λ) ∈ argmin_θ g(θ, λ)

``lower`` is g and ``upper`` is f; both take ``(theta, lam, batch)`` and return a scalar tensor.
θ and λ arrive in the form the user passed them (a tensor or a dict of tensors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from . import tree

Objective = Callable[[Any, Any, Any], torch.Tensor]


@dataclass(frozen=True)
class BilevelProblem:
    lower: Objective  # g(θ, λ, batch): the inner objective θ minimises
    upper: Objective  # f(θ, λ, batch): the outer objective λ minimises through θ*(λ)
    # Optional report: evaluate(θ, λ, batch) -> {name: float}, called by learners each round.
    evaluate: Callable[[Any, Any, Any], dict[str, float]] | None = None

    def g(self, theta: tree.Params, lam: tree.Params, batch: Any) -> torch.Tensor:
        return _scalar(self.lower(tree.as_user(theta), tree.as_user(lam), batch), "lower")

    def f(self, theta: tree.Params, lam: tree.Params, batch: Any) -> torch.Tensor:
        return _scalar(self.upper(tree.as_user(theta), tree.as_user(lam), batch), "upper")


def _scalar(value: torch.Tensor, which: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise TypeError(f"the {which} objective must return a scalar tensor, got {value!r:.80}")
    return value.reshape(())


def lower_gd_steps(
    problem: BilevelProblem, theta: tree.Params, lam: tree.Params, batch: Any, steps: int, lr: float
) -> tree.Params:
    """T plain gradient steps on g from θ with λ fixed (no graph kept): the inner solver."""
    lam_fixed = tree.detached(lam)
    theta = tree.detached(theta, requires_grad=True)
    for _ in range(steps):
        grads = torch.autograd.grad(problem.g(theta, lam_fixed, batch), list(theta.values()))
        with torch.no_grad():
            theta = {k: (v - lr * g).requires_grad_(True) for (k, v), g in zip(theta.items(), grads)}
    return tree.detached(theta)
