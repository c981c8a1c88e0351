"""Fully first-order value-function penalty (V-PBGD / F2SA style): no second derivatives.

With ω ≈ θ*(λ) = argmin_θ g and y ≈ argmin_y f(y, λ)/γ + g(y, λ), the gradient of the penalised
value function

    F_γ(λ) = min_y [f(y, λ) + γ (g(y, λ) − g(ω, λ))]     is    ∇_λ f(y, λ) + γ [∇_λ g(y, λ) − ∇_λ g(ω, λ)]

(Danskin), which differs from the true hypergradient by O(1/γ) (Kwon et al., ICML 2023). y is
kept between rounds in ``state`` and warm-started, as in F2SA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import tree
from .base import Estimate, register


@dataclass(frozen=True)
class PenaltyOptions:
    gamma: float = 10.0  # γ: penalty weight; the bias is O(1/γ)
    steps: int = 10  # gradient steps on y per round
    lr: float = 0.1  # step size on y for f/γ + g (scaled like the lower problem)


@register("penalty", PenaltyOptions)
def penalty(problem, theta, lam, lower_batch, upper_batch, options: PenaltyOptions, state) -> Estimate:
    lam_fixed = tree.detached(lam)
    y = tree.detached(state.get("y", theta), requires_grad=True)
    for _ in range(options.steps):
        h = problem.f(y, lam_fixed, upper_batch) / options.gamma + problem.g(y, lam_fixed, lower_batch)
        grads = torch.autograd.grad(h, list(y.values()))
        with torch.no_grad():
            y = {k: (v - options.lr * gr).requires_grad_(True) for (k, v), gr in zip(y.items(), grads)}

    lam = tree.detached(lam, requires_grad=True)
    omega = tree.detached(theta)
    y_const = tree.detached(y)
    value = (
        problem.f(y_const, lam, upper_batch)
        + options.gamma * problem.g(y_const, lam, lower_batch)
        - options.gamma * problem.g(omega, lam, lower_batch)
    )
    grad = tree.grads_or_zeros(torch.autograd.grad(value, list(lam.values()), allow_unused=True), lam)
    return Estimate(tree.detached(grad), state={"y": y_const})
