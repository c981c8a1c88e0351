"""Training a DDPM under a schedule ψ, and learning ψ by the F2SA-style two-copy bilevel update.

Lower level g(θ, ψ): the DDPM loss. Upper level f(θ, ψ): the energy distance between DDIM samples
(fixed starting noise) and held-out data, a consistent two-sample metric on this toy. Because the
toy's sampler is differentiable, the upper gradient here is exact (autograd through DDIM);
``zeroth_order.two_point`` is the paper's estimate and is tested against it.

Per outer step (paper §scenario 2, with γ the penalty weight):
    θ_y ← ``y_steps`` Adam steps on g(θ_y, ψ)
    θ_z ← θ_y, then ``z_steps`` Adam steps on f(θ_z, ψ)/γ + g(θ_z, ψ)
    ψ   ← Π[ψ − η_ψ · Adam(∇_ψ f(θ_z, ψ)/γ + ∇_ψ g(θ_z, ψ) − ∇_ψ g(θ_y, ψ))]
Lower-level training steps counted: y_steps + z_steps per outer step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch

from .ddpm import EpsMLP, ddim_sample, ddpm_loss, energy_distance
from .schedule import COSINE, project
from .toy_data import Ring


@dataclass(frozen=True)
class Setup:
    ring: Ring = field(default_factory=Ring)
    T: int = 100
    ddim_steps: int = 10
    hidden: int = 64
    batch: int = 256
    lr: float = 2e-3
    n_upper: int = 256  # samples in the upper objective during training
    n_eval: int = 1000  # samples in the final evaluation (separate noise and data)
    clip_x0: float | None = 3.0  # 1.15 × the ring's extent, radius + 4·std = 2.6


@dataclass
class Evaluator:
    """Fixed noise and held-out data, so that F(θ, ψ) is a deterministic function."""

    noise: torch.Tensor
    data: torch.Tensor
    setup: Setup

    @classmethod
    def make(cls, setup: Setup, n: int, seed: int) -> "Evaluator":
        gen = torch.Generator().manual_seed(seed)
        return cls(torch.randn(n, 2, generator=gen), setup.ring.sample(n, gen), setup)

    def objective(self, model: EpsMLP, psi: torch.Tensor) -> torch.Tensor:
        x = ddim_sample(model, psi, self.noise, self.setup.T, self.setup.ddim_steps, self.setup.clip_x0)
        return energy_distance(x, self.data)

    def nll(self, model: EpsMLP, psi: torch.Tensor) -> float:
        with torch.no_grad():
            x = ddim_sample(model, psi, self.noise, self.setup.T, self.setup.ddim_steps, self.setup.clip_x0)
        return float(-self.setup.ring.log_prob(x).mean())


def final_evaluator(setup: Setup) -> Evaluator:
    return Evaluator.make(setup, setup.n_eval, seed=10_000)  # the same for every method and seed


def descend(opt: torch.optim.Optimizer, loss: Callable[[], torch.Tensor], steps: int) -> None:
    for _ in range(steps):
        value = loss()
        opt.zero_grad()
        value.backward()
        opt.step()


def train_fixed(setup: Setup, psi: torch.Tensor, steps: int, seed: int) -> EpsMLP:
    """The black-box baselines' inner loop: a DDPM trained from scratch under a fixed ψ."""
    torch.manual_seed(seed)
    model = EpsMLP(setup.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=setup.lr)
    gen = torch.Generator().manual_seed(seed)
    psi = psi.detach()
    descend(opt, lambda: ddpm_loss(model, setup.ring.sample(setup.batch, gen), psi, setup.T, gen), steps)
    return model


@dataclass
class BilevelConfig:
    outer_steps: int = 100
    y_steps: int = 10
    z_steps: int = 2
    gamma: float = 1.0
    lr_psi: float = 0.02
    warmup_steps: int = 500  # θ_y steps under the initial ψ before ψ moves (the paper's warm-up epochs)


def learn_schedule(setup: Setup, cfg: BilevelConfig, seed: int, psi0: tuple[float, ...] = COSINE,
                   on_step: Callable[[int, dict], None] | None = None) -> tuple[torch.Tensor, EpsMLP, list[dict]]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    upper = Evaluator.make(setup, setup.n_upper, seed=seed + 1)
    psi = torch.tensor(psi0, dtype=torch.float64)
    model_y = EpsMLP(setup.hidden)
    opt_y = torch.optim.Adam(model_y.parameters(), lr=setup.lr)
    psi_param = psi.clone().requires_grad_(True)
    opt_psi = torch.optim.Adam([psi_param], lr=cfg.lr_psi)

    def g(model: EpsMLP, p: torch.Tensor, g_gen: torch.Generator) -> torch.Tensor:
        return ddpm_loss(model, setup.ring.sample(setup.batch, g_gen), p, setup.T, g_gen)

    descend(opt_y, lambda: g(model_y, psi, gen), cfg.warmup_steps)

    history, steps = [], cfg.warmup_steps
    for k in range(cfg.outer_steps):
        psi = psi_param.detach()
        descend(opt_y, lambda: g(model_y, psi, gen), cfg.y_steps)
        model_z = copy.deepcopy(model_y)
        opt_z = torch.optim.Adam(model_z.parameters(), lr=setup.lr)
        descend(opt_z, lambda: upper.objective(model_z, psi) / cfg.gamma + g(model_z, psi, gen), cfg.z_steps)
        steps += cfg.y_steps + cfg.z_steps

        # ∇_ψ of f(θ_z)/γ + g(θ_z) − g(θ_y), on one shared batch so the g terms' noise cancels
        batch_seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
        p = psi_param
        f_z = upper.objective(model_z, p)
        gz = g(model_z, p, torch.Generator().manual_seed(batch_seed))
        gy = g(model_y, p, torch.Generator().manual_seed(batch_seed))
        opt_psi.zero_grad()
        (f_z / cfg.gamma + gz - gy).backward()
        opt_psi.step()
        with torch.no_grad():
            psi_param.copy_(project(psi_param))
        record = {"outer_step": k + 1, "lower_steps": steps, "upper": float(f_z.detach()),
                  **{name: float(v) for name, v in zip(("s", "e", "tau", "eps"), psi_param.detach())}}
        history.append(record)
        if on_step is not None:
            on_step(k + 1, record)
    return psi_param.detach(), model_y, history
