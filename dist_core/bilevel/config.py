"""The ``kind: bilevel`` job file: hyper-cleaning on digits, K lower learners, one estimator."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field

from ..kinds import SweepHooks
from ..specbase import JobBase, JobFile, ResourcesSpec, Strict


class DataSpec(Strict):
    dataset: Literal["digits"] = Field("digits", description="scikit-learn's 8×8 digits (ships inside scikit-learn)")
    path: JobFile | None = Field(None, description="a .npz with X (n, d) and y (n,) instead of digits")
    n_train: int = Field(1000, ge=10, description="training examples (the ones whose labels get flipped)")
    n_val: int = Field(300, ge=10, description="clean validation examples: the upper objective f")
    corruption: float = Field(0.4, ge=0.0, lt=1.0, description="share of training labels flipped")


class ModelSpec(Strict):
    hidden: int = Field(0, ge=0, description="0: softmax regression; >0: one ReLU hidden layer")
    weight_decay: float = Field(1e-2, ge=0.0, description="L2 penalty in the lower objective g")


class LowerSpec(Strict):
    learners: int = Field(2, ge=1, le=256, description="K lower-learner actors")
    inner_steps: int = Field(20, ge=0, description="T gradient steps on g per round")
    lr: float = Field(0.5, gt=0.0, description="step size of the lower learners' gradient steps on g")


class UpperSpec(Strict):
    optimizer: Literal["adam", "sgd"] = Field("adam", description="the upper learner's optimizer on λ")
    lr: float = Field(0.3, gt=0.0, description="step size of the upper optimizer on λ")
    init: float = Field(2.0, description="initial λ_i (σ(2) ≈ 0.88: nothing flagged at the start)")
    hypergradient: bool = Field(True, description="false: λ stays at init (the 'hypergradient off' arm)")


class ImplicitCG(Strict):
    name: Literal["implicit_cg"] = Field(description="implicit function theorem, v by conjugate gradient")
    iters: int = Field(20, ge=1, description="CG iterations for (∇²_θθ g) v = ∇_θ f")
    tol: float = Field(1e-10, ge=0.0, description="stop CG when ‖r‖² < tol · ‖∇_θ f‖²")
    damping: float = Field(0.0, ge=0.0,
                           description="δ: solve (∇²_θθ g + δI) v = ∇_θ f, for lower problems only convex")


class ImplicitNeumann(Strict):
    name: Literal["implicit_neumann"] = Field(description="implicit function theorem, v by a Neumann series")
    iters: int = Field(20, ge=0, description="K: terms of v ≈ α Σ_{j≤K} (I − α∇²_θθ g)^j ∇_θ f")
    alpha: float = Field(0.5, gt=0.0, description="α of the series; must be below 2/λ_max(∇²_θθ g)")


class Unrolled(Strict):
    name: Literal["unrolled"] = Field(description="reverse mode through the inner steps")
    steps: int = Field(10, ge=1, description="T inner steps differentiated through (they also train θ)")
    lr: float | None = Field(None, gt=0.0, description="default: bilevel.lower.lr")
    truncate: int | None = Field(None, ge=1, description="K: backpropagate through the last K steps only; null: all T")


class Penalty(Strict):
    name: Literal["penalty"] = Field(description="fully first-order value-function penalty")
    gamma: float = Field(10.0, gt=0.0, description="penalty weight γ; the bias falls as 1/γ")
    steps: int = Field(10, ge=0, description="steps on y ≈ argmin f/γ + g per round, warm-started across rounds")
    lr: float | None = Field(None, gt=0.0, description="default: bilevel.lower.lr")


class FiniteDifference(Strict):
    name: Literal["finite_difference"] = Field(
        description="first order: H⁻¹ ≈ I and a central difference of ∇_λ g along ∇_θ f (betty's darts)")
    alpha: float = Field(0.01, gt=0.0, description="r: the perturbation θ ± εv has length r, ε = r/‖∇_θ f‖")


class Sama(Strict):
    name: Literal["sama"] = Field(
        description="SAMA: finite_difference through the lower optimizer's step; the lower learners take "
                    "plain gradient steps, so the preconditioner is the identity here (betty's SGD case)")
    alpha: float = Field(1.0, gt=0.0, description="r: the perturbation θ ± εPv has length r, ε = r/‖P∇_θ f‖")


MethodSpec = Annotated[Union[ImplicitCG, ImplicitNeumann, Unrolled, Penalty, FiniteDifference, Sama],
                       Field(discriminator="name")]


class BilevelSpec(Strict):
    task: Literal["hyper_cleaning"] = Field("hyper_cleaning",
                                            description="the built-in task: one weight σ(λ_i) per training example")
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    lower: LowerSpec = Field(default_factory=LowerSpec)
    upper: UpperSpec = Field(default_factory=UpperSpec)
    method: MethodSpec = Field(default_factory=lambda: Penalty(name="penalty"))
    rounds: int = Field(150, ge=1, description="rounds: T lower steps, then one upper step")
    checkpoint_every: int = Field(25, ge=0, description="rounds between checkpoints; 0: none")
    max_restarts: int = Field(1, ge=0, description="recoveries from a dead actor before failing")
    backend: Literal["ray", "local"] = Field("ray", description="ray: learners are Ray actors; local: the same "
                                                                "learners in one process")
    round_loop: Literal["collective", "actor_calls"] = Field(
        "collective", description="backend ray: collective: the learners exchange parts by all-gather and run "
                                  "chunks of rounds without the driver; actor_calls: one actor call per hop per "
                                  "round (same numbers, more overhead)")
    baseline: bool = Field(True, description="also train on unweighted noisy labels, same budget")

    def method_options(self) -> dict[str, Any]:
        """The estimator's knobs, with unset step sizes defaulting to the lower learner's."""
        opts = self.method.model_dump(exclude={"name"})
        if "lr" in opts and opts["lr"] is None:
            opts["lr"] = self.lower.lr
        return opts


class BilevelResources(ResourcesSpec):
    cpus_per_learner: float = Field(1.0, gt=0, description="CPUs reserved by each lower-learner actor")
    placement: Literal["pack", "spread", "strict_spread"] = Field(
        "pack", description="pack: Ray's default scheduling; spread: one placement-group bundle per learner, on "
                            "different nodes where possible; strict_spread: a distinct node per learner or fail")


class BilevelJob(JobBase):
    kind: Literal["bilevel"]
    resources: BilevelResources = Field(default_factory=BilevelResources)
    bilevel: BilevelSpec = Field(default_factory=BilevelSpec)


def _trial_bundles(job: BilevelJob, trial_cpus: float) -> list[dict[str, float]]:
    """The trial's own driver plus one bundle per lower learner, so no trial waits on its siblings."""
    if job.bilevel.backend == "local":
        return [{"CPU": max(trial_cpus, 1.0)}]
    return [{"CPU": trial_cpus}] + [{"CPU": job.resources.cpus_per_learner}] * job.bilevel.lower.learners


SWEEP = SweepHooks(bundles=_trial_bundles, iterations=lambda job: job.bilevel.rounds,
                   is_report=lambda record: "round" in record, restorable=True)
