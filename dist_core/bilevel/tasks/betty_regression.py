"""betty's regression test problem: per-feature L2 weights on logistic regression.

From betty's ``test/test_regression.py`` and ``examples/logistic_regression_hpo``: 1,000 points in
20 dimensions, labels from a random linear model with noise, split half/half, and

    g(θ, λ) = BCE(x_tr θ, y_tr) + ½ θᵀ diag(λ) θ           (θ ∈ R²⁰, reset to 0 every round)
    f(θ, λ) = BCE(x_val θ, y_val)                            (λ ∈ R²⁰, starts at 1, kept ≥ 1e-8)

betty's loop: 100 SGD steps (lr 0.1) on g from θ = 0, then one SGD step with momentum 0.9 (lr 1)
on λ and a clamp λ ≥ 1e-8; 2,000 lower steps = 20 rounds. Its bar: f at the last lower iterate
below 0.48 (betty checks darts, cg and neumann against it). ``run`` is that loop around any
estimator of the registry; betty's data are unseeded numpy draws, here the same draws are seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import estimators, tree
from ..problem import BilevelProblem, lower_gd_steps

DIM = 20
N = 1000
BAR = 0.48  # betty's threshold on the validation loss


@dataclass(frozen=True)
class RegressionData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def make_data(seed: int = 0, n: int = N, dim: int = DIM) -> RegressionData:
    """betty's draws in betty's order (w_gt, x, noise), then scikit-learn's 50/50 split.

    ``n`` and ``dim`` change the size (betty's: 1,000 × 20), for measuring cost at scale.
    """
    from sklearn.model_selection import train_test_split

    rng = np.random.RandomState(seed)
    w_gt = rng.randn(dim)
    x = rng.randn(n, dim)
    y = (x @ w_gt + 0.1 * rng.randn(n) > 0).astype(float)
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.5, random_state=seed)
    t = lambda a: torch.from_numpy(a).float()  # noqa: E731  (betty trains in float32)
    return RegressionData(t(x_tr), t(y_tr), t(x_va), t(y_va))


def make_problem() -> BilevelProblem:
    def lower(theta: torch.Tensor, lam: torch.Tensor, batch: tuple) -> torch.Tensor:
        x, y = batch
        return F.binary_cross_entropy_with_logits(x @ theta, y) + 0.5 * (lam * theta * theta).sum()

    def upper(theta: torch.Tensor, lam: torch.Tensor, batch: tuple) -> torch.Tensor:
        x, y = batch
        return F.binary_cross_entropy_with_logits(x @ theta, y)

    return BilevelProblem(lower=lower, upper=upper)


@dataclass(frozen=True)
class RegressionResult:
    val_loss: float  # f at the last round's lower iterate: betty's measured quantity
    lam: torch.Tensor
    history: list[float]  # f at each round's lower iterate


def run(
    method: str,
    options: dict[str, Any] | None = None,
    *,
    data: RegressionData | None = None,
    rounds: int = 20,
    inner_steps: int = 100,
    inner_lr: float = 0.1,
    upper_lr: float = 1.0,
    momentum: float = 0.9,
) -> RegressionResult:
    """betty's Engine loop for this problem, with ``method`` estimating dF/dλ each round.

    ``unrolled`` takes its inner steps itself (its ``steps`` replace ``inner_steps``, as betty's
    iterative problem unrolls its 100 steps); every other method sees θ after ``inner_steps``.
    """
    data = data or make_data()
    problem = make_problem()
    entry = estimators.get(method)
    opts = estimators.make_options(method, **(options or {}))
    lower_batch, upper_batch = (data.x_train, data.y_train), (data.x_val, data.y_val)
    dim = data.x_train.shape[1]
    lam = {"_": torch.ones(dim, requires_grad=True)}
    opt = torch.optim.SGD(list(lam.values()), lr=upper_lr, momentum=momentum)
    est_state: dict[str, tree.Params] = {}
    history = []
    for _ in range(rounds):
        theta = {"_": torch.zeros(dim)}  # betty's on_inner_loop_start: w.data.zero_()
        steps = 0 if method == "unrolled" else inner_steps
        theta = lower_gd_steps(problem, theta, lam, lower_batch, steps, inner_lr)
        est = entry.fn(problem, theta, lam, lower_batch, upper_batch, opts, est_state)
        theta = est.theta if est.theta is not None else theta
        est_state = est.state
        with torch.no_grad():
            history.append(float(problem.f(theta, lam, upper_batch)))
        opt.zero_grad()
        lam["_"].grad = est.grad["_"].clone()
        opt.step()
        with torch.no_grad():
            lam["_"].clamp_(min=1e-8)  # betty's param_callback
    return RegressionResult(history[-1], lam["_"].detach().clone(), history)
