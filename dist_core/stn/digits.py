"""Dropout rate and weight decay of an MLP on scikit-learn's digits, tuned by an STN.

    h_1 = ReLU(HL_1(x; u)),  h̃_1 = dropout(h_1; p_b) per example b,  logits = HL_2(h̃_1; u)
    L_T = mean_b CE_b + mean_b ½·wd_b·(‖W_1(u_b)‖² + ‖W_2(u_b)‖²)      (training batch, perturbed u_b)
    L_V = mean CE with no dropout and no weight decay                      (validation batch)

HL are hyper-linear layers (``layers.py``) whose gates read the unconstrained hyperparameters u.
Dropout's mask has no gradient in p; λ reaches L_V only through the gates: the STN best response.
A hyperparameter that is not tuned keeps its fixed value and is not an input of the gates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..bilevel import tree
from ..bilevel.problem import BilevelProblem
from . import hyper, layers

N_CLASSES = 10
DROPOUT = hyper.Hyper("dropout", "bounded", 0.0, 1.0)
WEIGHT_DECAY = hyper.Hyper("weight_decay", "log")


@dataclass(frozen=True)
class DigitsData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def make_data(n_train: int, n_val: int, seed: int) -> DigitsData:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = x.astype(np.float32), y.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    tr, va, te = order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]
    mean, std = x[tr].mean(0), x[tr].std(0) + 1.0  # training-split statistics; +1 tames blank pixels
    x = (x - mean) / std
    t = torch.from_numpy
    return DigitsData(t(x[tr]), t(y[tr]), t(x[va]), t(y[va]), t(x[te]), t(y[te]))


@dataclass(frozen=True)
class Task:
    """Which hyperparameters are tuned (in u's order) and the fixed values of the others."""

    tuned: tuple[hyper.Hyper, ...]
    fixed: dict[str, float]

    def values(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each hyperparameter per row of u (B, H) → {name: (B,)}; fixed ones broadcast."""
        out = {h.name: h.constrain(u[:, i]) for i, h in enumerate(self.tuned)}
        out.update({k: torch.full((u.shape[0],), v) for k, v in self.fixed.items()})
        return out


def init_phi(hidden: int, n_hyper: int, seed: int) -> tree.Params:
    gen = torch.Generator().manual_seed(seed)
    return {**layers.init("l1", 64, hidden, n_hyper, gen), **layers.init("l2", hidden, N_CLASSES, n_hyper, gen)}


def logits(phi: tree.Params, x: torch.Tensor, u: torch.Tensor, dropout: torch.Tensor | None = None,
           gen: torch.Generator | None = None) -> torch.Tensor:
    h = torch.relu(layers.forward(phi, "l1", x, u))
    if dropout is not None:
        keep = 1.0 - dropout[:, None]
        mask = (torch.rand(h.shape, generator=gen) < keep).to(h.dtype)
        h = h * mask / keep.clamp_min(1e-6)
    return layers.forward(phi, "l2", h, u)


def make_problem(task: Task, gen: torch.Generator) -> BilevelProblem:
    def lower(phi: tree.Params, u: torch.Tensor, batch: dict) -> torch.Tensor:
        lam = task.values(u)
        ce = F.cross_entropy(logits(phi, batch["x"], u, lam["dropout"], gen), batch["y"])
        sq = layers.weight_sq_norm(phi, "l1", u) + layers.weight_sq_norm(phi, "l2", u)
        return ce + (0.5 * lam["weight_decay"] * sq).mean()

    def upper(phi: tree.Params, u: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.cross_entropy(logits(phi, batch["x"], u), batch["y"])

    return BilevelProblem(lower=lower, upper=upper)


def evaluate(phi: tree.Params, u: torch.Tensor, data: DigitsData) -> dict[str, float]:
    """Validation loss/accuracy and test accuracy of the best response at u (no dropout)."""
    with torch.no_grad():
        val = logits(phi, data.x_val, u.expand(len(data.x_val), -1))
        test = logits(phi, data.x_test, u.expand(len(data.x_test), -1))
    return {"val_loss": float(F.cross_entropy(val, data.y_val)),
            "val_acc": float((val.argmax(-1) == data.y_val).float().mean()),
            "test_acc": float((test.argmax(-1) == data.y_test).float().mean())}


def sampler(x: torch.Tensor, y: torch.Tensor, batch: int, gen: torch.Generator):
    """A function drawing (batch dict, n) with replacement; n is also the number of u draws."""
    n = min(batch, len(y))

    def draw() -> tuple[dict, int]:
        idx = torch.randint(len(y), (n,), generator=gen)
        return {"x": x[idx], "y": y[idx]}, n

    return draw
