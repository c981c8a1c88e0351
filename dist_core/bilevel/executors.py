"""Where the learners live: in this process (the reference) or on Ray actors.

Both executors drive the very same ``LowerLearner``/``UpperLearner`` code, so the actor path can
be checked number-for-number against the in-process one. On Ray, a round is pure dataflow: λ is
put in the object store once (the upper actor's return value), every lower actor reads that one
object, and their parts go straight to the upper actor without passing through the driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ActorFailure, LearnerError  # noqa: F401  (raised here; the hierarchy lives in the core)
from ..placement import ActorPlacement, Placement
from . import tree
from .learners import Arrays, LowerLearner, UpperLearner
from .problem import BilevelProblem
from .step import LowerConfig


@dataclass
class Snapshot:
    """Everything a run needs to continue exactly: λ, the upper optimizer, every θ_k."""

    round: int
    upper: Arrays
    upper_meta: dict
    lower: list[Arrays]

    def to_flat(self) -> tuple[Arrays, dict]:
        flat = {f"upper/{k}": v for k, v in self.upper.items()}
        for i, arrays in enumerate(self.lower):
            flat.update({f"lower/{i}/{k}": v for k, v in arrays.items()})
        return flat, {"round": self.round, "learners": len(self.lower), "upper_meta": self.upper_meta}

    @classmethod
    def from_flat(cls, flat: Arrays, meta: dict) -> "Snapshot":
        upper = {k[len("upper/"):]: v for k, v in flat.items() if k.startswith("upper/")}
        lower = []
        for i in range(meta["learners"]):
            head = f"lower/{i}/"
            lower.append({k[len(head):]: v for k, v in flat.items() if k.startswith(head)})
        return cls(meta["round"], upper, meta["upper_meta"], lower)


@dataclass
class LearnerSetup:
    problem: BilevelProblem
    thetas: list[tree.Params]  # initial θ_k
    lam0: tree.Params
    lower_batches: list[Any]
    upper_batches: list[Any]
    cfg: LowerConfig
    upper_optimizer: str
    upper_lr: float
    eval_batch: Any = None
    fail_at: dict[int, int] = field(default_factory=dict)  # learner -> round (fault injection)

    @property
    def k(self) -> int:
        return len(self.thetas)


class LocalExecutor:
    """All learners in this process, one after another: the single-process reference."""

    def __init__(self, setup: LearnerSetup):
        s = setup
        self.lowers = [
            LowerLearner(s.problem, s.thetas[i], s.lower_batches[i], s.upper_batches[i], s.cfg, s.eval_batch)
            for i in range(s.k)
        ]
        self.upper_learner = UpperLearner(s.lam0, s.upper_optimizer, s.upper_lr)
        self._lam: Arrays | None = None
        self._parts: list[Arrays] = []

    def broadcast(self) -> None:
        self._lam = self.upper_learner.lam()

    def lower(self, round_idx: int) -> list[dict[str, float]]:
        out = [learner.run_round(self._lam, round_idx) for learner in self.lowers]
        self._parts = [p for p, _ in out]
        return [m for _, m in out]

    def upper(self) -> dict[str, float]:
        return self.upper_learner.step(*self._parts)

    def snapshot(self, round_idx: int) -> Snapshot:
        up, meta = self.upper_learner.snapshot()
        return Snapshot(round_idx, up, meta, [lw.snapshot() for lw in self.lowers])

    def restore(self, snap: Snapshot) -> None:
        self.upper_learner.restore(snap.upper, snap.upper_meta)
        for lw, arrays in zip(self.lowers, snap.lower):
            lw.restore(arrays)

    def lam(self) -> Arrays:
        return self.upper_learner.lam()

    def thetas(self) -> list[Arrays]:
        return [lw.theta() for lw in self.lowers]

    def nodes(self) -> list[str]:
        return []  # not on Ray

    def close(self) -> None:
        pass


SETTLE_TIMEOUT_S = 60.0


def settle(actors: list, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
    """Wait until each actor is known alive or dead before replacements are placed.

    When a node is lost, the peers of its learners notice (a broken collective, a dead actor)
    seconds before Ray declares the node dead; a replacement placed in that window can land on the
    dying node's placement-group bundle and die with it. An actor that answers is alive; one whose
    ping fails is dead; one that does neither is on a node Ray has not given up yet, so wait."""
    import ray

    pings = [a.__ray_ready__.remote() for a in actors]
    ray.wait(pings, num_returns=len(pings), timeout=timeout_s)


class RayExecutor:
    """One ``UpperLearner`` actor and K ``LowerLearner`` actors.

    The driver never waits between the lower and the upper half of a round: the upper step is
    submitted with the parts' object refs right after the lower tasks, and it returns the next
    λ as its own object, which the next round broadcasts without another actor call.
    """

    def __init__(self, setup: LearnerSetup, cpus_per_learner: float = 1.0, placement: Placement = "pack"):
        import ray

        self.ray, self.setup, self.cpus = ray, setup, cpus_per_learner
        self.placement = ActorPlacement(placement, setup.k, {"CPU": cpus_per_learner})
        self._spawn(inject_faults=True)
        self._lam_ref = None  # λ for the next round, if the last step produced it
        self._step_ref = None

    def _spawn(self, inject_faults: bool) -> None:
        s, ray = self.setup, self.ray
        threads = max(1, int(self.cpus))
        lower_cls = ray.remote(num_cpus=self.cpus, max_restarts=0)(LowerLearner)
        # The upper step is a mean and an optimizer step: it needs no core of its own.
        upper_cls = ray.remote(num_cpus=0, max_restarts=0)(UpperLearner)
        self.lowers = [
            lower_cls.options(**self.placement.options(i)).remote(
                s.problem, s.thetas[i], s.lower_batches[i], s.upper_batches[i], s.cfg, s.eval_batch,
                threads=threads, fail_at_round=s.fail_at.get(i) if inject_faults else None,
            )
            for i in range(s.k)
        ]
        self.upper_actor = upper_cls.remote(s.lam0, s.upper_optimizer, s.upper_lr, threads=1)
        self.node_ids = self._get([lw.node.remote() for lw in self.lowers], "lower learner at start-up")

    def _get(self, refs: Any, who: str) -> Any:
        ray = self.ray
        try:
            return ray.get(refs)
        except ray.exceptions.RayActorError as e:
            raise ActorFailure(f"{who}: actor died ({type(e).__name__})") from e
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if getattr(e, "cause", None) is not None else e
            first = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
            raise LearnerError(f"{who} raised {type(cause).__name__}: {first}", str(e)) from None

    def broadcast(self) -> None:
        if self._lam_ref is None:  # first round, or after a restore
            self._lam_ref = self.upper_actor.lam.remote()

    def lower(self, round_idx: int) -> list[dict[str, float]]:
        refs = [lw.run_round.options(num_returns=2).remote(self._lam_ref, round_idx) for lw in self.lowers]
        self._step_ref, self._lam_ref = self.upper_actor.step_and_lam.options(num_returns=2).remote(
            *[r[0] for r in refs]
        )
        metrics = []
        for i, (_, m) in enumerate(refs):
            metrics.append(self._get(m, f"lower learner {i} in round {round_idx + 1}"))
        return metrics

    def upper(self) -> dict[str, float]:
        return self._get(self._step_ref, "upper learner")

    def snapshot(self, round_idx: int) -> Snapshot:
        up, meta = self._get(self.upper_actor.snapshot.remote(), "upper learner")
        lower = self._get([lw.snapshot.remote() for lw in self.lowers], "lower learner snapshot")
        return Snapshot(round_idx, up, meta, lower)

    def restore(self, snap: Snapshot) -> None:
        settle([*self.lowers, self.upper_actor])
        self.close(keep_placement=True)
        self._lam_ref = self._step_ref = None
        self._spawn(inject_faults=False)
        refs = [lw.restore.remote(a) for lw, a in zip(self.lowers, snap.lower)]
        refs.append(self.upper_actor.restore.remote(snap.upper, snap.upper_meta))
        self._get(refs, "restore")

    def lam(self) -> Arrays:
        return self._get(self.upper_actor.lam.remote(), "upper learner")

    def thetas(self) -> list[Arrays]:
        return self._get([lw.theta.remote() for lw in self.lowers], "lower learner")

    def nodes(self) -> list[str]:
        return list(self.node_ids)

    def close(self, keep_placement: bool = False) -> None:
        for actor in [*self.lowers, self.upper_actor]:
            self.ray.kill(actor, no_restart=True)
        if not keep_placement:
            self.placement.remove()
