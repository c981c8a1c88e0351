"""Bilevel benchmark: estimators (error, cost), actors vs one process vs betty, Ray's share.

    python bench/bilevel.py            # writes bench/results/bilevel.json and prints the tables

betty (``betty-ml``) is optional: it declares Python < 3.11, so it is installed for the benchmark
only, with ``pip install --no-deps --ignore-requires-python betty-ml==0.2.1`` (pure Python).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, write  # noqa: E402
from dist_core.bilevel import hypergradient, solve  # noqa: E402
from dist_core.bilevel.tasks import hyper_cleaning as hc  # noqa: E402
from dist_core.bilevel.tasks import quadratic  # noqa: E402


# ---------------------------------------------------------------- 1. estimators on the quadratic
def bench_estimators(d: int = 200, repeats: int = 5) -> list[dict]:
    q, x = quadratic.make(d)
    problem, y_star, exact, lmax = q.problem, q.y_star(x), q.hypergradient(x), q.lambda_max
    settings = [
        ("implicit_cg", dict(iters=20)),
        ("implicit_cg", dict(iters=100)),
        ("implicit_neumann", dict(iters=20, alpha=1.0 / lmax)),
        ("implicit_neumann", dict(iters=200, alpha=1.0 / lmax)),
        ("unrolled", dict(steps=20, lr=1.0 / lmax)),
        ("unrolled", dict(steps=20, lr=1.0 / lmax, truncate=5)),
        ("penalty", dict(gamma=10.0, steps=200, lr=0.5 / lmax)),
        ("penalty", dict(gamma=100.0, steps=2000, lr=0.5 / lmax)),
    ]
    rows = []
    for method, opts in settings:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            g = hypergradient(problem, y_star, x, None, None, method=method, **opts)
            times.append(time.perf_counter() - t0)
        rows.append({"method": method, "options": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in opts.items()},
                     "ms": 1e3 * median(times), "rel_error": float((g - exact).norm() / exact.norm())})
    return rows


# ---------------------------------------------------------------- 2. per-round cost on the quickstart
QUICK_METHODS = {
    "implicit_cg": dict(iters=20),
    "implicit_neumann": dict(iters=20, alpha=0.5),
    "unrolled": dict(steps=10, lr=0.5),
    "penalty": dict(gamma=10.0, steps=10, lr=0.5),
}


def bench_quickstart_rounds(rounds: int = 30) -> list[dict]:
    data = hc.make_data(1000, 300, 0.4, seed=0)
    problem = hc.make_problem(1e-2)
    rows = []
    for method, opts in QUICK_METHODS.items():
        r = solve(problem, [hc.init_model(64, 0, i) for i in range(2)], torch.full((1000,), 2.0), hc.shards(data, 2),
                  {"x": data.x_val, "y": data.y_val}, lower_learners=2, method=method, method_options=opts,
                  rounds=rounds, inner_steps=10 if method == "unrolled" else 20, inner_lr=0.5, upper_lr=0.3,
                  backend="local")
        rows.append({"method": method, "round_ms": 1e3 * median(h["round_s"] for h in r.history[1:]),
                     "val_loss_end": r.history[-1]["upper_loss"]})
    return rows


# ---------------------------------------------------------------- 3. actors vs one process vs betty
def synthetic_npz(path: Path, n: int, d: int, seed: int = 0) -> Path:
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=n, n_features=d, n_informative=d // 4, n_classes=10,
                               n_clusters_per_class=1, random_state=seed)
    np.savez(path, X=x.astype(np.float32), y=y.astype(np.int64))
    return path


def scale_setup(npz: Path, n_train: int, hidden: int):
    data = hc.make_data(n_train, 1000, 0.4, seed=0, path=str(npz))
    return data, hc.make_problem(1e-3), data.x_train.shape[1]


def run_ours(data, problem, n_features, hidden, k, backend, rounds, inner, cg_iters, cpus):
    r = solve(problem, [hc.init_model(n_features, hidden, i) for i in range(k)], torch.full((len(data.y_noisy),), 2.0),
              hc.shards(data, k), {"x": data.x_val, "y": data.y_val}, lower_learners=k, method="implicit_cg",
              method_options=dict(iters=cg_iters), rounds=rounds, inner_steps=inner, inner_lr=0.5, upper_lr=0.3,
              backend=backend, cpus_per_learner=cpus)
    steady = r.history[1:]  # the first round pays for actor start-up and warm caches
    return {"round_s": median(h["round_s"] for h in steady), "comm_share": median(h["comm_share"] for h in steady),
            "val_loss_end": r.history[-1]["upper_loss"]}


def run_betty(data, n_features, hidden, rounds, inner, cg_iters):
    """The identical K=1 problem (same data, model, losses, optimisers, CG) through betty's Engine."""
    import torch.nn.functional as F
    from betty.configs import Config, EngineConfig
    from betty.engine import Engine
    from betty.problems import ImplicitProblem

    theta0 = hc.init_model(n_features, hidden, 0)

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.ParameterDict({k: torch.nn.Parameter(v.clone()) for k, v in theta0.items()})

        def forward(self, x):
            return hc.logits(dict(self.p), x)

    class Weights(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.lam = torch.nn.Parameter(torch.full((n,), 2.0))

        def forward(self, idx):
            return hc.example_weights(self.lam[idx])

    train = (data.x_train, data.y_noisy, torch.arange(len(data.y_noisy)))
    val = (data.x_val, data.y_val)

    class Inner(ImplicitProblem):
        def training_step(self, batch):
            x, y, idx = batch
            ce = F.cross_entropy(self.module(x), y, reduction="none")
            reg = sum((p * p).sum() for p in self.module.parameters())
            return (self.outer(idx) * ce).mean() + 0.5 * 1e-3 * reg

    class Outer(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            return F.cross_entropy(self.inner(x), y)

    round_times: list[float] = []

    class Timed(Engine):
        def train_step(self):
            t0 = time.perf_counter()
            super().train_step()
            round_times.append(time.perf_counter() - t0)

    clf, w = Classifier(), Weights(len(data.y_noisy))
    inner = Inner(name="inner", module=clf, optimizer=torch.optim.SGD(clf.parameters(), lr=0.5),
                  train_data_loader=[train], config=Config(type="cg", cg_iterations=cg_iters, unroll_steps=inner))
    outer = Outer(name="outer", module=w, optimizer=torch.optim.Adam(w.parameters(), lr=0.3),
                  train_data_loader=[val], config=Config())
    engine = Timed(config=EngineConfig(train_iters=rounds * inner_steps_of(inner), strategy="cpu", valid_step=10**9),
                   problems=[outer, inner], dependencies={"u2l": {outer: [inner]}, "l2u": {inner: [outer]}})
    engine.run()
    # Engine.train_step is one lower step; a round is `inner` of them (the last one also steps λ).
    per_round = [sum(round_times[i : i + inner_steps_of(inner)]) for i in range(0, len(round_times), inner_steps_of(inner))]
    return {"round_s": median(per_round[1:])}


def inner_steps_of(problem) -> int:
    return problem.config.unroll_steps


def compare_paths(data, problem, nf: int, hidden: int, rounds: int, inner: int, cg_iters: int) -> dict:
    """The same problem in one process, on K=1 and K=2 actors, and through betty (K=1)."""
    import ray

    rows = {}
    rows["one process, K=1 (2 threads)"] = run_ours(data, problem, nf, hidden, 1, "local", rounds, inner, cg_iters, 2)
    rows["one process, K=2 (2 threads)"] = run_ours(data, problem, nf, hidden, 2, "local", rounds, inner, cg_iters, 2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        rows["Ray actors, K=1 (2 CPUs)"] = run_ours(data, problem, nf, hidden, 1, "ray", rounds, inner, cg_iters, 2)
        rows["Ray actors, K=2 (1 CPU each)"] = run_ours(data, problem, nf, hidden, 2, "ray", rounds, inner, cg_iters, 1)
    finally:
        ray.shutdown()
    try:
        rows["betty 0.2.1, K=1 (2 threads)"] = run_betty(data, nf, hidden, rounds, inner, cg_iters)
    except ImportError as e:
        rows["betty 0.2.1, K=1 (2 threads)"] = {"skipped": f"betty not importable: {e}"}
    return rows


def bench_paths(quick: bool) -> dict:
    out = {}
    digits = hc.make_data(1000, 300, 0.4, seed=0)
    out["digits quickstart (op-overhead-bound)"] = {
        "problem": {"n_train": 1000, "features": 64, "hidden": 0, "inner_steps": 20, "cg_iters": 20, "rounds": 30},
        "rows": compare_paths(digits, hc.make_problem(1e-2), 64, 0, 30, 20, 20),
    }
    n_train, d, hidden, rounds, inner, cg = (2000, 64, 64, 4, 5, 5) if quick else (8000, 256, 256, 8, 10, 10)
    with tempfile.TemporaryDirectory() as tmp:
        npz = synthetic_npz(Path(tmp) / "synthetic.npz", n_train + 2000, d)
        data, problem, nf = scale_setup(npz, n_train, hidden)
    out[f"synthetic {n_train}x{d}, MLP {hidden} (matmul-bound)"] = {
        "problem": {"n_train": n_train, "features": d, "hidden": hidden, "inner_steps": inner, "cg_iters": cg, "rounds": rounds},
        "rows": compare_paths(data, problem, nf, hidden, rounds, inner, cg),
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = ap.parse_args()
    est = bench_estimators()
    quick = bench_quickstart_rounds()
    paths = bench_paths(args.quick)
    out = write("bilevel", {"estimators_quadratic_d200": est, "quickstart_round_by_method": quick, "paths": paths})
    print("| estimator | options | ms / hypergradient | rel. error |")
    print("|---|---|---|---|")
    for r in est:
        print(f"| {r['method']} | {r['options']} | {r['ms']:.1f} | {r['rel_error']:.1e} |")
    print("\n| method (quickstart, K=2, in-process) | ms / round | val loss after 30 rounds |")
    print("|---|---|---|")
    for r in quick:
        print(f"| {r['method']} | {r['round_ms']:.1f} | {r['val_loss_end']:.3f} |")
    for title, section in paths.items():
        base = section["rows"]["one process, K=2 (2 threads)"]["round_s"]
        print(f"\n{title}: {section['problem']}")
        print("| path | ms / round | speed vs one process K=2 | Ray share of round |")
        print("|---|---|---|---|")
        for name, r in section["rows"].items():
            if "skipped" in r:
                print(f"| {name} | skipped | | |")
                continue
            share = f"{100 * r['comm_share']:.1f}%" if "Ray" in name else "–"
            print(f"| {name} | {1e3 * r['round_s']:.1f} | {base / r['round_s']:.2f}× | {share} |")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
