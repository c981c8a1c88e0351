"""``solve``: run the round loop of ``rounds.py`` over an executor."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import BilevelRunError  # noqa: F401  (raised here; the hierarchy lives in the core)
from . import estimators, tree
from .collective import CollectiveExecutor
from .executors import ActorFailure, LearnerSetup, LocalExecutor, RayExecutor, Snapshot
from .learners import to_params
from .problem import BilevelProblem
from .rounds import Event, Phase, RoundMachine
from .step import LowerConfig

log = logging.getLogger("dist_core.bilevel")
RoundCallback = Callable[[int, dict[str, float]], None]
ROUND_LOOPS = {"collective": CollectiveExecutor, "actor_calls": RayExecutor}
CHUNK_S = 1.0  # a chunked executor reports about once a second: progress stays live


@dataclass
class SolveResult:
    lam: tree.ParamsLike
    thetas: list[tree.ParamsLike]
    history: list[dict[str, float]] = field(default_factory=list)
    restarts: int = 0
    nodes: list[str] = field(default_factory=list)  # the Ray node of each lower learner (empty: in-process)


def _per_learner(value: Any, k: int, name: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != k:
            raise ValueError(f"{name}: expected {k} entries (one per lower learner), got {len(value)}")
        return list(value)
    return [value] * k


def _round_metrics(lower: list[dict[str, float]], upper: dict[str, float], wall_s: float) -> dict[str, float]:
    """Mean over learners, plus the share of the round not spent computing (Ray and waiting)."""
    keys = lower[0].keys()
    out = {k: sum(m[k] for m in lower) / len(lower) for k in keys}
    out.update(upper)
    slowest = max(m.get("compute_s", 0.0) for m in lower)
    out["round_s"] = wall_s
    out["comm_share"] = max(0.0, 1.0 - slowest / wall_s) if wall_s > 0 else 0.0
    return out


def solve(
    problem: BilevelProblem,
    theta: tree.ParamsLike | Sequence[tree.ParamsLike],
    lam: tree.ParamsLike,
    lower_batches: Any | Sequence[Any],
    upper_batches: Any | Sequence[Any],
    *,
    lower_learners: int = 2,
    method: str = "implicit_cg",
    method_options: dict[str, Any] | None = None,
    rounds: int = 100,
    inner_steps: int = 10,
    inner_lr: float = 0.1,
    upper_lr: float = 0.1,
    upper_optimizer: str = "adam",
    eval_batch: Any = None,
    backend: str = "ray",
    round_loop: str = "collective",
    cpus_per_learner: float = 1.0,
    placement: str = "pack",
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[Snapshot], None] | None = None,
    resume_from: Snapshot | None = None,
    max_restarts: int = 1,
    on_round: RoundCallback | None = None,
    on_recover: Callable[[int], None] | None = None,
    progress: bool = False,
    fail_at: dict[int, int] | None = None,
) -> SolveResult:
    """Learn λ with K lower learners, each owning θ_k and ``lower_batches[k]``.

    ``theta``/``upper_batches`` may be one value shared by all learners or one per learner.
    ``backend="ray"`` puts each learner on an actor (Ray must be initialised or will be started);
    ``"local"`` runs the same learners in this process. On Ray, ``round_loop="collective"`` (the
    default) has the learners exchange their parts among themselves and run chunks of rounds without
    the driver (``collective.py``); ``"actor_calls"`` drives every round through classic actor calls
    (``executors.RayExecutor``). Both give the same numbers bit for bit. A learner that dies is recovered from the
    last checkpoint (kept in memory, and passed to ``on_checkpoint`` to persist) up to
    ``max_restarts`` times; ``fail_at={learner: round}`` kills one on purpose, for tests.
    """
    k = lower_learners
    opts = estimators.make_options(method, **(method_options or {}))
    lam_p, lam_was_tensor = tree.wrap(lam)
    wrapped = [tree.wrap(t) for t in _per_learner(theta, k, "theta")]
    thetas, theta_was_tensor = [p for p, _ in wrapped], wrapped[0][1]
    setup = LearnerSetup(
        problem=problem,
        thetas=thetas,
        lam0=lam_p,
        lower_batches=_per_learner(lower_batches, k, "lower_batches"),
        upper_batches=_per_learner(upper_batches, k, "upper_batches"),
        cfg=LowerConfig(method, opts, inner_steps, inner_lr),
        upper_optimizer=upper_optimizer,
        upper_lr=upper_lr,
        eval_batch=eval_batch,
        fail_at=dict(fail_at or {}),
    )
    if backend == "ray":
        if round_loop not in ROUND_LOOPS:
            raise ValueError(f"unknown round_loop {round_loop!r}; valid: {', '.join(ROUND_LOOPS)}")
        executor: LocalExecutor | RayExecutor | CollectiveExecutor = ROUND_LOOPS[round_loop](
            setup, cpus_per_learner, placement)
    elif backend == "local":
        if fail_at:
            raise ValueError("fail_at kills a process: use it with backend='ray' only")
        executor = LocalExecutor(setup)
    else:
        raise ValueError(f"unknown backend {backend!r}; valid: local, ray")

    if executor.nodes():
        log.info("lower learners on nodes %s", ", ".join(executor.nodes()))
    try:
        if resume_from is not None:
            executor.restore(resume_from)
            last = resume_from
        else:
            last = executor.snapshot(0)
        machine = RoundMachine(rounds, checkpoint_every, max_restarts, round=last.round, last_checkpoint=last.round)
        history = _run(executor, machine, last, on_round, on_checkpoint, on_recover, progress)
        return SolveResult(
            lam=tree.unwrap(to_params(executor.lam()), lam_was_tensor),
            thetas=[tree.unwrap(to_params(t), theta_was_tensor) for t in executor.thetas()],
            history=history,
            restarts=machine.restarts,
            nodes=executor.nodes(),
        )
    finally:
        executor.close()


RESTORE_ATTEMPTS = 3


def _restore(executor, snap: Snapshot) -> None:
    """Replace the learners and load ``snap``, retrying a replacement that dies at start-up.

    A lost node's peers notice it before Ray declares the node dead, so a replacement can still be
    placed on the dying node's bundle; it dies with it, and by then Ray has moved the bundle. Such
    a start-up death is retried here without counting as a restart; any other failure is one."""
    for attempt in range(1, RESTORE_ATTEMPTS + 1):
        try:
            executor.restore(snap)
            return
        except ActorFailure as e:
            if attempt == RESTORE_ATTEMPTS or "start-up" not in str(e):
                raise
            log.info("replacement learners died at start-up (%s); placing them again", e)


def dead_nodes(node_ids: list[str]) -> list[str]:
    """Which of these Ray nodes the cluster now reports dead (a lost machine, not a lost process)."""
    if not node_ids:
        return []
    import ray

    alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
    return sorted({n for n in node_ids if n not in alive})


def _chunk(machine: RoundMachine, round_s: float) -> int:
    """Rounds to hand a chunked executor: up to the next checkpoint or the end, about CHUNK_S of
    work, and a single round first (it measures the round time, start-up included)."""
    left = machine.rounds - machine.round
    if machine.checkpoint_every:
        left = min(left, machine.checkpoint_every - machine.round % machine.checkpoint_every)
    return max(1, min(left, int(CHUNK_S / round_s) if round_s > 0 else 1))


def _finish_round(machine: RoundMachine, history: list[dict], metrics: dict[str, float],
                  on_round: RoundCallback | None, bar) -> None:
    metrics["round"] = machine.round + 1
    history.append(metrics)
    machine.fire(Event.UPPER_STEPPED)
    if on_round is not None:
        on_round(machine.round, metrics)
    bar.update(1)
    bar.set_postfix(upper=f"{metrics['upper_loss']:.4f}", refresh=False)


def _run(executor, machine: RoundMachine, last: Snapshot, on_round, on_checkpoint, on_recover, progress) -> list[dict]:
    from tqdm.auto import tqdm

    history: list[dict[str, float]] = []
    bar = tqdm(total=machine.rounds, initial=machine.round, desc="rounds", disable=not progress, leave=False,
               mininterval=1.0)
    lower_metrics: list[dict[str, float]] = []
    t0 = time.perf_counter()
    round_s = 0.0  # a chunked executor's last seen time per round (0: not measured yet)
    while not machine.finished:
        phase = machine.phase
        try:
            if phase is Phase.BROADCAST:
                t0 = time.perf_counter()
                executor.broadcast()
                machine.fire(Event.BROADCASTED)
            elif phase is Phase.LOWER and getattr(executor, "chunked", False):
                n = _chunk(machine, round_s)
                lowers, uppers, wall = executor.run_rounds(machine.round, n)
                round_s = wall / n
                for i, (lower_metrics, upper_metrics) in enumerate(zip(lowers, uppers)):
                    if i:
                        machine.fire(Event.BROADCASTED)
                    machine.fire(Event.PARTS_READY)
                    _finish_round(machine, history, _round_metrics(lower_metrics, upper_metrics, round_s),
                                  on_round, bar)
            elif phase is Phase.LOWER:
                lower_metrics = executor.lower(machine.round)
                machine.fire(Event.PARTS_READY)
            elif phase is Phase.UPPER:
                upper_metrics = executor.upper()
                _finish_round(machine, history, _round_metrics(lower_metrics, upper_metrics, time.perf_counter() - t0),
                              on_round, bar)
            elif phase is Phase.CHECKPOINT:
                last = executor.snapshot(machine.round)
                if on_checkpoint is not None:
                    on_checkpoint(last)
                machine.fire(Event.CHECKPOINTED)
            elif phase is Phase.RECOVER:
                before = executor.nodes()
                _restore(executor, last)
                lost = dead_nodes(before)
                log.warning("%s%s; restored every learner from the checkpoint of round %d, now on nodes %s",
                            machine.error, f" (node {', '.join(lost)} is gone)" if lost else "", last.round,
                            ", ".join(executor.nodes()) or "-")
                machine.fire(Event.RECOVERED)
                history = [h for h in history if h["round"] <= machine.round]
                bar.n = machine.round
                bar.refresh()
                if on_recover is not None:
                    on_recover(machine.round)
        except ActorFailure as e:
            machine.fire(Event.ACTOR_DIED, str(e))
    bar.close()
    if machine.phase is Phase.FAILED:
        raise BilevelRunError(
            f"{machine.error}; gave up after {machine.restarts} restart(s) from checkpoint"
        )
    return history
