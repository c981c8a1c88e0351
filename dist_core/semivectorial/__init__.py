"""Semivectorial bilevel learning: min_x f0(x) over the weakly Pareto-optimal x of (f1..fM) (arXiv 2504.02854).

    from dist_core.semivectorial import SemivectorialProblem, PenaltyConfig, solve_semivectorial, smoothed_merit

Names are imported on first use, so that validating a job file (``semivectorial/config.py``) does
not import torch. The merit function and its y-steps are pure math in ``merit.py``; the penalty
solver on the multi-objective shard learners in ``solver.py``; the digits job in ``job.py``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SemivectorialProblem": "dist_core.semivectorial.solver",
    "PenaltyConfig": "dist_core.semivectorial.solver",
    "SemivectorialState": "dist_core.semivectorial.solver",
    "SemivectorialResult": "dist_core.semivectorial.solver",
    "solve_semivectorial": "dist_core.semivectorial.solver",
    "smoothed_merit": "dist_core.semivectorial.merit",
    "Merit": "dist_core.semivectorial.merit",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dist_core.semivectorial' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
