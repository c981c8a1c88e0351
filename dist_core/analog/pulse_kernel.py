"""Per-sample stochastic pulse trains in one compiled pass: aihwkit's order, slot by slot.

For each sample b of a mini-batch, in order, and each slot s < BL_b (RESEARCH.md §4c):

    output i fires  iff  u[b, s, i]       < p[b, i]         (p = min(B|d_bi|, 1) in effect)
    input  j fires  iff  u[b, s, out + j] < p[b, out + j]   (p = min(A|x_bj|, 1) in effect)

and every coincidence (i, j) is one pulse on w[i, j], down when x_bj·d_bi > 0, up when < 0 (none
when either is 0), of the device's size at the *current* w[i, j]:

    constant_step:   Δ = Δw^±
    linear_step:     Δ = max(s^± w + Δw^±, 0)              (soft bounds: s⁺ = −Δw⁺/b_max, s⁻ = −Δw⁻/b_min)
    pow_step:        Δ = Δw⁺ ω^{γ⁺} (up),  Δw⁻ (1 − ω)^{γ⁻} (down),  ω = clip((b_max − w)/(b_max − b_min), 0, 1)
    w ← clip(w ± Δ·(1 + σξ), b_min, b_max)                  (σ = dw_min_std; ξ: the next of ``normals``)

This is ``Device.pulse`` operation for operation, so on weight-dependent devices the result depends
on the order the pulses arrive in, which is aihwkit's. The uniforms ``u`` (and the normals) are
drawn by the caller from a NumPy generator, so a seeded run is reproducible and the kernel equals a
plain NumPy loop given the same draws. Within a slot the pulses touch distinct weights; the normals
are consumed slot by slot, fired outputs in ascending order, fired inputs ascending within each.

Numba compiles the kernel once per weight dtype (``cache=True``: later processes load it from
``__pycache__``); ``nogil`` lets threads of one process (Ray actors' threads) run kernels in parallel.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from numba import njit

from .device_params import LinearStep, PowStep
from .devices import Device

CONSTANT, LINEAR, POW = 0, 1, 2


class KernelDevice(NamedTuple):
    """A device's per-weight constants as float64 NumPy arrays (out × in), and its step's form."""

    kind: int  # CONSTANT, LINEAR or POW
    dw_up: np.ndarray
    dw_down: np.ndarray
    slope_up: np.ndarray  # linear_step only (zeros otherwise)
    slope_down: np.ndarray
    gamma_up: np.ndarray  # pow_step only (zeros otherwise)
    gamma_down: np.ndarray
    b_min: np.ndarray
    b_max: np.ndarray
    noise_std: float  # dw_min_std


def kernel_device(device: Device, shape: torch.Size) -> KernelDevice:
    """The kernel's view of ``device`` for weights of ``shape``; shares memory with its constants."""
    c = device.constants(shape)
    zeros = np.zeros(tuple(shape))
    kind = LINEAR if isinstance(device.params, LinearStep) else POW if isinstance(device.params, PowStep) else CONSTANT
    pick = lambda name: c[name].numpy() if name in c else zeros  # noqa: E731
    return KernelDevice(kind, c["dw_up"].numpy(), c["dw_down"].numpy(), pick("slope_up"), pick("slope_down"),
                        pick("gamma_up"), pick("gamma_down"), c["b_min"].numpy(), c["b_max"].numpy(),
                        float(device.params.dw_min_std))


def pulse_count(u: np.ndarray, prob: np.ndarray, bl: np.ndarray, out: int) -> int:
    """How many pulses ``apply_pulse_trains`` will apply (one normal each when the device is noisy):
    Σ over samples and their slots of (#fired outputs)·(#fired inputs)."""
    fire = u < prob[:, None, :]
    fire &= (np.arange(u.shape[1])[None, :] < bl[:, None])[:, :, None]
    return int((fire[:, :, :out].sum(-1) * fire[:, :, out:].sum(-1)).sum())


@njit(nogil=True, cache=True)
def managed_probabilities(dx, out, lr, dw_min, desired_bl):  # pragma: no cover  (compiled)
    """``optim.pulse_probabilities`` for float64 dx = [d | x] (n × (out + in)), operation for
    operation (so both give the same bits): per sample BL = min(max(⌈lr·x_max·d_max/dw_min⌉, 1),
    desired_bl), scale = lr/(dw_min·BL), A = √(scale·d_max/x_max); p_d = |d|·(scale/A), p_x = |x|·A.
    One compiled call instead of a dozen NumPy ones, which at these sizes cost more than the work."""
    n, lines = dx.shape
    prob = np.empty((n, lines))
    bl = np.empty(n, np.int64)
    for b in range(n):
        d_max = 0.0
        for i in range(out):
            d_max = max(d_max, abs(dx[b, i]))
        x_max = 0.0
        for j in range(out, lines):
            x_max = max(x_max, abs(dx[b, j]))
        d_max, x_max = max(d_max, 1e-30), max(x_max, 1e-30)
        slots = min(max(np.ceil(lr * x_max * d_max / dw_min), 1.0), float(desired_bl))
        bl[b] = int(slots)
        scale = lr / (dw_min * slots)
        a = np.sqrt(scale * d_max / x_max)
        rows = scale / a
        for i in range(out):
            prob[b, i] = abs(dx[b, i]) * rows
        for j in range(out, lines):
            prob[b, j] = abs(dx[b, j]) * a
    return prob, bl


@njit(nogil=True, cache=True)
def _step(kind, up, v, dw, slope, gamma, lo, hi):  # pragma: no cover  (compiled)
    """The noise-free size of one up or down pulse at v, given that direction's per-weight constants
    (devices.py's ``_step``). Scalars only: array arguments would cost reference counting per pulse."""
    if kind == LINEAR:
        return max(slope * v + dw, 0.0)
    if kind == POW:
        omega = min(max((hi - v) / max(hi - lo, 1e-12), 0.0), 1.0)
        return dw * omega ** gamma if up else dw * (1.0 - omega) ** gamma
    return dw


@njit(nogil=True, cache=True)
def apply_pulse_trains(w, u, prob, bl, dx, out, kind, dw_up, dw_down, slope_up, slope_down, gamma_up, gamma_down,
                       b_min, b_max, noise_std, normals):  # pragma: no cover  (compiled; tested against a NumPy loop)
    """Apply a mini-batch's pulse trains to ``w`` (out × in, modified in place), sample by sample.

    u: n × slots × (out + in) uniforms; prob: n × (out + in) firing probabilities; bl: n slot
    counts (slots ≥ bl[b] never fire); dx: n × (out + in), [d | x]; normals: one per pulse
    when noise_std > 0 (see ``pulse_count``), else unused. Returns the number of pulses applied."""
    n_in = u.shape[2] - out
    rows = np.empty(out, np.int64)
    cols = np.empty(n_in, np.int64)
    k = 0
    for b in range(u.shape[0]):
        for s in range(bl[b]):
            n_rows = 0
            for i in range(out):
                if dx[b, i] != 0 and u[b, s, i] < prob[b, i]:
                    rows[n_rows] = i
                    n_rows += 1
            if n_rows == 0:
                continue
            n_cols = 0
            for j in range(n_in):
                if dx[b, out + j] != 0 and u[b, s, out + j] < prob[b, out + j]:
                    cols[n_cols] = j
                    n_cols += 1
            for r in range(n_rows):
                i = rows[r]
                d_neg = dx[b, i] < 0
                for c in range(n_cols):
                    j = cols[c]
                    up = d_neg != (dx[b, out + j] < 0)  # both nonzero: x·d > 0 is a down pulse, < 0 an up pulse
                    v = np.float64(w[i, j])
                    lo, hi = b_min[i, j], b_max[i, j]
                    if up:
                        step = _step(kind, True, v, dw_up[i, j], slope_up[i, j], gamma_up[i, j], lo, hi)
                    else:
                        step = _step(kind, False, v, dw_down[i, j], slope_down[i, j], gamma_down[i, j], lo, hi)
                    if noise_std != 0.0:
                        step = step * (1.0 + noise_std * normals[k])
                    k += 1
                    v = v + step if up else v - step
                    w[i, j] = min(max(v, lo), hi)
    return k
