"""Tune benchmark: Tune's per-trial overhead, and noise-schedule search by bilevel vs Tune.

    python bench/tune.py [--quick]     # writes bench/results/tune.json and bench/results/diffusion.png
    python bench/tune.py --parts sweep_overhead,sweep200,diffusion_tpe

1. Overhead: trials that each sleep 1 s, two at a time on 2 CPUs. Per-trial overhead is the
   marginal cost: run N and 3N trials, (Δwall / (ΔN/2)) − 1, so the Tuner's fixed start-up
   (reported separately) does not count against each trial.
2. Diffusion schedule ψ = (s, e, τ, ε) on the 2-D ring: the bilevel algorithm (one run) against
   Ray Tune random search and Optuna TPE (each trial trains a DDPM from scratch under a fixed ψ),
   at equal total lower-level training steps, 3 seeds each. Metric: energy distance of 1,000 DDIM
   samples to 1,000 held-out points (same noise and data for every method).
3. Hybrid search on the quickstart: lower-level training steps (rounds × inner steps × learners)
   until the validation loss reaches Optuna-TPE's best, for TPE and random search with the
   hypergradient off, the hybrid (random search, hypergradient on) and one pure-hypergradient run.
4. ``sweep_overhead``: the same 1-second trials through dist_core's own sweep machinery
   (``kind: sweep`` over the bench-only kind ``bench_sleep``, bench/sleep_kind.py, run through
   ``runner.run_job`` as a user would), with actor reuse on (what the sweep does) and off (a bench-only
   patch of ``tune.TuneConfig``), beside raw Tune with reuse on and off as the reference; plus two
   diagnostic arms: the sweep with trials that report once instead of three times, and raw Tune
   reporting three times instead of once. Each arm is measured
   ``--repeats`` times, the arms alternating, and reported as median and spread, by the n / 3n
   formula of (1) and by the steady-state cycle read off the trials' start times (``steady_overhead``).
5. ``sweep200``: a 200-trial dist_core sweep of 0.2-s trials (and the same in raw Tune), wall time
   against the minimum 200 × 0.2 s / 2 = 20 s.
6. ``diffusion_tpe``: jobs/sweep_diffusion_tpe.yaml through ``launch.py run`` at the diffusion
   comparison's budget (8 trials × 1500 lower steps), beside jobs/diffusion_schedule.yaml (bilevel)
   through ``launch.py run`` at the same 12,000 lower steps: best energy distance and wall time.

Every timed run records the 1-minute load average just before it (``load_1min``); results taken
at a load above 2 are flagged (``loaded``).

``--parts`` picks sections (default: the first three); results merge into bench/results/tune.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, commit, write  # noqa: E402
from dist_core.diffusion.trainer import BilevelConfig, Setup, final_evaluator, learn_schedule, train_fixed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PSI_SPACE = {"s": (0.0, 0.3), "e": (0.7, 1.0), "tau": (0.5, 3.0), "eps": (1e-3, 0.2)}
LOADED = 2.0  # a 1-minute load average above this (on 2 cores) flags a result as taken on a busy machine


def load_1min() -> float:
    return os.getloadavg()[0]


def taken() -> dict:
    """When and at which commit a section was measured: sections of tune.json come from different runs."""
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": commit()}


def tune_overhead(trials: int, reuse: bool, seconds: float = 1.0, reports: int = 1) -> dict:
    """Raw Tune: a function trainable that sleeps ``seconds`` (reporting ``reports`` times along the
    way), two at a time on 2 CPUs."""
    from ray import tune

    def sleeper(config):
        start = time.time()
        for _ in range(reports):
            time.sleep(seconds / reports)
            tune.report({"x": config["x"], "start": start, "pid": os.getpid()})

    load = load_1min()
    t0 = time.perf_counter()
    tuner = tune.Tuner(
        tune.with_resources(sleeper, {"cpu": 1}),
        param_space={"x": tune.uniform(0, 1)},
        tune_config=tune.TuneConfig(num_samples=trials, reuse_actors=reuse, max_concurrent_trials=2),
        run_config=tune.RunConfig(verbose=0, storage_path=str(Path("/tmp") / "dc-bench-tune")),
    )
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    done = [r.metrics for r in grid if r.metrics and "start" in r.metrics]
    return {"wall_s": wall, "load_1min": load, "worker_processes": len({m["pid"] for m in done}),
            "steady_overhead": steady_overhead([m["start"] for m in done], seconds)}


def steady_overhead(starts: list[float], seconds: float, concurrent: int = 2, trim: int = 2) -> float | None:
    """Per-trial overhead read off one run's trial start times: in steady state the k-th and the
    (k + concurrent·m)-th start (sorted) are m slots apart. Averaged over every such pair in the
    middle (less the first and last ``trim`` starts, the ramp up and down), with m as large as fits.
    Immune to the run's fixed start-up and tear-down, which make the n / 3n difference noisy on a
    busy machine; it leaves out the driver's per-trial work after the last trial (a sweep's
    tables), which the n / 3n difference counts."""
    xs = sorted(starts)[trim:len(starts) - trim]
    m = (len(xs) - 1) // concurrent
    if m < 1:
        return None
    pairs = range(len(xs) - concurrent * m)
    slot = sum(xs[k + concurrent * m] - xs[k] for k in pairs) / (m * len(pairs))
    return slot - seconds


@contextmanager
def tune_patched(reuse: bool, fit_times: list[float]):
    """Bench-only patches of Ray Tune for the sweeps run inside: ``reuse=False`` forces
    ``TuneConfig(reuse_actors=False)`` (dist_core's sweep hard-codes True), and the time spent in
    ``Tuner.fit`` is appended to ``fit_times`` (the rest of a sweep is dist_core's own set-up and
    its tables and plots afterwards)."""
    from ray import tune

    config, fit = tune.TuneConfig, tune.Tuner.fit

    def no_reuse(*args, **kwargs):
        return config(*args, **{**kwargs, "reuse_actors": False})

    def timed_fit(self):
        t0 = time.perf_counter()
        try:
            return fit(self)
        finally:
            fit_times.append(time.perf_counter() - t0)

    if not reuse:
        tune.TuneConfig = no_reuse
    tune.Tuner.fit = timed_fit
    try:
        yield
    finally:
        tune.TuneConfig, tune.Tuner.fit = config, fit


def sweep_overhead(trials: int, reuse: bool, seconds: float = 1.0, records: int = 3) -> dict:
    """A dist_core sweep (``kind: sweep`` over ``bench_sleep``) run through ``runner.run_job``:
    job files written, loaded and validated, trials run, tables and plots written, as a user's run."""
    from bench import sleep_kind
    from dist_core import runner, spec

    fit_times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="dc-bench-sweep-") as tmp:
        sweep_file = sleep_kind.write_jobs(Path(tmp), seconds, trials, records)
        load = load_1min()
        t0 = time.perf_counter()
        with tune_patched(reuse, fit_times):
            job = spec.load(sweep_file)
            summary = runner.run_job(job, Path(tmp) / "runs", progress=False, echo=lambda _: None)
        wall = time.perf_counter() - t0
        logged = [[json.loads(line) for line in f.read_text().splitlines()]
                  for f in Path(tmp).glob("runs/*/trials/*/metrics.jsonl")]
        workers = {r["pid"] for trial in logged for r in trial}
        starts = [trial[0]["start"] for trial in logged if trial]
    m = summary["metrics"]
    if summary["status"] != "succeeded" or m["trials"] != trials or m["errored"]:
        raise RuntimeError(f"the bench sweep did not run all {trials} trials: {summary}")
    return {"wall_s": wall, "fit_s": fit_times[0], "load_1min": load, "worker_processes": len(workers),
            "steady_overhead": steady_overhead(starts, seconds)}


def per_trial_overhead(n: int, reuse: bool, run=tune_overhead, big_first: bool = False) -> dict:
    """Marginal cost per 1-second trial slot from ``n`` and ``3n`` trials, minus the 1 s of work."""
    if big_first:
        big, small = run(3 * n, reuse), run(n, reuse)
    else:
        small, big = run(n, reuse), run(3 * n, reuse)
    marginal = (big["wall_s"] - small["wall_s"]) / (2 * n / 2)  # seconds per trial slot, two slots at once
    out = {"reuse_actors": reuse, "trials": [n, 3 * n], "wall_s": [small["wall_s"], big["wall_s"]],
           "per_trial_overhead": marginal - 1.0, "fixed_s": small["wall_s"] - n / 2 * marginal,
           "load_1min": [small["load_1min"], big["load_1min"]],
           "steady_overhead": [small["steady_overhead"], big["steady_overhead"]],
           "worker_processes": [small["worker_processes"], big["worker_processes"]]}
    if "fit_s" in small:  # the same, counting only Tuner.fit (Tune's share of the sweep)
        fit_marginal = (big["fit_s"] - small["fit_s"]) / (2 * n / 2)
        out |= {"fit_s": [small["fit_s"], big["fit_s"]], "fit_per_trial_overhead": fit_marginal - 1.0}
    return out


def spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}


def warm_up() -> None:
    """One small sweep and one small Tuner, untimed: the first run in a process pays one-time imports
    (Tune's, dist_core's, matplotlib's: ~5 s), which would count against whichever arm runs first."""
    sweep_overhead(2, True, 0.1)
    tune_overhead(2, True, 0.1)


def repeated_overhead(n: int, repeats: int) -> dict:
    """Per-trial overhead of each arm (a run function and reuse on/off), measured ``repeats`` times,
    the arms alternating (each repeat starts one arm later, and alternates which of n / 3n runs
    first) so that a busy spell on the shared machine does not land on one arm."""
    # Diagnostics: a dist_core sweep whose trials log (and so report to Tune) 1 record instead of 3,
    # and raw Tune reporting 3 times instead of once: Tune's reports are synchronous round trips.
    def one_record(trials: int, reuse: bool) -> dict:
        return sweep_overhead(trials, reuse, records=1)

    def three_reports(trials: int, reuse: bool) -> dict:
        return tune_overhead(trials, reuse, reports=3)

    arms = {
        "dist_core sweep, reuse on": (sweep_overhead, True),
        "dist_core sweep, reuse off": (sweep_overhead, False),
        "dist_core sweep, reuse on, 1 record": (one_record, True),
        "raw Tune, reuse on": (tune_overhead, True),
        "raw Tune, reuse on, 3 reports": (three_reports, True),
        "raw Tune, reuse off": (tune_overhead, False),
    }
    names = list(arms)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    warm_up()
    for r in range(repeats):
        big_first = r % 2 == 1
        for name in names[r % len(names):] + names[:r % len(names)]:
            run, reuse = arms[name]
            runs[name].append(per_trial_overhead(n, reuse, run, big_first))
            o = runs[name][-1]
            print(f"  [{r + 1}/{repeats}] {name}: {100 * o['per_trial_overhead']:.1f}%, steady state "
                  f"{100 * o['steady_overhead'][1]:.1f}% (wall {o['wall_s'][0]:.1f}, {o['wall_s'][1]:.1f} s; "
                  f"load {o['load_1min'][0]:.1f}, {o['load_1min'][1]:.1f})", flush=True)
    summary = {}
    for name, rs in runs.items():
        loads = [x for o in rs for x in o["load_1min"]]
        summary[name] = {"per_trial_overhead": spread([o["per_trial_overhead"] for o in rs]),
                         "steady_overhead_of_3n": spread([o["steady_overhead"][1] for o in rs]),
                         "fixed_s": spread([o["fixed_s"] for o in rs]),
                         "load_1min": {"median": statistics.median(loads), "max": max(loads)},
                         "loaded": max(loads) > LOADED}
        if "fit_per_trial_overhead" in rs[0]:
            summary[name]["fit_per_trial_overhead"] = spread([o["fit_per_trial_overhead"] for o in rs])
        summary[name]["worker_processes_of_3n"] = [o["worker_processes"][1] for o in rs]
    return {"trials": [n, 3 * n], "trial_s": 1.0, "concurrent": 2, "repeats": repeats, "loaded_above": LOADED,
            "goal": "dist_core sweep, reuse on: <= 10% of the 1-s slot",
            "reference": "Ray: 10,000 1-s trials on 16 CPUs in 715 s vs 625 s minimum (~14%)",
            "arms": summary, "runs": runs}


def many_short_trials(trials: int, seconds: float, repeats: int) -> dict:
    """A dist_core sweep of ``trials`` trials of ``seconds`` each (and the same in raw Tune), two at a
    time: wall time over the minimum trials × seconds / 2."""
    minimum = trials * seconds / 2
    arms = {"dist_core sweep, reuse on": lambda: sweep_overhead(trials, True, seconds),
            "raw Tune, reuse on": lambda: tune_overhead(trials, True, seconds)}
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    warm_up()
    for r in range(repeats):
        for name in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
            o = arms[name]()
            o["ratio"] = o["wall_s"] / minimum
            runs[name].append(o)
            print(f"  [{r + 1}/{repeats}] {name}: {o['wall_s']:.1f} s = {o['ratio']:.2f} × minimum "
                  f"(load {o['load_1min']:.1f})", flush=True)
    summary = {}
    for name, rs in runs.items():
        summary[name] = {"wall_s": spread([o["wall_s"] for o in rs]), "ratio": spread([o["ratio"] for o in rs]),
                         "steady_overhead_s": spread([o["steady_overhead"] for o in rs]),
                         "load_1min": {"median": statistics.median(o["load_1min"] for o in rs),
                                       "max": max(o["load_1min"] for o in rs)},
                         "loaded": max(o["load_1min"] for o in rs) > LOADED,
                         "worker_processes": [o["worker_processes"] for o in rs]}
        if "fit_s" in rs[0]:
            summary[name]["fit_ratio"] = spread([o["fit_s"] / minimum for o in rs])
    return {"trials": trials, "trial_s": seconds, "concurrent": 2, "minimum_s": minimum, "repeats": repeats,
            "loaded_above": LOADED, "arms": summary, "runs": runs}


def _psi(config: dict) -> torch.Tensor:
    s, e = config["s"], max(config["e"], config["s"] + 1e-3)
    return torch.tensor([s, e, config["tau"], config["eps"]], dtype=torch.float64)


def blackbox(searcher: str, setup: Setup, trials: int, steps_per_trial: int, seed: int) -> list[dict]:
    """Best-so-far metric after each trial, in trial order, with cumulative lower steps."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    ev = final_evaluator(setup)

    def trial(config):
        model = train_fixed(setup, _psi(config), steps_per_trial, seed=seed * 1000 + int(config["i"] * 1e6) % 997)
        with torch.no_grad():
            tune.report({"energy": float(ev.objective(model, _psi(config)))})

    space = {k: tune.uniform(*v) for k, v in PSI_SPACE.items()}
    space["i"] = tune.uniform(0, 1)  # a per-trial seed, so trials differ in initialisation
    alg = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)) if searcher == "optuna" else None
    tuner = tune.Tuner(
        tune.with_resources(trial, {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(metric="energy", mode="min", num_samples=trials, search_alg=alg,
                                    max_concurrent_trials=2),
        run_config=tune.RunConfig(verbose=0, storage_path="/tmp/dc-bench-tune"),
    )
    grid = tuner.fit()
    results = sorted(grid, key=lambda r: r.metrics.get("timestamp", 0))
    curve, best = [], float("inf")
    for i, r in enumerate(results, 1):
        best = min(best, r.metrics["energy"])
        curve.append({"lower_steps": i * steps_per_trial, "best_energy": best})
    return curve


def bilevel(setup: Setup, budget: int, seed: int, y_steps: int = 20, z_steps: int = 5, warmup: int = 500,
            evals: int = 6) -> list[dict]:
    ev = final_evaluator(setup)
    outer = (budget - warmup) // (y_steps + z_steps)
    curve = []
    marks = {round(outer * j / evals) for j in range(1, evals + 1)}
    cfg = BilevelConfig(outer_steps=outer, y_steps=y_steps, z_steps=z_steps, warmup_steps=warmup, lr_psi=0.02)
    # One run; the held-out metric is taken at the end (the upper objective on its own training
    # samples is recorded along the way, at ``evals`` marks).
    psi, model, history = learn_schedule(setup, cfg, seed=seed)
    with torch.no_grad():
        final = float(ev.objective(model, psi))
    for h in history:
        if h["outer_step"] in marks:
            curve.append({"lower_steps": h["lower_steps"], "upper_train": h["upper"]})
    curve.append({"lower_steps": history[-1]["lower_steps"], "best_energy": final,
                  "psi": [float(v) for v in psi]})
    return curve


def cosine_control(setup: Setup, budget: int, seed: int) -> float:
    """The fixed cosine schedule, one model trained for the whole budget: separates 'better ψ'
    from 'one long training run' in the bilevel result."""
    from dist_core.diffusion.schedule import COSINE

    psi = torch.tensor(COSINE, dtype=torch.float64)
    model = train_fixed(setup, psi, budget, seed=seed)
    with torch.no_grad():
        return float(final_evaluator(setup).objective(model, psi))


HYBRID_SPACE = {
    "bilevel.lower.lr": {"type": "loguniform", "low": 0.05, "high": 1.0},
    "bilevel.lower.inner_steps": {"type": "int", "low": 5, "high": 30},
    "bilevel.model.weight_decay": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
}


def sweep_curves(searcher: str, hypergradient: bool, trials: int, rounds: int, seed: int) -> list[list[dict]]:
    """Run a quickstart sweep in this process; per trial, its rounds' val_loss and step counts."""
    import json as _json
    import tempfile

    from dist_core import runner, spec

    overrides = [
        f"search.space={_json.dumps(HYBRID_SPACE)}", f"search.searcher={searcher}", f"search.num_samples={trials}",
        "search.scheduler.name=fifo", f"search.seed={seed}",
        f"overrides.bilevel.rounds={rounds}", f"overrides.bilevel.upper.hypergradient={str(hypergradient).lower()}",
        "overrides.bilevel.method={name: penalty}",
    ]
    job = spec.load("jobs/sweep_quickstart.yaml", overrides)
    with tempfile.TemporaryDirectory() as out:
        runner.run_job(job, Path(out), progress=False, echo=lambda _: None)
        curves = []
        for trial in sorted(Path(out).glob("*/tune/run_trial_*"), key=lambda p: (p / "run" / "summary.json").stat().st_mtime):
            resolved = spec.load(trial / "run" / "spec.yaml")
            per_round = resolved.bilevel.lower.inner_steps * resolved.bilevel.lower.learners
            rows = [_json.loads(x) for x in (trial / "run" / "metrics.jsonl").read_text().splitlines()]
            curves.append([{"steps": r["round"] * per_round, "val_loss": r["val_loss"]} for r in rows])
    return curves


def steps_to_reach(curves: list[list[dict]], target: float) -> int | None:
    """Cumulative lower steps over trials (in completion order) until val_loss <= target."""
    spent = 0
    for curve in curves:
        for point in curve:
            if point["val_loss"] <= target:
                return spent + point["steps"]
        spent += curve[-1]["steps"] if curve else 0
    return None


def hybrid(trials: int, rounds: int, seed: int = 0) -> dict:
    from dist_core import runner, spec

    arms = {
        "optuna TPE, hypergradient off": sweep_curves("optuna", False, trials, rounds, seed),
        "random, hypergradient off": sweep_curves("random", False, trials, rounds, seed),
        "hybrid: random + hypergradient": sweep_curves("random", True, trials, rounds, seed),
    }
    import json as _json
    import tempfile

    job = spec.load("jobs/quickstart.yaml", ["bilevel.baseline=false", "bilevel.checkpoint_every=0"])
    with tempfile.TemporaryDirectory() as out:
        runner.run_job(job, Path(out), progress=False, echo=lambda _: None)
        rows = [_json.loads(x) for x in next(Path(out).glob("*/metrics.jsonl")).read_text().splitlines()]
    per_round = job.bilevel.lower.inner_steps * job.bilevel.lower.learners
    arms["pure hypergradient (quickstart)"] = [[{"steps": r["round"] * per_round, "val_loss": r["val_loss"]} for r in rows]]
    target = min(p["val_loss"] for c in arms["optuna TPE, hypergradient off"] for p in c)
    table = {name: {"steps_to_target": steps_to_reach(c, target),
                    "best_val_loss": min(p["val_loss"] for cc in c for p in cc),
                    "total_steps": sum(cc[-1]["steps"] for cc in c if cc)} for name, c in arms.items()}
    return {"target_val_loss": target, "trials": trials, "rounds": rounds, "arms": table}


def launch(args: list[str], out: Path) -> dict:
    """``python launch.py run ARGS --out OUT`` from the repository root, as a user runs it: wall time
    (Python and, for a sweep, Ray start-up included), the load before, and the run's summary.json."""
    load = load_1min()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "launch.py", "run", *args, "--out", str(out), "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"launch.py run {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    summary = json.loads(next(out.glob("*/summary.json")).read_text())
    return {"wall_s": wall, "load_1min": load, "run_wall_s": summary["wall_s"], "metrics": summary["metrics"]}


def tpe_vs_bilevel(trials: int, steps_per_trial: int, seeds: int, y_steps: int = 20, z_steps: int = 5) -> dict:
    """jobs/sweep_diffusion_tpe.yaml (``trials`` × ``steps_per_trial`` lower steps) against
    jobs/diffusion_schedule.yaml (bilevel, the same total), both through launch.py, per seed.

    Both evaluate held-out energy distance once, at the end (the sweep file already sets one report
    per trial and no checkpoints; the bilevel run is set the same way), so wall times compare the
    training, not the evaluation schedule. ``seed`` seeds the searcher; ``overrides.seed`` each trial."""
    budget = trials * steps_per_trial
    warmup = min(500, budget // 4)  # as the in-process comparison's bilevel runs
    outer = (budget - warmup) // (y_steps + z_steps)
    rows = []
    for seed in range(seeds):
        with tempfile.TemporaryDirectory(prefix="dc-bench-tpe-") as tmp:
            tpe = launch(["jobs/sweep_diffusion_tpe.yaml", "--set", f"seed={seed}", "--set", f"overrides.seed={seed}",
                          "--set", f"search.num_samples={trials}",
                          "--set", f"overrides.diffusion.fixed.budget={steps_per_trial}",
                          "--set", f"overrides.diffusion.fixed.eval_every={steps_per_trial}"], Path(tmp) / "tpe")
            print(f"  seed {seed} TPE sweep: {tpe['metrics']['best_energy_distance']:.4f} in {tpe['wall_s']:.0f} s "
                  f"(load {tpe['load_1min']:.1f})", flush=True)
            bil = launch(["jobs/diffusion_schedule.yaml", "--set", f"seed={seed}",
                          "--set", f"diffusion.bilevel.outer_steps={outer}",
                          "--set", f"diffusion.bilevel.y_steps={y_steps}", "--set", f"diffusion.bilevel.z_steps={z_steps}",
                          "--set", f"diffusion.bilevel.warmup_steps={warmup}",
                          "--set", f"diffusion.bilevel.eval_every={outer}", "--set", "diffusion.bilevel.checkpoint_every=0",
                          "--set", "diffusion.compare_cosine=false"], Path(tmp) / "bilevel")
            print(f"  seed {seed} bilevel: {bil['metrics']['energy_distance']:.4f} in {bil['wall_s']:.0f} s "
                  f"(load {bil['load_1min']:.1f})", flush=True)
        rows.append({"seed": seed,
                     "tpe": {"best_energy": tpe["metrics"]["best_energy_distance"], "wall_s": tpe["wall_s"],
                             "run_wall_s": tpe["run_wall_s"], "trials": tpe["metrics"]["trials"],
                             "errored": tpe["metrics"]["errored"], "load_1min": tpe["load_1min"]},
                     "bilevel": {"best_energy": bil["metrics"]["energy_distance"], "wall_s": bil["wall_s"],
                                 "run_wall_s": bil["run_wall_s"], "lower_steps": bil["metrics"]["lower_steps"],
                                 "load_1min": bil["load_1min"]}})
    loads = [r[m]["load_1min"] for r in rows for m in ("tpe", "bilevel")]
    return {"budget_lower_steps": budget, "trials": trials, "steps_per_trial": steps_per_trial,
            "bilevel": {"outer_steps": outer, "y_steps": y_steps, "z_steps": z_steps, "warmup_steps": warmup},
            "note": "Optuna's TPESampler (as dist_core builds it) samples its first 10 trials at random: "
                    f"with {trials} trials the sweep's TPE is random search (bench's own `blackbox` uses "
                    "n_startup_trials=4)" if trials <= 10 else "",
            "loaded": max(loads) > LOADED, "seeds": rows}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    colors = {"random": "tab:blue", "optuna": "tab:orange", "bilevel": "tab:green"}
    for method, runs in results.items():
        for j, curve in enumerate(runs):
            pts = [(c["lower_steps"], c["best_energy"]) for c in curve if "best_energy" in c]
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", color=colors[method], alpha=0.7, label=method if j == 0 else None)
    ax.set_xlabel("lower-level training steps")
    ax.set_ylabel("energy distance to held-out data (lower is better)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("noise-schedule search on the 2-D ring, 3 seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PARTS = ("overhead", "diffusion", "hybrid", "sweep_overhead", "sweep200", "diffusion_tpe")


def main() -> None:
    import ray

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--parts", default="overhead,diffusion,hybrid",
                    help=f"comma-separated sections to run, of {', '.join(PARTS)} (and cosine, after diffusion)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of each sweep_overhead / sweep200 arm")
    ap.add_argument("--tpe-seeds", type=int, default=1, help="seeds of the diffusion_tpe comparison")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    previous = RESULTS / "tune.json"
    doc = json.loads(previous.read_text()) if previous.exists() else {}
    payload = {k: doc[k] for k in PARTS if k in doc}
    trials, per_trial, seeds = (4, 300, 1) if args.quick else (8, 1500, 3)
    setup = Setup()
    if parts & {"sweep_overhead", "sweep200"}:
        from bench import sleep_kind

        sleep_kind.register()  # before ray.init: it puts the repository root on the workers' PYTHONPATH
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False, logging_level="ERROR")
    try:
        if "overhead" in parts:
            payload["overhead"] = [per_trial_overhead(4 if args.quick else 10, reuse) for reuse in (False, True)]
        if "sweep_overhead" in parts:
            payload["sweep_overhead"] = {"taken": taken(), **repeated_overhead(4 if args.quick else 10,
                                                                               1 if args.quick else args.repeats)}
        if "sweep200" in parts:
            payload["sweep200"] = {"taken": taken(), **many_short_trials(40 if args.quick else 200, 0.2,
                                                                         1 if args.quick else args.repeats)}
        if "diffusion" in parts:
            budget = trials * per_trial
            results = {"random": [], "optuna": [], "bilevel": []}
            for seed in range(seeds):
                results["random"].append(blackbox("random", setup, trials, per_trial, seed))
                results["optuna"].append(blackbox("optuna", setup, trials, per_trial, seed))
                results["bilevel"].append(bilevel(setup, budget, seed, warmup=min(500, budget // 4)))
            finals = {m: [runs[-1]["best_energy"] for runs in v] for m, v in results.items()}
            plot(results, RESULTS / "diffusion.png")
            payload["diffusion"] = {"budget_lower_steps": budget, "trials": trials, "steps_per_trial": per_trial,
                                    "final_energy": finals, "curves": results}
        if "cosine" in parts and "diffusion" in payload:
            d = payload["diffusion"]
            d["final_energy"]["cosine, one run of the whole budget"] = [
                cosine_control(setup, d["budget_lower_steps"], seed) for seed in range(len(d["final_energy"]["bilevel"]))]
        if "hybrid" in parts:
            payload["hybrid"] = hybrid(trials=4 if args.quick else 12, rounds=10 if args.quick else 40)
    finally:
        ray.shutdown()
    if "diffusion_tpe" in parts:  # its own processes, each with its own Ray, after ours is gone
        if (ROOT / "jobs" / "sweep_diffusion_tpe.yaml").exists():
            payload["diffusion_tpe"] = {"taken": taken(),
                                        **tpe_vs_bilevel(trials, per_trial, 1 if args.quick else args.tpe_seeds)}
        else:
            print("jobs/sweep_diffusion_tpe.yaml does not exist: diffusion_tpe skipped")
    out = write("tune", payload)
    report(payload)
    print(f"\nwrote {out}")


def report(payload: dict) -> None:
    overhead = payload.get("overhead", [])
    print("| Tune, 1-second trials | trials | wall s | per-trial overhead | fixed start-up s |")
    print("|---|---|---|---|---|")
    for o in overhead:
        print(f"| reuse_actors={o['reuse_actors']} | {o['trials']} | {o['wall_s'][0]:.1f}, {o['wall_s'][1]:.1f} | "
              f"{100 * o['per_trial_overhead']:.0f}% | {o['fixed_s']:.1f} |")
    if "sweep_overhead" in payload:
        so = payload["sweep_overhead"]
        print(f"\n| 1-s trials, {so['trials']}, 2 at a time, {so['repeats']} repeats | per-trial overhead, median "
              f"(min–max) | in Tuner.fit | steady state (3n run) | fixed s | load (median, max) |")
        print("|---|---|---|---|---|---|")
        for name, a in so["arms"].items():
            o, fit, st = a["per_trial_overhead"], a.get("fit_per_trial_overhead"), a["steady_overhead_of_3n"]
            fit_text = f"{100 * fit['median']:.1f}%" if fit else "–"
            print(f"| {name}{' (load > 2)' if a['loaded'] else ''} | {100 * o['median']:.1f}% "
                  f"({100 * o['min']:.1f}–{100 * o['max']:.1f}%) | {fit_text} | {100 * st['median']:.1f}% "
                  f"({100 * st['min']:.1f}–{100 * st['max']:.1f}%) | {a['fixed_s']['median']:.1f} | "
                  f"{a['load_1min']['median']:.1f}, {a['load_1min']['max']:.1f} |")
    if "sweep200" in payload:
        sw = payload["sweep200"]
        print(f"\n| {sw['trials']} trials of {sw['trial_s']} s, 2 at a time (minimum {sw['minimum_s']:.0f} s) | "
              f"wall s, median (min–max) | × minimum | steady-state s per trial | load (median, max) |")
        print("|---|---|---|---|---|")
        for name, a in sw["arms"].items():
            w, r, st = a["wall_s"], a["ratio"], a["steady_overhead_s"]
            print(f"| {name}{' (load > 2)' if a['loaded'] else ''} | {w['median']:.1f} ({w['min']:.1f}–{w['max']:.1f}) | "
                  f"{r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f}) | {st['median']:.3f} | "
                  f"{a['load_1min']['median']:.1f}, {a['load_1min']['max']:.1f} |")
    if "diffusion_tpe" in payload:
        dt = payload["diffusion_tpe"]
        print(f"\n| launch.py run, {dt['budget_lower_steps']} lower steps | seed | best energy distance | wall s | load |")
        print("|---|---|---|---|---|")
        for row in dt["seeds"]:
            for m, label in (("tpe", f"sweep_diffusion_tpe ({dt['trials']} × {dt['steps_per_trial']})"),
                             ("bilevel", "diffusion_schedule (bilevel)")):
                print(f"| {label} | {row['seed']} | {row[m]['best_energy']:.4f} | {row[m]['wall_s']:.0f} | "
                      f"{row[m]['load_1min']:.1f} |")
        if dt.get("note"):
            print(f"\n{dt['note']}")
    if "diffusion" in payload:
        d = payload["diffusion"]
        print(f"\n| schedule search ({d['budget_lower_steps']} lower steps) | final energy distance, per seed | mean |")
        print("|---|---|---|")
        for m, v in d["final_energy"].items():
            print(f"| {m} | {', '.join(f'{x:.4f}' for x in v)} | {sum(v) / len(v):.4f} |")
    if "hybrid" in payload:
        h = payload["hybrid"]
        print(f"\n| quickstart arm | steps to TPE's best ({h['target_val_loss']:.3f}) | best val loss | steps spent |")
        print("|---|---|---|---|")
        for name, a in h["arms"].items():
            print(f"| {name} | {a['steps_to_target']} | {a['best_val_loss']:.3f} | {a['total_steps']} |")


if __name__ == "__main__":
    main()
