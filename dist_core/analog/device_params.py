"""Device parameters, with IBM aihwkit's names and defaults: what a job file's ``device:`` names.

Plain frozen dataclasses checked in ``__post_init__``, no torch, so that validating a job file
stays light; the pulse physics that uses them is ``devices.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import DeviceConfigError


@dataclass(frozen=True)
class PulsedDevice:
    """Parameters every pulsed device shares (aihwkit ``PulsedDevice`` defaults)."""

    dw_min: float = 0.001  # mean step of one pulse at w = 0
    dw_min_dtod: float = 0.3  # device-to-device spread of the step (relative)
    dw_min_dtod_log_normal: bool = False  # gain = exp(dtod ξ) instead of 1 + dtod ξ
    dw_min_std: float = 0.3  # cycle-to-cycle noise of a step (relative): Δ(1 + σξ)
    w_max: float = 0.6  # upper bound (mean over devices)
    w_min: float = -0.6  # lower bound (mean over devices)
    w_max_dtod: float = 0.3  # relative device-to-device spread of w_max
    w_min_dtod: float = 0.3  # relative device-to-device spread of w_min
    up_down: float = 0.0  # >0 shrinks down steps, <0 shrinks up steps (mean asymmetry)
    up_down_dtod: float = 0.01  # device-to-device spread of the asymmetry
    write_noise_std: float = 0.0  # read noise of the written weight, in units of dw_min
    enforce_consistency: bool = True  # steps taken in absolute value

    def __post_init__(self) -> None:
        if self.dw_min <= 0:
            raise DeviceConfigError(f"dw_min must be > 0, got {self.dw_min}")
        if not self.w_min < self.w_max:
            raise DeviceConfigError(f"w_min must be < w_max, got w_min={self.w_min}, w_max={self.w_max}")
        if not self.w_min <= 0 <= self.w_max:
            raise DeviceConfigError(f"[w_min, w_max] must contain 0, got [{self.w_min}, {self.w_max}]")
        for name in ("dw_min_dtod", "dw_min_std", "w_max_dtod", "w_min_dtod", "up_down_dtod", "write_noise_std"):
            if getattr(self, name) < 0:
                raise DeviceConfigError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class ConstantStep(PulsedDevice):
    """Steps independent of w (aihwkit ``ConstantStepDevice``): the idealised device."""


@dataclass(frozen=True)
class LinearStep(PulsedDevice):
    """Steps shrinking linearly towards the bounds (aihwkit ``LinearStepDevice``)."""

    gamma_up: float = 0.0  # γ⁺: slope of the up step (1 = reaches zero at w_max)
    gamma_down: float = 0.0  # γ⁻
    gamma_up_dtod: float = 0.05
    gamma_down_dtod: float = 0.05
    allow_increasing: bool = False  # keep γ as drawn (may turn negative) instead of |γ|
    mean_bound_reference: bool = True  # w_ref = mean bounds; False: per-device bounds


@dataclass(frozen=True)
class SoftBounds(LinearStep):
    """LinearStep with γ⁺ = γ⁻ = 1 and per-device bounds (aihwkit ``SoftBoundsDevice``)."""

    gamma_up: float = 1.0
    gamma_down: float = 1.0
    gamma_up_dtod: float = 0.0
    gamma_down_dtod: float = 0.0
    mean_bound_reference: bool = False


@dataclass(frozen=True)
class PowStep(PulsedDevice):
    """Steps following a power of the distance to the bounds (aihwkit ``PowStepDevice``)."""

    pow_gamma: float = 1.0  # γ: exponent
    pow_gamma_dtod: float = 0.1
    pow_up_down: float = 0.0  # asymmetry of the exponents


_KINDS: dict[str, type[PulsedDevice]] = {
    "constant_step": ConstantStep,
    "linear_step": LinearStep,
    "soft_bounds": SoftBounds,
    "pow_step": PowStep,
}

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    # Every spread and noise off: the device of analysis and of exact-gradient checks.
    "ideal_constant": ("constant_step", dict(dw_min_dtod=0.0, dw_min_std=0.0, w_max_dtod=0.0, w_min_dtod=0.0,
                                             up_down_dtod=0.0, w_max=1.0, w_min=-1.0)),
    # A ReRAM-like soft-bounds device, roughly aihwkit's ReRamSBPreset: 1000 states, mild asymmetry.
    "reram_sb": ("soft_bounds", dict(dw_min=0.002, dw_min_dtod=0.3, dw_min_std=0.3, w_max=1.0, w_min=-1.0,
                                     w_max_dtod=0.3, w_min_dtod=0.3, up_down=0.01, up_down_dtod=0.01)),
}


def names() -> list[str]:
    return sorted([*_KINDS, *PRESETS])


def resolve(name: str, **params: Any) -> PulsedDevice:
    """The parameters of device or preset ``name`` with ``params`` on top; raises ``DeviceConfigError``."""
    if name in PRESETS:
        kind, preset = PRESETS[name]
        params = {**preset, **params}
    else:
        kind = name
    if kind not in _KINDS:
        raise DeviceConfigError(f"unknown device {name!r}; valid: {', '.join(names())}")
    cls = _KINDS[kind]
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - valid)
    if unknown:
        raise DeviceConfigError(f"{name}: unknown parameter {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    return cls(**params)
