"""Scenario 1 of the generative bilevel paper on a Gaussian toy where everything is closed form.

    p_data = N(0, I_d),   r2(u) = aᵀu (lower reward),   r1(u) = −‖u − c‖² (upper reward)
    lower:   p_λ      = argmin_p −E_p[r2] + λ KL(p‖p_data)       = N(a/λ, I)
    upper:   F(λ)     = −E_{p_λ}[r1] = ‖a/λ − c‖² + d,            minimised at λ* = ‖a‖²/aᵀc
    penalty: p_{λ,γ}  ∝ p_data · exp((r1/γ + r2)/λ)              = N(m, s²I), s² = 1/(1 + α), α = 2/(γλ)
             h_γ(λ)   = γ[−λ log E_{p_data} e^{(r1/γ + r2)/λ} + λ log E_{p_data} e^{r2/λ}]
             ∇h_γ(λ)  = γ[KL(p_{λ,γ}‖p_data) − KL(p_λ‖p_data)]     (envelope theorem: the paper's est2)

h_γ → F as γ → ∞. The reference code's ``est1`` (Monte-Carlo from p_data only) is not this
gradient; ``tests/test_entropy_toy.py`` shows the gap. Everything here is float64 and exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EntropyToy:
    a: torch.Tensor
    c: torch.Tensor

    @property
    def d(self) -> int:
        return self.a.numel()

    @property
    def lam_star(self) -> float:
        return float(self.a @ self.a / (self.a @ self.c))

    def upper(self, lam: float) -> float:
        """F(λ) = E_{p_λ} ‖u − c‖²."""
        return float(((self.a / lam - self.c) ** 2).sum()) + self.d

    def penalised_lower(self, lam: float, gamma: float) -> tuple[torch.Tensor, float]:
        """Mean and variance (per coordinate) of p_{λ,γ}."""
        alpha = 2.0 / (gamma * lam)
        var = 1.0 / (1.0 + alpha)
        mean = (self.a / lam + alpha * self.c) * var
        return mean, var

    def kl_to_data(self, mean: torch.Tensor, var: float) -> float:
        """KL(N(mean, var·I) ‖ N(0, I))."""
        d = self.d
        return 0.5 * (d * var + float(mean @ mean) - d - d * math.log(var))

    def penalty_value(self, lam: float, gamma: float) -> float:
        """h_γ(λ) in closed form, from E_{N(0,I)} exp(−(α/2)‖u‖² + bᵀu) = (1+α)^{−d/2} e^{‖b‖²/(2(1+α))}."""
        alpha = 2.0 / (gamma * lam)
        b = self.a / lam + alpha * self.c
        log_e_pen = -0.5 * self.d * math.log1p(alpha) + float(b @ b) / (2 * (1 + alpha)) - 0.5 * alpha * float(self.c @ self.c)
        log_e_low = float(self.a @ self.a) / (2 * lam**2)
        return gamma * (-lam * log_e_pen + lam * log_e_low)

    def penalty_gradient(self, lam: float, gamma: float) -> float:
        """γ[KL(p_{λ,γ}‖p_data) − KL(p_λ‖p_data)] (envelope theorem)."""
        mean, var = self.penalised_lower(lam, gamma)
        kl_pen = self.kl_to_data(mean, var)
        kl_low = self.kl_to_data(self.a / lam, 1.0)
        return gamma * (kl_pen - kl_low)


def make(d: int = 4, seed: int = 0) -> EntropyToy:
    """A random instance with aᵀc > 0, so that λ* is positive."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(d, generator=gen, dtype=torch.float64)
    c = a + 0.5 * torch.randn(d, generator=gen, dtype=torch.float64)
    return EntropyToy(a, c)


def optimise(toy: EntropyToy, lam0: float, gamma: float, lr: float, steps: int) -> list[float]:
    """Projected gradient descent on h_γ (λ stays positive), as in the paper's update."""
    lam, path = lam0, [lam0]
    for _ in range(steps):
        lam = max(lam - lr * toy.penalty_gradient(lam, gamma), 1e-6)
        path.append(lam)
    return path
