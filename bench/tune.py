"""Tune benchmark: Tune's per-trial overhead, and noise-schedule search by bilevel vs Tune.

    python bench/tune.py [--quick]     # writes bench/results/tune.json and bench/results/diffusion.png

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

``--parts`` picks sections; results merge into bench/results/tune.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, write  # noqa: E402
from dist_core.diffusion.trainer import BilevelConfig, Setup, final_evaluator, learn_schedule, train_fixed  # noqa: E402

PSI_SPACE = {"s": (0.0, 0.3), "e": (0.7, 1.0), "tau": (0.5, 3.0), "eps": (1e-3, 0.2)}


def tune_overhead(trials: int, reuse: bool) -> float:
    from ray import tune

    def one_second(config):
        time.sleep(1.0)
        tune.report({"x": config["x"]})

    t0 = time.perf_counter()
    tuner = tune.Tuner(
        tune.with_resources(one_second, {"cpu": 1}),
        param_space={"x": tune.uniform(0, 1)},
        tune_config=tune.TuneConfig(num_samples=trials, reuse_actors=reuse, max_concurrent_trials=2),
        run_config=tune.RunConfig(verbose=0, storage_path=str(Path("/tmp") / "dc-bench-tune")),
    )
    tuner.fit()
    return time.perf_counter() - t0


def per_trial_overhead(n: int, reuse: bool) -> dict:
    small, big = tune_overhead(n, reuse), tune_overhead(3 * n, reuse)
    marginal = (big - small) / (2 * n / 2)  # seconds per 1-second trial slot, two slots at once
    return {"reuse_actors": reuse, "trials": [n, 3 * n], "wall_s": [small, big],
            "per_trial_overhead": marginal - 1.0, "fixed_s": small - n / 2 * marginal}


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


def main() -> None:
    import ray

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--parts", default="overhead,diffusion,hybrid", help="comma-separated sections to run")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    previous = RESULTS / "tune.json"
    doc = json.loads(previous.read_text()) if previous.exists() else {}
    payload = {k: doc[k] for k in ("overhead", "diffusion", "hybrid") if k in doc}
    trials, per_trial, seeds = (4, 300, 1) if args.quick else (8, 1500, 3)
    setup = Setup()
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False, logging_level="ERROR")
    try:
        if "overhead" in parts:
            payload["overhead"] = [per_trial_overhead(4 if args.quick else 10, reuse) for reuse in (False, True)]
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
