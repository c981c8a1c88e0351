"""Hyperparameters as an unconstrained vector u, their perturbation and its entropy (STN §4).

Each hyperparameter λ_i lives in its own range and is learned through an unconstrained u_i:

    bounded [low, high):  λ = low + (high − low)·σ(u)       (a dropout rate: [0, 1))
    positive (log):       λ = exp(u)                         (a weight decay)

Training draws u + softplus(s)·ε, ε ~ N(0, I), per example; the entropy of that Gaussian,
H = Σ_i log(softplus(s_i)·√(2πe)), is what the validation step rewards with weight τ so that
the perturbation scale does not collapse to zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Hyper:
    name: str
    transform: str  # "bounded" or "log"
    low: float = 0.0  # bounded only
    high: float = 1.0  # bounded only

    def __post_init__(self) -> None:
        if self.transform not in ("bounded", "log"):
            raise ValueError(f"{self.name}: transform must be 'bounded' or 'log', got {self.transform!r}")
        if self.transform == "bounded" and not self.low < self.high:
            raise ValueError(f"{self.name}: needs low < high, got [{self.low}, {self.high})")

    def constrain(self, u: torch.Tensor) -> torch.Tensor:
        if self.transform == "log":
            return torch.exp(u)
        return self.low + (self.high - self.low) * torch.sigmoid(u)

    def unconstrain(self, value: float) -> float:
        if self.transform == "log":
            if value <= 0:
                raise ValueError(f"{self.name}: must be > 0, got {value}")
            return math.log(value)
        if not self.low <= value < self.high:
            raise ValueError(f"{self.name}: must lie in [{self.low}, {self.high}), got {value}")
        # The end points map to ±∞: start a hair inside, where the logit is finite.
        p = min(max((value - self.low) / (self.high - self.low), 1e-4), 1 - 1e-4)
        return math.log(p) - math.log1p(-p)


def constrained(hypers: list[Hyper], u: torch.Tensor) -> torch.Tensor:
    """(…, H) unconstrained → (…, H) in each hyperparameter's own range."""
    return torch.stack([h.constrain(u[..., i]) for i, h in enumerate(hypers)], dim=-1)


def perturb(u: torch.Tensor, scale: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """n draws of u + softplus(scale)·ε, (n, H); differentiable in u and scale."""
    eps = torch.randn((n, u.shape[0]), generator=gen, dtype=u.dtype)
    return u + F.softplus(scale) * eps


def entropy(scale: torch.Tensor) -> torch.Tensor:
    """Entropy of N(u, diag(softplus(scale)²))."""
    return torch.log(F.softplus(scale) * math.sqrt(2 * math.pi * math.e)).sum()


def inv_softplus(x: float) -> float:
    return x + math.log(-math.expm1(-x))
