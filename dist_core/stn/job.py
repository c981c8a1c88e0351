"""``kind: stn``: tune the dropout rate and weight decay of a digits MLP with a Self-Tuning Network.

One record per cycle: ``{"step", "round", "train_loss", "valid_loss", <hyperparameter values>,
"scale_<name>"}`` plus ``val_loss``/``val_acc``/``test_acc`` every ``eval_every`` cycles and at the
last; checkpoints hold φ, u, σ, the three optimizers' state and the RNG, so ``resume`` continues
bit for bit and replays no record. The learned schedule is drawn to ``plots/schedule.png``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .. import checkpoint, plots
from ..runs import JobResult, RunDir, RunHooks
from ..threads import torch_threads
from . import digits, hyper
from .config import STNJob
from .loop import STN, STNConfig, STNState, state_from_arrays, state_to_arrays

log = logging.getLogger("dist_core.stn")


def task_of(job: STNJob) -> tuple[digits.Task, torch.Tensor]:
    """The tuned hyperparameters (in u's order), the fixed ones, and u's starting value."""
    h = job.stn.hyper
    tuned, fixed, u0 = [], {}, []
    for spec, hp in ((h.dropout, digits.DROPOUT), (h.weight_decay, digits.WEIGHT_DECAY)):
        if spec.tune:
            tuned.append(hp)
            u0.append(hp.unconstrain(spec.init))
        else:
            fixed[hp.name] = spec.init
    return digits.Task(tuple(tuned), fixed), torch.tensor(u0)


def stn_config(job: STNJob) -> STNConfig:
    s = job.stn
    return STNConfig(train_steps=s.train_steps, valid_steps=s.valid_steps, warmup_steps=s.warmup_steps,
                     lr_phi=s.lr_phi, momentum=s.momentum, lr_lam=s.lr_lam, lr_scale=s.lr_scale,
                     entropy_weight=s.entropy_weight, tune_scales=s.tune_scales)


def run(job: STNJob, run_dir: RunDir, hooks: RunHooks, resume: bool = False) -> JobResult:
    with torch_threads(1):  # small ops in this process: extra threads only spin (see ``dist_core.threads``)
        return _run(job, run_dir, hooks, resume)


def _run(job: STNJob, run_dir: RunDir, hooks: RunHooks, resume: bool = False) -> JobResult:
    from tqdm.auto import tqdm

    s = job.stn
    data = digits.make_data(s.data.n_train, s.data.n_val, job.seed)
    task, u0 = task_of(job)
    state = STNState(digits.init_phi(s.hidden, len(task.tuned), job.seed), u0,
                     torch.full_like(u0, hyper.inv_softplus(s.perturb_scale)), torch.Generator().manual_seed(job.seed))
    if resume:
        ckpt = run_dir.latest_checkpoint()
        if ckpt is not None:
            state = state_from_arrays(*checkpoint.load(ckpt))
            log.info("resuming from %s (step %d)", ckpt, state.step)
        run_dir.truncate_metrics(state.step, key="round")
    stn = STN(digits.make_problem(task, state.gen), state, stn_config(job))
    next_train = digits.sampler(data.x_train, data.y_train, s.batch, state.gen)
    next_valid = digits.sampler(data.x_val, data.y_val, s.batch, state.gen)

    bar = tqdm(total=s.steps, initial=state.step, desc="cycles", disable=not hooks.progress, leave=False,
               mininterval=1.0)
    while state.step < s.steps:
        record: dict[str, Any] = stn.cycle(next_train, next_valid)
        step = state.step
        record.update(step=step, round=step, **_values(task, stn))
        if step % s.eval_every == 0 or step == s.steps:
            record.update(digits.evaluate(stn.phi, stn.u.detach(), data))
        run_dir.log_metrics(record)
        bar.update(1)
        if (s.checkpoint_every and step % s.checkpoint_every == 0) or step == s.steps:
            run_dir.save_checkpoint(step, *state_to_arrays(stn.snapshot()))
    bar.close()

    final = digits.evaluate(stn.phi, stn.u.detach(), data)
    values = _values(task, stn)
    _plot(run_dir, job, run_dir.read_metrics(), task)
    latest = run_dir.latest_checkpoint()
    return JobResult({**final, **{k: v for k, v in values.items() if not k.startswith("scale_")}},
                     str(latest) if latest else None,
                     {"tuned": [h.name for h in task.tuned], "fixed": task.fixed,
                      "init": {"dropout": s.hyper.dropout.init, "weight_decay": s.hyper.weight_decay.init}})


def _values(task: digits.Task, stn: STN) -> dict[str, float]:
    u = stn.u.detach()
    out = {h.name: float(h.constrain(u[i])) for i, h in enumerate(task.tuned)}
    out.update({f"scale_{h.name}": float(torch.nn.functional.softplus(stn.scale.detach()[i]))
                for i, h in enumerate(task.tuned)})
    return out


def _plot(run_dir: RunDir, job: STNJob, records: list[dict], task: digits.Task) -> None:
    steps = [r["step"] for r in records]
    evaluated = [r for r in records if "val_loss" in r]
    panels = [{"ylabel": h.name, "xlabel": "cycle", "yscale": "log" if h.transform == "log" else "linear",
               "series": [(h.name, [r[h.name] for r in records])]} for h in task.tuned]
    panels.append({"ylabel": "loss", "xlabel": "cycle", "series": [
        ("validation (full)", [r["step"] for r in evaluated], [r["val_loss"] for r in evaluated]),
        ("training (batch)", steps, [r["train_loss"] for r in records])]})
    plots.curves(run_dir.plots / "schedule.png", f"{job.name}: the learned hyperparameter schedule", steps, panels)
