"""Reverse-mode differentiation through unrolled inner gradient steps (RHG / T-RHG).

    θ_{t+1} = θ_t − η ∇_θ g(θ_t, λ),  t = 0..T−1;   estimate = d f(θ_T(λ), λ) / dλ

With ``truncate = K`` only the last K steps carry a graph (θ_{T−K} is treated as a constant),
which bounds memory at K copies of θ. The returned θ_T becomes the learner's new iterate, so
the unrolled steps are also training steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import tree
from ..problem import lower_gd_steps
from .base import Estimate, register


@dataclass(frozen=True)
class UnrolledOptions:
    steps: int = 10  # T: inner steps unrolled
    lr: float = 0.1  # η: inner step size of the unrolled map
    truncate: int | None = None  # K: backprop through the last K steps only (None = all T)


@register("unrolled", UnrolledOptions)
def unrolled(problem, theta, lam, lower_batch, upper_batch, options: UnrolledOptions, state) -> Estimate:
    keep = options.steps if options.truncate is None else min(options.truncate, options.steps)
    # The first T−K steps are plain training: no graph, θ_{T−K} enters as a constant.
    cur = lower_gd_steps(problem, theta, lam, lower_batch, options.steps - keep, options.lr)
    cur = tree.detached(cur, requires_grad=True)
    lam = tree.detached(lam, requires_grad=True)
    for _ in range(keep):
        grads = torch.autograd.grad(problem.g(cur, lam, lower_batch), list(cur.values()), create_graph=True)
        cur = {k: v - options.lr * gr for (k, v), gr in zip(cur.items(), grads)}
    f = problem.f(cur, lam, upper_batch)
    grad = tree.grads_or_zeros(torch.autograd.grad(f, list(lam.values()), allow_unused=True), lam)
    return Estimate(tree.detached(grad), theta=tree.detached(cur))
