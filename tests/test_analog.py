"""Device models against aihwkit's closed forms (RESEARCH.md §4c) and Analog SGD's math (§4a)."""

import math

import numpy as np
import pytest
import torch

from dist_core.analog import devices
from dist_core.analog.optim import (AnalogSGD, coincidences, expected_increment, pulsed_batch_update, pulsed_outer_update,
                                    sample_pulse_trains)

QUIET = dict(dw_min_dtod=0.0, dw_min_std=0.0, w_max_dtod=0.0, w_min_dtod=0.0, up_down_dtod=0.0)


def trace(dev, w0: float, direction: int, n: int) -> list[float]:
    w, out = torch.full((1,), w0, dtype=torch.float64), []
    for _ in range(n):
        w = dev.pulse(w, torch.tensor([direction]))
        out.append(float(w))
    return out


@pytest.mark.parametrize("up_down", [0.0, 0.2, -0.3])
def test_soft_bounds_trace_is_geometric(up_down):
    """w_k − b = (w_0 − b)(1 − Δw/b)^k towards b = b_max (up) or b_min (down)."""
    dev = devices.make("soft_bounds", dw_min=0.01, w_max=1.0, w_min=-0.8, up_down=up_down, **QUIET)
    dw_up, dw_down = 0.01 * (1 + min(up_down, 0)), 0.01 * (1 - max(up_down, 0))
    for k, w in enumerate(trace(dev, 0.1, +1, 200), 1):
        assert w == pytest.approx(1.0 - (1.0 - 0.1) * (1 - dw_up / 1.0) ** k, abs=1e-6)
    for k, w in enumerate(trace(dev, 0.1, -1, 200), 1):
        assert w == pytest.approx(-0.8 + (0.1 + 0.8) * (1 + dw_down / -0.8) ** k, abs=1e-6)


def test_constant_step_trace_is_linear_until_the_bound():
    dev = devices.make("constant_step", dw_min=0.05, w_max=0.6, w_min=-0.6, **QUIET)
    ups = trace(dev, 0.0, +1, 20)
    assert ups[:12] == pytest.approx([0.05 * k for k in range(1, 13)], abs=1e-9)
    assert ups[-1] == pytest.approx(0.6)  # clipped at w_max


def test_linear_step_trace_solves_its_affine_recurrence():
    """Up: w ← w(1 + s⁺) + Δw, s⁺ = −γΔw/w_max ⇒ w_k = w* + (w_0 − w*)(1 + s⁺)^k, w* = −Δw/s⁺."""
    g, dw, wmax = 0.5, 0.02, 0.6
    dev = devices.make("linear_step", dw_min=dw, gamma_up=g, gamma_down=g, gamma_up_dtod=0.0, gamma_down_dtod=0.0,
                       w_max=wmax, w_min=-wmax, **QUIET)
    s = -g * dw / wmax
    w_star = -dw / s
    for k, w in enumerate(trace(dev, -0.2, +1, 100), 1):
        assert w == pytest.approx(min(w_star + (-0.2 - w_star) * (1 + s) ** k, wmax), abs=1e-6)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_pow_step_single_pulse_matches_formula(gamma):
    dev = devices.make("pow_step", dw_min=0.01, pow_gamma=gamma, pow_gamma_dtod=0.0, w_max=1.0, w_min=-1.0, **QUIET)
    w = torch.linspace(-0.9, 0.9, 13, dtype=torch.float64)
    omega = (1.0 - w) / 2.0
    up = dev.pulse(w, torch.ones_like(w))
    down = dev.pulse(w, -torch.ones_like(w))
    assert torch.allclose(up - w, 0.01 * omega**gamma, atol=1e-9)
    assert torch.allclose(w - down, 0.01 * (1 - omega) ** gamma, atol=1e-9)


def test_cycle_to_cycle_noise_statistics():
    """A pulse is Δw(1 + σξ): mean Δw, variance (σΔw)²."""
    dev = devices.make("constant_step", dw_min=0.01, w_max=1e3, w_min=-1e3, **{**QUIET, "dw_min_std": 0.3})
    w = torch.zeros(200_000, dtype=torch.float64)
    steps = dev.pulse(w, torch.ones_like(w)) - w
    assert float(steps.mean()) == pytest.approx(0.01, rel=5e-3)
    assert float(steps.var()) == pytest.approx((0.3 * 0.01) ** 2, rel=2e-2)


def test_device_to_device_spread_statistics():
    """Δw⁺ = dw_min(gain + r): over devices, mean dw_min and variance dw_min²(dtod² + up_down_dtod²)."""
    dev = devices.make("constant_step", dw_min=0.01, w_max=1e3, w_min=-1e3,
                       **{**QUIET, "dw_min_dtod": 0.3, "up_down_dtod": 0.1})
    c = dev.constants(torch.Size([200_000]))
    assert float(c["dw_up"].mean()) == pytest.approx(0.01, rel=5e-3)
    assert float(c["dw_up"].var()) == pytest.approx(0.01**2 * (0.3**2 + 0.1**2), rel=3e-2)
    # constants are drawn once: the same device gives the same steps
    assert torch.equal(dev.constants(torch.Size([200_000]))["dw_up"], c["dw_up"])


@pytest.mark.parametrize("kwargs,message", [
    (dict(w_min=0.5, w_max=0.2), "w_min must be < w_max"),
    (dict(dw_min=0.0), "dw_min must be > 0"),
    (dict(w_min=0.1, w_max=0.5), "must contain 0"),
    (dict(dw_min_std=-0.1), "dw_min_std must be >= 0"),
])
def test_bad_device_parameters(kwargs, message):
    with pytest.raises(devices.DeviceConfigError, match=message):
        devices.make("soft_bounds", **kwargs)


def test_unknown_device_and_parameter_list_the_valid_ones():
    with pytest.raises(devices.DeviceConfigError, match="valid: constant_step, ideal_constant, linear_step"):
        devices.make("exp_step")
    with pytest.raises(devices.DeviceConfigError, match="unknown parameter pow_gamma"):
        devices.make("soft_bounds", pow_gamma=2.0)


def test_expected_increment_on_the_asymmetric_linear_device():
    """§4a: with q_± = 1 ∓ w/τ, W ⊕ Δ = W + Δ − |Δ|⊙W/τ."""
    tau = 3.0
    dev = devices.make("soft_bounds", dw_min=1e-4, w_max=tau, w_min=-tau, **QUIET)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(50, generator=g, dtype=torch.float64)
    delta = 0.05 * torch.randn(50, generator=g, dtype=torch.float64)
    assert torch.allclose(expected_increment(dev, w, delta), w + delta - delta.abs() * w / tau, atol=1e-12)


def test_pulsed_update_matches_its_expectation():
    """The mean of stochastic pulse coincidences is −lr·d·xᵀ (ideal device, linear regime)."""
    dev = devices.make("ideal_constant", dw_min=1e-3)
    g = np.random.default_rng(0)
    x, d = torch.tensor([0.5, -1.0, 0.2]), torch.tensor([0.8, -0.3])
    lr, runs = 0.01, 4000
    total = torch.zeros(2, 3, dtype=torch.float64)
    for _ in range(runs):
        total += pulsed_outer_update(dev, torch.zeros(2, 3, dtype=torch.float64), x, d, lr, 31, g)
    mean = total / runs
    expected = -lr * torch.outer(d, x).double()
    assert torch.allclose(mean, expected, atol=3e-4)


def test_batched_pulses_match_their_expectation():
    """Grouped per weight over a mini-batch: the mean is still −lr·Σ_b d_b x_bᵀ."""
    dev = devices.make("ideal_constant", dw_min=1e-3)
    g = np.random.default_rng(1)
    x = torch.tensor([[0.5, -1.0, 0.2], [0.1, 0.4, -0.3]], dtype=torch.float64)
    d = torch.tensor([[0.8, -0.3], [-0.2, 0.6]], dtype=torch.float64)
    lr, runs = 0.01, 3000
    total = torch.zeros(2, 3, dtype=torch.float64)
    for _ in range(runs):
        total += pulsed_batch_update(dev, torch.zeros(2, 3, dtype=torch.float64), x, d, lr, 31, g)
    assert torch.allclose(total / runs, -lr * d.T @ x, atol=3e-4)


def test_coincidence_counts_equal_a_slot_by_slot_loop():
    """The two-matmul count (total and net) equals counting each (sample, slot, i, j) coincidence
    with its direction: down when x_j·d_i > 0, up when < 0, none when either is 0."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 5)) * (rng.random((3, 5)) > 0.2)  # some exact zeros: no pulse
    d = rng.normal(size=(3, 4))
    fire = rng.random((3, 6, 9)) < 0.5  # outputs first, then inputs
    n_up, n_down = coincidences(fire, np.sign(np.concatenate([d, x], 1)), 4)
    up, down = np.zeros((4, 5)), np.zeros((4, 5))
    for b in range(3):
        for s in range(6):
            for i in range(4):
                for j in range(5):
                    if fire[b, s, i] and fire[b, s, 4 + j]:
                        if x[b, j] * d[b, i] > 0:
                            down[i, j] += 1
                        elif x[b, j] * d[b, i] < 0:
                            up[i, j] += 1
    assert np.array_equal(n_up, up) and np.array_equal(n_down, down)


def test_pulse_trains_use_each_samples_bit_length_and_probabilities():
    """Slots at or past a sample's BL never fire; within them, line k fires with its managed
    probability: B|d_i| = √(lr/(dw·BL)·x_max/d_max)|d_i|, A|x_j| = √(lr/(dw·BL)·d_max/x_max)|x_j|."""
    lr, dw = 0.01, 1e-3
    x = np.array([[0.5, -0.25], [0.1, 0.05]])
    d = np.array([[1.0, -0.5], [0.2, 0.1]])  # BL = ⌈lr·x_max·d_max/dw⌉ = 5 and 1
    dx = np.concatenate([d, x], 1)
    fire = np.stack([sample_pulse_trains(dx, 2, lr, dw, 31, np.random.default_rng(k)) for k in range(4000)])
    assert fire.shape[2] == 5 and not fire[:, 1, 1:].any()  # sample 1 has one slot
    for b, bl in enumerate([5, 1]):
        scale = lr / (dw * bl)
        xm, dm = np.abs(x[b]).max(), np.abs(d[b]).max()
        p = np.concatenate([np.abs(d[b]) * np.sqrt(scale * xm / dm), np.abs(x[b]) * np.sqrt(scale * dm / xm)])
        assert np.allclose(fire[:, b, :bl].mean((0, 1)), np.minimum(p, 1), atol=0.03)


@pytest.mark.parametrize("name,extra", [("soft_bounds", {}), ("constant_step", {}),
                                        ("linear_step", {"gamma_up": 0.4, "gamma_down": 0.7})])
def test_closed_form_pulse_trains_equal_pulse_by_pulse(name, extra):
    dev = devices.make(name, dw_min=0.01, w_max=0.6, w_min=-0.5, seed=3,
                       **{**QUIET, "dw_min_dtod": 0.2, "w_max_dtod": 0.1, "up_down": 0.1, **extra})
    w0 = torch.linspace(-0.4, 0.5, 12, dtype=torch.float64)
    n = torch.tensor([0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144])
    for up in (True, False):
        loop = w0.clone()
        for k in range(int(n.max())):
            loop = dev.pulse(loop, (n > k).double() * (1 if up else -1))
        assert torch.allclose(dev.pulses(w0, n, up=up), loop, atol=1e-9)


def _gaussian_abs_mean(mu: float, sigma: float) -> float:
    """E|μ + ε| for ε ~ N(0, σ²)."""
    return sigma * math.sqrt(2 / math.pi) * math.exp(-mu**2 / (2 * sigma**2)) + mu * (1 - 2 * 0.5 * math.erfc(mu / (sigma * math.sqrt(2))))


def test_analog_sgd_implicit_penalty_fixed_point_in_one_dimension():
    """f = ½(w − w*)², noisy gradient; the time average solves (w − w*) + E|w − w* + ε|·w/τ = 0."""
    tau, w_star, sigma, lr = 1.0, 0.5, 0.5, 0.002
    dev = devices.make("soft_bounds", dw_min=1e-5, w_max=tau, w_min=-tau, **QUIET)
    opt = AnalogSGD(dev, lr=lr)
    g = torch.Generator().manual_seed(0)
    chains = 2000
    w = torch.zeros(chains, dtype=torch.float64)
    running = torch.zeros(chains, dtype=torch.float64)
    burn, steps = 3000, 6000
    for k in range(steps):
        grad = (w - w_star) + sigma * torch.randn(chains, generator=g, dtype=torch.float64)
        w = opt.step(w, grad)
        if k >= burn:
            running += w
    simulated = float(running.mean() / (steps - burn))

    lo, hi = 0.0, w_star  # bisection on the fixed-point equation
    for _ in range(100):
        mid = (lo + hi) / 2
        value = (mid - w_star) + _gaussian_abs_mean(mid - w_star, sigma) * mid / tau
        lo, hi = (mid, hi) if value < 0 else (lo, mid)
    assert simulated == pytest.approx(lo, abs=5e-3)
    assert simulated < w_star - 0.1  # the penalty is real: far from the digital answer
