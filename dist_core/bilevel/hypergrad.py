"""``hypergradient``: the single-process reference every learner actor calls."""

from __future__ import annotations

from typing import Any

from . import estimators, tree
from .problem import BilevelProblem


def hypergradient(
    problem: BilevelProblem,
    theta: tree.ParamsLike,
    lam: tree.ParamsLike,
    lower_batch: Any,
    upper_batch: Any,
    method: str = "implicit_cg",
    **options: Any,
) -> tree.ParamsLike:
    """Estimate dF/dλ at (θ, λ), with θ ≈ θ*(λ), by ``method`` (see ``estimators.names()``).

    ``options`` are the method's knobs (``iters=20`` for CG, ``gamma=10`` for penalty, ...);
    the result has the form of ``lam``: a tensor, or a dict with λ's keys.
    """
    entry = estimators.get(method)
    opts = estimators.make_options(method, **options)
    theta_p, _ = tree.wrap(theta)
    lam_p, lam_was_tensor = tree.wrap(lam)
    est = entry.fn(problem, theta_p, lam_p, lower_batch, upper_batch, opts, {})
    return tree.unwrap(est.grad, lam_was_tensor)
