"""The 4-parameter noise-schedule family ψ = (s, e, τ, ε) of arXiv 2502.08808 (scenario 2).

With normalised time u = t/T and u' = s + (e − s)·u:

    f(u)  = clip(cos(((u' + ε)/(1 + ε))·π/2), 0, 1)^{2τ}
    ᾱ_t   = f(u_t)/f(u_0),      β_t = clip(1 − ᾱ_t/ᾱ_{t−1}, 0, 0.999)

ψ = (0, 1, 1, 0.008) is the Nichol–Dhariwal cosine schedule. Everything is torch, so ᾱ is
differentiable in ψ.
"""

from __future__ import annotations

import math

import torch

COSINE = (0.0, 1.0, 1.0, 0.008)
BETA_MAX = 0.999
# Feasible set, as the reference code clamps it: s∈[0,1], e∈[s,1], τ∈[1e-2,1e6], ε∈[1e-4,1].
TAU_MIN, EPS_MIN = 1e-2, 1e-4


def _f(u: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    s, e, tau, eps = psi[0], psi[1], psi[2], psi[3]
    u_prime = s + (e - s) * u
    c = torch.cos((u_prime + eps) / (1 + eps) * math.pi / 2).clamp(min=1e-12, max=1.0)
    return c ** (2 * tau)


def alphas_bar(psi: torch.Tensor, T: int) -> torch.Tensor:
    """ᾱ_0..ᾱ_T (ᾱ_0 = 1), with β clipped to 0.999 as in the cosine schedule."""
    u = torch.arange(T + 1, dtype=psi.dtype) / T
    ratio = _f(u[1:], psi) / _f(u[:-1], psi)  # ᾱ_t/ᾱ_{t−1} before clipping
    alpha = ratio.clamp(min=1 - BETA_MAX, max=1.0)
    return torch.cat([torch.ones(1, dtype=psi.dtype), torch.cumprod(alpha, 0)])


def betas(psi: torch.Tensor, T: int) -> torch.Tensor:
    ab = alphas_bar(psi, T)
    return 1 - ab[1:] / ab[:-1]


def project(psi: torch.Tensor) -> torch.Tensor:
    """Back into the feasible set after a gradient step."""
    s = psi[0].clamp(0.0, 1.0)
    e = torch.maximum(psi[1].clamp(0.0, 1.0), s + 1e-3).clamp(max=1.0)
    tau = psi[2].clamp(TAU_MIN, 1e6)
    eps = psi[3].clamp(EPS_MIN, 1.0)
    return torch.stack([s, e, tau, eps]).detach()
