"""The ``kind: diffusion_schedule`` job file: a ring of Gaussians, a small DDPM, and a schedule ψ that is
either learnt by the bilevel update (``method: bilevel``) or held fixed at ``psi0`` (``method: fixed``,
one black-box trial of a schedule search)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..kinds import SweepHooks
from ..specbase import JobBase, Strict


class RingSpec(Strict):
    modes: int = Field(8, ge=1, description="Gaussians on the ring")
    radius: float = Field(2.0, gt=0.0, description="radius of the ring")
    std: float = Field(0.15, gt=0.0, description="standard deviation of each Gaussian")


class ScheduleBilevelSpec(Strict):
    """``method: bilevel``: per outer step, y_steps + z_steps lower steps and one ψ step."""

    outer_steps: int = Field(100, ge=1, description="ψ steps after the warm-up")
    y_steps: int = Field(20, ge=1, description="DDPM steps on θ_y per outer step")
    z_steps: int = Field(5, ge=1, description="steps on θ_z (f/γ + g) per outer step")
    gamma: float = Field(1.0, gt=0.0, description="penalty γ of the two-copy update (f/γ + g)")
    lr_psi: float = Field(0.02, gt=0.0, description="step size on ψ")
    warmup_steps: int = Field(500, ge=0, description="DDPM steps under psi0 before ψ starts to move")
    eval_every: int = Field(10, ge=1, description="outer steps between held-out evaluations (energy_distance, "
                                                  "sample_nll in that step's record; also at checkpoints and the "
                                                  "last step): a sweep's reports")
    checkpoint_every: int = Field(20, ge=0, description="outer steps between checkpoints, and one at the end "
                                                        "(0: none); resume continues bit for bit")


class FixedSpec(Strict):
    """``method: fixed``: a DDPM trained from scratch under ψ = psi0 (the black-box baselines' trial)."""

    budget: int = Field(3000, ge=1, description="lower steps (DDPM training steps); 3000 is what the default "
                                                "bilevel job spends (500 + 100 × 25)")
    eval_every: int = Field(100, ge=1, description="lower steps between records (mean training loss since the "
                                                   "last, held-out energy_distance and sample_nll; also at "
                                                   "checkpoints and the last step): a sweep's reports")
    checkpoint_every: int = Field(1000, ge=0, description="lower steps between checkpoints, and one at the end "
                                                          "(0: none); resume continues bit for bit")


class DiffusionSpec(Strict):
    data: RingSpec = Field(default_factory=RingSpec)
    T: int = Field(100, ge=2, description="diffusion timesteps")
    ddim_steps: int = Field(10, ge=1, description="DDIM sampling steps for the upper objective")
    hidden: int = Field(64, ge=4, description="width of the MLP ε-predictor")
    batch: int = Field(256, ge=8, description="DDPM training batch")
    lr: float = Field(2e-3, gt=0.0, description="DDPM (θ) learning rate")
    psi0: list[float] = Field([0.0, 1.0, 1.0, 0.008], min_length=4, max_length=4,
                              description="(s, e, τ, ε); (0, 1, 1, 0.008) is the cosine schedule. bilevel: the "
                                          "start of ψ; fixed: ψ itself")
    method: Literal["bilevel", "fixed"] = Field("bilevel", description="bilevel: learn ψ (section bilevel); "
                                                "fixed: train under ψ = psi0 (section fixed)")
    bilevel: ScheduleBilevelSpec = Field(default_factory=ScheduleBilevelSpec)
    fixed: FixedSpec = Field(default_factory=FixedSpec)
    compare_cosine: bool = Field(True, description="also train under the fixed cosine schedule, same lower steps")

    @field_validator("psi0")
    @classmethod
    def _feasible(cls, psi0: list[float]) -> list[float]:
        s, e, tau, eps = psi0
        if not (0.0 <= s < e <= 1.0 and tau > 0 and 0 < eps <= 1):
            raise ValueError(f"needs 0 <= s < e <= 1, tau > 0, 0 < eps <= 1, got {psi0}")
        return psi0

    @model_validator(mode="after")
    def _steps(self) -> "DiffusionSpec":
        if self.ddim_steps > self.T:
            raise ValueError(f"ddim_steps ({self.ddim_steps}) must be <= T ({self.T})")
        return self

    def evaluated_steps(self) -> list[int]:
        """The steps (outer for bilevel, lower for fixed) whose records carry the held-out metrics."""
        if self.method == "fixed":
            return marked_steps(self.fixed.budget, self.fixed.eval_every, self.fixed.checkpoint_every)
        b = self.bilevel
        return marked_steps(b.outer_steps, b.eval_every, b.checkpoint_every)


class DiffusionJob(JobBase):
    kind: Literal["diffusion_schedule"]
    diffusion: DiffusionSpec = Field(default_factory=DiffusionSpec)


def marked_steps(total: int, *every: int) -> list[int]:
    """Steps 1..total that are a multiple of any non-zero ``every``, and always ``total``.

    Checkpoints are taken only at evaluated steps, so each checkpoint rides on a report that
    carries the sweep's metric (``search/trainable.py``'s ``TuneReporter``)."""
    marks = {total}
    for n in every:
        if n > 0:
            marks.update(range(n, total + 1, n))
    return sorted(marks)


SWEEP = SweepHooks(bundles=lambda job, trial_cpus: [{"CPU": max(trial_cpus, 1.0)}],
                   iterations=lambda job: len(job.diffusion.evaluated_steps()),
                   is_report=lambda record: "energy_distance" in record, restorable=True)
