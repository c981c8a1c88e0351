"""Per-sample pulse trains (``pulse_order="per_sample"``, the Numba kernel) against a plain
slot-by-slot loop on identical random draws, and their statistics against aihwkit's laws
(RESEARCH.md §4c); aihwkit itself is not needed."""

import math

import numpy as np
import pytest
import torch

from dist_core.analog import devices
from dist_core.analog.optim import AnalogSGD, pulse_probabilities, pulsed_batch_update, pulsed_per_sample_update
from dist_core.analog.pulse_kernel import managed_probabilities

QUIET = dict(dw_min_dtod=0.0, dw_min_std=0.0, w_max_dtod=0.0, w_min_dtod=0.0, up_down_dtod=0.0)
# Strongly weight-dependent: a pulse is 1/6 of the range's half at w = 0, and weights reach the bounds.
SPREAD = dict(dw_min=0.05, w_max=0.3, w_min=-0.25, dw_min_dtod=0.2, w_max_dtod=0.1, w_min_dtod=0.1, up_down=0.1,
              up_down_dtod=0.05)
DEVICES = {
    "soft_bounds": ("soft_bounds", {**SPREAD, "dw_min_std": 0.0}),
    "soft_bounds, cycle noise": ("soft_bounds", {**SPREAD, "dw_min_std": 0.3}),
    "linear_step": ("linear_step", {**SPREAD, "dw_min_std": 0.0, "gamma_up": 0.5, "gamma_down": 1.5}),
    "pow_step, cycle noise": ("pow_step", {**SPREAD, "dw_min_std": 0.2, "pow_gamma": 1.7}),
    "constant_step": ("constant_step", {**SPREAD, "dw_min_std": 0.0}),
}


def reference_step(dev: devices.Device, w: np.ndarray, x: np.ndarray, d: np.ndarray, lr: float, desired_bl: int,
                   rng: np.random.Generator) -> np.ndarray:
    """aihwkit's per-sample pulsed update written plainly, one sample, slot, coincidence at a time.

    Draw order: the uniforms for every (sample, slot < max BL, line), outputs before inputs; then one
    normal per pulse, in the order the pulses are applied."""
    p, c = dev.params, {k: v.numpy() for k, v in dev.constants(torch.Size(w.shape)).items()}
    n, out, n_in = len(x), d.shape[1], x.shape[1]
    bls, probs = [], []
    for b in range(n):  # update management and BL management, per sample
        d_max = max(max(abs(float(v)) for v in d[b]), 1e-30)
        x_max = max(max(abs(float(v)) for v in x[b]), 1e-30)
        bl = min(max(math.ceil(lr * x_max * d_max / p.dw_min), 1), desired_bl)
        scale = lr / (p.dw_min * bl)
        a = math.sqrt(scale * d_max / x_max)
        bls.append(bl)
        probs.append([abs(float(v)) * (scale / a) for v in d[b]] + [abs(float(v)) * a for v in x[b]])
    u = [[[rng.random(dtype=np.float32) for _ in range(out + n_in)] for _ in range(max(bls))] for _ in range(n)]
    w = w.copy()
    for b in range(n):
        for s in range(bls[b]):
            rows = [i for i in range(out) if d[b, i] != 0 and u[b][s][i] < probs[b][i]]
            cols = [j for j in range(n_in) if x[b, j] != 0 and u[b][s][out + j] < probs[b][out + j]]
            for i in rows:
                for j in cols:
                    up = d[b, i] * x[b, j] < 0  # W ← W − lr·d·xᵀ: x·d > 0 is a down pulse
                    v = float(w[i, j])
                    step = reference_pulse_size(dev, c, i, j, v, up)
                    if p.dw_min_std:
                        step = step * (1.0 + p.dw_min_std * rng.standard_normal())
                    v = v + step if up else v - step
                    w[i, j] = min(max(v, c["b_min"][i, j]), c["b_max"][i, j])
    return w


def reference_pulse_size(dev: devices.Device, c: dict, i: int, j: int, v: float, up: bool) -> float:
    """RESEARCH.md §4c's step sizes, for the constants the device drew."""
    if dev.kind in ("linear_step", "soft_bounds"):
        return max(c["slope_up"][i, j] * v + c["dw_up"][i, j], 0.0) if up else \
            max(c["slope_down"][i, j] * v + c["dw_down"][i, j], 0.0)
    if dev.kind == "pow_step":
        omega = min(max((c["b_max"][i, j] - v) / max(c["b_max"][i, j] - c["b_min"][i, j], 1e-12), 0.0), 1.0)
        return c["dw_up"][i, j] * omega ** c["gamma_up"][i, j] if up else \
            c["dw_down"][i, j] * (1.0 - omega) ** c["gamma_down"][i, j]
    return c["dw_up"][i, j] if up else c["dw_down"][i, j]


def batch(seed: int, n: int = 6, n_in: int = 7, out: int = 4) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, n_in)) * (g.random((n, n_in)) > 0.15)  # exact zeros: lines that never pulse
    d = g.normal(size=(n, out)) * 0.5
    d[0, 1] = 0.0
    return x, d


@pytest.mark.parametrize("name", list(DEVICES))
def test_per_sample_kernel_equals_a_slot_by_slot_loop(name):
    """Bit for bit, over several steps (weights drift towards the bounds), given the same seed."""
    kind, params = DEVICES[name]
    dev = devices.make(kind, seed=4, **params)
    w = np.random.default_rng(9).uniform(-0.2, 0.25, (4, 7))
    ours, ref = torch.from_numpy(w.copy()), w.copy()
    g_ours, g_ref = np.random.default_rng(5), np.random.default_rng(5)
    for step in range(4):
        x, d = batch(step)
        ours = pulsed_per_sample_update(dev, ours, torch.from_numpy(x), torch.from_numpy(d), 0.4, 31, g_ours)
        ref = reference_step(dev, ref, x, d, 0.4, 31, g_ref)
        assert np.array_equal(ours.numpy(), ref), f"step {step}: max diff {np.abs(ours.numpy() - ref).max()}"
    assert g_ours.random() == g_ref.random()  # the same number of draws
    assert not np.allclose(ref, w)  # the weights did move


def test_the_two_orders_fire_the_same_pulses():
    """Same generator state ⇒ the same coincidences: on a noise-free constant-step device (order
    cannot matter, no bound reached) per-sample equals grouped; on soft bounds it does not."""
    x, d = batch(1)
    xt, dt = torch.from_numpy(x), torch.from_numpy(d)
    w = torch.zeros(4, 7, dtype=torch.float64)
    flat = devices.make("constant_step", seed=1, **{**SPREAD, "w_max": 100.0, "w_min": -100.0, "dw_min_std": 0.0})
    a = pulsed_per_sample_update(flat, w, xt, dt, 0.4, 31, np.random.default_rng(2))
    b = pulsed_batch_update(flat, w, xt, dt, 0.4, 31, np.random.default_rng(2))
    assert torch.allclose(a, b, rtol=0, atol=1e-12) and not torch.equal(a, w)
    soft = devices.make("soft_bounds", seed=1, **{**SPREAD, "dw_min_std": 0.0})
    a = pulsed_per_sample_update(soft, w, xt, dt, 0.4, 31, np.random.default_rng(2))
    b = pulsed_batch_update(soft, w, xt, dt, 0.4, 31, np.random.default_rng(2))
    assert (a - b).abs().max() > 1e-4


def test_compiled_probabilities_equal_numpys():
    """The kernel's update management gives the same bits as the grouped mode's NumPy code."""
    g = np.random.default_rng(0)
    for _ in range(50):
        n, out, n_in = g.integers(1, 9, size=3)
        dx = g.normal(size=(n, out + n_in)) * 10.0 ** g.uniform(-4, 1) * (g.random((n, out + n_in)) > 0.1)
        lr, dw = 10 ** g.uniform(-3, 0), 10 ** g.uniform(-4, -2)
        p_np, bl_np = pulse_probabilities(dx, int(out), lr, dw, 31)
        p_nb, bl_nb = managed_probabilities(dx, int(out), lr, dw, 31)
        assert np.array_equal(p_np, p_nb) and np.array_equal(bl_np[:, 0], bl_nb)


def test_mean_increment_is_minus_lr_d_x_on_an_ideal_device():
    """E[ΔW] = −lr·Σ_b d_b x_bᵀ (BL not capped: every probability ≤ 1)."""
    dev = devices.make("ideal_constant", dw_min=1e-3)
    x = torch.tensor([[0.5, -1.0, 0.2], [0.1, 0.4, -0.3]], dtype=torch.float64)
    d = torch.tensor([[0.8, -0.3], [-0.2, 0.6]], dtype=torch.float64)
    opt = AnalogSGD(dev, lr=0.01, mode="pulsed", pulse_order="per_sample", seed=3)
    w0 = torch.zeros(2, 3, dtype=torch.float64)
    runs = 4000
    steps = torch.stack([opt.step_batch(w0, x, d) for _ in range(runs)])
    mean, sem = steps.mean(0), steps.std(0) / math.sqrt(runs)
    expected = -0.01 * d.T @ x
    assert torch.all((mean - expected).abs() < 4 * sem + 1e-12), (mean, expected)


def test_pulse_counts_are_binomial_over_the_slots():
    """One sample: weight (i, j) gets Binomial(BL, p_i·q_j) pulses, p_i = B|d_i|, q_j = A|x_j|
    (aihwkit's stochastic coincidences); the whole distribution is checked by χ²."""
    from scipy import stats

    lr, dw = 0.05, 1e-3
    dev = devices.make("ideal_constant", dw_min=dw)
    x = torch.tensor([[0.9, -0.4, 0.05]], dtype=torch.float64)
    d = torch.tensor([[0.3, -0.15]], dtype=torch.float64)
    bl = math.ceil(lr * 0.9 * 0.3 / dw)  # 14 slots, below desired_bl
    scale = lr / (dw * bl)
    a = math.sqrt(scale * 0.3 / 0.9)
    p = np.outer(np.abs(d[0].numpy()) * scale / a, np.abs(x[0].numpy()) * a)
    opt = AnalogSGD(dev, lr=lr, mode="pulsed", pulse_order="per_sample", seed=11)
    runs = 3000
    counts = np.stack([opt.step_batch(torch.zeros(2, 3, dtype=torch.float64), x, d).numpy() for _ in range(runs)])
    counts = np.abs(np.rint(counts / dw)).astype(int)  # each pulse is exactly dw_min, one sign per weight
    for (i, j), q in np.ndenumerate(p):
        law = stats.binom(bl, q)
        assert counts[:, i, j].mean() == pytest.approx(law.mean(), abs=4 * law.std() / math.sqrt(runs))
        k = np.arange(bl + 1)
        expected = runs * law.pmf(k)
        keep = expected >= 5  # pool the thin tail into one cell
        observed = np.bincount(counts[:, i, j], minlength=bl + 1)
        obs = np.append(observed[keep], observed[~keep].sum())
        exp = np.append(expected[keep], expected[~keep].sum())
        if exp[-1] < 5:
            obs, exp = np.append(obs[:-2], obs[-2:].sum()), np.append(exp[:-2], exp[-2:].sum())
        assert stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-3


def test_seeded_runs_repeat_and_float32_weights_keep_their_dtype():
    dev = devices.make("soft_bounds", seed=0, **{**SPREAD, "dw_min_std": 0.3})
    x, d = (torch.from_numpy(a).float().double() for a in batch(3))  # float32 values: both runs fire alike
    w = torch.full((4, 7), 0.05, dtype=torch.float32).double()
    runs = [AnalogSGD(dev, lr=0.4, mode="pulsed", pulse_order="per_sample", seed=s).step_batch(w, x, d) for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    w32 = AnalogSGD(dev, lr=0.4, mode="pulsed", pulse_order="per_sample", seed=7).step_batch(w.float(), x.float(), d.float())
    assert w32.dtype == torch.float32
    assert torch.allclose(w32.double(), runs[0], atol=1e-5)  # rounded to float32 after each pulse


def test_unknown_pulse_order_lists_the_valid_ones():
    with pytest.raises(ValueError, match="pulse_order must be one of grouped, per_sample"):
        AnalogSGD(devices.make("ideal_constant"), lr=0.1, mode="pulsed", pulse_order="sorted")
