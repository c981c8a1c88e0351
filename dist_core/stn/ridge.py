"""Ridge regression as an STN problem whose best response is known in closed form.

    L_T(w, u) = ½‖Xw − y‖²/n + ½e^u‖w‖²/n     ⇒   w*(u) = (XᵀX + e^u I)⁻¹ Xᵀy,
    dw*/du = −e^u (XᵀX + e^u I)⁻¹ w*(u),         L_V(w) = ½‖X_v w − y_v‖²/n_v

The STN's best response is one hyper-linear row without bias: ŵ_φ(u) = s·w_elem + (v·u)·w_hyper,
affine in u, so near the current u it can match both w*(u) and its slope.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..bilevel import tree
from ..bilevel.problem import BilevelProblem
from . import layers

PREFIX = "w"


@dataclass(frozen=True)
class RidgeData:
    x: torch.Tensor
    y: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def make_data(n: int, n_val: int, d: int, noise: float, seed: int) -> RidgeData:
    gen = torch.Generator().manual_seed(seed)
    w_true = torch.randn(d, generator=gen, dtype=torch.float64)
    x = torch.randn((n + n_val, d), generator=gen, dtype=torch.float64)
    y = x @ w_true + noise * torch.randn(n + n_val, generator=gen, dtype=torch.float64)
    return RidgeData(x[:n], y[:n], x[n:], y[n:])


def closed_form(data: RidgeData, u: float) -> tuple[torch.Tensor, torch.Tensor]:
    """w*(u) and dw*/du."""
    a = data.x.T @ data.x + torch.exp(torch.tensor(u, dtype=torch.float64)) * torch.eye(data.x.shape[1],
                                                                                          dtype=torch.float64)
    w = torch.linalg.solve(a, data.x.T @ data.y)
    return w, -torch.exp(torch.tensor(u, dtype=torch.float64)) * torch.linalg.solve(a, w)


def validation_loss(data: RidgeData, w: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((data.x_val @ w - data.y_val) ** 2).mean()


def init_phi(d: int, seed: int) -> tree.Params:
    p = layers.init(PREFIX, d, 1, 1, torch.Generator().manual_seed(seed), bias=False)
    return {k: v.double() for k, v in p.items()}


def best_response(phi: tree.Params, u: torch.Tensor) -> torch.Tensor:
    """ŵ_φ(u) for each row of u (B, 1) → (B, d)."""
    return layers.weight(phi, PREFIX, u)[:, 0, :]


def make_problem(data: RidgeData) -> BilevelProblem:
    n = len(data.y)

    def lower(phi: tree.Params, u: torch.Tensor, batch) -> torch.Tensor:
        w = best_response(phi, u)  # (B, d): one ridge solution per perturbed u
        resid = data.x @ w.T - data.y[:, None]
        fit = 0.5 * (resid ** 2).sum(0) / n
        return (fit + 0.5 * torch.exp(u[:, 0]) * (w * w).sum(1) / n).mean()

    def upper(phi: tree.Params, u: torch.Tensor, batch) -> torch.Tensor:
        w = best_response(phi, u)
        return (0.5 * ((data.x_val @ w.T - data.y_val[:, None]) ** 2).mean(0)).mean()

    return BilevelProblem(lower=lower, upper=upper)
