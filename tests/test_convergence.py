"""Every estimator brings the quickstart's validation loss below a fixed threshold (betty-style).

In-process learners (the same code the actors run; ``test_actors`` checks they agree).
Start: 1.06; the unweighted noisy-label model at the same budget ends near 1.16.
"""

import pytest
import torch

from pathlib import Path

from dist_core import spec
from dist_core.bilevel import solve
from dist_core.bilevel.tasks import hyper_cleaning as hc

THRESHOLD = 0.35
ROUNDS = 40

METHODS = {
    "implicit_cg": dict(iters=20),
    "implicit_neumann": dict(iters=20, alpha=0.5),
    "unrolled": dict(steps=10, lr=0.5),
    "penalty": dict(gamma=10.0, steps=10, lr=0.5),
}


@pytest.fixture(scope="module")
def quickstart():
    job = spec.load(Path(__file__).resolve().parent.parent / "jobs" / "quickstart.yaml")
    b = job.bilevel
    data = hc.make_data(b.data.n_train, b.data.n_val, b.data.corruption, job.seed)
    return job, data, hc.make_problem(b.model.weight_decay)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_estimator_brings_validation_loss_below_threshold(quickstart, method):
    job, data, problem = quickstart
    b = job.bilevel
    k = b.lower.learners
    inner = b.lower.inner_steps // 2 if method == "unrolled" else b.lower.inner_steps
    result = solve(
        problem, [hc.init_model(64, b.model.hidden, job.seed + i) for i in range(k)],
        torch.full((b.data.n_train,), b.upper.init), hc.shards(data, k), {"x": data.x_val, "y": data.y_val},
        lower_learners=k, method=method, method_options=METHODS[method], rounds=ROUNDS,
        inner_steps=inner, inner_lr=b.lower.lr, upper_lr=b.upper.lr, backend="local",
    )
    assert result.history[0]["upper_loss"] > 1.0
    assert result.history[-1]["upper_loss"] < THRESHOLD
    flagged = hc.corruption_f1(result.lam, data.corrupted)
    assert flagged["corruption_f1"] > 0.6
