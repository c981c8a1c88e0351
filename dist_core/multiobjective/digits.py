"""Two tasks sharing a trunk on scikit-learn's 8×8 digits.

    f1(θ) = CE(head_10(trunk(x)), y)              the 10-class digit
    f2(θ) = BCE(head_2(trunk(x)), [y ≥ 5])        "is it 5 or more"

The trunk is one tanh layer of ``hidden`` units; a narrow trunk (a few units) cannot serve both
heads fully, so the two losses trade off and the preference ray decides where the run ends.
θ is a flat dict of tensors, so the learners move it as numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .problem import MultiObjectiveProblem

N_CLASSES = 10
OBJECTIVES = ("digit_ce", "ge5_bce")


@dataclass(frozen=True)
class DigitsData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def make_data(n_train: int, seed: int) -> DigitsData:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32) / 16.0
    order = np.random.default_rng(seed).permutation(len(x))
    tr, te = order[:n_train], order[n_train:]
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-3  # statistics of the training split only
    x = (x - mean) / std
    t = torch.from_numpy
    return DigitsData(t(x[tr]), t(y[tr].astype(np.int64)), t(x[te]), t(y[te].astype(np.int64)))


def init_params(hidden: int, seed: int, n_features: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def layer(fan_in: int, fan_out: int) -> torch.Tensor:
        return torch.randn(fan_in, fan_out, generator=g) / fan_in ** 0.5

    return {"trunk.w": layer(n_features, hidden), "trunk.b": torch.zeros(hidden),
            "digit.w": layer(hidden, N_CLASSES), "digit.b": torch.zeros(N_CLASSES),
            "ge5.w": layer(hidden, 1), "ge5.b": torch.zeros(1)}


def _trunk(theta: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x @ theta["trunk.w"] + theta["trunk.b"])


def digit_ce(theta: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    h = _trunk(theta, batch["x"])
    return F.cross_entropy(h @ theta["digit.w"] + theta["digit.b"], batch["y"])


def ge5_bce(theta: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    h = _trunk(theta, batch["x"])
    logit = (h @ theta["ge5.w"] + theta["ge5.b"]).reshape(-1)
    return F.binary_cross_entropy_with_logits(logit, (batch["y"] >= 5).to(logit.dtype))


def make_problem(preference: list[float] | None) -> MultiObjectiveProblem:
    return MultiObjectiveProblem([digit_ce, ge5_bce], preference=preference)


def shards(data: DigitsData, k: int, batch_size: int, seed: int) -> list[Any]:
    """One shard per learner: a cycle of minibatches of ``batch_size // k`` (0: its whole shard every step).

    The order is drawn once from ``seed``, so step t's batches depend on t alone (resume replays them)."""
    order = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(seed + 1))
    parts = torch.tensor_split(order, k)
    out: list[Any] = []
    for idx in parts:
        if batch_size == 0:
            out.append({"x": data.x_train[idx], "y": data.y_train[idx]})
            continue
        per = max(1, batch_size // k)
        n = len(idx) // per  # whole batches only: every step's batch has the same size
        out.append([{"x": data.x_train[idx[i * per:(i + 1) * per]], "y": data.y_train[idx[i * per:(i + 1) * per]]}
                    for i in range(max(n, 1))])
    return out


@torch.no_grad()
def evaluate(theta: dict[str, torch.Tensor], data: DigitsData) -> dict[str, float]:
    """Both losses on the whole training split and on the held-out split, and the test accuracies."""
    out: dict[str, float] = {}
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        batch = {"x": x, "y": y}
        out[f"{split}_f1"] = float(digit_ce(theta, batch))
        out[f"{split}_f2"] = float(ge5_bce(theta, batch))
    h = _trunk(theta, data.x_test)
    out["test_acc_digit"] = float(((h @ theta["digit.w"] + theta["digit.b"]).argmax(1) == data.y_test).float().mean())
    ge5 = (h @ theta["ge5.w"] + theta["ge5.b"]).reshape(-1) > 0
    out["test_acc_ge5"] = float((ge5 == (data.y_test >= 5)).float().mean())
    return out
