"""Which objective each step trains on: Sequential, Mix, ALRIGHT, MAXRIGHT (RESEARCH.md §1).

Pure decisions on numbers, no tensors or ranks: the trainer asks ``pick(step, epoch)`` for a
pair of weights (w_SFT, w_DPO) and feeds back losses; the toy test drives the same classes on two
quadratics. λ is the **DPO** weight throughout: the target is min (1−λ)·f_SFT + λ·f_DPO.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

SFT = (1.0, 0.0)
DPO = (0.0, 1.0)
Weights = tuple[float, float]


@dataclass
class Sequential:
    """SFT for the first ``sft_epochs`` epochs, then DPO (whose reference is the SFT result)."""

    sft_epochs: int

    def pick(self, step: int, epoch: int) -> Weights:
        return SFT if epoch < self.sft_epochs else DPO

    def observe(self, weights: Weights, sft: float | None, dpo: float | None) -> None:
        pass


@dataclass
class Mix:
    """One step on (1−λ)·f_SFT + λ·f_DPO: both objectives, two forward graphs, every step."""

    lam: float

    def pick(self, step: int, epoch: int) -> Weights:
        return (1.0 - self.lam, self.lam)

    def observe(self, weights: Weights, sft: float | None, dpo: float | None) -> None:
        pass


@dataclass
class Alright:
    """Each step a coin: DPO with probability λ, else SFT.

    The coin is a function of (seed, step), so a resumed run replays the same coins; the trainer
    still draws it on rank 0 and broadcasts it, so every rank provably steps on one objective.
    """

    lam: float
    seed: int = 0

    def coin(self, step: int) -> float:
        return float(np.random.default_rng([self.seed, step]).random())

    def pick(self, step: int, epoch: int) -> Weights:
        return DPO if self.coin(step) < self.lam else SFT

    def observe(self, weights: Weights, sft: float | None, dpo: float | None) -> None:
        pass


@dataclass
class Maxright:
    """Step on the objective with the larger *stale* weighted gap.

    ĝ_SFT = (1−λ)(f̂_SFT − f*_SFT), ĝ_DPO = λ(f̂_DPO − f*_DPO). After a step only the chosen
    objective's f̂ is refreshed, with its mini-batch loss from before the step; every
    ``eval_every`` steps both are re-evaluated (the trainer calls ``refresh``). Ties go to SFT.
    """

    lam: float
    opt_sft: float = 0.0
    opt_dpo: float = 0.0
    eval_every: int = 10
    stale: list[float] = field(default_factory=lambda: [float("nan"), float("nan")])

    def gaps(self) -> tuple[float, float]:
        return ((1.0 - self.lam) * (self.stale[0] - self.opt_sft), self.lam * (self.stale[1] - self.opt_dpo))

    def needs_refresh(self, step: int) -> bool:
        return any(np.isnan(self.stale)) or step % self.eval_every == 0

    def refresh(self, sft: float, dpo: float) -> None:
        self.stale = [float(sft), float(dpo)]

    def pick(self, step: int, epoch: int) -> Weights:
        g_sft, g_dpo = self.gaps()
        return DPO if g_dpo > g_sft else SFT

    def observe(self, weights: Weights, sft: float | None, dpo: float | None) -> None:
        if weights == SFT and sft is not None:
            self.stale[0] = float(sft)
        elif weights == DPO and dpo is not None:
            self.stale[1] = float(dpo)


Method = Sequential | Mix | Alright | Maxright


def sft_epochs_for(lam: float, epochs: int) -> int:
    """The paper's grid: T_SFT + T_DPO = epochs with T_DPO ≈ λ·epochs, each at least one epoch."""
    # floor(x + 1/2), not round(): Python rounds halves to even (λ = 0.5, 3 epochs would give 2 SFT epochs
    # but 5 epochs 2 as well).
    return int(min(max(math.floor((1.0 - lam) * epochs + 0.5), 1), epochs - 1))


def make(name: str, lam: float, epochs: int, seed: int = 0, opt_sft: float = 0.0, opt_dpo: float = 0.0,
         eval_every: int = 10, sft_epochs: int | None = None) -> Method:
    """A method by its job-file name; ``sft`` and ``dpo`` are Mix at λ = 0 and 1."""
    if name == "sft":
        return Mix(0.0)
    if name == "dpo":
        return Mix(1.0)
    if name == "mix":
        return Mix(lam)
    if name == "alright":
        return Alright(lam, seed)
    if name == "maxright":
        return Maxright(lam, opt_sft, opt_dpo, eval_every)
    if name == "sequential":
        return Sequential(sft_epochs if sft_epochs is not None else sft_epochs_for(lam, epochs))
    raise ValueError(f"unknown method {name!r}")
