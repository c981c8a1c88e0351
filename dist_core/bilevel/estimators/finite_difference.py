"""First-order implicit hypergradient with a finite-difference mixed derivative (betty ``darts.py``).

The inverse Hessian of the implicit function theorem is replaced by the identity, v = ∇_θ f,
and the mixed product is a central difference of ∇_λ g along v:

    ∇F ≈ ∇_λ f − [∇_λ g(θ + εv, λ) − ∇_λ g(θ − εv, λ)] / (2ε),    ε = r / ‖v‖

(DARTS, Liu et al. 2019, read as implicit differentiation; betty's ``type="darts"`` with
``darts_alpha`` = r = 0.01). Two gradient evaluations of g and one of f; no Hessian-vector
products, no graph kept past a single gradient. The central difference is exact when ∇_λ g is
linear in θ and O(ε²) otherwise; dropping H⁻¹ is the estimator's real bias (exact when
∇²_θθ g = I), so it pairs with an upper optimizer that is insensitive to scale, such as Adam.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import tree
from ..problem import BilevelProblem
from .base import Estimate, register


@dataclass(frozen=True)
class FiniteDifferenceOptions:
    alpha: float = 0.01  # r: the perturbation θ ± εv has length r, ε = r/‖v‖ (betty's darts_alpha)


def upper_gradients(
    problem: BilevelProblem, theta: tree.Params, lam: tree.Params, upper_batch: Any
) -> tuple[tree.Params, tree.Params]:
    """(∇_θ f, ∇_λ f) at (θ, λ), detached."""
    theta = tree.detached(theta, requires_grad=True)
    lam = tree.detached(lam, requires_grad=True)
    th, lm = list(theta.values()), list(lam.values())
    df = torch.autograd.grad(problem.f(theta, lam, upper_batch), th + lm, allow_unused=True)
    return tree.grads_or_zeros(df[: len(th)], theta), tree.grads_or_zeros(df[len(th) :], lam)


def lower_lam_gradient(problem: BilevelProblem, theta: tree.Params, lam: tree.Params, lower_batch: Any) -> tree.Params:
    """∇_λ g at (θ, λ), with θ a constant."""
    lam = tree.detached(lam, requires_grad=True)
    dg = torch.autograd.grad(problem.g(tree.detached(theta), lam, lower_batch), list(lam.values()), allow_unused=True)
    return tree.grads_or_zeros(dg, lam)


def fd_step(v: tree.Params, alpha: float) -> float:
    """ε = r/‖v‖; betty adds 1e-15 to the norm so that v = 0 gives a zero product, not a NaN."""
    return alpha / (tree.norm(v) + 1e-15)


def mixed_product(
    problem: BilevelProblem, theta: tree.Params, lam: tree.Params, lower_batch: Any, v: tree.Params, alpha: float
) -> tree.Params:
    """∇²_λθ g · v ≈ [∇_λ g(θ + εv, λ) − ∇_λ g(θ − εv, λ)] / (2ε), ε = r/‖v‖."""
    eps = fd_step(v, alpha)
    with torch.no_grad():
        plus, minus = tree.add(theta, v, alpha=eps), tree.add(theta, v, alpha=-eps)
    g_plus = lower_lam_gradient(problem, plus, lam, lower_batch)
    g_minus = lower_lam_gradient(problem, minus, lam, lower_batch)
    return tree.scale(tree.add(g_plus, g_minus, alpha=-1.0), 1.0 / (2.0 * eps))


@register("finite_difference", FiniteDifferenceOptions)
def finite_difference(
    problem, theta, lam, lower_batch, upper_batch, options: FiniteDifferenceOptions, state
) -> Estimate:
    df_dtheta, df_dlam = upper_gradients(problem, theta, lam, upper_batch)
    mixed = mixed_product(problem, theta, lam, lower_batch, df_dtheta, options.alpha)
    return Estimate(tree.detached(tree.add(df_dlam, mixed, alpha=-1.0)))
