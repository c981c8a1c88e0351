"""The two-point zeroth-order gradient estimate the paper uses for its sample-quality objective.

    ĝ = mean_i [F(φ + δu_i) − F(φ − δu_i)] / (2δ) · u_i,   u_i ~ N(0, I)

E[ĝ] = ∇F(φ) + O(δ²) for smooth F; the paper takes one direction (δ = 0.01), which is very noisy.
"""

from __future__ import annotations

from typing import Callable

import torch


def two_point(F: Callable[[torch.Tensor], torch.Tensor], phi: torch.Tensor, delta: float, directions: int,
              gen: torch.Generator) -> torch.Tensor:
    total = torch.zeros_like(phi)
    for _ in range(directions):
        u = torch.randn(phi.shape, generator=gen, dtype=phi.dtype)
        total += (F(phi + delta * u) - F(phi - delta * u)) / (2 * delta) * u
    return total / directions
