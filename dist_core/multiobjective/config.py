"""The ``kind: multiobjective`` job file: a two-task network on digits, FERERO along several rays."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from ..specbase import JobBase, ResourcesSpec, Strict
from .rays import check_preference

N_OBJECTIVES = 2  # the digits task: 10-class cross-entropy, "≥ 5" binary cross-entropy


def _ray(value: list[float]) -> list[float]:
    return check_preference(value, N_OBJECTIVES)


Preference = Annotated[list[float], AfterValidator(_ray)]


class DataSpec(Strict):
    dataset: Literal["digits"] = Field("digits", description="scikit-learn's 8×8 digits (ships inside scikit-learn)")
    n_train: int = Field(1200, ge=20, le=1700, description="training examples; the other digits are the test split")


class ModelSpec(Strict):
    hidden: int = Field(4, ge=1, description="tanh units of the shared trunk; a narrow trunk makes the tasks compete")


class DualSpec(Strict):
    lr: float | None = Field(None, gt=0.0, description="γ of the projected steps on the dual; null: 1/L, L the "
                                                       "largest eigenvalue of the dual's Hessian (scale-free)")
    iters: int = Field(250, ge=1, description="method ferero: at most this many dual steps per step")
    tol: float = Field(1e-5, ge=0.0, description="method ferero: stop the dual when ‖Δλ‖₁ < tol")
    h_scale: float = Field(1.0, ge=0.0, description="κ in λ_h ← λ_h − γ(B_h G λ − κ B_h F): the pull towards the ray")
    steps: int = Field(1, ge=1, description="method ferero_single: dual steps per batch, the dual warm-started")
    normalize: bool = Field(False, description="scale λ to Σ|λ_i| = 1 before the θ step (the reference's "
                                               "network training does)")


class MultiObjectiveSpec(Strict):
    task: Literal["digits"] = Field("digits", description="the built-in task: 10-class digit and \"is ≥ 5\" on one "
                                                          "trunk (f1, f2)")
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    preferences: list[Preference] = Field([[0.45, 0.55], [0.6, 0.4], [0.75, 0.25]], min_length=1,
                                          description="preference rays r = (r1, r2), entries ≥ 0: each ray is one "
                                                      "run that ends with F ∝ r")
    method: Literal["ferero", "ferero_single"] = Field("ferero", description="ferero: the dual solved each step; "
                                                       "ferero_single: a few dual steps per batch (stochastic)")
    steps: int = Field(300, ge=1, description="θ steps per ray")
    lr: float = Field(0.5, gt=0.0, description="η of θ ← θ + η·d")
    batch_size: int = Field(0, ge=0, description="examples per step over all learners; 0: the full training split")
    dual: DualSpec = Field(default_factory=DualSpec)
    learners: int = Field(2, ge=1, le=64, description="K shard-learner actors; each computes both gradients on its shard")
    backend: Literal["ray", "local"] = Field("ray", description="ray: learners are Ray actors; local: the same "
                                                                "learners in one process")
    scalarisation: int = Field(5, ge=0, description="linear-scalarisation runs (weights spread over (0, 1)) that "
                                                    "trace the front for the plot; 0: none")
    eval_every: int = Field(25, ge=1, description="steps between records with the full-split losses and test "
                                                  "accuracies (and the last step)")
    checkpoint_every: int = Field(100, ge=0, description="steps between checkpoints within a run, and one at the end "
                                                         "of every run (0: only those)")
    max_restarts: int = Field(1, ge=0, description="replacements of a dead learner actor before failing")


class MultiObjectiveResources(ResourcesSpec):
    cpus_per_learner: float = Field(1.0, gt=0, description="CPUs reserved by each shard-learner actor")


class MultiObjectiveJob(JobBase):
    kind: Literal["multiobjective"]
    resources: MultiObjectiveResources = Field(default_factory=MultiObjectiveResources)
    multiobjective: MultiObjectiveSpec = Field(default_factory=MultiObjectiveSpec)
