"""Pipeline schedules as explicit per-cycle plans: who does what on which clock cycle.

One clock cycle = one stage-step (a forward or a backward of one micro-batch on one stage), so a
schedule's density — useful stage-steps / (stages × cycles) — does not depend on the host CPU.

* ``synchronous`` (GPipe): B micro-batches forward through S stages, then backward in reverse
  order, then one update per stage (a flush). 2(B + S − 1) cycles; density B/(B + S − 1); every
  gradient is exact.
* ``asynchronous`` (1F1B without flush, PipeDream without weight stashing): each stage prefers a
  ready backward, else a forward if fewer than S − s micro-batches are in flight on it, and updates
  after every backward. Density → 1 as micro-batches grow. The forward of micro-batch k at stage s
  sees the weights after ``version(k, s)`` updates: its staleness is k − version(k, s)
  (RESEARCH.md §4b; a model of ours, the paper's delay indices were not retrieved).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Op(enum.Enum):
    FORWARD = "F"
    BACKWARD = "B"
    UPDATE = "U"  # synchronous only: applied at the flush, takes no cycle of its own


@dataclass(frozen=True)
class Step:
    cycle: int
    stage: int
    op: Op
    micro: int


@dataclass
class Plan:
    stages: int
    micro_batches: int
    steps: list[Step] = field(default_factory=list)

    @property
    def cycles(self) -> int:
        busy = [s.cycle for s in self.steps if s.op is not Op.UPDATE]
        return max(busy) + 1 if busy else 0

    @property
    def density(self) -> float:
        useful = sum(1 for s in self.steps if s.op is not Op.UPDATE)
        return useful / (self.stages * self.cycles) if self.cycles else 0.0

    def at(self, stage: int, op: Op, micro: int) -> int:
        return next(s.cycle for s in self.steps if s.stage == stage and s.op is op and s.micro == micro)

    def version(self, micro: int, stage: int) -> int:
        """Updates stage ``stage`` has applied before its forward of ``micro`` starts."""
        t = self.at(stage, Op.FORWARD, micro)
        if any(s.op is Op.UPDATE for s in self.steps):  # synchronous: one update per flush
            return sum(1 for s in self.steps if s.op is Op.UPDATE and s.stage == stage and s.cycle <= t)
        return sum(1 for s in self.steps if s.op is Op.BACKWARD and s.stage == stage and s.cycle < t)


def synchronous(stages: int, micro_batches: int, mini_batches: int = 1) -> Plan:
    if stages < 1 or micro_batches < 1:
        raise ValueError(f"need stages >= 1 and micro_batches >= 1, got {stages}, {micro_batches}")
    plan = Plan(stages, micro_batches * mini_batches)
    period = 2 * (micro_batches + stages - 1)
    for n in range(mini_batches):
        t0, base = n * period, n * micro_batches
        for m in range(micro_batches):
            for s in range(stages):
                plan.steps.append(Step(t0 + m + s, s, Op.FORWARD, base + m))
        back0 = t0 + micro_batches + stages - 1
        for j, m in enumerate(reversed(range(micro_batches))):
            for s in reversed(range(stages)):
                plan.steps.append(Step(back0 + j + (stages - 1 - s), s, Op.BACKWARD, base + m))
        for s in range(stages):
            plan.steps.append(Step(t0 + period, s, Op.UPDATE, base + micro_batches - 1))
    plan.steps.sort(key=lambda st: (st.cycle, st.stage))
    return plan


def asynchronous(stages: int, micro_batches: int) -> Plan:
    if stages < 1 or micro_batches < 1:
        raise ValueError(f"need stages >= 1 and micro_batches >= 1, got {stages}, {micro_batches}")
    plan = Plan(stages, micro_batches)
    fwd_done: dict[tuple[int, int], int] = {}  # (stage, micro) -> cycle
    bwd_done: dict[tuple[int, int], int] = {}
    next_fwd = [0] * stages  # next micro-batch each stage will forward
    next_bwd = [0] * stages
    t = 0
    while next_bwd[0] < micro_batches:
        for s in range(stages):
            m_b = next_bwd[s]
            ready_b = m_b < micro_batches and (
                ((s, m_b) in fwd_done and fwd_done[(s, m_b)] < t) if s == stages - 1
                else ((s + 1, m_b) in bwd_done and bwd_done[(s + 1, m_b)] < t)
            )
            m_f = next_fwd[s]
            in_flight = next_fwd[s] - next_bwd[s]
            ready_f = m_f < micro_batches and in_flight < stages - s and (
                s == 0 or ((s - 1, m_f) in fwd_done and fwd_done[(s - 1, m_f)] < t)
            )
            if ready_b:
                plan.steps.append(Step(t, s, Op.BACKWARD, m_b))
                bwd_done[(s, m_b)] = t
                next_bwd[s] += 1
            elif ready_f:
                plan.steps.append(Step(t, s, Op.FORWARD, m_f))
                fwd_done[(s, m_f)] = t
                next_fwd[s] += 1
        t += 1
    return plan
