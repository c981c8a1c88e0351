"""Pipelined MLP stages: the synchronous plan equals autograd; actors equal one process."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dist_core.analog.pipeline import Stage, execute, split_layers
from dist_core.analog.pipeline_schedule import asynchronous, synchronous

SIZES = [8, 16, 12, 10, 5]


def data(micro_batches: int, size: int = 6, seed: int = 0):
    g = np.random.default_rng(seed)
    xs = [g.normal(size=(size, SIZES[0])) for _ in range(micro_batches)]
    ys = [g.integers(0, SIZES[-1], size=size) for _ in range(micro_batches)]
    return xs, ys


def make_stages(S, sync, B, lr=0.1):
    groups = split_layers(SIZES, S, seed=1)
    return [Stage(g, last=(i == S - 1), lr=lr, synchronous=sync, micro_batches=B) for i, g in enumerate(groups)]


def flat(stages):
    return [w for s in stages for pair in s.weights() for w in pair]


@pytest.mark.parametrize("S", [1, 2, 4])
def test_synchronous_step_equals_autograd(S):
    B, lr = 4, 0.1
    xs, ys = data(B)
    stages = make_stages(S, True, B, lr)
    execute(synchronous(S, B), stages, xs, ys, remote=False)

    layers = [l for g in split_layers(SIZES, S, seed=1) for l in g]
    params = [p.clone().requires_grad_(True) for l in layers for p in (l.weight, l.bias)]
    loss = 0.0
    for x, y in zip(xs, ys):
        h = torch.as_tensor(x)
        for j in range(len(layers)):
            h = h @ params[2 * j].T + params[2 * j + 1]
            if j < len(layers) - 1:
                h = torch.relu(h)
        loss = loss + F.cross_entropy(h, torch.as_tensor(y)) / B
    loss.backward()
    expected = [(p - lr * p.grad).detach().numpy() for p in params]
    for got, want in zip(flat(stages), expected):
        assert np.allclose(got, want, atol=1e-6, rtol=0)


def test_single_stage_asynchronous_is_sgd_per_micro_batch():
    B, lr = 5, 0.1
    xs, ys = data(B)
    a = make_stages(1, False, B, lr)
    execute(asynchronous(1, B), a, xs, ys, remote=False)
    b = make_stages(1, True, 1, lr)
    for m in range(B):
        execute(synchronous(1, 1), b, [xs[m]], [ys[m]], remote=False)
    for got, want in zip(flat(a), flat(b)):
        assert np.allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("sync", [True, False])
def test_actors_equal_one_process(ray_session, sync):
    S, B = 3, 6
    xs, ys = data(B, seed=2)
    plan = synchronous(S, B) if sync else asynchronous(S, B)
    local = make_stages(S, sync, B)
    execute(plan, local, xs, ys, remote=False)
    groups = split_layers(SIZES, S, seed=1)
    actor = ray_session.remote(num_cpus=0)(Stage)
    handles = [actor.remote(g, i == S - 1, 0.1, sync, B) for i, g in enumerate(groups)]
    execute(plan, handles, xs, ys, remote=True)
    remote_weights = [w for h in handles for pair in ray_session.get(h.weights.remote()) for w in pair]
    for got, want in zip(remote_weights, flat(local)):
        assert np.array_equal(got, want)


def test_more_stages_than_layers_is_an_error():
    with pytest.raises(ValueError, match=r"more stages \(5\) than layers \(4\)"):
        split_layers(SIZES, 5, seed=0)


def test_analog_pipeline_job_through_the_cli(tmp_path):
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(root / "launch.py"), "run", "jobs/aimc_pipeline.yaml", "--out", str(tmp_path),
                           "--set", "analog.epochs=1", "--no-progress"], capture_output=True, text=True, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = next(tmp_path.iterdir())
    m = json.loads((run_dir / "summary.json").read_text())["metrics"]
    assert m["sync_density"] == pytest.approx(4 / (4 + 3 - 1), abs=1e-12)  # B/(B+S-1), exactly
    assert m["async_density"] > 0.95 and m["async_cycles"] < m["sync_cycles"]
    assert m["sync_test_acc"] > 0.1 and m["async_test_acc"] > 0.1
    for png in ("loss_vs_samples.png", "loss_vs_cycles.png"):
        assert (run_dir / "plots" / png).read_bytes()[:4] == b"\x89PNG"


def test_asynchronous_plan_equals_explicit_stale_version_reference():
    """Each forward of micro-batch k at stage s uses that stage's weights after version(k, s)
    updates; each backward uses the current weights (after k updates) and the saved inputs.
    The reference keeps every stage's weight history and differentiates each layer with autograd."""
    S, N, lr = 3, 10, 0.1
    xs, ys = data(N, seed=5)
    plan = asynchronous(S, N)
    stages = make_stages(S, False, N, lr)
    execute(plan, stages, xs, ys, remote=False)

    groups = split_layers(SIZES, S, seed=1)
    hist = [[[(l.weight.clone(), l.bias.clone()) for l in g]] for g in groups]  # hist[s][version][layer]
    for k in range(N):
        saved, h = [], torch.as_tensor(xs[k])
        for s in range(S):
            params = hist[s][plan.version(k, s)]
            inputs = []
            for j, (w, b) in enumerate(params):
                inputs.append(h)
                h = h @ w.T + b
                if not (s == S - 1 and j == len(params) - 1):
                    h = torch.relu(h)
            saved.append(inputs)
        p = torch.softmax(h, -1)
        g = (p - F.one_hot(torch.as_tensor(ys[k]), SIZES[-1]).double()) / h.shape[0]
        for s in reversed(range(S)):
            current = hist[s][k]  # backward of micro-batch k follows exactly k updates of stage s
            new = list(current)
            for j in reversed(range(len(current))):
                w = current[j][0].clone().requires_grad_(True)
                b = current[j][1].clone().requires_grad_(True)
                x = saved[s][j].clone().requires_grad_(True)
                out = x @ w.T + b
                if not (s == S - 1 and j == len(current) - 1):
                    out = torch.relu(out)
                gw, gb, gx = torch.autograd.grad(out, [w, b, x], grad_outputs=g)
                new[j] = (current[j][0] - lr * gw, current[j][1] - lr * gb)
                g = gx
            hist[s].append(new)
    expected = [t.numpy() for s in range(S) for pair in hist[s][N] for t in pair]
    for got, want in zip(flat(stages), expected):
        assert np.allclose(got, want, atol=1e-6, rtol=0)
