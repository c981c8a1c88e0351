"""``kind: analog_pipeline``: an MLP on digits cut into S stage actors, sync vs async schedules.

Each epoch is one plan (the pipeline drains between epochs, so an asynchronous epoch of N
micro-batches has density just under N/(N + S − 1)). Reports loss and accuracy against samples
and against clock cycles (one cycle per stage-step), plus wall time.

Resume is per epoch and exact. After every epoch the run saves a RunDir checkpoint (step
``schedule index × epochs + epoch``): every stage's weights and biases (float64, as they are), the
schedule's counters (samples, cycles, busy stage-steps, wall time), its last record, and the
final metrics of the schedules already finished. Between epochs a stage has no other state: no
micro-batch is in flight, a synchronous stage's gradient accumulators are zero after the flush of
its last mini-batch (an epoch is whole mini-batches), and a device's only state is its per-weight
constants, drawn from the job's seed (the expected-increment update draws no noise). The epoch
orders are the seed's permutation stream, replayed for the epochs done. So ``resume`` starts the
checkpoint's schedule again at its next epoch with fresh stage actors, skips finished schedules,
drops the records past the checkpoint, and every record and final metric (wall-time ones aside)
equals an uninterrupted run's bit for bit. The async schedule is deterministic on Ray too: an
actor runs the calls of one caller in submission order, whatever order their inputs arrive in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import checkpoint as ckpt_io
from .. import plots
from ..errors import RunError
from ..placement import ActorPlacement
from ..runs import JobResult, Record, RunDir, RunHooks
from .config import AnalogPipelineJob
from . import devices
from .pipeline import Layer, Stage, execute, split_layers
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


@dataclass
class Position:
    """Where a run stands at an epoch boundary: what its checkpoint holds besides the weights."""

    schedule: int = 0  # index into the job's schedules
    epoch: int = 0  # epochs of that schedule done
    samples: int = 0
    cycles: int = 0
    busy: float = 0.0  # useful stage-steps (density × stages × cycles, summed over epochs)
    wall: float = 0.0  # seconds in the epochs' schedules, the stages already up
    startup: float = 0.0  # seconds from creating the stages to all of them answering (each start)
    steady_samples: int = 0  # samples and seconds of the epochs after each start's first (warm-up) epoch
    steady_wall: float = 0.0
    last: Record | None = None  # the schedule's last record
    done: dict[str, dict[str, float]] = field(default_factory=dict)  # finished schedule -> its metrics

    def step(self, epochs: int) -> int:
        return self.schedule * epochs + self.epoch

    def meta(self, epochs: int) -> dict[str, Any]:
        return {"round": self.step(epochs), "schedule": self.schedule, "epoch": self.epoch, "samples": self.samples,
                "cycles": self.cycles, "busy": self.busy, "wall": self.wall, "startup": self.startup,
                "steady_samples": self.steady_samples, "steady_wall": self.steady_wall, "last": self.last,
                "done": self.done}


def _throughput(pos: Position) -> float:
    """Steady-state samples/s: the epochs after each start's first; all epochs when there are no others."""
    if pos.steady_wall > 0:
        return pos.steady_samples / pos.steady_wall
    return pos.samples / pos.wall if pos.wall else 0.0


def record_step(record: Record, schedules: list[str], epochs: int) -> int | None:
    """A record's checkpoint step (``schedule index × epochs + epoch``); ``None`` for other records."""
    if record.get("schedule") not in schedules or "epoch" not in record:
        return None
    return schedules.index(record["schedule"]) * epochs + int(record["epoch"])


def _stage_tensors(weights: list[list[tuple[np.ndarray, np.ndarray]]]) -> dict[str, np.ndarray]:
    return {f"stage{i}/layer{j}/{name}": t for i, stage in enumerate(weights) for j, pair in enumerate(stage)
            for name, t in zip(("weight", "bias"), pair)}


def _restore(job: AnalogPipelineJob, run_dir: RunDir) -> tuple[Position, dict[str, np.ndarray]] | None:
    path = run_dir.latest_checkpoint()
    if path is None:
        return None
    tensors, meta = ckpt_io.load(path)
    a = job.analog
    if not (0 <= meta["schedule"] < len(a.schedules) and 0 < meta["epoch"] <= a.epochs):
        raise RunError(f"{path} is schedule {meta['schedule']} epoch {meta['epoch']}, outside this job's "
                       f"{len(a.schedules)} schedules × {a.epochs} epochs")
    fields = {k: meta[k] for k in ("schedule", "epoch", "samples", "cycles", "busy", "wall", "last", "done")}
    extra = {k: meta.get(k, 0) for k in ("startup", "steady_samples", "steady_wall")}  # older checkpoints lack them
    return Position(**fields, **extra), tensors


def _layers(job: AnalogPipelineJob, tensors: dict[str, np.ndarray] | None) -> list[list[Layer]]:
    """The stages' initial layers (from the seed), or a checkpoint's, checked against the job's shapes."""
    a = job.analog
    groups = split_layers([64, *a.hidden, 10], a.stages, seed=job.seed)
    if tensors is None:
        return groups
    out = []
    for i, group in enumerate(groups):
        stage = []
        for j, layer in enumerate(group):
            w, b = (tensors.get(f"stage{i}/layer{j}/{name}") for name in ("weight", "bias"))
            if w is None or b is None or w.shape != tuple(layer.weight.shape) or b.shape != tuple(layer.bias.shape):
                raise RunError(f"the checkpoint's stage {i} layer {j} does not match this job's network "
                               f"(hidden {a.hidden}, {a.stages} stages)")
            stage.append(Layer(torch.from_numpy(w.copy()), torch.from_numpy(b.copy())))
        out.append(stage)
    return out


def _start_stages(job: AnalogPipelineJob, args: list[tuple]) -> tuple[list[Any], ActorPlacement]:
    """One actor per stage, each in its own placement-group bundle when the job asks to spread them.

    Stages hold no CPU reservation (they wait on each other most of the time); a bundle needs a
    resource to exist, so each holds a token 0.01 CPU."""
    import ray

    where = ActorPlacement(job.resources.placement, len(args), {"CPU": 0.01})
    cls = ray.remote(num_cpus=0)(Stage)
    return [cls.options(**where.options(i)).remote(*arg, threads=1) for i, arg in enumerate(args)], where


def run(job: AnalogPipelineJob, run_dir: RunDir, hooks: RunHooks, resume: bool = False) -> JobResult:
    import ray
    from tqdm.auto import tqdm

    a = job.analog
    remote = a.backend == "ray"
    restored = _restore(job, run_dir) if resume else None
    at, tensors = restored or (Position(), None)
    if resume:  # keep the records up to the checkpoint (none without one); the rest are replayed
        last = at.step(a.epochs) if restored else 0
        run_dir.rewrite_metrics([r for r in run_dir.read_metrics()
                                 if (s := record_step(r, a.schedules, a.epochs)) is None or s <= last])
    xtr, ytr, xte, yte = load_digits(job.seed)
    per_epoch = len(xtr) // (a.micro_batch * a.micro_batches) * a.micro_batches  # whole mini-batches
    done = dict(at.done)
    nodes: dict[str, list[str]] = {}  # schedule -> the node of each stage (remote stages only)
    for si, schedule in enumerate(a.schedules):
        if schedule in done:
            continue
        pos = at if restored and at.schedule == si else Position(schedule=si, done=done)
        sync = schedule == "sync"
        device = devices.make(a.device.name, seed=job.seed, **a.device.params) if a.device else None
        groups = _layers(job, tensors if pos is at else None)
        args = [(g, i == a.stages - 1, a.lr, sync, a.micro_batches, device) for i, g in enumerate(groups)]
        t_up = time.perf_counter()
        stages, where = _start_stages(job, args) if remote else ([Stage(*arg) for arg in args], None)
        if remote:  # actors start asynchronously: wait, so that their start-up is not counted as training
            nodes[schedule] = ray.get([s.node.remote() for s in stages])
        pos.startup += time.perf_counter() - t_up
        rng = np.random.default_rng(job.seed)
        pos_start = pos.epoch
        for _ in range(pos.epoch):  # the epochs done drew these orders
            rng.permutation(len(xtr))
        for epoch in tqdm(range(pos.epoch, a.epochs), desc=f"{schedule} epochs", disable=not hooks.progress,
                          leave=False):
            order = rng.permutation(len(xtr))[: per_epoch * a.micro_batch]
            xs = [xtr[order[i : i + a.micro_batch]] for i in range(0, len(order), a.micro_batch)]
            ys = [ytr[order[i : i + a.micro_batch]] for i in range(0, len(order), a.micro_batch)]
            plan = (synchronous(a.stages, a.micro_batches, len(xs) // a.micro_batches) if sync
                    else asynchronous(a.stages, len(xs)))
            t0 = time.perf_counter()
            execute(plan, stages, xs, ys, remote=remote)
            spent = time.perf_counter() - t0
            pos.wall += spent
            pos.samples += len(order)
            if epoch > pos_start:  # the first epoch after a start warms the stages up: not steady state
                pos.steady_wall += spent
                pos.steady_samples += len(order)
            pos.cycles += plan.cycles
            pos.busy += plan.density * plan.stages * plan.cycles
            weights = ray.get([s.weights.remote() for s in stages]) if remote else [s.weights() for s in stages]
            loss, acc = evaluate(weights, xte, yte)
            pos.last = {"schedule": schedule, "epoch": epoch + 1, "samples": pos.samples, "cycles": pos.cycles,
                        "test_loss": loss, "test_acc": acc, "wall_s": pos.wall, "startup_s": pos.startup}
            run_dir.log_metrics(pos.last)
            pos.epoch = epoch + 1
            if pos.epoch == a.epochs:
                done[schedule] = {"test_acc": pos.last["test_acc"], "cycles": pos.cycles,
                                  "density": pos.busy / (a.stages * pos.cycles),
                                  "samples_per_s": _throughput(pos), "startup_s": pos.startup}
            pos.done = done
            run_dir.save_checkpoint(pos.step(a.epochs), _stage_tensors(weights), pos.meta(a.epochs))
        if remote:
            for s in stages:
                ray.kill(s)
            where.remove()
    metrics = {f"{schedule}_{k}": v for schedule in a.schedules for k, v in done[schedule].items()}
    records = run_dir.read_metrics()
    curves = {s: [r for r in records if r.get("schedule") == s and "epoch" in r] for s in a.schedules}
    for xkey, label in (("samples", "samples seen"), ("cycles", "clock cycles")):
        series = [(name, [r[xkey] for r in c], [r["test_loss"] for r in c]) for name, c in curves.items()]
        panels = [{"ylabel": "test loss", "xlabel": label, "series": series}]
        plots.curves(run_dir.plots / f"loss_vs_{xkey}.png", f"{job.name}: S={a.stages}", [], panels, markers=True)
    latest = run_dir.latest_checkpoint()
    return JobResult(metrics, str(latest) if latest else None,
                     {"stages": a.stages, "device": a.device.name if a.device else "digital",
                      "placement": job.resources.placement, "stage_nodes": nodes})
