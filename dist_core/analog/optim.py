"""Analog SGD and Tiki-Taka v1 / v2 on tiles of devices (RESEARCH.md §4a, §4c).

Two ways to turn a desired increment Δ into pulses:

* ``expected``: the mean of the pulse train, W ⊕ Δ = W + Δ⁺·q₊(W) − Δ⁻·q₋(W), with
  q_± = step_±(W)/dw_min and Δ = Δ⁺ − Δ⁻; for the asymmetric linear device (q_± = 1 ∓ w/τ) this is
  exactly W − α∇f − (α/τ)|∇f|⊙W (``analog_increment`` in the 2024 paper's code). Fast, noise-free.
* ``pulsed``: aihwkit's stochastic pulse trains for a rank-1 update −lr·d·xᵀ. With
  BL = min(⌈lr·max|x|·max|d|/dw_min⌉, desired_bl) slots (``update_bl_management``) and
  A = √(lr/(dw_min·BL))·√(max|d|/max|x|), B = √(lr/(dw_min·BL))·√(max|x|/max|d|)
  (``update_management``: A|x_j|, B|d_i| ≤ 1 whenever BL is not capped), in each slot input j fires
  with probability min(A|x_j|, 1) and output i with min(B|d_i|, 1); a coincidence is one pulse, down
  when x_j·d_i > 0. Then E[Δw_ij] = −lr·x_j·d_i on an ideal device. A mini-batch's pulses reach
  the weights in one of two orders (``AnalogSGD.pulse_order``): ``per_sample``, aihwkit's, sample
  by sample and slot by slot (``pulsed_per_sample_update``, a Numba kernel), or ``grouped``, each
  weight's ups and downs summed over the batch (``pulsed_batch_update``), which differs at second
  order in dw_min on weight-dependent devices. Both draw the same uniforms for the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .devices import Device

if TYPE_CHECKING:  # the kernel module imports Numba: loaded on the first per-sample update
    from .pulse_kernel import KernelDevice


def expected_increment(device: Device, w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """W ⊕ Δ in expectation: |Δ|/dw_min pulses, each of the device's size at W, then the bounds."""
    dw = device.params.dw_min
    up = device.step(w, up=True) / dw
    down = device.step(w, up=False) / dw
    moved = w + delta.clamp(min=0) * up - (-delta).clamp(min=0) * down
    b_min, b_max = device.bounds(w.shape)
    return torch.minimum(torch.maximum(moved.double(), b_min), b_max).to(w.dtype)


def pulsed_outer_update(device: Device, w: torch.Tensor, x: torch.Tensor, d: torch.Tensor, lr: float,
                        desired_bl: int, rng: np.random.Generator) -> torch.Tensor:
    """One rank-1 update −lr·d·xᵀ (w: out × in, x: in, d: out) as stochastic pulse coincidences.

    A batch of one: within one update a weight's pulses all share a sign, so applying its count of
    pulses in a row has the same law as slot by slot."""
    return pulsed_batch_update(device, w, x[None, :], d[None, :], lr, desired_bl, rng)


def pulsed_batch_update(device: Device, w: torch.Tensor, x: torch.Tensor, d: torch.Tensor, lr: float,
                        desired_bl: int, rng: np.random.Generator) -> torch.Tensor:
    """A mini-batch of rank-1 updates (x: n × in, d: n × out): per sample, BL slots with firing
    probabilities from update management (module docstring); each weight's up and down
    coincidences are summed over the batch and applied grouped by direction. For n > 1 the order
    differs from aihwkit's sample-by-sample one (second order in dw_min on nonlinear devices); the
    pulse counts do not.

    The pulse bookkeeping runs in NumPy: at these sizes (tens × tens) each op costs its call
    overhead, which is 2–3× lower in NumPy than in eager torch; the device update stays in torch."""
    out = d.shape[1]
    dx = np.concatenate([d.detach().cpu().numpy(), x.detach().cpu().numpy()], 1)  # each sample's lines, outputs first
    fire = sample_pulse_trains(dx, out, lr, device.params.dw_min, desired_bl, rng)
    n_up, n_down = coincidences(fire, np.sign(dx).astype(np.float32), out)
    # All ups, then all downs (closed form on noise-free affine devices, else pulse by pulse).
    return device.pulse_counts(w, torch.from_numpy(n_up), torch.from_numpy(n_down))


def pulsed_per_sample_update(device: Device, w: torch.Tensor, x: torch.Tensor, d: torch.Tensor, lr: float,
                             desired_bl: int, rng: np.random.Generator, kernel: KernelDevice | None = None) -> torch.Tensor:
    """A mini-batch of rank-1 updates (x: n × in, d: n × out) in aihwkit's order: sample by sample,
    slot by slot, each pulse of the device's size at the weight it finds (``pulse_kernel``).

    Firing probabilities in float64, equal to ``pulse_probabilities``' for float64 inputs, and the
    same uniform draw as ``pulsed_batch_update``: given the same generator state both modes fire the
    same lines, and differ only in how the coincidences reach the weights. With cycle-to-cycle noise
    one normal per pulse is drawn after the uniforms. ``kernel``: ``kernel_device(device, w.shape)``,
    cached by the caller (AnalogSGD does)."""
    from .pulse_kernel import apply_pulse_trains, kernel_device, managed_probabilities, pulse_count  # Numba: on first use

    if w.dim() != 2 or x.dim() != 2 or d.dim() != 2:
        raise ValueError(f"per-sample pulses need w: out × in, x: n × in, d: n × out; got {tuple(w.shape)}, "
                         f"{tuple(x.shape)}, {tuple(d.shape)}")
    out = d.shape[1]
    dx = np.concatenate([d.detach().cpu().numpy(), x.detach().cpu().numpy()], 1, dtype=np.float64)
    prob, bl = managed_probabilities(dx, out, float(lr), float(device.params.dw_min), int(desired_bl))
    u = rng.random((len(dx), int(bl.max()), dx.shape[1]), dtype=np.float32)
    k = kernel or kernel_device(device, w.shape)
    normals = rng.standard_normal(pulse_count(u, prob, bl, out)) if k.noise_std else _NO_NORMALS
    new = w.detach().cpu().numpy().copy()
    apply_pulse_trains(new, u, prob, bl, dx, out, k.kind, k.dw_up, k.dw_down, k.slope_up,
                       k.slope_down, k.gamma_up, k.gamma_down, k.b_min, k.b_max, k.noise_std, normals)
    return torch.from_numpy(new).to(w.device)


_NO_NORMALS = np.zeros(0)


def sample_pulse_trains(dx: np.ndarray, out: int, lr: float, dw_min: float, desired_bl: int,
                        rng: np.random.Generator) -> np.ndarray:
    """Which lines fire in which slot: bool, n × slots × (out + in), for dx = [d | x] (n × (out + in)).

    Only max(BL) slots are drawn, not ``desired_bl``: BL = min(⌈lr·max|x|·max|d|/dw_min⌉, desired_bl)
    is often a few slots, and slots at or beyond a sample's own BL never fire. Both sides come from
    one uniform draw (one call; every bit is still independent)."""
    prob, bl = pulse_probabilities(dx, out, lr, dw_min, desired_bl)
    lo, hi = int(bl.min()), int(bl.max())
    fire = rng.random((len(dx), hi, dx.shape[1]), dtype=np.float32) < prob[:, None, :]
    if lo < hi:  # per-sample BL: silence slots s ≥ BL_b
        fire &= (np.arange(hi)[None, :] < bl)[:, :, None]
    return fire


def pulse_probabilities(dx: np.ndarray, out: int, lr: float, dw_min: float,
                        desired_bl: int) -> tuple[np.ndarray, np.ndarray]:
    """Each line's firing probability per slot (n × (out + in); may exceed 1: always fires) and each
    sample's bit length BL (n × 1, float), for dx = [d | x] (module docstring)."""
    prob = np.abs(dx)
    d_max = np.maximum(prob[:, :out].max(1, keepdims=True), 1e-30)
    x_max = np.maximum(prob[:, out:].max(1, keepdims=True), 1e-30)
    bl = np.minimum(np.maximum(np.ceil(lr * x_max * d_max / dw_min), 1), desired_bl)  # np.clip: slower wrapper
    scale = lr / (dw_min * bl)
    # update management: A = √(scale·d_max/x_max) on inputs, B = scale/A = √(scale·x_max/d_max) on outputs;
    # A|x_j|, B|d_i| ≤ 1 unless BL is capped, and a probability above 1 simply always fires
    a = np.sqrt(scale * d_max / x_max)
    prob[:, :out] *= scale / a
    prob[:, out:] *= a
    return prob, bl


def coincidences(fire: np.ndarray, signs: np.ndarray, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Up and down pulse counts per weight (out × in, float32: exact below 2²⁴), summed over samples
    and slots; ``signs`` = sign([d | x]) per sample (n × (out + in)).

    A coincidence of output i and input j in a slot of sample b is one pulse, down when
    x_bj·d_bi > 0 (none when either is 0). With every (sample, slot) as one row of S = F·sign, split
    as [Sd | Sx]: total = |Sd|ᵀ·|Sx| counts all coincidences and net = Sdᵀ·Sx counts down − up: two
    small matmuls instead of a batched outer product per sign."""
    signed = (fire * signs[:, None, :]).reshape(-1, fire.shape[-1])  # ±1 where a line fires, 0 on x = 0
    mag = np.abs(signed)
    total = mag[:, :out].T @ mag[:, out:]
    net = signed[:, :out].T @ signed[:, out:]
    return (total - net) * 0.5, (total + net) * 0.5


PULSE_ORDERS = ("grouped", "per_sample")


@dataclass
class AnalogSGD:
    """W ← W ⊕ (−lr·∇f): plain SGD whose every update goes through the device."""

    device: Device
    lr: float
    mode: str = "expected"  # or "pulsed" (rank-1 updates via ``step_outer``)
    desired_bl: int = 31
    seed: int = 0
    # pulsed ``step_batch``: "grouped" sums each weight's pulses over the batch (ups, then downs);
    # "per_sample" applies each sample's trains in order, slot by slot, as aihwkit does
    pulse_order: str = "grouped"

    def __post_init__(self) -> None:
        if self.mode not in ("expected", "pulsed"):
            raise ValueError(f"mode must be 'expected' or 'pulsed', got {self.mode!r}")
        if self.pulse_order not in PULSE_ORDERS:
            raise ValueError(f"pulse_order must be one of {', '.join(PULSE_ORDERS)}, got {self.pulse_order!r}")
        self._rng = np.random.default_rng(self.seed)
        self._kernels: dict[tuple, KernelDevice] = {}

    def step(self, w: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        if self.mode != "expected":
            raise ValueError("a full gradient needs mode='expected'; use step_outer(x, d) for pulsed updates")
        return expected_increment(self.device, w, -self.lr * grad)

    def step_batch(self, w: torch.Tensor, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """A mini-batch of rank-1 updates (x: n × in, d: n × out), pulses in ``pulse_order``."""
        if self.mode == "expected":
            return expected_increment(self.device, w, -self.lr * d.T @ x)
        if self.pulse_order == "per_sample":
            return pulsed_per_sample_update(self.device, w, x, d, self.lr, self.desired_bl, self._rng, self._kernel(w.shape))
        return pulsed_batch_update(self.device, w, x, d, self.lr, self.desired_bl, self._rng)

    def _kernel(self, shape: torch.Size) -> KernelDevice:
        """The device's constants as the kernel reads them, once per shape (they never change)."""
        key = tuple(shape)
        if key not in self._kernels:
            from .pulse_kernel import kernel_device

            self._kernels[key] = kernel_device(self.device, shape)
        return self._kernels[key]

    def step_outer(self, w: torch.Tensor, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """The gradient d·xᵀ of a linear layer (batch rows summed one by one, as on the crossbar)."""
        if self.mode == "expected":
            return expected_increment(self.device, w, -self.lr * torch.outer(d, x))
        return pulsed_outer_update(self.device, w, x, d, self.lr, self.desired_bl, self._rng)


@dataclass
class TikiTaka:
    """Tiki-Taka v1: fast array A, slow array C, effective weight W̄ = γ·A + C.

        A ← A ⊕ (−β·∇f(W̄))                            every step
        C ← C ⊕ (α·A[:, cols])   (n_reads columns)      every ``transfer_every`` steps

    A's device should have its symmetric point at 0 (aihwkit subtracts it: zero-shifting).
    """

    fast: Device
    slow: Device
    fast_lr: float | torch.Tensor  # β (a tensor broadcasts per row, e.g. one row per step size)
    transfer_lr: float | torch.Tensor  # α
    gamma: float = 0.0
    transfer_every: int = 1
    n_reads: int = 1  # columns read per transfer
    _k: int = 0
    _col: int = 0

    def effective(self, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.gamma * a + c

    def _columns(self, cols: int) -> list[int] | slice | None:
        """The columns read at this step (cyclic, ``n_reads`` at a time), or None between transfers."""
        self._k += 1
        if self._k % self.transfer_every:
            return None
        if self.n_reads >= cols:
            return slice(None)  # every column: a view, no gather/scatter copies
        idx = [(self._col + j) % cols for j in range(min(self.n_reads, cols))]
        self._col = (self._col + len(idx)) % cols
        return idx

    def step(self, a: torch.Tensor, c: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``grad`` is ∇f at ``effective(a, c)``; returns the new (A, C)."""
        a = expected_increment(self.fast, a, -self.fast_lr * grad)
        idx = self._columns(a.shape[-1])
        if idx is not None:
            delta = torch.zeros_like(c)
            delta[..., idx] = self.transfer_lr * a[..., idx]
            c = expected_increment(self.slow, c, delta)
        return a, c


def buffered_transfer(h: torch.Tensor, read: torch.Tensor, lr: float | torch.Tensor, threshold: float,
                      momentum: float, forget: bool, max_pulses: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One buffered read (aihwkit ``BufferedTransferRPUDevice::readAndUpdate``), elementwise.

    ω = H + lr·read;  n = clamp(trunc(ω / threshold), ±max_pulses)  (signed pulse counts for C);
    where n ≠ 0:  H ← momentum·ω  (``forget``)  or  H ← ω − (1 − momentum)·n·threshold;  else H ← ω.
    Returns (new H, n). trunc, not round: a buffer below one threshold keeps accumulating."""
    omega = h + lr * read
    n = torch.clamp(torch.trunc(omega / threshold), -max_pulses, max_pulses)
    kept = momentum * omega if forget else omega - (1.0 - momentum) * n * threshold
    return torch.where(n != 0, kept, omega), n


@dataclass
class TikiTakaV2:
    """Tiki-Taka v2 (Gokmen 2021; aihwkit ``BufferedTransferCompound``): a digital buffer H between
    the fast array A and the slow array C, effective weight W̄ = γ·A + C.

        A ← A ⊕ (−β·∇f(W̄))                                                  every step
        every ``transfer_every`` steps, for the next ``n_reads`` columns j (cyclic):
            H[:, j], n = buffered_transfer(H[:, j], A[:, j], α, thres_scale·dw_min(C), …)
            C[:, j] ← n pulses on C's devices (up where n > 0, down where n < 0)

    C only ever receives whole pulses, |n| ≤ ``max_pulses`` (aihwkit's transfer ``desired_bl``,
    default 1), so sub-threshold signal waits in H instead of being lost to C's asymmetry. The read
    of A is exact (aihwkit's perfect ``transfer_forward``); A's update is its expectation W ⊕ Δ.
    """

    fast: Device
    slow: Device
    fast_lr: float | torch.Tensor  # β
    transfer_lr: float | torch.Tensor  # α: scale of A's read into H
    gamma: float = 0.0
    transfer_every: int = 1
    n_reads: int = 1  # columns read per transfer
    thres_scale: float = 1.0  # threshold = thres_scale · C's dw_min (aihwkit's weight granularity)
    momentum: float = 0.1  # share of the buffer kept after a transfer
    forget_buffer: bool = True  # H ← momentum·ω after a transfer (else subtract the transferred part)
    max_pulses: int = 1  # aihwkit transfer_update.desired_bl
    buffer: torch.Tensor | None = None  # H, created at the first step
    _k: int = 0
    _col: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum}")
        if self.thres_scale <= 0 or self.max_pulses < 1:
            raise ValueError("thres_scale must be > 0 and max_pulses >= 1")

    effective = TikiTaka.effective
    _columns = TikiTaka._columns

    def step(self, a: torch.Tensor, c: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``grad`` is ∇f at ``effective(a, c)``; returns the new (A, C) and updates ``buffer``."""
        a = expected_increment(self.fast, a, -self.fast_lr * grad)
        if self.buffer is None:
            self.buffer = torch.zeros_like(c)
        idx = self._columns(a.shape[-1])
        if idx is None:
            return a, c
        h, n = buffered_transfer(self.buffer[..., idx], a[..., idx], self.transfer_lr, self.thres_scale * self.slow.params.dw_min,
                                 self.momentum, self.forget_buffer, self.max_pulses)
        self.buffer[..., idx] = h
        counts = torch.zeros_like(c)
        counts[..., idx] = n
        c = self.slow.pulse_counts(c, counts.clamp(min=0), (-counts).clamp(min=0))
        return a, c
