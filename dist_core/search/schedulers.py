"""Trial schedulers: FIFO, ASHA, and a PBT that never exploits a trial without a checkpoint.

Ray's PBT can pick a trial that has not reported a checkpoint yet as the one to copy
(ray#27170); copying nothing then restarts the exploiting trial from scratch with a mutated
config. ``may_exploit`` is the rule we add, checked before every exploit.
"""

from __future__ import annotations

import logging
from typing import Any

from .config import SchedulerSpec

log = logging.getLogger("dist_core.search")


def may_exploit(source_checkpoint: Any) -> bool:
    """A trial may be copied only once it has reported a checkpoint."""
    return source_checkpoint is not None


def make_scheduler(spec: SchedulerSpec, space: dict[str, Any], max_t: int, values: dict[str, list] | None = None) -> Any:
    """Metric and mode come from ``TuneConfig`` (Tune refuses them in two places)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    if spec.name == "fifo":
        return FIFOScheduler()
    if spec.name == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                             grace_period=min(spec.grace_period, max_t), reduction_factor=spec.reduction_factor)

    class CheckpointedPBT(PopulationBasedTraining):
        """PBT whose exploit step refuses a source trial with no checkpoint."""

        def _exploit(self, tune_controller, trial, trial_to_clone):  # noqa: D401 (Ray's hook)
            if not may_exploit(self._trial_state[trial_to_clone].last_checkpoint):
                log.info("pbt: %s has no checkpoint yet; %s keeps its own state", trial_to_clone, trial)
                return
            return super()._exploit(tune_controller, trial, trial_to_clone)

    # PBT multiplies numeric values by 0.8/1.2 (rounding ints) but must shift or resample
    # categorical ones within their list: ``values`` holds the lists of choice/grid dimensions.
    values = values or {}
    mutations = {k: (list(values[k]) if k in values else v) for k, v in space.items()
                 if k in values or hasattr(v, "sample")}
    return CheckpointedPBT(time_attr="training_iteration",
                           perturbation_interval=spec.perturbation_interval,
                           quantile_fraction=spec.quantile_fraction, hyperparam_mutations=mutations)
