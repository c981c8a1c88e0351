"""What every estimator shares: its result type and the registry that names it.

An estimator is a pure function on tensors, no Ray in sight:

    fn(problem, theta, lam, lower_batch, upper_batch, options, state) -> Estimate

``theta`` is the lower learner's current iterate (≈ θ*(λ)); ``state`` is whatever the
estimator asked to keep between rounds (the penalty method's second copy of θ, say).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from ...errors import UnknownEstimatorError  # noqa: F401  (raised here; the hierarchy lives in the core)
from .. import tree
from ..problem import BilevelProblem


@dataclass
class Estimate:
    grad: tree.Params  # ∂F/∂λ estimate, same keys and shapes as λ
    state: dict[str, tree.Params] = field(default_factory=dict)  # kept by the learner for next round
    theta: tree.Params | None = None  # new lower iterate, if the estimator advanced θ itself


EstimatorFn = Callable[
    [BilevelProblem, tree.Params, tree.Params, Any, Any, Any, dict[str, tree.Params]], Estimate
]


@dataclass(frozen=True)
class EstimatorEntry:
    name: str
    fn: EstimatorFn
    options: type  # a frozen dataclass of the method's knobs, with defaults


_REGISTRY: dict[str, EstimatorEntry] = {}


def register(name: str, options: type) -> Callable[[EstimatorFn], EstimatorFn]:
    def deco(fn: EstimatorFn) -> EstimatorFn:
        _REGISTRY[name] = EstimatorEntry(name, fn, options)
        return fn

    return deco


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> EstimatorEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownEstimatorError(
            f"unknown estimator {name!r}; valid: {', '.join(names())}"
        ) from None


def make_options(name: str, **overrides: Any) -> Any:
    """Build the options dataclass of ``name``; an unknown knob names the valid ones."""
    entry = get(name)
    valid = {f.name for f in dataclasses.fields(entry.options)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(
            f"estimator {name!r} has no option {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
        )
    return entry.options(**overrides)
