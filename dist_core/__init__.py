"""dist_core: Ray-based distributed training and tuning for nested (bilevel) research.

Public API (imported lazily, so that ``launch.py validate`` does not pay for torch and Ray)::

    from dist_core import BilevelProblem, hypergradient, solve, load_job, run_job
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "BilevelProblem": ("dist_core.bilevel", "BilevelProblem"),
    "hypergradient": ("dist_core.bilevel", "hypergradient"),
    "solve": ("dist_core.bilevel", "solve"),
    "load_job": ("dist_core.spec", "load"),
    "run_job": ("dist_core.runner", "run_job"),
    "SpecError": ("dist_core.errors", "SpecError"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dist_core' has no attribute {name!r}")
    import importlib

    module, attr = _EXPORTS[name]
    return getattr(importlib.import_module(module), attr)
