"""The shipped task: scikit-learn's 8×8 digits, a few labelled training images and many unlabelled.

A seeded permutation splits the 1,797 images into a test set (``test_fraction``) and a training
set; the first ``labelled_fraction`` of the training set keeps its labels, and every training
image (labelled ones included, labels unused) is unlabelled data for L_u.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SemiSupervised:
    x_unlabelled: torch.Tensor  # (N, 8, 8)
    x_labelled: torch.Tensor
    y_labelled: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def make_data(labelled_fraction: float, test_fraction: float, seed: int) -> SemiSupervised:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x.astype(np.float32) / 16.0).reshape(-1, 8, 8)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    n_lab = max(1, int(round(labelled_fraction * len(train))))
    lab = train[:n_lab]
    t = torch.from_numpy
    return SemiSupervised(t(x[train]), t(x[lab]), t(y[lab].astype(np.int64)), t(x[test]), t(y[test].astype(np.int64)))
