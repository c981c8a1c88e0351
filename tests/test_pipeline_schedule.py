"""Pipeline plans: dependencies, one op per stage per cycle, density, staleness."""

import pytest

from dist_core.analog.pipeline_schedule import Op, asynchronous, synchronous


def check_dependencies(plan):
    S = plan.stages
    busy = {}
    for st in plan.steps:
        if st.op is Op.UPDATE:
            continue
        assert (st.cycle, st.stage) not in busy, f"stage {st.stage} does two things in cycle {st.cycle}"
        busy[(st.cycle, st.stage)] = st
    for m in range(plan.micro_batches):
        for s in range(S):
            f, b = plan.at(s, Op.FORWARD, m), plan.at(s, Op.BACKWARD, m)
            assert b > f
            if s > 0:
                assert f > plan.at(s - 1, Op.FORWARD, m)
            if s < S - 1:
                assert b > plan.at(s + 1, Op.BACKWARD, m)


@pytest.mark.parametrize("S,B", [(1, 1), (2, 4), (3, 8), (4, 4), (4, 16)])
def test_synchronous_density_is_exactly_b_over_b_plus_s_minus_1(S, B):
    plan = synchronous(S, B)
    check_dependencies(plan)
    assert plan.cycles == 2 * (B + S - 1)
    assert plan.density == pytest.approx(B / (B + S - 1), abs=1e-12)


def test_synchronous_gradients_are_exact():
    """Every forward of a mini-batch sees the weights of the previous flush: no staleness."""
    plan = synchronous(3, 4, mini_batches=3)
    for m in range(12):
        for s in range(3):
            assert plan.version(m, s) == m // 4


@pytest.mark.parametrize("S", [2, 3, 4])
def test_asynchronous_density_approaches_one(S):
    small, large = asynchronous(S, 8), asynchronous(S, 256)
    check_dependencies(small)
    check_dependencies(large)
    assert large.density > 0.97 and large.density > small.density
    assert large.density > synchronous(S, 256).density - 1e-9


@pytest.mark.parametrize("S", [2, 3, 4])
def test_asynchronous_staleness_is_bounded_and_deeper_for_earlier_stages(S):
    plan = asynchronous(S, 64)
    steady = range(2 * S, 64)
    stale = {s: {m - plan.version(m, s) for m in steady} for s in range(S)}
    assert stale[S - 1] == {0}  # the last stage updates right after each forward
    for s in range(S):
        assert max(stale[s]) <= 2 * (S - 1)
    assert max(stale[0]) == S - 1 and min(stale[0]) == S - 1  # constant delay in steady state
