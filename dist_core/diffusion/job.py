"""``kind: diffusion_schedule``: learn ψ = (s, e, τ, ε) by the bilevel update, against cosine."""

from __future__ import annotations

import torch

from .. import plots
from ..bilevel.job import JobResult
from ..runs import RunDir
from ..spec import DiffusionJob
from .schedule import COSINE
from .toy_data import Ring
from .trainer import BilevelConfig, Setup, final_evaluator, learn_schedule, train_fixed


def run(job: DiffusionJob, run_dir: RunDir, resume: bool = False, progress: bool = True) -> JobResult:
    from tqdm.auto import tqdm

    d = job.diffusion
    ring = Ring(d.data.modes, d.data.radius, d.data.std)
    setup = Setup(ring=ring, T=d.T, ddim_steps=d.ddim_steps, hidden=d.hidden, batch=d.batch, lr=d.lr,
                  clip_x0=1.15 * (ring.radius + 4 * ring.std))  # 3.0 for the default ring, as in Setup
    b = d.bilevel
    cfg = BilevelConfig(b.outer_steps, b.y_steps, b.z_steps, b.gamma, b.lr_psi, b.warmup_steps)
    bar = tqdm(total=b.outer_steps, desc="outer steps", disable=not progress, leave=False, mininterval=1.0)

    def on_step(k: int, record: dict) -> None:
        run_dir.log_metrics(record)
        bar.update(1)

    psi, model, history = learn_schedule(setup, cfg, seed=job.seed, psi0=tuple(d.psi0), on_step=on_step)
    bar.close()
    ev = final_evaluator(setup)
    with torch.no_grad():
        metrics = {"energy_distance": float(ev.objective(model, psi)), "sample_nll": ev.nll(model, psi),
                   "lower_steps": history[-1]["lower_steps"]}
    if d.compare_cosine:
        cosine = torch.tensor(COSINE, dtype=torch.float64)
        base = train_fixed(setup, cosine, history[-1]["lower_steps"], seed=job.seed)
        with torch.no_grad():
            metrics["energy_distance_cosine"] = float(ev.objective(base, cosine))
            metrics["sample_nll_cosine"] = ev.nll(base, cosine)
    steps = [h["lower_steps"] for h in history]
    plots.curves(run_dir.plots / "schedule.png", f"{job.name}: ψ and the upper objective", steps, [
        {"ylabel": "upper objective (training samples)", "xlabel": "lower steps", "series": [("f(θ_z, ψ)", [h["upper"] for h in history])]},
        {"ylabel": "ψ", "xlabel": "lower steps", "series": [(n, [h[n] for h in history]) for n in ("s", "e", "tau", "eps")]},
    ])
    return JobResult(metrics, None, {"psi": [float(v) for v in psi], "psi0": list(d.psi0)})
