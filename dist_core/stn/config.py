"""The ``kind: stn`` job file: a Self-Tuning Network learns the dropout rate and weight decay of an MLP."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..kinds import SweepHooks
from ..specbase import JobBase, Strict


class DataSpec(Strict):
    dataset: Literal["digits"] = Field("digits", description="scikit-learn's 8×8 digits (ships inside scikit-learn)")
    n_train: int = Field(200, ge=10, description="training examples (L_T); few, so regularisation matters")
    n_val: int = Field(300, ge=10, description="validation examples (L_V, the hyperparameters' objective)")


class DropoutSpec(Strict):
    init: float = Field(0.05, ge=0.0, lt=1.0, description="starting dropout rate of the hidden layer")
    tune: bool = Field(True, description="false: fixed at init")


class WeightDecaySpec(Strict):
    init: float = Field(1e-4, gt=0.0, description="starting weight decay (the penalty is ½·wd·‖W‖²)")
    tune: bool = Field(True, description="false: fixed at init")


class HyperSpec(Strict):
    dropout: DropoutSpec = Field(default_factory=DropoutSpec)
    weight_decay: WeightDecaySpec = Field(default_factory=WeightDecaySpec)


class STNSpec(Strict):
    data: DataSpec = Field(default_factory=DataSpec)
    hidden: int = Field(64, ge=1, description="width of the hidden hyper-linear layer")
    hyper: HyperSpec = Field(default_factory=HyperSpec)
    steps: int = Field(400, ge=1, description="cycles (train_steps φ-steps + valid_steps λ-steps each), "
                                              "warm-up included")
    warmup_steps: int = Field(100, ge=0, description="cycles of φ-steps only before λ moves")
    train_steps: int = Field(2, ge=1, description="φ-steps per cycle on the training loss at perturbed λ")
    valid_steps: int = Field(1, ge=1, description="λ/σ-steps per cycle on the validation loss")
    lr_phi: float = Field(0.02, gt=0.0, description="SGD step size on φ (the hypernetwork)")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum on φ")
    lr_lam: float = Field(0.03, gt=0.0, description="Adam step size on the unconstrained hyperparameters")
    lr_scale: float = Field(0.03, ge=0.0, description="Adam step size on the perturbation scales")
    perturb_scale: float = Field(0.5, gt=0.0, description="initial σ of the perturbation (unconstrained units)")
    entropy_weight: float = Field(1e-3, ge=0.0, description="τ of the entropy bonus −τ·H[p(ε|σ)]")
    tune_scales: bool = Field(True, description="learn σ in the validation step (false: σ stays fixed)")
    batch: int = Field(64, ge=2, description="examples per step (each with its own perturbed λ)")
    eval_every: int = Field(20, ge=1, description="cycles between full validation/test evaluations")
    checkpoint_every: int = Field(100, ge=0, description="cycles between checkpoints (0: none); resume "
                                                         "continues bit for bit")

    @model_validator(mode="after")
    def _something_tuned(self) -> "STNSpec":
        if not (self.hyper.dropout.tune or self.hyper.weight_decay.tune):
            raise ValueError("hyper: nothing to tune (set dropout.tune or weight_decay.tune to true)")
        return self


class STNJob(JobBase):
    kind: Literal["stn"]
    stn: STNSpec = Field(default_factory=STNSpec)


SWEEP = SweepHooks(bundles=lambda job, trial_cpus: [{"CPU": max(trial_cpus, 1.0)}],
                   iterations=lambda job: -(-job.stn.steps // job.stn.eval_every),
                   is_report=lambda record: "val_loss" in record, restorable=True)
