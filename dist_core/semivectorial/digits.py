"""The digits task of ``kind: semivectorial``: the multi-objective two-task network plus a validation split.

    f1(θ) = digit cross-entropy,  f2(θ) = "≥ 5" cross-entropy      on the training split (the lower level)
    f0(θ) = f1 + f2                                               on the validation split (the upper level)

Among the models that no other model beats on both training losses, the job looks for the one that
generalises best: a choice the lower level leaves open, which is what the upper level is for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..multiobjective import digits
from ..multiobjective.problem import MultiObjectiveProblem
from .solver import SemivectorialProblem


@dataclass(frozen=True)
class SplitData:
    train: digits.DigitsData  # x_train/y_train: the training split; x_test/y_test: the test split
    x_val: torch.Tensor
    y_val: torch.Tensor


def make_data(n_train: int, n_val: int, seed: int) -> SplitData:
    full = digits.make_data(n_train + n_val, seed)  # normalised with the statistics of train + validation
    train = digits.DigitsData(full.x_train[:n_train], full.y_train[:n_train], full.x_test, full.y_test)
    return SplitData(train, full.x_train[n_train:], full.y_train[n_train:])


def validation_loss(theta: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    val = {"x": batch["x_val"], "y": batch["y_val"]}
    return digits.digit_ce(theta, val) + digits.ge5_bce(theta, val)


def make_problem() -> SemivectorialProblem:
    return SemivectorialProblem(validation_loss, [digits.digit_ce, digits.ge5_bce])


def lower_problem() -> MultiObjectiveProblem:
    return MultiObjectiveProblem([digits.digit_ce, digits.ge5_bce])


def shards(data: SplitData, k: int, seed: int) -> list[Any]:
    """One shard per learner, each a fixed batch: its part of the training and of the validation split."""
    train = digits.shards(data.train, k, 0, seed)
    val = torch.tensor_split(torch.randperm(len(data.y_val), generator=torch.Generator().manual_seed(seed + 2)), k)
    return [{**part, "x_val": data.x_val[idx], "y_val": data.y_val[idx]} for part, idx in zip(train, val)]


@torch.no_grad()
def evaluate(theta: dict[str, torch.Tensor], data: SplitData) -> dict[str, float]:
    out = digits.evaluate(theta, data.train)
    out["val_f0"] = float(validation_loss(theta, {"x_val": data.x_val, "y_val": data.y_val}))
    out["test_f0"] = out["test_f1"] + out["test_f2"]  # f0 on data no run has seen
    return out
