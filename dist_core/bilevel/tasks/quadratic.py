"""The quadratic bilevel toy of RESEARCH.md §7.1, with its closed-form hypergradient.

    g(y, x) = ½ yᵀAy − yᵀBx,     f(y, x) = ½‖y − b‖² + (ρ/2)‖x‖²,     A ≻ 0
    y*(x) = A⁻¹Bx,               ∇F(x) = ρx + BᵀA⁻¹(y*(x) − b)

It is the independent reference that the estimators are tested and benchmarked against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..problem import BilevelProblem


@dataclass(frozen=True)
class Quadratic:
    A: torch.Tensor
    B: torch.Tensor
    b: torch.Tensor
    rho: float

    @property
    def problem(self) -> BilevelProblem:
        A, B, b, rho = self.A, self.B, self.b, self.rho
        return BilevelProblem(
            lower=lambda y, x, _: 0.5 * y @ A @ y - y @ B @ x,
            upper=lambda y, x, _: 0.5 * ((y - b) ** 2).sum() + 0.5 * rho * (x**2).sum(),
        )

    def y_star(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(self.A, self.B @ x)

    def hypergradient(self, x: torch.Tensor) -> torch.Tensor:
        return self.rho * x + self.B.T @ torch.linalg.solve(self.A, self.y_star(x) - self.b)

    @property
    def lambda_max(self) -> float:
        return float(torch.linalg.eigvalsh(self.A).max())


def make(d: int, seed: int = 0, rho: float = 0.1) -> tuple[Quadratic, torch.Tensor]:
    """A random well-conditioned instance (float64) and a random outer point x."""
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(d, d, generator=gen, dtype=torch.float64)
    A = m @ m.T / d + torch.eye(d, dtype=torch.float64)
    B = torch.randn(d, d, generator=gen, dtype=torch.float64)
    b = torch.randn(d, generator=gen, dtype=torch.float64)
    x = torch.randn(d, generator=gen, dtype=torch.float64)
    return Quadratic(A, B, b, rho), x
