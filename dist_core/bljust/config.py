"""The ``kind: bl_just`` job file: BL-JUST against supervised-only and pre-training + fine-tuning."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..kinds import SweepHooks
from ..specbase import JobBase, Strict


class DataSpec(Strict):
    dataset: Literal["digits"] = Field("digits", description="scikit-learn's 8×8 digits (ships inside scikit-learn)")
    labelled_fraction: float = Field(0.05, gt=0.0, le=1.0, description="share of the training images that keep "
                                                                         "their labels (the rest are unlabelled)")
    test_fraction: float = Field(0.3, gt=0.0, lt=1.0, description="share of all images held out for test accuracy")


class ModelSpec(Strict):
    hidden: int = Field(128, ge=1, description="width of the encoder's first layer")
    embed: int = Field(64, ge=1, description="width of the encoder's output (both heads read it)")
    proj: int = Field(32, ge=1, description="width of the contrastive head's output")


class UnsupervisedSpec(Strict):
    temperature: float = Field(0.2, gt=0.0, description="InfoNCE temperature τ")
    shift: int = Field(1, ge=0, le=3, description="largest translation (pixels) of a contrastive view")
    noise: float = Field(0.1, ge=0.0, description="standard deviation of a view's pixel noise")


class PhaseSpec(Strict):
    steps: int = Field(ge=0, description="optimizer steps in the phase")
    lr: float = Field(gt=0.0, description="Adam step size of the phase")


class RampSpec(Strict):
    gamma_init: float = Field(0.0, ge=0.0, description="γ at the start of the joint phase")
    gamma_max: float = Field(3.0, gt=0.0, description="γ after the ramp: θ steps on L_s + γ·L_u")
    ramp_steps: int = Field(200, ge=0, description="joint steps over which γ rises linearly to gamma_max")


class BLJustSpec(Strict):
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    unsupervised: UnsupervisedSpec = Field(default_factory=UnsupervisedSpec)
    warmup: PhaseSpec = Field(default_factory=lambda: PhaseSpec(steps=400, lr=3e-3),
                              description="unsupervised warm-up on L_u (θ, φ_u); the pre-training of the "
                                          "pretrain_finetune arm")
    joint: PhaseSpec = Field(default_factory=lambda: PhaseSpec(steps=300, lr=3e-3),
                             description="BL-JUST's penalty phase (θ on L_s + γL_u, each head on its own loss)")
    finetune: PhaseSpec = Field(default_factory=lambda: PhaseSpec(steps=50, lr=1e-3),
                                description="supervised fine-tuning on L_s (θ, φ_s), every arm")
    ramp: RampSpec = Field(default_factory=RampSpec)
    batch: int = Field(128, ge=2, description="unlabelled images per step (labelled: min(batch, labelled))")
    compare: bool = Field(True, description="also train the supervised and pretrain_finetune arms, same steps")
    eval_every: int = Field(50, ge=1, description="steps between test-accuracy records (and each arm's last step)")
    checkpoint_every: int = Field(100, ge=0, description="steps between checkpoints (0: none); resume continues "
                                                         "bit for bit")

    @model_validator(mode="after")
    def _ramp(self) -> "BLJustSpec":
        if self.ramp.gamma_init > self.ramp.gamma_max:
            raise ValueError(f"ramp.gamma_init ({self.ramp.gamma_init}) must be <= ramp.gamma_max "
                             f"({self.ramp.gamma_max})")
        if self.warmup.steps + self.joint.steps + self.finetune.steps == 0:
            raise ValueError("warmup, joint and finetune have 0 steps in all: nothing to train")
        return self

    def arms(self) -> list[str]:
        return ["bl_just", "pretrain_finetune", "supervised"] if self.compare else ["bl_just"]

    def steps_per_arm(self) -> int:
        return self.warmup.steps + self.joint.steps + self.finetune.steps


class BLJustJob(JobBase):
    kind: Literal["bl_just"]
    bl_just: BLJustSpec = Field(default_factory=BLJustSpec)


SWEEP = SweepHooks(bundles=lambda job, trial_cpus: [{"CPU": max(trial_cpus, 1.0)}],
                   iterations=lambda job: len(job.bl_just.arms()) * -(-job.bl_just.steps_per_arm()
                                                                      // job.bl_just.eval_every),
                   is_report=lambda record: "test_acc" in record, restorable=True)
