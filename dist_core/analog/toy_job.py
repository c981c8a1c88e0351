"""``kind: aimc_toy``: the least-squares toy (d = 40, τ = 3), digital SGD against Analog SGD and
Tiki-Taka v1/v2 over a sweep of step sizes α (RESEARCH.md §4a, §7.4).

Writes one metrics record per (method, α) with the final error and its error curve, a summary
with the final errors, and two PNGs: error against α (log-log) and error against step per method.
Each method runs all α (and, for Tiki-Taka, all transfer scales) as rows of one tile, so the whole
job is four simulations. No Ray: this is a single-process numerical experiment.

Resume is per method: once a method's records are logged they are also written, whole, to
``phases/<method>.json``; ``resume`` rebuilds ``metrics.jsonl`` from those files (dropping the
records of a method that did not finish), skips those methods and runs the rest from their start.
The simulations are deterministic (seeded generators, one thread), so the result equals an
uninterrupted run's bit for bit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .. import checkpoint, plots
from ..runs import JobResult, Record, RunDir, RunHooks
from .config import AimcToyJob
from .toy import ToySettings, make_problem, simulate

PHASES = "phases"  # <run dir>/phases/<method>.json: a finished method's records (runner.resumable looks here)


def _label(method: str, scale: float | None) -> str:
    return method if scale is None else f"{method} (s={scale:g})"


def _phase(run_dir: RunDir, method: str) -> Path:
    return run_dir.path / PHASES / f"{method}.json"


def _finished(run_dir: RunDir, methods: list[str]) -> dict[str, list[Record]]:
    """The records of each method a previous attempt finished, in the job's method order."""
    out = {}
    for method in methods:
        path = _phase(run_dir, method)
        if path.exists():
            out[method] = json.loads(path.read_text())["records"]
    return out


def run(job: AimcToyJob, run_dir: RunDir, hooks: RunHooks, resume: bool = False) -> JobResult:
    t = job.toy
    if resume:
        finished = _finished(run_dir, t.methods)
        run_dir.rewrite_metrics([r for records in finished.values() for r in records])
    else:  # a fresh start (a retried sweep trial) must not pick up an earlier attempt's methods
        finished = {}
        shutil.rmtree(run_dir.path / PHASES, ignore_errors=True)
    problem = make_problem(t.d, t.n, job.seed)
    settings = ToySettings(steps=t.steps, sigma=t.sigma, tau=t.tau, dw_min=t.dw_min, tau_fast=t.tau_fast,
                           gamma=t.gamma, curve_points=t.curve_points)
    block = max(1, t.steps // t.curve_points)
    final: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[float, list[float]]] = {}
    from tqdm.auto import tqdm

    bar = tqdm(total=len(t.methods), initial=len(finished), desc="methods", unit="method",
               disable=not hooks.progress, leave=False)
    for method in t.methods:
        records = finished.get(method)
        if records is None:
            bar.set_postfix_str(method)
            records = []
            scales: list[float | None] = list(t.transfer_scales) if method.startswith("tiki_taka") else [None]
            rows = [(alpha, scale) for scale in scales for alpha in t.alphas]
            transfer = [alpha * (scale or 1.0) for alpha, scale in rows]
            errors, curve = simulate(problem, method, [a for a, _ in rows], settings, seed=job.seed + 1,
                                     transfer_lrs=transfer)
            for (alpha, scale), err, points in zip(rows, errors, curve):
                record = {"method": method, "transfer_scale": scale, "alpha": alpha, "final_error": err,
                          "steps": [block * (i + 1) for i in range(len(points))], "error": points}
                run_dir.log_metrics(record)
                records.append(record)
            _phase(run_dir, method).parent.mkdir(exist_ok=True)
            checkpoint.write_json_atomic(_phase(run_dir, method), {"method": method, "records": records})
            bar.update(1)
        for r in records:
            label = _label(r["method"], r["transfer_scale"])
            final.setdefault(label, {})[f"{r['alpha']:g}"] = r["final_error"]
            curves.setdefault(label, {})[r["alpha"]] = r["error"]
    bar.close()
    _plot(run_dir, job.name, final, curves, block)
    return JobResult({"final_error": final, **_claims(final, t.alphas)}, None,
                     {"alphas": list(t.alphas), "steps": t.steps, "sigma": t.sigma, "tau": t.tau})


def _claims(final: dict[str, dict[str, float]], alphas: list[float]) -> dict[str, Any]:
    """How much each method's error falls from the largest α to the smallest: ~α_max/α_min for
    digital SGD (its noise floor ∝ α), much less for Analog SGD (the implicit-penalty floor)."""
    hi, lo = f"{max(alphas):g}", f"{min(alphas):g}"
    return {"error_drop": {label: errs[hi] / errs[lo] for label, errs in final.items() if errs[lo] > 0}}


def _plot(run_dir: RunDir, name: str, final: dict[str, dict[str, float]], curves: dict[str, dict[float, list[float]]],
          block: int) -> None:
    series = [(label, [float(a) for a in errs], list(errs.values())) for label, errs in final.items()]
    plots.curves(run_dir.plots / "error_vs_alpha.png", f"{name}: stationary ‖W − x*‖² against step size",
                 [], [{"ylabel": "‖W − x*‖² (second half)", "xlabel": "step size α", "series": series,
                       "xscale": "log", "yscale": "log"}], markers=True)
    panels = []
    for label, by_alpha in curves.items():
        steps = [block * (i + 1) for i in range(len(next(iter(by_alpha.values()))))]
        panels.append({"ylabel": "‖W − x*‖²", "xlabel": f"step ({label})", "yscale": "log",
                       "series": [(f"α={a:g}", steps, ys) for a, ys in by_alpha.items()]})
    plots.curves(run_dir.plots / "error_vs_step.png", f"{name}: error against step", [], panels)
