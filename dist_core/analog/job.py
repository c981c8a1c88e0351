"""``kind: analog_pipeline``: an MLP on digits cut into S stage actors, sync vs async schedules.

Each epoch is one plan (the pipeline drains between epochs, so an asynchronous epoch of N
micro-batches has density just under N/(N + S − 1)). Reports loss and accuracy against samples
and against clock cycles (one cycle per stage-step), plus wall time.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from .. import plots
from ..bilevel.job import JobResult
from ..runs import RunDir
from ..spec import AnalogPipelineJob
from . import devices
from .pipeline import Stage, execute, split_layers
from .pipeline_schedule import asynchronous, synchronous


def load_digits(seed: int):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0 - 0.5).astype(np.float64)
    order = np.random.default_rng(seed).permutation(len(x))
    tr, te = order[:1400], order[1400:]
    return x[tr], y[tr], x[te], y[te]


def evaluate(weights: list[list[tuple[np.ndarray, np.ndarray]]], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    layers = [pair for stage in weights for pair in stage]
    h = torch.as_tensor(x)
    for j, (w, b) in enumerate(layers):
        h = h @ torch.tensor(w).T + torch.tensor(b)  # copies: arrays from Ray are read-only
        if j < len(layers) - 1:
            h = torch.relu(h)
    yt = torch.as_tensor(y)
    return float(F.cross_entropy(h, yt)), float((h.argmax(-1) == yt).double().mean())


def run(job: AnalogPipelineJob, run_dir: RunDir, resume: bool = False, progress: bool = True) -> JobResult:
    import ray
    from tqdm.auto import tqdm

    a = job.analog
    xtr, ytr, xte, yte = load_digits(job.seed)
    sizes = [64, *a.hidden, 10]
    per_epoch = len(xtr) // (a.micro_batch * a.micro_batches) * a.micro_batches  # whole mini-batches
    metrics, curves = {}, {}
    for schedule in a.schedules:
        sync = schedule == "sync"
        device = devices.make(a.device.name, seed=job.seed, **a.device.params) if a.device else None
        groups = split_layers(sizes, a.stages, seed=job.seed)
        args = [(g, i == a.stages - 1, a.lr, sync, a.micro_batches, device) for i, g in enumerate(groups)]
        if a.backend == "ray":
            actor = ray.remote(num_cpus=0)(Stage)
            stages = [actor.remote(*arg, threads=1) for arg in args]
        else:
            stages = [Stage(*arg) for arg in args]
        rng = np.random.default_rng(job.seed)
        samples = cycles = busy = 0
        wall = 0.0
        curve = []
        for epoch in tqdm(range(a.epochs), desc=f"{schedule} epochs", disable=not progress, leave=False):
            order = rng.permutation(len(xtr))[: per_epoch * a.micro_batch]
            xs = [xtr[order[i : i + a.micro_batch]] for i in range(0, len(order), a.micro_batch)]
            ys = [ytr[order[i : i + a.micro_batch]] for i in range(0, len(order), a.micro_batch)]
            plan = synchronous(a.stages, a.micro_batches, len(xs) // a.micro_batches) if sync else asynchronous(a.stages, len(xs))
            t0 = time.perf_counter()
            execute(plan, stages, xs, ys, remote=a.backend == "ray")
            wall += time.perf_counter() - t0
            samples += len(order)
            cycles += plan.cycles
            busy += plan.density * plan.stages * plan.cycles
            weights = ray.get([s.weights.remote() for s in stages]) if a.backend == "ray" else [s.weights() for s in stages]
            loss, acc = evaluate(weights, xte, yte)
            record = {"schedule": schedule, "epoch": epoch + 1, "samples": samples, "cycles": cycles,
                      "test_loss": loss, "test_acc": acc, "wall_s": wall}
            run_dir.log_metrics(record)
            curve.append(record)
        if a.backend == "ray":
            for s in stages:
                ray.kill(s)
        curves[schedule] = curve
        metrics[f"{schedule}_test_acc"] = curve[-1]["test_acc"]
        metrics[f"{schedule}_cycles"] = cycles
        metrics[f"{schedule}_density"] = busy / (a.stages * cycles)
        metrics[f"{schedule}_samples_per_s"] = samples / wall if wall else 0.0
    for xkey, label in (("samples", "samples seen"), ("cycles", "clock cycles")):
        series = [(name, [r[xkey] for r in c], [r["test_loss"] for r in c]) for name, c in curves.items()]
        panels = [{"ylabel": "test loss", "xlabel": label, "series": series}]
        plots.curves(run_dir.plots / f"loss_vs_{xkey}.png", f"{job.name}: S={a.stages}", [], panels, markers=True)
    return JobResult(metrics, None, {"stages": a.stages, "device": a.device.name if a.device else "digital"})
