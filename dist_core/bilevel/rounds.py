"""The round loop as an explicit state machine (pure: no Ray, no tensors).

    BROADCAST ─λ in object store─▶ LOWER ─K parts─▶ UPPER ─λ stepped─▶ CHECKPOINT? ─▶ BROADCAST … DONE
                                     │ a learner died      │
                                     ▼                     ▼
                                  RECOVER (roll every learner back to the last checkpoint) ─▶ BROADCAST
                                     │ restarts exhausted (a failed recovery counts as one more)
                                     ▼
                                   FAILED

Failure policy: a dead actor (lower or upper) is replaced and *every* learner is restored from
the last complete checkpoint, so the run stays exactly the run it would have been; after
``max_restarts`` such recoveries the run fails with the actor's error.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..errors import TransitionError  # (raised here; the hierarchy lives in the core)


class Phase(enum.Enum):
    BROADCAST = "broadcast"
    LOWER = "lower"
    UPPER = "upper"
    CHECKPOINT = "checkpoint"
    RECOVER = "recover"
    DONE = "done"
    FAILED = "failed"


class Event(enum.Enum):
    BROADCASTED = "broadcasted"
    PARTS_READY = "parts_ready"
    UPPER_STEPPED = "upper_stepped"
    CHECKPOINTED = "checkpointed"
    ACTOR_DIED = "actor_died"
    RECOVERED = "recovered"


@dataclass
class RoundMachine:
    rounds: int  # total rounds to run
    checkpoint_every: int = 0  # 0: never (except the implicit start state)
    max_restarts: int = 0
    round: int = 0  # rounds completed
    phase: Phase = Phase.BROADCAST
    restarts: int = 0
    last_checkpoint: int = 0  # round of the last complete checkpoint (0 = the start state)
    error: str | None = None

    def __post_init__(self) -> None:
        if self.round >= self.rounds:
            self.phase = Phase.DONE

    def fire(self, event: Event, error: str | None = None) -> Phase:
        handler = _TRANSITIONS.get((self.phase, event))
        if handler is None:
            raise TransitionError(f"event {event.value} is not valid in phase {self.phase.value}")
        handler(self, error)
        return self.phase

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.DONE, Phase.FAILED)

    def _after_round(self) -> None:
        if self.round >= self.rounds:
            self.phase = Phase.CHECKPOINT if self.checkpoint_every else Phase.DONE
        elif self.checkpoint_every and self.round % self.checkpoint_every == 0:
            self.phase = Phase.CHECKPOINT
        else:
            self.phase = Phase.BROADCAST

    def _died(self, error: str | None) -> None:
        self.error = error
        if self.restarts >= self.max_restarts:
            self.phase = Phase.FAILED
        else:
            self.restarts += 1
            self.phase = Phase.RECOVER


def _set(phase: Phase):
    def go(m: RoundMachine, _err: str | None) -> None:
        m.phase = phase

    return go


def _upper_stepped(m: RoundMachine, _err: str | None) -> None:
    m.round += 1
    m._after_round()


def _checkpointed(m: RoundMachine, _err: str | None) -> None:
    m.last_checkpoint = m.round
    m.phase = Phase.DONE if m.round >= m.rounds else Phase.BROADCAST


def _recovered(m: RoundMachine, _err: str | None) -> None:
    m.round = m.last_checkpoint
    m.error = None
    m.phase = Phase.BROADCAST


_TRANSITIONS = {
    (Phase.BROADCAST, Event.BROADCASTED): _set(Phase.LOWER),
    (Phase.BROADCAST, Event.ACTOR_DIED): RoundMachine._died,
    (Phase.LOWER, Event.PARTS_READY): _set(Phase.UPPER),
    (Phase.LOWER, Event.ACTOR_DIED): RoundMachine._died,
    (Phase.UPPER, Event.UPPER_STEPPED): _upper_stepped,
    (Phase.UPPER, Event.ACTOR_DIED): RoundMachine._died,
    (Phase.CHECKPOINT, Event.CHECKPOINTED): _checkpointed,
    (Phase.CHECKPOINT, Event.ACTOR_DIED): RoundMachine._died,
    (Phase.RECOVER, Event.RECOVERED): _recovered,
    # A replacement that dies while the group is restored (its node going down too) is one more
    # failure: another recovery while restarts remain.
    (Phase.RECOVER, Event.ACTOR_DIED): RoundMachine._died,
}
