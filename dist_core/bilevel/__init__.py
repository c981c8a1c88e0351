"""Bilevel learners: problems, hypergradient estimators, and upper/lower learners on Ray actors.

    from dist_core.bilevel import BilevelProblem, hypergradient, solve

Names are imported on first use, so that validating a bilevel job file (``bilevel/config.py``)
does not import torch. (No submodule may share an exported name: once imported, a submodule
``solve`` would shadow the function ``solve`` on the package; the loop lives in ``solver.py``.)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ActorFailure": "dist_core.errors",
    "BilevelRunError": "dist_core.errors",
    "LearnerError": "dist_core.errors",
    "BilevelProblem": "dist_core.bilevel.problem",
    "SolveResult": "dist_core.bilevel.solver",
    "solve": "dist_core.bilevel.solver",
    "hypergradient": "dist_core.bilevel.hypergrad",
}

__all__ = sorted([*_EXPORTS, "estimators"])


def __getattr__(name: str) -> Any:
    if name == "estimators":
        return importlib.import_module("dist_core.bilevel.estimators")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dist_core.bilevel' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
