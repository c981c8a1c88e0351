"""Bilevel benchmark: estimators (error, cost), actors vs one process vs betty, Ray's share.

    python bench/bilevel.py            # writes bench/results/bilevel.json and prints the tables

betty (``betty-ml``) is optional: it declares Python < 3.11, so it is installed for the benchmark
only, with ``pip install --no-deps --ignore-requires-python betty-ml==0.2.1`` (pure Python).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, commit, median, write  # noqa: E402
from dist_core.bilevel import estimators, hypergradient, solve  # noqa: E402
from dist_core.bilevel.step import LowerConfig, LowerState, lower_round  # noqa: E402
from dist_core.bilevel.tasks import betty_regression as br  # noqa: E402
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
        # First order, H⁻¹ ≈ I: the error below is that bias (exact only when ∇²_θθ g = I).
        ("finite_difference", dict(alpha=0.01)),
        ("sama", dict(alpha=1.0)),
    ]
    rows = []
    for method, opts in settings:
        load = os.getloadavg()[0]
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            g = hypergradient(problem, y_star, x, None, None, method=method, **opts)
            times.append(time.perf_counter() - t0)
        rows.append({"method": method, "options": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in opts.items()},
                     "ms": 1e3 * median(times), "rel_error": float((g - exact).norm() / exact.norm()),
                     "load_1min": load})
    return rows


# ---------------------------------------------------------------- 2. per-round cost on the quickstart
QUICK_METHODS = {
    "implicit_cg": dict(iters=20),
    "implicit_neumann": dict(iters=20, alpha=0.5),
    "unrolled": dict(steps=10, lr=0.5),
    "penalty": dict(gamma=10.0, steps=10, lr=0.5),
    "finite_difference": dict(alpha=0.01),
    "sama": dict(alpha=1.0),
}


def bench_quickstart_rounds(rounds: int = 30) -> list[dict]:
    data = hc.make_data(1000, 300, 0.4, seed=0)
    problem = hc.make_problem(1e-2)
    rows = []
    for method, opts in QUICK_METHODS.items():
        load = os.getloadavg()[0]
        r = solve(problem, [hc.init_model(64, 0, i) for i in range(2)], torch.full((1000,), 2.0), hc.shards(data, 2),
                  {"x": data.x_val, "y": data.y_val}, lower_learners=2, method=method, method_options=opts,
                  rounds=rounds, inner_steps=10 if method == "unrolled" else 20, inner_lr=0.5, upper_lr=0.3,
                  backend="local")
        rows.append({"method": method, "round_ms": 1e3 * median(h["round_s"] for h in r.history[1:]),
                     "val_loss_end": r.history[-1]["upper_loss"], "load_1min": load})
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


def run_ours(data, problem, n_features, hidden, k, backend, rounds, inner, cg_iters, cpus, round_loop="collective"):
    r = solve(problem, [hc.init_model(n_features, hidden, i) for i in range(k)], torch.full((len(data.y_noisy),), 2.0),
              hc.shards(data, k), {"x": data.x_val, "y": data.y_val}, lower_learners=k, method="implicit_cg",
              method_options=dict(iters=cg_iters), rounds=rounds, inner_steps=inner, inner_lr=0.5, upper_lr=0.3,
              backend=backend, cpus_per_learner=cpus, round_loop=round_loop)
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
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        rows["Ray actors, K=1 (2 CPUs)"] = run_ours(data, problem, nf, hidden, 1, "ray", rounds, inner, cg_iters, 2)
        # The default round loop (learners all-gather their parts; the driver hands out chunks of
        # rounds) and the classic one (four actor hops per round), alternating twice.
        for repeat in range(2):
            for loop, name in (("collective", "Ray actors, K=2 (1 CPU each)"),
                               ("actor_calls", "Ray actors, K=2 (1 CPU each), actor calls")):
                row = run_ours(data, problem, nf, hidden, 2, "ray", rounds, inner, cg_iters, 1, loop)
                if name not in rows or row["round_s"] < rows[name]["round_s"]:
                    rows[name] = row  # the better of two: a busy spell hits one repeat, not the code
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


# ---------------------------------------------------------------- 4. memory of one hypergradient against T
MEMORY_ARMS = [  # (label, method, options; unrolled takes its T steps itself)
    ("implicit_cg", "implicit_cg", dict(iters=20)),
    ("implicit_neumann", "implicit_neumann", dict(iters=20, alpha=0.1)),
    ("penalty", "penalty", dict(gamma=10.0, steps=10, lr=0.1)),
    ("finite_difference", "finite_difference", dict(alpha=0.01)),
    ("sama", "sama", dict(alpha=1.0)),
    ("unrolled", "unrolled", dict(lr=0.1)),
    ("unrolled, truncate 10", "unrolled", dict(lr=0.1, truncate=10)),
]


def peak_tensor_bytes(fn) -> tuple[int, float]:
    """Peak of (allocated − freed) bytes on torch's CPU allocator while ``fn`` runs, and its wall time.

    The allocator's own events, recorded by ``torch.profiler`` with ``profile_memory=True``: every
    tensor allocation and free, in order. Tensors made before the call (the problem's matrices) are
    not counted; Python objects and the profiler's own bookkeeping are not tensor memory.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak, wall


def bench_memory(n: int = 4000, dim: int = 500, inner: tuple[int, ...] = (10, 100, 1000)) -> dict:
    """One lower-learner round (T inner steps, then the estimate) on betty's regression problem at
    n × dim (float32). Logistic regression, not the quadratic: a linear step map lets reverse mode
    keep nothing per step, which would hide what unrolling costs."""
    data = br.make_data(0, n=n, dim=dim)
    problem = br.make_problem()
    batches = (data.x_train, data.y_train), (data.x_val, data.y_val)
    rows = []
    for label, method, opts in MEMORY_ARMS:
        for t in inner:
            unrolled = method == "unrolled"
            o = dict(opts, steps=t) if unrolled else opts
            cfg = LowerConfig(method, estimators.make_options(method, **o), 0 if unrolled else t, 0.1)
            state = LowerState({"_": torch.zeros(dim)})
            lam = {"_": torch.ones(dim)}
            load = os.getloadavg()[0]
            peak, wall = peak_tensor_bytes(lambda: lower_round(problem, state, lam, *batches, cfg))
            rows.append({"arm": label, "method": method, "options": o, "inner_steps": t, "peak_bytes": peak,
                         "wall_s": wall, "load_1min": load})
            print(f"memory: {label}, T={t}: {peak / 1024:.1f} KiB, {wall:.2f} s (load {load:.1f})", flush=True)
    return {"problem": {"task": "betty_regression", "n_train": n // 2, "dim": dim, "dtype": "float32",
                        "theta_bytes": 4 * dim, "batch_bytes": 4 * (n // 2) * (dim + 1),
                        "method": "torch.profiler CPU allocator events (profile_memory=True), peak above the start"},
            "rows": rows}


# ---------------------------------------------------------------- 5. Self-Tuning Networks: the amortised hypergradient
def _ridge_bilevel(data):
    """The same ridge problem for the implicit estimator: θ = w, λ = u, L_T and L_V as in ``stn/ridge.py``."""
    from dist_core.bilevel.problem import BilevelProblem

    n = len(data.y)
    lower = lambda w, u, _b: 0.5 * ((data.x @ w - data.y) ** 2).sum() / n + 0.5 * torch.exp(u) * (w * w).sum() / n  # noqa: E731
    upper = lambda w, u, _b: 0.5 * ((data.x_val @ w - data.y_val) ** 2).mean()  # noqa: E731
    return BilevelProblem(lower=lower, upper=upper)


def bench_stn(cycles: tuple[int, ...] = (50, 200, 800), u0: float = 0.0) -> dict:
    from dist_core.threads import torch_threads

    with torch_threads(1):  # as the stn kind runs
        return _bench_stn(cycles, u0)


def _bench_stn(cycles: tuple[int, ...], u0: float) -> dict:
    """dL_V/du at u0 three ways on ridge regression, where it is known in closed form.

    An STN trained at a frozen u0 (its φ-steps at u perturbed with σ = 0.2, no λ-steps) reads the
    hypergradient off its best-response layer, d/du L_V(ŵ_φ(u)); the implicit CG estimator solves
    with the lower Hessian at w*(u0). The STN pays per training cycle instead of per hypergradient."""
    from dist_core.stn import hyper, ridge
    from dist_core.stn.loop import STN, STNConfig, STNState

    data = ridge.make_data(20, 50, 5, 1.0, seed=0)
    w_star, dw = ridge.closed_form(data, u0)
    w_live = w_star.clone().requires_grad_(True)
    exact = float(torch.dot(torch.autograd.grad(ridge.validation_loss(data, w_live), w_live)[0], dw))
    rows = []
    for t in cycles:
        load = os.getloadavg()[0]
        state = STNState(ridge.init_phi(5, 0), torch.tensor([u0], dtype=torch.float64),
                         torch.tensor([hyper.inv_softplus(0.2)], dtype=torch.float64), torch.Generator().manual_seed(0))
        stn = STN(ridge.make_problem(data), state, STNConfig(train_steps=3, valid_steps=1, warmup_steps=10**9,
                                                             lr_phi=0.03, phi_optimizer="adam", tune_scales=False))
        t0 = time.perf_counter()
        for _ in range(t):
            stn.cycle(lambda: (None, 64), lambda: (None, 1))
        wall = time.perf_counter() - t0
        uu = torch.tensor([[u0]], dtype=torch.float64, requires_grad=True)
        g = float(torch.autograd.grad(ridge.validation_loss(data, ridge.best_response(stn.phi, uu)[0]), uu)[0])
        rows.append({"arm": f"STN, {t} cycles", "cycles": t, "ms_per_cycle": 1e3 * wall / t,
                     "hypergradient": g, "rel_error": abs(g - exact) / abs(exact), "load_1min": load})
    problem = _ridge_bilevel(data)
    u = torch.tensor(u0, dtype=torch.float64)
    for iters in (5, 20):
        load = os.getloadavg()[0]
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            g = float(hypergradient(problem, w_star, u, None, None, method="implicit_cg", iters=iters))
            times.append(time.perf_counter() - t0)
        rows.append({"arm": f"implicit_cg, {iters} iterations, at w*", "ms_per_hypergradient": 1e3 * median(times),
                     "hypergradient": g, "rel_error": abs(g - exact) / abs(exact), "load_1min": load})
    return {"problem": {"n_train": 20, "n_val": 50, "dim": 5, "u": u0, "exact": exact}, "rows": rows}


PARTS = {  # JSON key -> (CLI name, function of the parsed args)
    "estimators_quadratic_d200": ("estimators", lambda a: bench_estimators()),
    "quickstart_round_by_method": ("quickstart", lambda a: bench_quickstart_rounds()),
    "paths": ("paths", lambda a: bench_paths(a.quick)),
    "memory_vs_inner_steps": ("memory", lambda a: bench_memory()),
    "stn_ridge": ("stn", lambda a: bench_stn()),
}
HEADER = ("benchmark", "date", "commit", "machine")


def merge_write(name: str, parts: dict) -> Path:
    """Replace ``parts`` in the result file and keep the others, with each part's date and commit."""
    path = RESULTS / f"{name}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    runs = old.pop("part_runs", {})
    kept = {k: v for k, v in old.items() if k not in HEADER}
    for key in kept:  # parts written before per-part records existed inherit the file's header
        runs.setdefault(key, {"date": old.get("date"), "commit": old.get("commit")})
    now = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": commit()}
    runs.update({key: dict(now) for key in parts})
    return write(name, {**kept, **parts, "part_runs": runs})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    ap.add_argument("--parts", default=",".join(n for n, _ in PARTS.values()),
                    help="comma-separated parts to run (the others are kept from the result file): "
                         + ", ".join(n for n, _ in PARTS.values()))
    args = ap.parse_args()
    chosen = set(args.parts.split(","))
    unknown = chosen - {n for n, _ in PARTS.values()}
    if unknown:
        ap.error(f"unknown part(s) {', '.join(sorted(unknown))}")
    results = {key: fn(args) for key, (cli, fn) in PARTS.items() if cli in chosen}
    out = merge_write("bilevel", results)
    doc = json.loads(out.read_text())
    est, quick, paths = (doc.get(k, []) for k in ("estimators_quadratic_d200", "quickstart_round_by_method", "paths"))
    paths = paths or {}
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
    mem = doc.get("memory_vs_inner_steps")
    if mem:
        print(f"\npeak tensor memory of one round, {mem['problem']} ")
        print("| estimator | T | peak KiB | ms |")
        print("|---|---|---|---|")
        for r in mem["rows"]:
            print(f"| {r['arm']} | {r['inner_steps']} | {r['peak_bytes'] / 1024:.1f} | {1e3 * r['wall_s']:.1f} |")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
