"""``kind: diffusion_schedule``: learn ψ = (s, e, τ, ε) by the bilevel update (``method: bilevel``), or
train under ψ = psi0 (``method: fixed``, a black-box search's trial); optionally against cosine.

Records go to metrics.jsonl as training goes (held-out metrics at the evaluated steps), checkpoints
at the configured interval and at the end; ``resume`` continues from the latest checkpoint bit for
bit and replays no record. A run killed after its main loop resumes straight to the cosine baseline.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .. import plots
from ..runs import JobResult, RunDir, RunHooks
from .config import DiffusionJob
from .schedule import COSINE
from .state import Snapshot
from .toy_data import Ring
from .trainer import BilevelConfig, Setup, final_evaluator, held_out, learn_schedule, train_fixed

log = logging.getLogger("dist_core.diffusion")
STEP_KEY = {"bilevel": "outer_step", "fixed": "lower_steps"}  # what one record counts, per method


def run(job: DiffusionJob, run_dir: RunDir, hooks: RunHooks, resume: bool = False) -> JobResult:
    from tqdm.auto import tqdm

    d = job.diffusion
    ring = Ring(d.data.modes, d.data.radius, d.data.std)
    setup = Setup(ring=ring, T=d.T, ddim_steps=d.ddim_steps, hidden=d.hidden, batch=d.batch, lr=d.lr,
                  clip_x0=1.15 * (ring.radius + 4 * ring.std))  # 3.0 for the default ring, as in Setup
    snapshot = None
    if resume:
        ckpt = run_dir.latest_checkpoint()
        if ckpt is not None:
            snapshot = Snapshot.load(ckpt, d.method)
            log.info("resuming from %s (%s step %d)", ckpt, STEP_KEY[d.method], snapshot.step)
        run_dir.truncate_metrics(snapshot.step if snapshot else 0, key=STEP_KEY[d.method])

    total = d.bilevel.outer_steps if d.method == "bilevel" else d.fixed.budget
    done = snapshot.step if snapshot else 0
    bar = tqdm(total=total, initial=done, desc="outer steps" if d.method == "bilevel" else "lower steps",
               disable=not hooks.progress, leave=False, mininterval=1.0)
    last = [done]

    def on_record(step: int, record: dict) -> None:
        run_dir.log_metrics(record)
        bar.update(step - last[0])
        last[0] = step

    def on_checkpoint(snap: Snapshot) -> None:
        run_dir.save_checkpoint(snap.step, *snap.to_flat())

    ev = final_evaluator(setup)  # the held-out set of every record and of the final metrics
    psi0 = torch.tensor(d.psi0, dtype=torch.float64)
    if d.method == "bilevel":
        b = d.bilevel
        cfg = BilevelConfig(b.outer_steps, b.y_steps, b.z_steps, b.gamma, b.lr_psi, b.warmup_steps,
                            eval_every=b.eval_every, checkpoint_every=b.checkpoint_every)
        psi, model, _ = learn_schedule(setup, cfg, seed=job.seed, psi0=tuple(d.psi0), on_step=on_record,
                                       evaluator=ev, on_checkpoint=on_checkpoint, resume_from=snapshot)
        lower_steps = b.warmup_steps + b.outer_steps * (b.y_steps + b.z_steps)
    else:
        f = d.fixed
        psi = psi0
        model = train_fixed(setup, psi, f.budget, seed=job.seed, eval_every=f.eval_every,
                            checkpoint_every=f.checkpoint_every, evaluator=ev, on_record=on_record,
                            on_checkpoint=on_checkpoint, resume_from=snapshot)
        lower_steps = f.budget
    bar.close()

    metrics: dict[str, Any] = {**held_out(ev, model, psi), "lower_steps": lower_steps}
    if d.compare_cosine:
        cosine = torch.tensor(COSINE, dtype=torch.float64)
        base = train_fixed(setup, cosine, lower_steps, seed=job.seed)
        metrics.update({f"{k}_cosine": v for k, v in held_out(ev, base, cosine).items()})
    _plot(run_dir, job, run_dir.read_metrics())
    latest = run_dir.latest_checkpoint()
    return JobResult(metrics, str(latest) if latest else None,
                     {"method": d.method, "psi": [float(v) for v in psi], "psi0": list(d.psi0)})


def _plot(run_dir: RunDir, job: DiffusionJob, records: list[dict]) -> None:
    steps = [r["lower_steps"] for r in records]
    evaluated = [r for r in records if "energy_distance" in r]
    held = {"ylabel": "energy distance (held-out)", "xlabel": "lower steps", "yscale": "log",
            "series": [("energy distance", [r["lower_steps"] for r in evaluated],
                        [r["energy_distance"] for r in evaluated])]}
    if job.diffusion.method == "bilevel":
        plots.curves(run_dir.plots / "schedule.png", f"{job.name}: ψ and the upper objective", steps, [
            {"ylabel": "upper objective (training samples)", "xlabel": "lower steps",
             "series": [("f(θ_z, ψ)", [r["upper"] for r in records])]},
            {"ylabel": "ψ", "xlabel": "lower steps", "series": [(n, [r[n] for r in records]) for n in ("s", "e", "tau", "eps")]},
            held,
        ])
    else:
        plots.curves(run_dir.plots / "training.png", f"{job.name}: training under ψ = {job.diffusion.psi0}", steps, [
            {"ylabel": "DDPM loss (mean since the last record)", "xlabel": "lower steps",
             "series": [("loss", [r["loss"] for r in records])]},
            held,
        ])
