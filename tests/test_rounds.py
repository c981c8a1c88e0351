"""The round loop's state machine, one transition at a time (no Ray, no tensors)."""

import pytest

from dist_core.bilevel.rounds import Event, Phase, RoundMachine, TransitionError


def run_round(m: RoundMachine) -> Phase:
    m.fire(Event.BROADCASTED)
    m.fire(Event.PARTS_READY)
    return m.fire(Event.UPPER_STEPPED)


def test_happy_path_without_checkpoints():
    m = RoundMachine(rounds=2)
    assert m.phase is Phase.BROADCAST
    assert m.fire(Event.BROADCASTED) is Phase.LOWER
    assert m.fire(Event.PARTS_READY) is Phase.UPPER
    assert m.fire(Event.UPPER_STEPPED) is Phase.BROADCAST and m.round == 1
    assert run_round(m) is Phase.DONE and m.round == 2 and m.finished


def test_checkpoints_every_n_rounds_and_at_the_end():
    m = RoundMachine(rounds=5, checkpoint_every=2)
    assert run_round(m) is Phase.BROADCAST
    assert run_round(m) is Phase.CHECKPOINT
    assert m.fire(Event.CHECKPOINTED) is Phase.BROADCAST and m.last_checkpoint == 2
    run_round(m)
    assert run_round(m) is Phase.CHECKPOINT
    m.fire(Event.CHECKPOINTED)
    assert run_round(m) is Phase.CHECKPOINT  # round 5: the final state is saved too
    assert m.fire(Event.CHECKPOINTED) is Phase.DONE and m.last_checkpoint == 5


def test_dead_learner_rolls_back_to_last_checkpoint():
    m = RoundMachine(rounds=6, checkpoint_every=2, max_restarts=1)
    run_round(m), run_round(m), m.fire(Event.CHECKPOINTED)
    run_round(m)
    m.fire(Event.BROADCASTED)
    assert m.fire(Event.ACTOR_DIED, "lower learner 1 died") is Phase.RECOVER
    assert m.error == "lower learner 1 died" and m.restarts == 1
    assert m.fire(Event.RECOVERED) is Phase.BROADCAST
    assert m.round == 2 and m.error is None  # round 3 is replayed


def test_death_before_any_checkpoint_restarts_from_round_zero():
    m = RoundMachine(rounds=3, max_restarts=1)
    run_round(m)
    m.fire(Event.BROADCASTED)
    m.fire(Event.PARTS_READY)
    assert m.fire(Event.ACTOR_DIED, "upper died") is Phase.RECOVER
    m.fire(Event.RECOVERED)
    assert m.round == 0


def test_restarts_exhausted_fails_with_the_error():
    m = RoundMachine(rounds=3, max_restarts=1)
    m.fire(Event.BROADCASTED)
    m.fire(Event.ACTOR_DIED, "first")
    m.fire(Event.RECOVERED)
    m.fire(Event.BROADCASTED)
    assert m.fire(Event.ACTOR_DIED, "second") is Phase.FAILED
    assert m.finished and m.error == "second"


def test_no_restarts_means_fail_fast():
    m = RoundMachine(rounds=3, max_restarts=0)
    m.fire(Event.BROADCASTED)
    assert m.fire(Event.ACTOR_DIED, "boom") is Phase.FAILED


@pytest.mark.parametrize("event", [Event.PARTS_READY, Event.UPPER_STEPPED, Event.CHECKPOINTED, Event.RECOVERED])
def test_out_of_order_events_are_rejected(event):
    m = RoundMachine(rounds=3)
    with pytest.raises(TransitionError, match="not valid in phase broadcast"):
        m.fire(event)


def test_resumed_machine_starts_at_its_round():
    m = RoundMachine(rounds=4, round=4, last_checkpoint=4)
    assert m.phase is Phase.DONE
    m = RoundMachine(rounds=4, round=2, last_checkpoint=2)
    assert run_round(m) is Phase.BROADCAST and m.round == 3
