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

Both loops checkpoint to a ``state.Snapshot`` and continue from one bit for bit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch

from .config import marked_steps
from .ddpm import EpsMLP, ddim_sample, ddpm_loss, energy_distance
from .schedule import COSINE, project
from .state import Snapshot
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


def held_out(ev: Evaluator, model: EpsMLP, psi: torch.Tensor) -> dict[str, float]:
    """The held-out metrics a record carries: energy distance to ``ev``'s data, and the data's NLL of the samples."""
    with torch.no_grad():
        return {"energy_distance": float(ev.objective(model, psi)), "sample_nll": ev.nll(model, psi)}


OnRecord = Callable[[int, dict], None]
OnCheckpoint = Callable[[Snapshot], None]


def train_fixed(setup: Setup, psi: torch.Tensor, steps: int, seed: int, *, eval_every: int = 0,
                checkpoint_every: int = 0, evaluator: Evaluator | None = None, on_record: OnRecord | None = None,
                on_checkpoint: OnCheckpoint | None = None, resume_from: Snapshot | None = None) -> EpsMLP:
    """The black-box baselines' inner loop: a DDPM trained from scratch under a fixed ψ.

    With ``on_record``, a record ``{lower_steps, loss, [energy_distance, sample_nll]}`` at every
    step of ``marked_steps(steps, eval_every, checkpoint_every)`` (``loss``: the mean training loss
    since the previous record; the held-out metrics when ``evaluator`` is given). With
    ``on_checkpoint``, a ``Snapshot`` every ``checkpoint_every`` steps and at the end, after that
    step's record. ``resume_from`` continues one: the model, Adam and the data generator as they
    were, ψ as passed (a PBT exploit changes ψ and keeps the weights).
    """
    torch.manual_seed(seed)
    model = EpsMLP(setup.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=setup.lr)
    gen = torch.Generator().manual_seed(seed)
    psi = psi.detach()
    parts = {"models": {"model": model}, "optimizers": {"opt": opt}, "generators": {"data": gen}}
    start = 0
    if resume_from is not None:
        resume_from.restore(**parts)
        start = resume_from.step
    marks = set(marked_steps(steps, eval_every, checkpoint_every)) if on_record is not None else set()
    saves = set(marked_steps(steps, checkpoint_every)) if on_checkpoint is not None and checkpoint_every > 0 else set()
    loss_sum, count = 0.0, 0
    for n in range(start + 1, steps + 1):
        value = ddpm_loss(model, setup.ring.sample(setup.batch, gen), psi, setup.T, gen)
        opt.zero_grad()
        value.backward()
        opt.step()
        if marks:
            loss_sum, count = loss_sum + float(value.detach()), count + 1
        if n in marks:
            record = {"lower_steps": n, "loss": loss_sum / count}
            if evaluator is not None:
                record.update(held_out(evaluator, model, psi))
            on_record(n, record)
            loss_sum, count = 0.0, 0
        if n in saves:  # every save is also a record step: the running loss restarts here, so it needs no saving
            on_checkpoint(Snapshot.capture("fixed", n, n, **parts, meta={"psi": [float(v) for v in psi]}))
    return model


@dataclass
class BilevelConfig:
    outer_steps: int = 100
    y_steps: int = 10
    z_steps: int = 2
    gamma: float = 1.0
    lr_psi: float = 0.02
    warmup_steps: int = 500  # θ_y steps under the initial ψ before ψ moves (the paper's warm-up epochs)
    eval_every: int = 0  # outer steps between held-out evaluations in the records (0: only with checkpoints/the end)
    checkpoint_every: int = 0  # outer steps between snapshots (0: none)


def learn_schedule(setup: Setup, cfg: BilevelConfig, seed: int, psi0: tuple[float, ...] = COSINE,
                   on_step: OnRecord | None = None, *, evaluator: Evaluator | None = None,
                   on_checkpoint: OnCheckpoint | None = None,
                   resume_from: Snapshot | None = None) -> tuple[torch.Tensor, EpsMLP, list[dict]]:
    """Run the outer steps; returns ψ, θ_y and the records of the steps this call ran.

    Records at ``marked_steps(outer_steps, eval_every, checkpoint_every)`` also carry
    ``held_out(evaluator, θ_y, ψ)`` when ``evaluator`` is given. ``on_checkpoint`` gets a
    ``Snapshot`` (ψ, θ_y, both Adam states, the data generator, the global RNG, the counters) every
    ``checkpoint_every`` outer steps and at the end; ``resume_from`` continues from one exactly
    (the warm-up is inside it; the upper-level Evaluator is rebuilt from ``seed``).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    upper = Evaluator.make(setup, setup.n_upper, seed=seed + 1)
    psi = torch.tensor(psi0, dtype=torch.float64)
    model_y = EpsMLP(setup.hidden)
    opt_y = torch.optim.Adam(model_y.parameters(), lr=setup.lr)
    psi_param = psi.clone().requires_grad_(True)
    opt_psi = torch.optim.Adam([psi_param], lr=cfg.lr_psi)
    parts = {"models": {"y": model_y}, "optimizers": {"y": opt_y, "psi": opt_psi}, "generators": {"data": gen}}

    def g(model: EpsMLP, p: torch.Tensor, g_gen: torch.Generator) -> torch.Tensor:
        return ddpm_loss(model, setup.ring.sample(setup.batch, g_gen), p, setup.T, g_gen)

    if resume_from is None:
        descend(opt_y, lambda: g(model_y, psi, gen), cfg.warmup_steps)
        start, steps = 0, cfg.warmup_steps
    else:
        tensors = resume_from.restore(**parts)
        with torch.no_grad():
            psi_param.copy_(tensors["psi"])
        start, steps = resume_from.step, resume_from.lower_steps

    marks = set(marked_steps(cfg.outer_steps, cfg.eval_every, cfg.checkpoint_every)) if evaluator is not None else set()
    saves = set(marked_steps(cfg.outer_steps, cfg.checkpoint_every)) if on_checkpoint is not None and cfg.checkpoint_every > 0 else set()
    history = []
    for k in range(start, cfg.outer_steps):
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
        if k + 1 in marks:
            record.update(held_out(evaluator, model_y, psi_param.detach()))
        history.append(record)
        if on_step is not None:
            on_step(k + 1, record)
        if k + 1 in saves:
            on_checkpoint(Snapshot.capture("bilevel", k + 1, steps, **parts, tensors={"psi": psi_param.detach()}))
    return psi_param.detach(), model_y, history
