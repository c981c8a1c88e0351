"""Searchers by name, each through Ray Tune's own searcher classes; optional ones import lazily."""

from __future__ import annotations

from typing import Any

from ..errors import RunError

_INSTALL = {
    "hyperopt": 'pip install "hyperopt>=0.2.7"',
    "bohb": 'pip install "hpbandster>=0.7" "ConfigSpace>=1.0"',
}


def make_searcher(name: str, max_concurrent: int, seed: int | None) -> Any:
    """Random and grid use Tune's BasicVariantGenerator (seeded, so a sweep can be repeated)."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if name in ("random", "grid"):
        return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)
    try:
        if name == "optuna":
            import optuna
            from ray.tune.search.optuna import OptunaSearch

            searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed))
        elif name == "hyperopt":
            from ray.tune.search.hyperopt import HyperOptSearch

            searcher = HyperOptSearch(random_state_seed=seed)
        elif name == "bohb":
            from ray.tune.search.bohb import TuneBOHB

            searcher = TuneBOHB(seed=seed)
        else:
            raise RunError(f"unknown searcher {name!r}")
    except (ImportError, AssertionError) as e:
        hint = _INSTALL.get(name, "")
        raise RunError(f"searcher {name!r} needs an extra package ({e}); install it with: {hint}") from None
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
