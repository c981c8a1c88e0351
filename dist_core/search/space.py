"""A sweep's ``search.space`` as a Ray Tune param space over dotted fields of the base job."""

from __future__ import annotations

from typing import Any

from .config import Distribution


def tune_space(space: dict[str, Distribution]) -> dict[str, Any]:
    """Flat ``{"bilevel.lower.lr": tune.loguniform(...)}``; trials turn keys into ``--set``s."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, d in space.items():
        if d.type == "uniform":
            out[key] = tune.uniform(d.low, d.high)
        elif d.type == "loguniform":
            out[key] = tune.loguniform(d.low, d.high)
        elif d.type == "int":
            out[key] = tune.randint(int(d.low), int(d.high) + 1)  # inclusive of high, as written
        elif d.type == "choice":
            out[key] = tune.choice(list(d.values))
        else:
            out[key] = tune.grid_search(list(d.values))
    return out


def overrides(config: dict[str, Any]) -> list[str]:
    """A trial's sampled config as ``--set`` strings (JSON is YAML, so types survive)."""
    import json

    return [f"{k}={json.dumps(_plain(v))}" for k, v in sorted(config.items())]


def _plain(v: Any) -> Any:
    """numpy scalars from searchers → Python scalars."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (list, dict)) else v


def max_value(space: dict[str, Distribution], key: str, default: float) -> float:
    """The largest value ``key`` can take in the space (for sizing resources), else ``default``."""
    d = space.get(key)
    if d is None:
        return default
    if d.values is not None:
        return max(float(v) for v in d.values)
    return float(d.high)
