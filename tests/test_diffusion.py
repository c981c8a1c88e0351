"""Noise-schedule family, the ZO estimator against autograd, and the bilevel loop on a 2-D toy."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist_core.diffusion import ddpm, schedule, zeroth_order
from dist_core.diffusion.toy_data import Ring
from dist_core.diffusion.trainer import BilevelConfig, Evaluator, Setup, learn_schedule


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


def test_diffusion_schedule_job_through_the_cli(tmp_path):
    root = Path(__file__).resolve().parent.parent
    small = ["--set", "diffusion.bilevel.outer_steps=4", "--set", "diffusion.bilevel.warmup_steps=20",
             "--set", "diffusion.bilevel.y_steps=5", "--set", "diffusion.bilevel.z_steps=1", "--set", "diffusion.T=20",
             "--set", "diffusion.ddim_steps=4", "--set", "diffusion.hidden=16", "--no-progress"]
    proc = subprocess.run([sys.executable, str(root / "launch.py"), "run", "jobs/diffusion_schedule.yaml",
                           "--out", str(tmp_path), *small], capture_output=True, text=True, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = next(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["kind"] == "diffusion_schedule" and summary["status"] == "succeeded"
    m = summary["metrics"]
    assert m["lower_steps"] == 20 + 4 * 6
    assert m["energy_distance"] > 0 and m["energy_distance_cosine"] > 0 and len(summary["psi"]) == 4
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 4
    assert (run_dir / "plots" / "schedule.png").read_bytes()[:4] == b"\x89PNG"
