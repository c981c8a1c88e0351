"""Implicit hypergradient with conjugate gradients for H v = ∇_θ f (betty ``cg.py``).

CG needs H ≻ 0 near θ*; ``damping`` adds δI for lower problems that are only convex.
At ``iters = dim(θ)`` CG is exact in exact arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import tree
from .base import Estimate, register
from .implicit import HVP, implicit_hypergradient


@dataclass(frozen=True)
class CGOptions:
    iters: int = 20  # CG iterations (Hessian-vector products)
    tol: float = 1e-10  # stop when ‖r‖² < tol · ‖b‖²
    damping: float = 0.0  # solve (H + δI) v = b


def conjugate_gradient(hvp: HVP, b: tree.Params, iters: int, tol: float, damping: float = 0.0) -> tree.Params:
    def matvec(v: tree.Params) -> tree.Params:
        hv = hvp(v)
        return tree.add(hv, v, alpha=damping) if damping else hv

    x = tree.zeros_like(b)
    r = {k: v.clone() for k, v in b.items()}
    p = {k: v.clone() for k, v in b.items()}
    rr = tree.dot(r, r)
    stop = tol * float(rr)
    for _ in range(iters):
        if float(rr) <= stop or float(rr) == 0.0:
            break
        ap = matvec(p)
        alpha = rr / tree.dot(p, ap)
        x = tree.add(x, p, alpha=float(alpha))
        r = tree.add(r, ap, alpha=-float(alpha))
        rr_new = tree.dot(r, r)
        p = tree.add(r, p, alpha=float(rr_new / rr))
        rr = rr_new
    return x


@register("implicit_cg", CGOptions)
def implicit_cg(problem, theta, lam, lower_batch, upper_batch, options: CGOptions, state) -> Estimate:
    def solve(hvp: HVP, b: tree.Params) -> tree.Params:
        return conjugate_gradient(hvp, b, options.iters, options.tol, options.damping)

    return Estimate(implicit_hypergradient(problem, theta, lam, lower_batch, upper_batch, solve))
