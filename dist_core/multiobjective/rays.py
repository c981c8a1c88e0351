"""Preference rays without torch: the checks a job file and ``MultiObjectiveProblem`` share."""

from __future__ import annotations

import math
from typing import Sequence


def preference_error(preference: Sequence[float], m: int) -> str | None:
    """Why ``preference`` is not a ray for ``m`` objectives, or None."""
    values = list(preference)
    if len(values) != m:
        return f"needs {m} entries (one per objective), got {len(values)}"
    for i, v in enumerate(values):
        if not math.isfinite(v):
            return f"entry {i} is {v}: entries must be finite"
        if v < 0:
            return f"entry {i} is {v}: entries must be >= 0 (a ray in the positive orthant)"
    if sum(values) <= 0:
        return "all entries are 0: at least one must be > 0"
    return None


def check_preference(preference: Sequence[float], m: int) -> list[float]:
    why = preference_error(preference, m)
    if why is not None:
        raise ValueError(f"preference {list(preference)}: {why}")
    return [float(v) for v in preference]


def even_rays(n: int, margin: float = 0.05) -> list[list[float]]:
    """``n`` unit rays spread over the quarter circle, ``margin`` (a share of π/2) from each axis."""
    if n == 1:
        return [[math.sqrt(0.5), math.sqrt(0.5)]]
    lo, hi = margin * math.pi / 2, (1 - margin) * math.pi / 2
    return [[math.cos(lo + (hi - lo) * i / (n - 1)), math.sin(lo + (hi - lo) * i / (n - 1))] for i in range(n)]
