"""AIMC benchmark: pipeline schedules on Ray actors, and pulsed training against IBM aihwkit.

    python bench/analog.py                # writes bench/results/analog.json
    python bench/analog.py --pulsed-only  # reruns B and C only, keeping the file's pipeline section

A. An MLP (64-64-48-32-10) on digits cut into S = 2, 3, 4 stage actors: samples/s (wall) and
   clock-cycle density, synchronous (B = 4 micro-batches of 16) against asynchronous, one epoch,
   best of REPEATS_PIPELINE interleaved runs.
B. Pulsed Analog SGD on one 64→10 analog layer with soft-bounds devices, stochastic pulse trains
   (desired_bl = 31, update management on, forward perfect, no device noise: equal fidelity) over
   the same batches: training steps/s and final accuracy, aihwkit's AnalogLinear + AnalogSGD
   against ours in both pulse orders (per-sample: aihwkit's; grouped per weight over the batch),
   at 1 and 2 threads, REPEATS interleaved rounds with the 1-min load average before each arm.
   aihwkit is a benchmark-only install (bench/README.md); its rows are skipped when it is not
   importable.
C. How far the grouped order is from the per-sample one on weight-dependent devices: the same
   update from the same weights and the same random draws in both orders, and whole trainings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, median, write  # noqa: E402
from dist_core.analog import devices  # noqa: E402
from dist_core.analog.job import evaluate, load_digits  # noqa: E402
from dist_core.analog.optim import AnalogSGD, pulsed_batch_update, pulsed_per_sample_update  # noqa: E402
from dist_core.analog.pipeline import Stage, execute, split_layers  # noqa: E402
from dist_core.analog.pipeline_schedule import asynchronous, synchronous  # noqa: E402

RESULTS_FILE = RESULTS / "analog.json"
SIZES = [64, 64, 48, 32, 10]
DEVICE = dict(dw_min=0.001, w_max=1.0, w_min=-1.0, dw_min_dtod=0.0, dw_min_std=0.0, w_max_dtod=0.0,
              w_min_dtod=0.0, up_down_dtod=0.0)


def pipeline(S: int, schedule: str, micro_batch: int = 16, B: int = 4) -> dict:
    import ray

    xtr, ytr, xte, yte = load_digits(0)
    n = len(xtr) // (micro_batch * B) * B
    xs = [xtr[i * micro_batch:(i + 1) * micro_batch] for i in range(n)]
    ys = [ytr[i * micro_batch:(i + 1) * micro_batch] for i in range(n)]
    sync = schedule == "sync"
    groups = split_layers(SIZES, S, seed=0)
    actor = ray.remote(num_cpus=0)(Stage)
    stages = [actor.remote(g, i == S - 1, 0.05, sync, B, None, threads=1) for i, g in enumerate(groups)]
    ray.get([s.weights.remote() for s in stages])  # actors up before timing
    plan = synchronous(S, B, n // B) if sync else asynchronous(S, n)
    t0 = time.perf_counter()
    execute(plan, stages, xs, ys, remote=True)
    wall = time.perf_counter() - t0
    loss, acc = evaluate(ray.get([s.weights.remote() for s in stages]), xte, yte)
    for s in stages:
        ray.kill(s)
    return {"stages": S, "schedule": schedule, "samples_per_s": n * micro_batch / wall, "cycles": plan.cycles,
            "density": plan.density, "test_acc": acc}


def batches(steps: int, batch: int, seed: int = 0):
    xtr, ytr, xte, yte = load_digits(seed)
    rng = np.random.default_rng(seed)
    idx = [rng.choice(len(xtr), batch, replace=False) for _ in range(steps)]
    return [(xtr[i], ytr[i]) for i in idx], (xte, yte)


def train(order: str, steps: int, batch: int, lr: float, device: dict = DEVICE, seed: int = 0,
          record: list | None = None) -> tuple[torch.Tensor, float, float]:
    """Pulsed Analog SGD on the 64→10 softmax layer; returns (weights, wall seconds, CPU seconds of
    this process). ``record`` collects (W, x, d) before each update."""
    data, _ = batches(steps, batch)
    dev = devices.make("soft_bounds", seed=0, **device)
    opt = AnalogSGD(dev, lr=lr, mode="pulsed", desired_bl=31, pulse_order=order, seed=seed)
    w = torch.zeros(10, 64, dtype=torch.float64)
    eye = torch.eye(10, dtype=torch.float64)  # one-hot rows by lookup: F.one_hot costs more than a step's update math
    t0, c0 = time.perf_counter(), time.process_time()
    for x, y in data:
        xt = torch.as_tensor(x)
        d = torch.softmax(xt @ w.T, -1) - eye[torch.as_tensor(y)]
        if record is not None:
            record.append((w, xt, d))
        w = opt.step_batch(w, xt, d)
    return w, time.perf_counter() - t0, time.process_time() - c0


def accuracy(w: torch.Tensor) -> float:
    _, (xte, yte) = batches(0, 1)
    return float(((torch.as_tensor(xte) @ w.T).argmax(-1) == torch.as_tensor(yte)).double().mean())


def ours(steps: int, batch: int, lr: float, order: str) -> dict:
    w, wall, cpu = train(order, steps, batch, lr)
    return {"steps_per_s": steps / wall, "steps_per_cpu_s": steps / cpu, "test_acc": accuracy(w)}


def aihwkit_run(steps: int, batch: int, lr: float) -> dict:
    from aihwkit.nn import AnalogLinear
    from aihwkit.optim import AnalogSGD as AihwSGD
    from aihwkit.simulator.configs import SingleRPUConfig
    from aihwkit.simulator.configs.devices import SoftBoundsDevice

    data, (xte, yte) = batches(steps, batch)
    cfg = SingleRPUConfig(device=SoftBoundsDevice(**DEVICE))
    cfg.forward.is_perfect = True
    cfg.backward.is_perfect = True
    cfg.update.desired_bl = 31
    layer = AnalogLinear(64, 10, bias=False, rpu_config=cfg)
    layer.set_weights(torch.zeros(10, 64))
    opt = AihwSGD(layer.parameters(), lr=lr)
    opt.regroup_param_groups(layer)
    t0, c0 = time.perf_counter(), time.process_time()
    for x, y in data:
        opt.zero_grad()
        # Sum over the batch, matching our per-sample updates with lr applied to each sample.
        loss = F.cross_entropy(layer(torch.as_tensor(x, dtype=torch.float32)), torch.as_tensor(y), reduction="sum")
        loss.backward()
        opt.step()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    with torch.no_grad():
        acc = float((layer(torch.as_tensor(xte, dtype=torch.float32)).argmax(-1) == torch.as_tensor(yte)).double().mean())
    return {"steps_per_s": steps / wall, "steps_per_cpu_s": steps / cpu, "test_acc": acc, "version": __import__("aihwkit").__version__}


REPEATS = 7
REPEATS_PIPELINE = 3
ARMS = {"ours, per-sample pulses (aihwkit's order)": "per_sample", "ours, batch-grouped pulses": "grouped"}


def pulsed_rows(steps: int, batch: int, lr: float, threads: int) -> dict[str, dict]:
    """Each implementation REPEATS times, interleaved (one round runs every arm once), with the
    1-min load average read before each arm. A row keeps its fastest run (the one least disturbed
    by other processes, for every arm alike), its median, every run, and the median over rounds of
    its steps/s against aihwkit's in the same round (paired, so a noisy round cancels out)."""
    torch.set_num_threads(threads)  # aihwkit's CPU kernels use the same OpenMP pool as torch
    runs: dict[str, list[dict]] = {}
    impls: dict = {}
    try:
        import aihwkit  # noqa: F401
        impls["aihwkit 1.2.0"] = lambda: aihwkit_run(steps, batch, lr)
    except ImportError as e:
        runs["aihwkit 1.2.0"] = [{"skipped": f"not importable: {e}"}]
    for name, order in ARMS.items():
        impls[name] = lambda order=order: ours(steps, batch, lr, order)
    for name, run in impls.items():  # warm-up (Numba loads its compiled kernel, aihwkit its tile)
        run()
    for _ in range(REPEATS):
        for name, run in impls.items():
            load = os.getloadavg()[0]
            runs.setdefault(name, []).append(run() | {"load_1min": load})
    rows = {}
    for name, rs in runs.items():
        row = max(rs, key=lambda r: r.get("steps_per_s", 0.0)) | {"threads": threads}
        if "steps_per_s" in row:
            row |= {"median_steps_per_s": median(r["steps_per_s"] for r in rs),
                    "best_steps_per_cpu_s": max(r["steps_per_cpu_s"] for r in rs), "runs": rs}
            if "aihwkit 1.2.0" in impls and name != "aihwkit 1.2.0":
                ref = runs["aihwkit 1.2.0"]
                row["paired_ratio_median"] = median(r["steps_per_s"] / a["steps_per_s"] for r, a in zip(rs, ref))
        rows[name] = row
    return rows


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def deviation(device: dict, steps: int, batch: int, lr: float, probes: int = 20) -> dict:
    """The grouped order against the per-sample one on ``device``.

    one_step: from the per-sample training's own weights at ``probes`` evenly spaced steps, the
    same update (same x, d and generator state, hence the same coincidences) in both orders:
    ‖ΔW_grouped − ΔW_per_sample‖ / ‖ΔW_per_sample‖ — the cost of the order alone.
    training: the final weights of a grouped and a per-sample training (same seed) relative to the
    per-sample ones, beside two per-sample trainings of different seeds (the pulse noise floor)."""
    record: list = []
    w_ps = train("per_sample", steps, batch, lr, device, seed=0, record=record)[0]
    w_ps2 = train("per_sample", steps, batch, lr, device, seed=1)[0]
    w_g = train("grouped", steps, batch, lr, device, seed=0)[0]
    dev = devices.make("soft_bounds", seed=0, **device)
    one = []
    for k in np.linspace(0, steps - 1, probes).astype(int):
        w, x, d = record[k]
        a = pulsed_per_sample_update(dev, w, x, d, lr, 31, np.random.default_rng(int(k)))
        b = pulsed_batch_update(dev, w, x, d, lr, 31, np.random.default_rng(int(k)))
        if (a - w).norm() > 0:
            one.append(relative(b - w, a - w))
    return {"device": device, "steps": steps, "batch": batch, "lr": lr,
            "one_step_rel_median": median(one), "one_step_rel_max": max(one),
            "final_rel_grouped": relative(w_g, w_ps), "final_rel_other_seed": relative(w_ps2, w_ps),
            "test_acc": {"per_sample": accuracy(w_ps), "per_sample_other_seed": accuracy(w_ps2),
                         "grouped": accuracy(w_g)}}


# The benchmark's device, and a coarse one (100× fewer states over ±0.3) where a step's pulses move
# the weights enough for their order to matter.
COARSE = {**DEVICE, "dw_min": 0.01, "w_max": 0.3, "w_min": -0.3}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pulsed-only", action="store_true", help="rerun B and C; keep the pipeline section of the file")
    args = ap.parse_args(argv)
    threads_default = torch.get_num_threads()
    if args.pulsed_only:
        old = json.loads(RESULTS_FILE.read_text())
        pipe_doc = {k: old[k] for k in ("pipeline", "pipeline_repeats")}
        pipe_doc["pipeline_recorded"] = old.get("pipeline_recorded", {k: old.get(k) for k in ("date", "commit")})
    else:
        pipe_doc = {"pipeline": run_pipelines(), "pipeline_repeats": REPEATS_PIPELINE}
    pipe = pipe_doc["pipeline"]
    steps, batch, lr = 200, 16, 0.01
    pulsed = {f"{name}, {threads} thread{'s' * (threads > 1)}": row for threads in (1, 2)
              for name, row in pulsed_rows(steps, batch, lr, threads).items()}
    torch.set_num_threads(1)
    orders = {"benchmark device": deviation(DEVICE, steps, batch, lr), "coarse device": deviation(COARSE, steps, batch, lr)}
    torch.set_num_threads(threads_default)  # the machine record states the default
    out = write("analog", {**pipe_doc, "pulsed": {"steps": steps, "batch": batch, "lr": lr, "repeats": REPEATS,
                                                  "device": DEVICE, "desired_bl": 31, "rows": pulsed},
                           "pulse_orders": orders})
    print("| S | schedule | samples/s | cycles | density | test acc |")
    print("|---|---|---|---|---|---|")
    for r in pipe:
        print(f"| {r['stages']} | {r['schedule']} | {r['samples_per_s']:.0f} | {r['cycles']} | {r['density']:.3f} | {r['test_acc']:.3f} |")
    print("\n| pulsed training, 64→10 soft-bounds layer | steps/s (best) | median | paired ratio | test acc |")
    print("|---|---|---|---|---|")
    for name, r in pulsed.items():
        if "skipped" in r:
            print(f"| {name} | skipped | | | |")
        else:
            print(f"| {name} | {r['steps_per_s']:.1f} | {r['median_steps_per_s']:.1f} | "
                  f"{r.get('paired_ratio_median', float('nan')):.2f} | {r['test_acc']:.3f} |")
    for name, o in orders.items():
        print(f"\n{name}: one step {o['one_step_rel_median']:.2e} (max {o['one_step_rel_max']:.2e}); final "
              f"grouped {o['final_rel_grouped']:.3f}, other seed {o['final_rel_other_seed']:.3f}; acc {o['test_acc']}")
    print(f"\nwrote {out}")


def run_pipelines() -> list[dict]:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:  # best of REPEATS_PIPELINE, interleaved, as for the pulsed rows: the wall times share the machine
        runs = [[pipeline(S, sched) for S in (2, 3, 4) for sched in ("sync", "async")] for _ in range(REPEATS_PIPELINE)]
        return [max(rows, key=lambda r: r["samples_per_s"]) for rows in zip(*runs)]
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
