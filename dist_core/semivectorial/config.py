"""The ``kind: semivectorial`` job file: the two-task digits network, the Pareto model best on validation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..specbase import JobBase, ResourcesSpec, Strict


class DataSpec(Strict):
    dataset: Literal["digits"] = Field("digits", description="scikit-learn's 8×8 digits (ships inside scikit-learn)")
    n_train: int = Field(900, ge=20, description="training examples: f1 and f2, the lower level's objectives")
    n_val: int = Field(300, ge=10, description="validation examples: f0, the upper objective; n_train + n_val "
                                               "≤ 1,700, the rest is the test split")

    @model_validator(mode="after")
    def _fits(self) -> "DataSpec":
        if self.n_train + self.n_val > 1700:
            raise ValueError(f"n_train + n_val must be <= 1700 (digits has 1,797 images; the rest is the test "
                             f"split), got {self.n_train} + {self.n_val}")
        return self


class ModelSpec(Strict):
    hidden: int = Field(4, ge=1, description="tanh units of the shared trunk; a narrow trunk makes the tasks compete")


class PenaltySpec(Strict):
    gamma: float = Field(100.0, gt=0.0, description="γ in f0 + γ·v: the solution is within O(1/γ) of the "
                                                   "constrained optimum")
    ell: float = Field(1.0, gt=0.0, description="ℓ, the merit function's proximal weight")
    tau: float = Field(0.0, ge=0.0, description="τ of the softmin; v overestimates the exact merit by at most "
                                                "τ·log M (0: the exact merit)")
    lr: float = Field(0.02, gt=0.0, description="η of the x-step on f0 + γ·v (stable near 2/γ)")
    curvature: float = Field(1.0, gt=0.0, description="first L of the y-steps' majorisation (then backtracked)")
    y_steps: int = Field(1, ge=1, description="ascent steps on the merit's inner y per x-step")


class SemivectorialSpec(Strict):
    task: Literal["digits"] = Field("digits", description="10-class digit (f1) and \"is ≥ 5\" (f2) on one trunk; "
                                                          "f0 their summed cross-entropy on the validation split")
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    penalty: PenaltySpec = Field(default_factory=PenaltySpec)
    steps: int = Field(600, ge=1, description="x-steps of the penalty run, and of each scalarisation run")
    learners: int = Field(2, ge=1, le=64, description="K shard-learner actors; each evaluates f0, f1, f2 on its shard")
    backend: Literal["ray", "local"] = Field("ray", description="ray: learners are Ray actors; local: the same "
                                                                "learners in one process")
    scalarisation: int = Field(5, ge=0, description="linear-scalarisation runs (weights spread over (0, 1)) that "
                                                    "trace the front, each scored by f0; 0: none")
    scalarisation_lr: float = Field(0.5, gt=0.0, description="step size of the scalarisation runs")
    eval_every: int = Field(50, ge=1, description="steps between records with the full-split losses and test "
                                                  "accuracies (and the last step)")
    checkpoint_every: int = Field(100, ge=0, description="steps between checkpoints within a run, and one at the end "
                                                         "of every run (0: only those)")
    max_restarts: int = Field(1, ge=0, description="replacements of a dead learner actor before failing")


class SemivectorialResources(ResourcesSpec):
    cpus_per_learner: float = Field(1.0, gt=0, description="CPUs reserved by each shard-learner actor")


class SemivectorialJob(JobBase):
    kind: Literal["semivectorial"]
    resources: SemivectorialResources = Field(default_factory=SemivectorialResources)
    semivectorial: SemivectorialSpec = Field(default_factory=SemivectorialSpec)
