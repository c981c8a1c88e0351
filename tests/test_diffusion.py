"""Noise-schedule family, the ZO estimator against autograd, the bilevel loop on a 2-D toy; the job's
bit-exact resume (in process and after a SIGKILL through the CLI), and sweeps over its trials (TPE, PBT)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.numpy import load_file

from dist_core import spec
from dist_core.diffusion import ddpm, schedule, zeroth_order
from dist_core.diffusion import job as diffusion_job
from dist_core.diffusion.config import SWEEP, marked_steps
from dist_core.diffusion.state import Snapshot
from dist_core.diffusion.toy_data import Ring
from dist_core.diffusion.trainer import BilevelConfig, Evaluator, Setup, learn_schedule
from dist_core.errors import RunError
from dist_core.runs import RunDir, RunHooks

from helpers import KillAt, Killed, kill_when

ROOT = Path(__file__).resolve().parent.parent
CMD = [sys.executable, str(ROOT / "launch.py")]
# One intra-op thread: on 2 shared cores, torch's 2 OpenMP threads spin against other processes.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["diffusion.T=20", "diffusion.ddim_steps=4", "diffusion.hidden=16", "diffusion.batch=64"]


@pytest.fixture(autouse=True)
def one_thread():
    """The same in this process (models this small gain nothing from a second thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def nichol_dhariwal_betas(T: int, s: float = 0.008) -> list[float]:
    """Improved DDPM (Nichol & Dhariwal 2021), eq. 17, written out independently."""
    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    return [min(1 - f(t) / f(t - 1), 0.999) for t in range(1, T + 1)]


@pytest.mark.parametrize("T", [50, 1000])
def test_family_reproduces_the_cosine_schedule(T):
    ours = schedule.betas(torch.tensor(schedule.COSINE, dtype=torch.float64), T)
    ref = torch.tensor(nichol_dhariwal_betas(T), dtype=torch.float64)
    assert torch.allclose(ours, ref, atol=1e-10, rtol=0)


def test_schedule_is_monotone_and_differentiable():
    psi = torch.tensor([0.1, 0.9, 1.5, 0.05], dtype=torch.float64, requires_grad=True)
    ab = schedule.alphas_bar(psi, 100)
    assert ab[0] == 1 and bool((ab[1:] < ab[:-1]).all())
    ab[50].backward()
    assert torch.isfinite(psi.grad).all() and psi.grad.abs().sum() > 0


def test_projection_keeps_the_feasible_set():
    p = schedule.project(torch.tensor([-0.5, 0.2, 0.0, 3.0], dtype=torch.float64))
    assert p[0] == 0.0 and p[1] >= p[0] and p[2] >= schedule.TAU_MIN and p[3] == 1.0


def test_ring_log_prob_integrates_to_one():
    ring = Ring(modes=4, radius=1.0, std=0.3)
    g = torch.linspace(-3, 3, 301)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    p = ring.log_prob(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)).exp()
    assert abs(float(p.sum()) * float(g[1] - g[0]) ** 2 - 1.0) < 1e-3


def test_energy_distance_is_zero_for_equal_samples_and_positive_otherwise():
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    assert float(ddpm.energy_distance(x, x)) == pytest.approx(0.0, abs=1e-5)
    assert float(ddpm.energy_distance(x, x + 1.0)) > 0.5


def test_zeroth_order_estimate_matches_autograd_in_expectation():
    """Averaged over 2,000 directions (δ = 0.01), within 15% of the autograd gradient.

    The estimate's standard error is about sqrt((d + 1)/n)·‖∇F‖ ≈ 5% here (d = 4), so 15% is ~3σ.
    """
    torch.manual_seed(0)
    setup = Setup(T=50, ddim_steps=5, hidden=32)
    model = ddpm.EpsMLP(setup.hidden)
    ev = Evaluator.make(setup, 128, seed=3)
    psi = torch.tensor([0.1, 0.9, 1.5, 0.05], dtype=torch.float64, requires_grad=True)
    ev.objective(model, psi).backward()
    exact = psi.grad.clone()
    with torch.no_grad():
        zo = zeroth_order.two_point(lambda p: ev.objective(model, p).double(), psi.detach(), 0.01, 2000,
                                    torch.Generator().manual_seed(4))
    assert float((zo - exact).norm() / exact.norm()) < 0.15


def test_bilevel_loop_moves_psi_and_counts_steps():
    setup = Setup(T=50, ddim_steps=5, hidden=32, batch=128, n_upper=128)
    cfg = BilevelConfig(outer_steps=5, y_steps=4, z_steps=1, warmup_steps=20, lr_psi=0.05)
    psi, model, history = learn_schedule(setup, cfg, seed=0)
    assert [h["lower_steps"] for h in history] == [20 + 5 * k for k in range(1, 6)]
    assert not torch.allclose(psi, torch.tensor(schedule.COSINE, dtype=torch.float64))
    assert all(math.isfinite(h["upper"]) for h in history)


# ------------------------------------------------------------ the job: records, checkpoints, bit-exact resume
def _run(job, run_dir: RunDir, resume: bool = False, listeners=()):
    run_dir.hooks = RunHooks(progress=False, listeners=list(listeners))
    return diffusion_job.run(job, run_dir, run_dir.hooks, resume)


def _latest_tensors(run_dir: RunDir):
    return load_file(str(run_dir.latest_checkpoint() / "tensors.safetensors"))


JOBS = {
    # 6 outer steps, checkpoints at 3 and 6, held-out metrics at 2, 3, 4, 6; killed after step 5
    "bilevel": (["diffusion.method=bilevel", "diffusion.bilevel.outer_steps=6", "diffusion.bilevel.y_steps=3",
                 "diffusion.bilevel.z_steps=1", "diffusion.bilevel.warmup_steps=10", "diffusion.bilevel.eval_every=2",
                 "diffusion.bilevel.checkpoint_every=3"], "outer_step", 5, [2, 3, 4, 6]),
    # 60 lower steps, a record every 10, checkpoints at 20, 40, 60; killed after step 50
    "fixed": (["diffusion.method=fixed", "diffusion.fixed.budget=60", "diffusion.fixed.eval_every=10",
               "diffusion.fixed.checkpoint_every=20", "diffusion.psi0=[0.1, 0.9, 1.5, 0.05]"],
              "lower_steps", 50, [10, 20, 30, 40, 50, 60]),
}


@pytest.mark.parametrize("method", list(JOBS))
def test_killed_job_resumes_bit_for_bit(method, tmp_path):
    """Straight through vs. stopped after a record past the last checkpoint and resumed: the same
    records (each once), the same final metrics, ψ and weights, to the last bit."""
    sets, key, kill_at, evaluated = JOBS[method]
    job = spec.load(ROOT / "jobs/diffusion_schedule.yaml", TINY + sets)
    straight = RunDir.create(tmp_path, "straight")
    clean = _run(job, straight)
    records = straight.read_metrics()
    assert [r[key] for r in records if "energy_distance" in r] == evaluated == job.diffusion.evaluated_steps()
    assert SWEEP.iterations(job) == sum(map(SWEEP.is_report, records)) == len(evaluated)

    broken = RunDir.create(tmp_path, "broken")
    with pytest.raises(Killed):
        _run(job, broken, listeners=[KillAt(kill_at, key)])
    assert [r[key] for r in broken.read_metrics()][-1] == kill_at
    assert json.loads((broken.checkpoints / "latest.json").read_text())["round"] < kill_at
    resumed = _run(job, broken, resume=True)

    assert broken.read_metrics() == records
    assert resumed.metrics == clean.metrics and resumed.extra == clean.extra
    a, b = _latest_tensors(straight), _latest_tensors(broken)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert clean.metrics["energy_distance"] == records[-1]["energy_distance"]  # the last record is the final model

    # A run killed after its loop (the final checkpoint is written) resumes without training again.
    again = _run(job, broken, resume=True)
    assert again.metrics == clean.metrics and broken.read_metrics() == records
    other = "fixed" if method == "bilevel" else "bilevel"
    with pytest.raises(RunError, match=f"checkpoint of method '{method}'.*method '{other}'"):
        Snapshot.load(broken.latest_checkpoint(), other)


def test_marked_steps():
    assert marked_steps(10, 4) == [4, 8, 10]
    assert marked_steps(10, 4, 3) == [3, 4, 6, 8, 9, 10]
    assert marked_steps(5, 0, 0) == [5]


# ------------------------------------------------------------ the CLI: run, kill, resume
SMALL = [a for kv in TINY + ["diffusion.bilevel.outer_steps=40", "diffusion.bilevel.warmup_steps=20",
                             "diffusion.bilevel.y_steps=5", "diffusion.bilevel.z_steps=1",
                             "diffusion.bilevel.eval_every=5", "diffusion.bilevel.checkpoint_every=5"]
         for a in ("--set", kv)] + ["--no-progress"]


def only_run_dir(out: Path) -> Path:
    dirs = [p for p in out.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("diffusion")
    proc = subprocess.run([*CMD, "run", "jobs/diffusion_schedule.yaml", "--out", str(out), *SMALL],
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return only_run_dir(out)


def test_diffusion_schedule_job_through_the_cli(cli_run):
    summary = json.loads((cli_run / "summary.json").read_text())
    assert summary["kind"] == "diffusion_schedule" and summary["status"] == "succeeded"
    m = summary["metrics"]
    assert m["lower_steps"] == 20 + 40 * 6
    assert m["energy_distance"] > 0 and m["energy_distance_cosine"] > 0 and len(summary["psi"]) == 4
    assert summary["checkpoint"].endswith("round_000040")
    records = [json.loads(line) for line in (cli_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["outer_step"] for r in records] == list(range(1, 41))
    assert [r["outer_step"] for r in records if "energy_distance" in r] == list(range(5, 41, 5))
    assert (cli_run / "plots" / "schedule.png").read_bytes()[:4] == b"\x89PNG"


def test_sigkilled_cli_run_resumes_to_the_same_result(cli_run, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # kill_when's child inherits it: the same float reductions as cli_run

    def has_checkpoint() -> bool:
        return any(out.glob("*/checkpoints/latest.json"))

    kill_when([*CMD, "run", "jobs/diffusion_schedule.yaml", "--out", str(out), *SMALL], ROOT, has_checkpoint, 240,
              "a first checkpoint", poll=0.05)
    run_dir = only_run_dir(out)
    killed_at = json.loads((run_dir / "checkpoints" / "latest.json").read_text())["round"]
    # Usually mid-loop; at 40 it was killed in the cosine baseline, and resume skips the loop.
    assert 5 <= killed_at <= 40 and json.loads((run_dir / "summary.json").read_text())["status"] == "running"
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) >= killed_at

    proc = subprocess.run([*CMD, "resume", str(run_dir), "--no-progress"], capture_output=True, text=True,
                          cwd=ROOT, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary, clean = (json.loads((d / "summary.json").read_text()) for d in (run_dir, cli_run))
    assert summary["status"] == "succeeded" and summary["metrics"] == clean["metrics"]
    assert summary["psi"] == clean["psi"]
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["outer_step"] for line in lines] == list(range(1, 41))  # each exactly once
    assert lines == (cli_run / "metrics.jsonl").read_text().splitlines()


# ------------------------------------------------------------ sweeps over diffusion trials
def _sweep(tmp_path, *sets: str, timeout: int = 400):
    args = [a for kv in sets for a in ("--set", kv)]
    proc = subprocess.run([*CMD, "run", "jobs/sweep_diffusion_tpe.yaml", "--out", str(tmp_path), *args, "--no-progress"],
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    trials = {p.name: [json.loads(line) for line in (p / "metrics.jsonl").read_text().splitlines()]
              for p in run_dir.glob("trials/*")}
    return json.loads((run_dir / "summary.json").read_text()), trials


def test_tpe_sweep_over_psi_finds_a_best_trial(tmp_path):
    summary, trials = _sweep(tmp_path, "search.num_samples=2", "overrides.diffusion.fixed.budget=40",
                             "overrides.diffusion.fixed.eval_every=40", *[f"overrides.{kv}" for kv in TINY])
    assert summary["status"] == "succeeded" and summary["base_kind"] == "diffusion_schedule"
    assert summary["metrics"]["trials"] == 2 and summary["metrics"]["errored"] == 0
    best = summary["best_config"]
    assert set(best) == {f"diffusion.psi0.{i}" for i in range(4)}
    assert 0 <= best["diffusion.psi0.0"] <= 0.3 < 0.7 <= best["diffusion.psi0.1"] <= 1.0
    # One report per trial (the final model at 40 lower steps); the best is the smallest of them.
    assert len(trials) == 2 and all([r["lower_steps"] for r in rs] == [40] for rs in trials.values())
    finals = [rs[-1]["energy_distance"] for rs in trials.values()]
    assert summary["metrics"]["best_energy_distance"] == min(finals)


def test_pbt_over_tau_restores_diffusion_trials(tmp_path):
    """Two fixed-ψ trials under PBT, perturbing τ every 2 reports, checkpoints every 2nd report. The
    sweep completes; a trial that copied another starts at its source's checkpoint, each step once."""
    space = {"diffusion.psi0.2": {"type": "uniform", "low": 0.5, "high": 3.0}}
    summary, trials = _sweep(
        tmp_path, f"search.space={json.dumps(space)}", "search.searcher=random", "search.num_samples=2",
        "search.scheduler.name=pbt", "search.scheduler.perturbation_interval=2", "search.scheduler.quantile_fraction=0.5",
        "overrides.diffusion.fixed.budget=200", "overrides.diffusion.fixed.eval_every=20",
        "overrides.diffusion.fixed.checkpoint_every=40", *[f"overrides.{kv}" for kv in TINY])
    assert summary["status"] == "succeeded" and summary["metrics"]["trials"] == 2
    assert summary["metrics"]["errored"] == 0 and summary["checkpoint"]
    policy = next(tmp_path.glob("*/tune/pbt_global.txt"), None)
    # pbt_global.txt: one line per exploit, [target tag "<index>_...", source tag, target iteration, ...]
    copied = {int(line[0].split("_")[0]) for line in map(json.loads, policy.read_text().splitlines())} if policy else set()
    for name, records in trials.items():
        steps = [r["lower_steps"] for r in records]
        if int(name.rsplit("_", 1)[1]) in copied:
            # A copied trial keeps its own records up to the copied checkpoint's step and logs from just
            # after that checkpoint (40, 80, ...) on. Its own run may have been behind its source, so
            # the records can jump forward, each jump landing just after a checkpoint; copied from the
            # final checkpoint (200), it has nothing left to log.
            assert steps == sorted(set(steps)) and all(s % 20 == 0 and s <= 200 for s in steps)
            jumps = [b for a, b in zip([0, *steps], steps) if b != a + 20]
            assert all(b % 40 == 20 for b in jumps), steps
        else:
            assert steps == list(range(20, 201, 20))
        final = json.loads(next(tmp_path.glob(f"*/trials/{name}/summary.json")).read_text())
        assert final["status"] == "succeeded" and final["metrics"]["lower_steps"] == 200
