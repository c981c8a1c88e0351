"""Preference-guided multi-objective learning (FERERO) with the gradients computed on Ray actors.

    from dist_core.multiobjective import MultiObjectiveProblem, ferero_direction, solve_preference

Names are imported on first use, so that validating a job file (``multiobjective/config.py``)
does not import torch. The pure math (the dual, the simplex projection, MGDA) is in
``direction.py``; the actors in ``solver.py``; the digits task in ``digits.py``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MultiObjectiveProblem": "dist_core.multiobjective.problem",
    "ferero_direction": "dist_core.multiobjective.problem",
    "solve_preference": "dist_core.multiobjective.solver",
    "PreferenceResult": "dist_core.multiobjective.solver",
    "PreferenceState": "dist_core.multiobjective.solver",
    "DualConfig": "dist_core.multiobjective.direction",
    "DualWeights": "dist_core.multiobjective.direction",
    "RULES": "dist_core.multiobjective.direction",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dist_core.multiobjective' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
