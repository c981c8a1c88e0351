"""Tiki-Taka v2's buffered transfer against hand-computed cases, and the least-squares toy's claims
(RESEARCH.md §4a, §7.4): Analog SGD has an error floor in α, digital SGD and Tiki-Taka do not."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist_core.analog import devices
from dist_core.analog.optim import TikiTakaV2, buffered_transfer
from dist_core.analog.toy import ToySettings, make_problem, simulate

QUIET = dict(dw_min_dtod=0.0, dw_min_std=0.0, w_max_dtod=0.0, w_min_dtod=0.0, up_down_dtod=0.0)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("forget,expected_h", [
    # ω = [0.5, 0.9, 1.2, -1.2, 3.5]; n = trunc(ω), clamped to ±2 = [0, 0, 1, -1, 2]
    (True, [0.5, 0.9, 0.1 * 1.2, 0.1 * -1.2, 0.1 * 3.5]),  # H ← momentum·ω where n ≠ 0
    (False, [0.5, 0.9, 1.2 - 0.9, -1.2 + 0.9, 3.5 - 0.9 * 2]),  # H ← ω − (1 − momentum)·n·threshold
])
def test_buffered_transfer_by_hand(forget, expected_h):
    h, n = buffered_transfer(t([0.0, 0.5, 0.9, -0.3, 2.0]), t([0.5, 0.4, 0.3, -0.9, 1.5]), lr=1.0, threshold=1.0,
                             momentum=0.1, forget=forget, max_pulses=2)
    assert n.tolist() == [0.0, 0.0, 1.0, -1.0, 2.0]
    assert torch.allclose(h, t(expected_h), atol=1e-12)


def test_buffered_transfer_threshold_scales_counts():
    """The threshold is the pulse granularity: ω = 2.5 thresholds gives 2 pulses (trunc), 0.5 stays."""
    h, n = buffered_transfer(torch.zeros(2, dtype=torch.float64), t([2.5e-3, -2.5e-3]), lr=1.0, threshold=1e-3,
                             momentum=0.0, forget=False, max_pulses=5)
    assert n.tolist() == [2.0, -2.0]
    assert torch.allclose(h, t([0.5e-3, -0.5e-3]), atol=1e-15)


def test_tiki_taka_v2_two_steps_by_hand():
    """Constant-step devices (A: dw 0.01, C: dw 0.1, bounds ±1), β = 0.1, α = 0.5, one column a step.

    step 1: A = −β·g;  H[:, 0] = α·A[:, 0] = [0.05, −0.15] → n = [0, −1];  H[:, 0] = [0.05, 0.1·(−0.15)]
    step 2: A = −2β·g; H[:, 1] = α·A[:, 1] = [−0.2, 0] → n = [−2 → −1 (max 1 pulse), 0];  H = 0.1·(−0.2)
    C gets one down pulse of 0.1 at (1, 0) and at (0, 1)."""
    fast = devices.make("constant_step", dw_min=0.01, w_max=1.0, w_min=-1.0, **QUIET)
    slow = devices.make("constant_step", dw_min=0.1, w_max=1.0, w_min=-1.0, **QUIET)
    tt = TikiTakaV2(fast, slow, fast_lr=0.1, transfer_lr=0.5, n_reads=1, momentum=0.1, forget_buffer=True, max_pulses=1)
    g = t([[-1.0, 2.0, 0.0], [3.0, 0.0, -1.0]])
    a, c = torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)
    a, c = tt.step(a, c, g)
    assert torch.allclose(a, -0.1 * g, atol=1e-12)
    assert torch.allclose(c, t([[0.0, 0.0, 0.0], [-0.1, 0.0, 0.0]]), atol=1e-12)
    a, c = tt.step(a, c, g)
    assert torch.allclose(a, -0.2 * g, atol=1e-12)
    assert torch.allclose(c, t([[0.0, -0.1, 0.0], [-0.1, 0.0, 0.0]]), atol=1e-12)
    assert torch.allclose(tt.buffer, t([[0.05, -0.02, 0.0], [-0.015, 0.0, 0.0]]), atol=1e-12)


def test_tiki_taka_v2_pulses_follow_the_slow_device():
    """A transferred pulse on a soft-bounds C is dw_min·(1 − c/τ) up: C's own response, not the buffer's value."""
    fast = devices.make("constant_step", dw_min=0.01, w_max=1.0, w_min=-1.0, **QUIET)
    slow = devices.make("soft_bounds", dw_min=0.01, w_max=2.0, w_min=-2.0, **QUIET)
    tt = TikiTakaV2(fast, slow, fast_lr=1.0, transfer_lr=1.0, n_reads=1, max_pulses=3)
    c0 = t([[0.5]])
    _, c = tt.step(torch.zeros(1, 1, dtype=torch.float64), c0, t([[-0.025]]))  # A = 0.025 → 2 up pulses
    expected = 2.0 - (2.0 - 0.5) * (1 - 0.01 / 2.0) ** 2
    assert float(c) == pytest.approx(expected, abs=1e-12)


def test_toy_analog_sgd_floor_digital_and_tiki_taka_without_one():
    """α 0.1 → 0.02: digital SGD's stationary error falls ~5×, Analog SGD's barely moves (the implicit
    penalty of soft bounds), Tiki-Taka v1/v2 (transfer scale cσ/τ_A) end below Analog SGD."""
    problem = make_problem(40, 100, seed=0)
    s = ToySettings(steps=5000, dw_min=1e-3)  # a coarser pulse lets v2's one-pulse transfers converge in time
    alphas = [0.1, 0.02]
    err = {m: simulate(problem, m, alphas, s, seed=1, transfer_lrs=[0.08 * a for a in alphas])[0]
           for m in ("digital", "analog_sgd", "tiki_taka_v1", "tiki_taka_v2")}
    assert err["digital"][0] / err["digital"][1] > 4
    assert err["analog_sgd"][0] / err["analog_sgd"][1] < 2.5
    assert err["analog_sgd"][1] > 4 * err["digital"][1]
    assert err["tiki_taka_v1"][0] == pytest.approx(err["digital"][0], rel=0.2)  # same effective step
    for tt in ("tiki_taka_v1", "tiki_taka_v2"):
        assert err[tt][1] < 0.7 * err["analog_sgd"][1]


def test_aimc_toy_job_through_the_cli(tmp_path):
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(root / "launch.py"), "run", "jobs/aimc_toy.yaml", "--out", str(tmp_path),
                           "--set", "toy.steps=400", "--set", "toy.alphas=[0.1,0.02]", "--no-progress"],
                          capture_output=True, text=True, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = next(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    final = summary["metrics"]["final_error"]
    assert set(final) == {"digital", "analog_sgd", "tiki_taka_v1 (s=1)", "tiki_taka_v1 (s=0.08)",
                          "tiki_taka_v2 (s=1)", "tiki_taka_v2 (s=0.08)"}
    assert all(set(errs) == {"0.1", "0.02"} and min(errs.values()) > 0 for errs in final.values())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 12 and all(len(r["error"]) == len(r["steps"]) > 0 for r in records)
    for png in ("error_vs_alpha.png", "error_vs_step.png"):
        assert (run_dir / "plots" / png).read_bytes()[:4] == b"\x89PNG"
