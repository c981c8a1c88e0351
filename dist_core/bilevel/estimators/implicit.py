"""Implicit-function-theorem hypergradient, shared by CG and Neumann.

    ∇F = ∇_λ f − ∇²_λθ g · v,   where  H v = ∇_θ f,  H = ∇²_θθ g   (all at (θ, λ))

Only Hessian-vector products are formed (double backward through ∇_θ g); the linear solver
that produces v is the one thing CG and Neumann differ in.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .. import tree
from ..problem import BilevelProblem

HVP = Callable[[tree.Params], tree.Params]
LinearSolver = Callable[[HVP, tree.Params], tree.Params]


def implicit_hypergradient(
    problem: BilevelProblem,
    theta: tree.Params,
    lam: tree.Params,
    lower_batch: Any,
    upper_batch: Any,
    solve: LinearSolver,
) -> tree.Params:
    theta = tree.detached(theta, requires_grad=True)
    lam = tree.detached(lam, requires_grad=True)
    th, lm = list(theta.values()), list(lam.values())

    f = problem.f(theta, lam, upper_batch)
    df = torch.autograd.grad(f, th + lm, allow_unused=True)
    df_dtheta = tree.grads_or_zeros(df[: len(th)], theta)
    df_dlam = tree.grads_or_zeros(df[len(th) :], lam)

    g = problem.g(theta, lam, lower_batch)
    dg_dtheta = dict(zip(theta, torch.autograd.grad(g, th, create_graph=True)))

    def hvp(v: tree.Params) -> tree.Params:
        hv = torch.autograd.grad(tree.dot(dg_dtheta, v), th, retain_graph=True, allow_unused=True)
        return tree.grads_or_zeros(hv, theta)

    v = tree.detached(solve(hvp, df_dtheta))
    mixed = torch.autograd.grad(tree.dot(dg_dtheta, v), lm, allow_unused=True)
    return tree.detached(tree.add(df_dlam, tree.grads_or_zeros(mixed, lam), alpha=-1.0))
