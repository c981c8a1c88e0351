"""Where a run's actors go: a placement group that spreads them over nodes, and which node each got.

``pack`` leaves placement to Ray's default scheduler (no placement group). ``spread`` asks for one
bundle per actor with Ray's ``SPREAD`` strategy (different nodes where there are enough, shared
ones otherwise); ``strict_spread`` requires a distinct node per actor and fails at once, with the
numbers, when the cluster has fewer nodes than actors.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from .errors import ClusterError

Placement = Literal["pack", "spread", "strict_spread"]
STRATEGIES = {"spread": "SPREAD", "strict_spread": "STRICT_SPREAD"}
READY_TIMEOUT_S = 60.0

log = logging.getLogger("dist_core")


class ActorPlacement:
    """Scheduling options for actor ``i`` of ``n``, each of ``bundle`` resources."""

    def __init__(self, placement: Placement, n: int, bundle: dict[str, float]):
        import ray
        from ray.util.placement_group import get_current_placement_group, placement_group

        self.group = None
        if placement == "pack":
            return
        if get_current_placement_group() is not None:
            # Inside a Tune trial: the trial's own placement group already holds these bundles, and a
            # second group for the same CPUs would wait forever.
            log.info("placement %s ignored: already inside a placement group (a sweep trial)", placement)
            return
        alive = [node for node in ray.nodes() if node.get("Alive")]
        if placement == "strict_spread" and len(alive) < n:
            raise ClusterError(f"placement strict_spread needs {n} nodes (one per actor), the cluster has "
                               f"{len(alive)}; use spread, or add nodes")
        self.group = placement_group([dict(bundle) for _ in range(n)], strategy=STRATEGIES[placement])
        if not self._wait_ready():
            ray.util.remove_placement_group(self.group)
            raise ClusterError(f"placement {placement}: {n} bundles of {bundle} could not be placed within "
                               f"{READY_TIMEOUT_S:.0f} s; the cluster has {ray.cluster_resources()}")

    def _wait_ready(self) -> bool:
        import ray

        ready, _ = ray.wait([self.group.ready()], timeout=READY_TIMEOUT_S)
        return bool(ready)

    def options(self, index: int) -> dict[str, Any]:
        if self.group is None:
            return {}
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=self.group, placement_group_bundle_index=index)}

    def remove(self) -> None:
        if self.group is not None:
            import ray

            ray.util.remove_placement_group(self.group)
            self.group = None


def node_id() -> str:
    """The Ray node this process runs on (an actor method returns it for the run's summary)."""
    import ray

    return ray.get_runtime_context().get_node_id()
