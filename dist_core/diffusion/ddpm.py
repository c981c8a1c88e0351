"""A small DDPM: an MLP ε-predictor, its training loss, and a differentiable DDIM sampler.

The ε-prediction loss (Ho et al. 2020) for a schedule ψ:

    g(θ, ψ) = E_{t, x0, ε} ‖ε_θ(√ᾱ_t x0 + √(1−ᾱ_t) ε, t/T) − ε‖²

DDIM with η = 0 (Song et al. 2021) over ``steps`` evenly spaced timesteps is deterministic given
its starting noise, so a sample-quality objective is a differentiable function of θ and ψ.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .schedule import alphas_bar


class EpsMLP(nn.Module):
    def __init__(self, hidden: int = 128, freqs: int = 8):
        super().__init__()
        self.register_buffer("freqs", 2.0 ** torch.arange(freqs) * math.pi, persistent=False)
        self.net = nn.Sequential(
            nn.Linear(2 + 2 * freqs, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, 2),
        )

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        ang = u[:, None] * self.freqs[None]
        return self.net(torch.cat([x, ang.sin(), ang.cos()], 1))


def ddpm_loss(model: nn.Module, x0: torch.Tensor, psi: torch.Tensor, T: int, gen: torch.Generator) -> torch.Tensor:
    n = x0.shape[0]
    t = torch.randint(1, T + 1, (n,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    ab = alphas_bar(psi, T).float()[t][:, None]
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    return ((model(xt, t.float() / T) - noise) ** 2).mean()


def ddim_sample(model: nn.Module, psi: torch.Tensor, noise: torch.Tensor, T: int, steps: int,
                clip_x0: float | None = None) -> torch.Tensor:
    """x_T = noise → x_0 along ``steps`` timesteps T = τ_S > … > τ_1, then to ᾱ = 1.

    ``clip_x0`` clips each predicted x0 to the data's range (diffusers' ``clip_sample``): near
    ᾱ_T ≈ 0 (the cosine schedule has ᾱ_T ≈ 2e-7 at T = 100) the x0 prediction divides the
    model's ε error by √ᾱ_T, and without the clip one bad step ruins the sample.
    """
    ab = alphas_bar(psi, T).float()
    taus = torch.linspace(T, 0, steps + 1).round().long()
    x = noise
    for t, t_prev in zip(taus[:-1], taus[1:]):
        a_t, a_prev = ab[t], ab[t_prev]
        eps = model(x, torch.full((x.shape[0],), float(t) / T))
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt().clamp(min=1e-4)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """2E‖X−Y‖ − E‖X−X'‖ − E‖Y−Y'‖ ≥ 0, zero iff the laws agree (Székely & Rizzo)."""
    def mean_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # sqrt(d² + tiny): the zero self-distances would otherwise give NaN gradients
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return (d2 + 1e-12).sqrt().mean()

    return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)
