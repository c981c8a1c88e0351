"""The round loop without the driver in it: K learner actors that exchange parts by all-gather.

With classic actor calls a round costs four hops on its critical path (driver → lower learners →
driver, which owns their small return values → upper actor → driver), about 1 ms each, which is
13% of a 27-ms quickstart round. Here every actor holds a lower learner *and* an identical replica
of the upper learner: a round is local compute, one gloo ``all_gather`` of the K parts (tens of µs
on one host), and the same upper step on every replica. The driver hands out chunks of rounds
(up to the next checkpoint, about a second of work) and hears back once per chunk.

Bit-for-bit the classic round: the parts are gathered exactly (no reduction on the wire) and
averaged in rank order by the same ``average`` the upper actor uses, and every replica steps the
same optimizer on the same numbers. A learner that dies breaks the others' collective; the driver
sees the death through Ray, kills the group, and rolls every learner back to the last checkpoint,
as the state machine in ``rounds.py`` prescribes.
"""

from __future__ import annotations

import socket
import time
from datetime import timedelta
from typing import Any

import numpy as np
import torch

from ..errors import ActorFailure, LearnerError
from ..placement import ActorPlacement, Placement
from .executors import LearnerSetup, Snapshot, settle
from .learners import Arrays, LowerLearner, UpperLearner

RoundOut = tuple[dict[str, float], dict[str, float]]  # (this learner's metrics, the upper step's)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def pack(part: Arrays) -> tuple[torch.Tensor, list[tuple[str, tuple[int, ...], np.dtype]]]:
    """A part as one float64 vector (exact for float32 and float64 leaves) and how to unpack it."""
    layout = [(k, v.shape, v.dtype) for k, v in part.items()]
    flat = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in part.values()])
    return torch.from_numpy(flat), layout


def unpack(flat: torch.Tensor, layout: list[tuple[str, tuple[int, ...], np.dtype]]) -> Arrays:
    out, at, values = {}, 0, flat.numpy()
    for key, shape, dtype in layout:
        n = int(np.prod(shape))
        out[key] = values[at:at + n].reshape(shape).astype(dtype)
        at += n
    return out


def broken_group(error: BaseException) -> bool:
    """Whether ``error`` is a collective failing because a peer went away (gloo's transport errors)."""
    text = str(error)
    return type(error).__name__ in ("DistBackendError", "DistNetworkError") or "gloo/transport" in text


class GroupLearner:
    """One lower learner plus a replica of the upper learner, in one gloo process group."""

    def __init__(self, setup: LearnerSetup, rank: int, threads: int, fail_at_round: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        s = setup
        self.rank, self.world = rank, s.k
        self.lower = LowerLearner(s.problem, s.thetas[rank], s.lower_batches[rank], s.upper_batches[rank], s.cfg,
                                  s.eval_batch, fail_at_round=fail_at_round)
        self.upper = UpperLearner(s.lam0, s.upper_optimizer, s.upper_lr)
        self.group = None

    def rendezvous(self) -> str:
        """Rank 0's address for the group: an address other nodes can reach, and a free port."""
        import ray

        host = ray.util.get_node_ip_address()
        return f"{host}:{_free_port(host)}"

    def join(self, address: str, timeout_s: float) -> str:
        """Join the group; returns this learner's node."""
        import torch.distributed as dist

        if self.world > 1:
            dist.init_process_group("gloo", init_method=f"tcp://{address}", rank=self.rank,
                                    world_size=self.world, timeout=timedelta(seconds=timeout_s))
            self.group = dist.group.WORLD
        return self.node()

    def run_rounds(self, start: int, n: int) -> list[RoundOut]:
        out = []
        for round_idx in range(start, start + n):
            part, metrics = self.lower.run_round(self.upper.lam(), round_idx)
            out.append((metrics, self.upper.step(*self._gather(part))))
        return out

    def _gather(self, part: Arrays) -> list[Arrays]:
        if self.group is None:
            return [part]
        import torch.distributed as dist

        flat, layout = pack(part)
        parts = [torch.empty_like(flat) for _ in range(self.world)]
        dist.all_gather(parts, flat)
        return [unpack(p, layout) for p in parts]

    def snapshot(self) -> tuple[Arrays, tuple[Arrays, dict] | None]:
        return self.lower.snapshot(), self.upper.snapshot() if self.rank == 0 else None

    def restore(self, lower: Arrays, upper: Arrays, upper_meta: dict) -> None:
        self.lower.restore(lower)
        self.upper.restore(upper, upper_meta)

    def lam(self) -> Arrays:
        return self.upper.lam()

    def theta(self) -> Arrays:
        return self.lower.theta()

    def node(self) -> str:
        return self.lower.node()


class CollectiveExecutor:
    """K ``GroupLearner`` actors; the driver runs chunks of rounds (``run_rounds``), not hops."""

    chunked = True

    def __init__(self, setup: LearnerSetup, cpus_per_learner: float = 1.0, placement: Placement = "pack",
                 collective_timeout_s: float = 300.0):
        import ray

        self.ray, self.setup, self.cpus, self.timeout_s = ray, setup, cpus_per_learner, collective_timeout_s
        self.placement = ActorPlacement(placement, setup.k, {"CPU": cpus_per_learner})
        self._spawn(inject_faults=True)

    def _spawn(self, inject_faults: bool) -> None:
        s, ray = self.setup, self.ray
        cls = ray.remote(num_cpus=self.cpus, max_restarts=0)(GroupLearner)
        self.actors = [cls.options(**self.placement.options(rank)).remote(s, rank, max(1, int(self.cpus)),
                                  s.fail_at.get(rank) if inject_faults else None) for rank in range(s.k)]
        address = self._get(self.actors[0].rendezvous.remote(), "lower learner 0 at start-up")
        self.node_ids = self._get([a.join.remote(address, self.timeout_s) for a in self.actors],
                                  "lower learner {i} at start-up (joining the process group)")

    def _get(self, refs: Any, who: str) -> Any:
        """``ray.get`` that fails on the first error: a dead learner leaves the others blocked in
        their collective, so waiting for every result in order would wait for their timeout.
        ``who`` may hold ``{i}``, the failing learner's index."""
        ray = self.ray
        pending = list(refs) if isinstance(refs, list) else [refs]
        index = {r: i for i, r in enumerate(pending)}
        done: list = []
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                ray.get(done)
            return ray.get(refs)
        except ray.exceptions.RayActorError as e:
            raise ActorFailure(f"{who.format(i=index[done[0]])}: actor died ({type(e).__name__})") from e
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if getattr(e, "cause", None) is not None else e
            first = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
            if broken_group(cause):
                # A peer died mid-collective: the survivors' all_gather fails, often before Ray
                # reports the death itself. That is a lost learner, not a bug in this one.
                raise ActorFailure(f"{who.format(i=index[done[0]])}: its process group broke, a peer learner "
                                   f"died ({first})") from e
            raise LearnerError(f"{who.format(i=index[done[0]])} raised {type(cause).__name__}: {first}",
                               str(e)) from None

    def broadcast(self) -> None:
        """Nothing to send: every actor holds λ's replica."""

    def run_rounds(self, start: int, n: int) -> tuple[list[list[dict[str, float]]], list[dict[str, float]], float]:
        """Rounds start+1 … start+n: per round, each learner's metrics and the upper step's; and
        the chunk's wall time as the driver saw it (the honest cost, hops included)."""
        t0 = time.perf_counter()
        rounds = f"round {start + 1}" if n == 1 else f"rounds {start + 1}–{start + n}"
        outs = self._get([a.run_rounds.remote(start, n) for a in self.actors], f"lower learner {{i}} in {rounds}")
        wall = time.perf_counter() - t0
        lower = [[outs[k][i][0] for k in range(len(outs))] for i in range(n)]
        return lower, [outs[0][i][1] for i in range(n)], wall

    def snapshot(self, round_idx: int) -> Snapshot:
        snaps = self._get([a.snapshot.remote() for a in self.actors], "lower learner {i} snapshot")
        upper, meta = snaps[0][1]
        return Snapshot(round_idx, upper, meta, [lower for lower, _ in snaps])

    def restore(self, snap: Snapshot) -> None:
        settle(self.actors)
        self.close(keep_placement=True)
        self._spawn(inject_faults=False)
        self._get([a.restore.remote(low, snap.upper, snap.upper_meta) for a, low in zip(self.actors, snap.lower)],
                  "lower learner {i} restore")

    def lam(self) -> Arrays:
        return self._get(self.actors[0].lam.remote(), "upper learner")

    def thetas(self) -> list[Arrays]:
        return self._get([a.theta.remote() for a in self.actors], "lower learner {i}")

    def nodes(self) -> list[str]:
        return list(self.node_ids)

    def close(self, keep_placement: bool = False) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        if not keep_placement:
            self.placement.remove()
