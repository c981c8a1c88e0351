"""Implicit hypergradient with a truncated Neumann series (betty ``neumann.py``).

    H⁻¹ b ≈ α Σ_{j=0}^{K} (I − αH)^j b,   converging when 0 < α < 2/λ_max(H).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import tree
from .base import Estimate, register
from .implicit import HVP, implicit_hypergradient


@dataclass(frozen=True)
class NeumannOptions:
    iters: int = 20  # K: terms after the first
    alpha: float = 0.1  # α: must be below 2/λ_max(∇²_θθ g)


def neumann_inverse_hvp(hvp: HVP, b: tree.Params, iters: int, alpha: float) -> tree.Params:
    term = {k: v.clone() for k, v in b.items()}  # (I − αH)^j b
    total = {k: v.clone() for k, v in b.items()}
    for _ in range(iters):
        term = tree.add(term, hvp(term), alpha=-alpha)
        total = tree.add(total, term)
    return tree.scale(total, alpha)


@register("implicit_neumann", NeumannOptions)
def implicit_neumann(problem, theta, lam, lower_batch, upper_batch, options: NeumannOptions, state) -> Estimate:
    def solve(hvp: HVP, b: tree.Params) -> tree.Params:
        return neumann_inverse_hvp(hvp, b, options.iters, options.alpha)

    return Estimate(implicit_hypergradient(problem, theta, lam, lower_batch, upper_batch, solve))
