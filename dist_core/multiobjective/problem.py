"""The multi-objective problem a user hands to ``ferero_direction`` and ``solve_preference``.

    find θ Pareto-optimal for F(θ) = (f_1(θ), …, f_M(θ)) under the order of A, with B_h·F(θ) = 0

Each f_i takes ``(theta, batch)`` and returns a scalar tensor; θ arrives in the form the user
passed it (a tensor or a dict of tensors), as in ``dist_core.bilevel``. ``preference`` is the ray
r (entries ≥ 0); ``A`` the partial-order matrix (K × M, identity by default: plain Pareto order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..bilevel import tree
from .direction import DTYPE, DualConfig, DualState, DualWeights, Geometry, ray_constraints, weights_for
from .rays import check_preference

Objective = Callable[[Any, Any], torch.Tensor]


@dataclass(frozen=True)
class MultiObjectiveProblem:
    objectives: Sequence[Objective]
    preference: Sequence[float] | None = None  # None: no ray (FERERO is then MGDA under the order A)
    A: Any = None  # (K, M) array-like; None: the identity. Stored as a float64 numpy array
    # Optional report: evaluate(θ, batch) -> {name: float}.
    evaluate: Callable[[Any, Any], dict[str, float]] | None = None

    def __post_init__(self) -> None:
        objectives = tuple(self.objectives)
        if len(objectives) < 2:
            raise ValueError(f"a multi-objective problem needs at least 2 objectives, got {len(objectives)}")
        object.__setattr__(self, "objectives", objectives)
        m = len(objectives)
        if self.preference is not None:
            object.__setattr__(self, "preference", tuple(check_preference(self.preference, m)))
        A = np.eye(m) if self.A is None else np.array(self.A, dtype=np.float64)
        if A.ndim != 2 or A.shape[1] != m or A.shape[0] < 1:
            raise ValueError(f"A must be a (K, {m}) matrix for {m} objectives, got shape {A.shape}")
        object.__setattr__(self, "A", A)

    @property
    def m(self) -> int:
        return len(self.objectives)

    def geometry(self) -> Geometry:
        if self.preference is None:
            return Geometry(self.A, np.zeros((0, self.m)), None)
        r = np.array(self.preference, dtype=np.float64)
        return Geometry(self.A, ray_constraints(r), r)

    def ray_residual(self, values: torch.Tensor) -> float:
        """‖B_h·F‖ over ‖F‖: 0 on the ray, scale-free (the distance of F/‖F‖ from the ray)."""
        if self.preference is None:
            return 0.0
        F = np.asarray(values, dtype=np.float64)
        return float(np.linalg.norm(self.geometry().Bh @ F) / max(np.linalg.norm(F), 1e-300))

    def values(self, theta: tree.Params, batch: Any) -> torch.Tensor:
        user = tree.as_user(theta)
        return torch.stack([_scalar(f(user, batch), i) for i, f in enumerate(self.objectives)])

    def values_and_jacobian(self, theta: tree.Params, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """F (M,) and the Jacobian J (M, P) over θ flattened in its key order, both float64."""
        live = tree.detached(theta, requires_grad=True)
        user, params = tree.as_user(live), list(live.values())
        values, rows = [], []
        for i, f in enumerate(self.objectives):
            value = _scalar(f(user, batch), i)
            grads = torch.autograd.grad(value, params, allow_unused=True)
            rows.append(tree.flatten(tree.grads_or_zeros(grads, live)).to(DTYPE))
            values.append(value.detach().to(DTYPE))
        return torch.stack(values), torch.stack(rows)


def _scalar(value: torch.Tensor, i: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise TypeError(f"objective {i} must return a scalar tensor, got {value!r:.80}")
    return value.reshape(())


def ferero_direction(problem: MultiObjectiveProblem, theta: tree.ParamsLike, batch: Any,
                     dual: DualConfig | None = None, method: str = "ferero",
                     start: DualWeights | None = None) -> tuple[tree.ParamsLike, DualWeights]:
    """One FERERO direction at θ on ``batch``: d = −∇F(θ)ᵀλ, in the form θ was given.

    λ = Aᵀλ_f + B_hᵀλ_h from the dual solved by projected gradient (``direction.py``); the caller
    steps θ ← θ + η·d. ``start``: the previous step's weights, from which the dual is warm-started
    (``dual.warm_start``; ``ferero_single`` needs it to carry its dual). This is the single-process
    reference that the learner actors reproduce.
    """
    params, was_tensor = tree.wrap(theta)
    F, J = problem.values_and_jacobian(params, batch)
    state = None if start is None else DualState(start.lam_f.numpy(), start.lam_h.numpy())
    weights, _ = weights_for(method, J @ J.T, F, problem.geometry(), dual or DualConfig(), state)
    d = tree.unflatten(-(J.T @ weights.lam), params)
    d = {k: v.to(params[k].dtype) for k, v in d.items()}
    return tree.unwrap(d, was_tensor), weights
