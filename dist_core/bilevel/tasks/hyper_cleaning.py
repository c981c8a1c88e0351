"""Data hyper-cleaning on scikit-learn's digits (Franceschi et al., 2017; V-PBGD's benchmark).

The upper level learns one logit λ_i per training example; example i is weighted by
w_i = σ(λ_i), normalised to mean 1 within a shard, so uniform λ is exactly unweighted training:

    g(θ, λ) = Σ_i w_i CE(θ; x_i, ỹ_i) / Σ_i w_i + (wd/2)‖θ‖²      (noisy training labels ỹ)
    f(θ, λ) = mean_j CE(θ; x_j, y_j)                               (clean validation split)

An example whose weight σ(λ_i) ends below 0.5 is flagged as corrupted; λ starts at a positive
value so that nothing is flagged before the upper level has learned anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import tree
from ..problem import BilevelProblem

N_CLASSES = 10


@dataclass(frozen=True)
class CleaningData:
    x_train: torch.Tensor
    y_noisy: torch.Tensor
    corrupted: torch.Tensor  # bool mask of flipped labels
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_arrays(path: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels: scikit-learn's digits (shipped in the wheel), or a user's .npz (X, y)."""
    if path is None:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        return x.astype(np.float32) / 16.0, y.astype(np.int64)
    with np.load(path, allow_pickle=False) as z:
        return z["X"].astype(np.float32), z["y"].astype(np.int64)


def make_data(
    n_train: int, n_val: int, corruption: float, seed: int, path: str | None = None
) -> CleaningData:
    x, y = load_arrays(path)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    tr, va, te = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-3  # statistics from the training split only
    x = (x - mean) / std
    y_noisy = y[tr].copy()
    corrupted = rng.random(n_train) < corruption
    # A corrupted label moves to a different class, uniformly: symmetric noise.
    shift = rng.integers(1, N_CLASSES, size=n_train)
    y_noisy[corrupted] = (y_noisy[corrupted] + shift[corrupted]) % N_CLASSES
    t = torch.from_numpy
    return CleaningData(
        t(x[tr]), t(y_noisy), t(corrupted), t(x[va]), t(y[va]), t(x[te]), t(y[te])
    )


def shards(data: CleaningData, k: int) -> list[dict[str, torch.Tensor]]:
    """K contiguous shards of the training set; each carries its indices into λ."""
    idx = torch.arange(len(data.y_noisy))
    return [{"x": data.x_train[s], "y": data.y_noisy[s], "idx": s} for s in torch.tensor_split(idx, k)]


def init_model(n_in: int, hidden: int, seed: int) -> tree.Params:
    """Softmax regression when ``hidden == 0``, else one ReLU hidden layer."""
    gen = torch.Generator().manual_seed(seed)
    if hidden == 0:
        return {"w": torch.zeros(n_in, N_CLASSES), "b": torch.zeros(N_CLASSES)}
    return {
        "w1": torch.randn(n_in, hidden, generator=gen) * (2.0 / n_in) ** 0.5,
        "b1": torch.zeros(hidden),
        "w2": torch.randn(hidden, N_CLASSES, generator=gen) * (1.0 / hidden) ** 0.5,
        "b2": torch.zeros(N_CLASSES),
    }


def logits(theta: tree.Params, x: torch.Tensor) -> torch.Tensor:
    if "w" in theta:
        return x @ theta["w"] + theta["b"]
    return torch.relu(x @ theta["w1"] + theta["b1"]) @ theta["w2"] + theta["b2"]


def example_weights(lam: torch.Tensor) -> torch.Tensor:
    w = torch.sigmoid(lam)
    return w / w.mean()


def make_problem(weight_decay: float) -> BilevelProblem:
    def lower(theta: tree.Params, lam: torch.Tensor, batch: dict) -> torch.Tensor:
        ce = F.cross_entropy(logits(theta, batch["x"]), batch["y"], reduction="none")
        w = example_weights(lam[batch["idx"]])
        reg = sum((p * p).sum() for p in theta.values())
        return (w * ce).mean() + 0.5 * weight_decay * reg

    def upper(theta: tree.Params, lam: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.cross_entropy(logits(theta, batch["x"]), batch["y"])

    def evaluate(theta: tree.Params, lam: torch.Tensor, batch: dict) -> dict[str, float]:
        with torch.no_grad():
            val_loss = F.cross_entropy(logits(theta, batch["x_val"]), batch["y_val"])
            pred = logits(theta, batch["x_test"]).argmax(-1)
        return {"val_loss": float(val_loss), "test_acc": float((pred == batch["y_test"]).float().mean())}

    return BilevelProblem(lower=lower, upper=upper, evaluate=evaluate)


def eval_batch(data: CleaningData) -> dict[str, torch.Tensor]:
    return {"x_val": data.x_val, "y_val": data.y_val, "x_test": data.x_test, "y_test": data.y_test}


def corruption_f1(lam: torch.Tensor, corrupted: torch.Tensor) -> dict[str, float]:
    """F1 of 'σ(λ_i) < 0.5' as a detector of the flipped labels."""
    flagged = torch.sigmoid(lam) < 0.5
    tp = float((flagged & corrupted).sum())
    precision = tp / max(float(flagged.sum()), 1.0)
    recall = tp / max(float(corrupted.sum()), 1.0)
    f1 = 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)
    return {"corruption_f1": f1, "corruption_precision": precision, "corruption_recall": recall}
