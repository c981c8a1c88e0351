"""Pulse response of resistive devices, with IBM aihwkit's parameter names and defaults.

One pulse moves a weight up (+1) or down (−1) by a state-dependent step. Device-to-device
("dtod") constants are drawn once per weight from ``seed``; cycle-to-cycle noise (``dw_min_std``)
is drawn per pulse. Formulas follow aihwkit's ``rpu_pulsed_device.cpp`` / ``rpu_linearstep_device``
(RESEARCH.md §4c), with ξ ~ N(0, 1):

    b_max = w_max (1 + w_max_dtod ξ),   b_min = w_min (1 + w_min_dtod ξ)
    gain  = 1 + dw_min_dtod ξ  (or exp(dw_min_dtod ξ) if dw_min_dtod_log_normal)
    r     = up_down_dtod ξ
    Δw⁺   = dw_min (gain + min(up_down, 0) + r),   Δw⁻ = dw_min (gain − max(up_down, 0) − r)

    constant_step: up w + Δw⁺(1 + σξ),                      down w − Δw⁻(1 + σξ)
    linear_step:   up w + (s⁺w + Δw⁺)(1 + σξ),              down w − (s⁻w + Δw⁻)(1 + σξ)
                   s⁺ = −γ⁺ Δw⁺ / w_ref⁺,  s⁻ = −γ⁻ Δw⁻ / w_ref⁻   (w_ref: mean or per-device bounds)
    soft_bounds:   linear_step with γ⁺ = γ⁻ = 1 and per-device bounds:
                   up w + Δw⁺(1 − w/b_max)(1 + σξ),         down w − Δw⁻(1 − w/b_min)(1 + σξ)
    pow_step:      ω = (b_max − w)/(b_max − b_min)
                   up w + Δw⁺ ω^{γ⁺}(1 + σξ),               down w − Δw⁻ (1 − ω)^{γ⁻}(1 + σξ)
                   γ^± = pow_gamma (1 ± pow_up_down + pow_gamma_dtod ξ)
    then clip to [b_min, b_max].

(Multiplicative cycle-to-cycle noise, aihwkit's SoftBounds default ``mult_noise=True``.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import DeviceConfigError  # noqa: F401  (re-exported)
from .device_params import (_KINDS, PRESETS, ConstantStep, LinearStep, PowStep, PulsedDevice,  # noqa: F401  (re-exported)
                            SoftBounds, names, resolve)


@dataclass
class Device:
    """A device model plus its per-weight constants, drawn once for a shape from ``seed``."""

    params: PulsedDevice
    seed: int = 0
    _constants: dict[tuple, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)
    _gen: torch.Generator | None = field(default=None, repr=False)
    _affine_cache: dict[tuple, dict[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        return next(k for k, v in _KINDS.items() if type(self.params) is v)

    def constants(self, shape: torch.Size) -> dict[str, torch.Tensor]:
        key = tuple(shape)
        if key not in self._constants:
            self._constants[key] = _draw_constants(self.params, shape, torch.Generator().manual_seed(self.seed))
        return self._constants[key]

    def _noise(self, shape: torch.Size) -> torch.Tensor:
        if self._gen is None:
            self._gen = torch.Generator().manual_seed(self.seed + 1)
        return torch.randn(shape, generator=self._gen, dtype=torch.float64)

    def step(self, w: torch.Tensor, up: bool) -> torch.Tensor:
        """The noise-free size (≥ 0) of one up or down pulse at w, per weight: Δw_min·q_±(w)."""
        return _step(self.params, self.constants(w.shape), w.double(), up).to(w.dtype)

    def pulse(self, w: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        """Apply one pulse per element: +1 up, −1 down, 0 none. Returns the new weights."""
        c = self.constants(w.shape)
        wd = w.double()
        up = _step(self.params, c, wd, True)
        down = _step(self.params, c, wd, False)
        noise = 1.0 + self.params.dw_min_std * self._noise(w.shape) if self.params.dw_min_std else 1.0
        delta = torch.where(direction > 0, up, torch.where(direction < 0, -down, torch.zeros_like(wd)))
        new = torch.minimum(torch.maximum(wd + delta * noise, c["b_min"]), c["b_max"])
        return new.to(w.dtype)

    def pulses(self, w: torch.Tensor, n: torch.Tensor, up: bool) -> torch.Tensor:
        """n[i] pulses in one direction on each weight. Without cycle-to-cycle noise, the affine
        devices (constant, linear, soft bounds: step = s·w + Δ) have the closed form
        w_n = w* + (w − w*)(1 + s)^n, w* = −Δ/s (or w + nΔ when s = 0), clipped at the bounds;
        otherwise (noise, pow step) the pulses are applied one by one."""
        p = self.params
        if p.dw_min_std or isinstance(p, PowStep):
            for k in range(int(n.max()) if n.numel() else 0):
                w = self.pulse(w, (n > k).to(w.dtype) * (1 if up else -1))
            return w
        return self._closed_form(w.double(), n.double(), up).to(w.dtype)

    def pulse_counts(self, w: torch.Tensor, n_up: torch.Tensor, n_down: torch.Tensor) -> torch.Tensor:
        """n_up[i] up pulses, then n_down[i] down pulses, on each weight: a pulsed update's counts
        in one call (one conversion each way on the closed-form path)."""
        p = self.params
        if p.dw_min_std or isinstance(p, PowStep):
            return self.pulses(self.pulses(w, n_up, up=True), n_down, up=False)
        moved = self._closed_form(self._closed_form(w.double(), n_up.double(), True), n_down.double(), False)
        return moved.to(w.dtype)

    def _closed_form(self, w: torch.Tensor, n: torch.Tensor, up: bool) -> torch.Tensor:
        """``pulses`` on a noise-free affine device, float64 in and out."""
        a, c = self._affine(w.shape, up), self.constants(w.shape)
        if a["all_flat"]:
            moved = w + n * a["delta"]
        else:  # (1 + s)^n as exp(n·log(1 + s)): log cached, two cheap ops instead of a tensor pow
            moved = a["w_star"] + (w - a["w_star"]) * torch.exp(n * a["log_growth"])
            if a["flat"] is not None:
                moved = torch.where(a["flat"], w + n * a["delta"], moved)
        return torch.clamp(moved, c["b_min"], c["b_max"])

    def _affine(self, shape: torch.Size, up: bool) -> dict[str, Any]:
        """Per-shape constants of one direction's affine step w ← (1 + s)·w + Δ, computed once:
        a training step applies pulses every call, and these do not change."""
        key = (tuple(shape), up)
        if key not in self._affine_cache:
            c = self.constants(shape)
            if isinstance(self.params, LinearStep):
                slope, delta = (c["slope_up"], c["dw_up"]) if up else (-c["slope_down"], -c["dw_down"])
            else:
                slope, delta = torch.zeros_like(c["dw_up"]), (c["dw_up"] if up else -c["dw_down"])
            flat = slope.abs() < 1e-15
            safe = torch.where(flat, torch.ones_like(slope), slope)
            self._affine_cache[key] = {"delta": delta, "w_star": -delta / safe, "log_growth": torch.log1p(safe),
                                       "flat": flat if bool(flat.any()) else None, "all_flat": bool(flat.all())}
        return self._affine_cache[key]

    def read(self, w: torch.Tensor) -> torch.Tensor:
        """What a forward pass sees: w plus write noise (write_noise_std · dw_min)."""
        if not self.params.write_noise_std:
            return w
        return w + (self.params.write_noise_std * self.params.dw_min * self._noise(w.shape)).to(w.dtype)

    def bounds(self, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.constants(shape)
        return c["b_min"], c["b_max"]


def make(name: str, seed: int = 0, **params: Any) -> Device:
    """``make("soft_bounds", dw_min=0.01, w_max=1.0, w_min=-0.8)``; a preset name fills defaults."""
    return Device(resolve(name, **params), seed)


def _draw_constants(p: PulsedDevice, shape: torch.Size, gen: torch.Generator) -> dict[str, torch.Tensor]:
    def xi() -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float64)

    b_max = p.w_max * (1 + p.w_max_dtod * xi())
    b_min = p.w_min * (1 + p.w_min_dtod * xi())
    gain = torch.exp(p.dw_min_dtod * xi()) if p.dw_min_dtod_log_normal else 1 + p.dw_min_dtod * xi()
    r = p.up_down_dtod * xi()
    dw_up = p.dw_min * (gain + min(p.up_down, 0.0) + r)
    dw_down = p.dw_min * (gain - max(p.up_down, 0.0) - r)
    if p.enforce_consistency:
        dw_up, dw_down = dw_up.abs(), dw_down.abs()
    c = {"b_max": torch.clamp(b_max, min=0.0), "b_min": torch.clamp(b_min, max=0.0), "dw_up": dw_up, "dw_down": dw_down}
    if isinstance(p, LinearStep):
        g_up = p.gamma_up + p.gamma_up_dtod * xi()
        g_down = p.gamma_down + p.gamma_down_dtod * xi()
        if not p.allow_increasing:
            g_up, g_down = g_up.abs(), g_down.abs()
        ref_up = torch.full(shape, p.w_max, dtype=torch.float64) if p.mean_bound_reference else c["b_max"]
        ref_down = torch.full(shape, p.w_min, dtype=torch.float64) if p.mean_bound_reference else c["b_min"]
        c["slope_up"] = -g_up * dw_up / ref_up
        c["slope_down"] = -g_down * dw_down / ref_down
    if isinstance(p, PowStep):
        spread = p.pow_gamma_dtod * xi()
        c["gamma_up"] = p.pow_gamma * (1 + p.pow_up_down + spread)
        c["gamma_down"] = p.pow_gamma * (1 - p.pow_up_down + spread)
    return c


def _step(p: PulsedDevice, c: dict[str, torch.Tensor], w: torch.Tensor, up: bool) -> torch.Tensor:
    if isinstance(p, LinearStep):
        # up: s⁺w + Δw⁺ ; down: magnitude s⁻w + Δw⁻ (s⁻ > 0 for b_min < 0, so it shrinks towards b_min)
        step = c["slope_up"] * w + c["dw_up"] if up else c["slope_down"] * w + c["dw_down"]
        return step.clamp(min=0.0)
    if isinstance(p, PowStep):
        span = (c["b_max"] - c["b_min"]).clamp(min=1e-12)
        omega = ((c["b_max"] - w) / span).clamp(0.0, 1.0)
        return c["dw_up"] * omega ** c["gamma_up"] if up else c["dw_down"] * (1 - omega) ** c["gamma_down"]
    return c["dw_up"] if up else c["dw_down"]
