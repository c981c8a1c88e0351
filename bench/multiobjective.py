"""Multi-objective benchmark: FERERO against linear scalarisation and MGDA, on the toy and on digits.

    python bench/multiobjective.py     # writes bench/results/multiobjective.json

A. The bi-objective quadratic of tests/test_multiobjective.py (x ∈ R⁴, f_i = ½‖x − a_i‖²_{Q_i}) along
   5 rays spread over the quarter circle, 1000 steps of η = 0.2 from x = 0. The exact ray point x*(r)
   comes from the Pareto set's parametrisation and a scipy root-find. Per method: the final
   ‖x − x*‖∞, the ray residual ‖B_h F‖/‖F‖, and the steps until ‖x − x*‖∞ < 1e-6 ("never" if not
   within the budget). Methods: FERERO (warm-started dual, the default), FERERO as the reference
   runs it (fresh dual each step), linear scalarisation with weights r/Σr (what a user picks without
   FERERO), MGDA (min-norm, no preference).
B. The two-task digits network of ``kind: multiobjective`` (trunk of 4 tanh units, full batch,
   300 steps of η = 0.5) on 3 rays: the ray residual of the final training losses, the test
   accuracies and the wall time per step. ferero_single runs on minibatches of 128.
One thread, learners in-process (this compares methods, not Ray); the 1-min load average is
recorded before each arm.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.optimize as so
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import write  # noqa: E402
from dist_core.multiobjective import DualConfig, MultiObjectiveProblem, ferero_direction, solve_preference  # noqa: E402
from dist_core.multiobjective import digits  # noqa: E402
from dist_core.multiobjective.rays import even_rays  # noqa: E402

N = 4
TOY_STEPS, TOY_LR, TOL = 1000, 0.2, 1e-6
ARMS = {  # name -> (method, dual config)
    "FERERO (warm-started dual)": ("ferero", DualConfig()),
    "FERERO, reference dual (fresh each step)": ("ferero", DualConfig(warm_start=False)),
    "linear scalarisation (weights r/Σr)": ("linear", DualConfig()),
    "MGDA (min-norm)": ("mgda", DualConfig()),
}


def load() -> float:
    return round(os.getloadavg()[0], 2)


def quadratic(seed: int = 0):
    rng = np.random.default_rng(seed)

    def spd():
        m = rng.normal(size=(N, N))
        return m @ m.T / N + 0.5 * np.eye(N)

    return [spd(), spd()], [rng.normal(size=N), rng.normal(size=N)]


def ray_point(Q, a, r) -> np.ndarray:
    def x_of(t):
        return np.linalg.solve(t * Q[0] + (1 - t) * Q[1], t * Q[0] @ a[0] + (1 - t) * Q[1] @ a[1])

    def off(t):
        x = x_of(t)
        F = [0.5 * (x - a[i]) @ Q[i] @ (x - a[i]) for i in range(2)]
        return r[1] * F[0] - r[0] * F[1]

    return x_of(so.brentq(off, 1e-12, 1 - 1e-12, xtol=1e-15))


def toy_arm(method: str, cfg: DualConfig, Q, a, r) -> dict:
    Qt, at = [torch.tensor(q) for q in Q], [torch.tensor(v) for v in a]
    problem = MultiObjectiveProblem([lambda x, _b, i=i: 0.5 * (x - at[i]) @ Qt[i] @ (x - at[i]) for i in range(2)],
                                    preference=r)
    x_star = ray_point(Q, a, r)
    x, w, reached = torch.zeros(N, dtype=torch.float64), None, None
    t0 = time.perf_counter()
    for t in range(1, TOY_STEPS + 1):
        d, w = ferero_direction(problem, x, None, dual=cfg, method=method, start=w)
        x = x + TOY_LR * d
        if reached is None and float(np.abs(x.numpy() - x_star).max()) < TOL:
            reached = t
    wall = time.perf_counter() - t0
    F = problem.values({"_": x}, None)
    return {"error": float(np.abs(x.numpy() - x_star).max()), "ray_residual": problem.ray_residual(F.numpy()),
            "steps_to_1e-6": reached, "step_ms": 1e3 * wall / TOY_STEPS}


def toy() -> dict:
    Q, a = quadratic()
    rays = even_rays(5)
    out = {"rays": rays, "steps": TOY_STEPS, "lr": TOY_LR, "arms": {}}
    for name, (method, cfg) in ARMS.items():
        before = load()
        rows = [toy_arm(method, cfg, Q, a, r) for r in rays]
        out["arms"][name] = {"load_1min": before, "per_ray": rows,
                             "max_error": max(r["error"] for r in rows),
                             "max_ray_residual": max(r["ray_residual"] for r in rows),
                             "steps_to_1e-6": [r["steps_to_1e-6"] for r in rows],
                             "step_ms": float(np.median([r["step_ms"] for r in rows]))}
        print(name, out["arms"][name]["max_error"], out["arms"][name]["steps_to_1e-6"], flush=True)
    return out


DIGIT_RAYS = [[0.45, 0.55], [0.6, 0.4], [0.75, 0.25]]
DIGIT_ARMS = {
    "FERERO, full batch": ("ferero", 0, DualConfig()),
    "FERERO single-step, batch 128": ("ferero_single", 128, DualConfig(normalize=True)),
    "linear scalarisation (weights r/Σr), full batch": ("linear", 0, DualConfig()),
    "MGDA (min-norm), full batch": ("mgda", 0, DualConfig()),
}


def digits_bench(steps: int = 300, lr: float = 0.5) -> dict:
    data = digits.make_data(1200, 0)
    out = {"rays": DIGIT_RAYS, "steps": steps, "lr": lr, "hidden": 4, "arms": {}}
    for name, (method, batch, cfg) in DIGIT_ARMS.items():
        before = load()
        shards = digits.shards(data, 2, batch, 0)
        rows = []
        t0 = time.perf_counter()
        for r in DIGIT_RAYS:
            problem = digits.make_problem(r)
            res = solve_preference(problem, digits.init_params(4, 0), shards, steps=steps, lr=lr, learners=2,
                                   method=method, dual=cfg, backend="local")
            ev = digits.evaluate(res.theta, data)
            rows.append({**ev, "preference": r,
                         "ray_residual": problem.ray_residual(np.array([ev["train_f1"], ev["train_f2"]]))})
        wall = time.perf_counter() - t0
        out["arms"][name] = {"load_1min": before, "per_ray": rows,
                             "mean_ray_residual": float(np.mean([r["ray_residual"] for r in rows])),
                             "step_ms": 1e3 * wall / (steps * len(DIGIT_RAYS))}
        print(name, out["arms"][name]["mean_ray_residual"], flush=True)
    return out


def main() -> None:
    torch.set_num_threads(1)
    path = write("multiobjective", {"toy": toy(), "digits": digits_bench()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
