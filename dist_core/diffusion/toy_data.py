"""A 2-D Gaussian mixture with a known density (shipped as code, no download)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Ring:
    """``modes`` equal-weight Gaussians of std ``std`` on a circle of radius ``radius``."""

    modes: int = 8
    radius: float = 2.0
    std: float = 0.15

    def centers(self) -> torch.Tensor:
        a = torch.arange(self.modes, dtype=torch.float64) * 2 * math.pi / self.modes
        return self.radius * torch.stack([a.cos(), a.sin()], 1)

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(self.modes, (n,), generator=gen)
        x = self.centers()[idx] + self.std * torch.randn(n, 2, generator=gen, dtype=torch.float64)
        return x.float()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        d2 = ((x.double()[:, None, :] - self.centers()[None]) ** 2).sum(-1)
        log_comp = -d2 / (2 * self.std**2) - math.log(2 * math.pi * self.std**2)
        return torch.logsumexp(log_comp, 1) - math.log(self.modes)
