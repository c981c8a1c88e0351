"""Upper and lower learners as plain classes; ``executors.py`` runs them in-process or as actors.

Tensors cross process boundaries as dicts of numpy arrays: Ray stores numpy zero-copy and moves
it ~5× faster than pickled torch tensors (RUNTIME.md).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from . import tree
from .problem import BilevelProblem
from .step import LowerConfig, LowerState, UpperOptimizer, average, lower_round

Arrays = dict[str, np.ndarray]
SEP = "/"  # separator in flat state keys; "." is common inside user parameter names


def to_arrays(p: tree.Params) -> Arrays:
    return {k: v.detach().cpu().numpy() for k, v in p.items()}


def to_params(a: Arrays) -> tree.Params:
    # Arrays from the object store are read-only views; torch wants writable memory.
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in a.items()}


def _prefixed(prefix: str, p: tree.Params) -> tree.Params:
    return {f"{prefix}{SEP}{k}": v for k, v in p.items()}


def _strip(prefix: str, flat: tree.Params) -> tree.Params:
    head = prefix + SEP
    return {k[len(head) :]: v for k, v in flat.items() if k.startswith(head)}


class LowerLearner:
    """Owns θ_k and a data shard; each round trains on g and returns its hypergradient part."""

    def __init__(
        self,
        problem: BilevelProblem,
        theta0: tree.Params,
        lower_batch: Any,
        upper_batch: Any,
        cfg: LowerConfig,
        eval_batch: Any = None,
        threads: int | None = None,
        fail_at_round: int | None = None,
    ):
        if threads:
            torch.set_num_threads(threads)
        self.problem, self.cfg = problem, cfg
        self.lower_batch, self.upper_batch, self.eval_batch = lower_batch, upper_batch, eval_batch
        self.state = LowerState(tree.detached(theta0))
        self.fail_at_round = fail_at_round

    def run_round(self, lam: Arrays, round_idx: int) -> tuple[Arrays, dict[str, float]]:
        if self.fail_at_round is not None and round_idx == self.fail_at_round:
            os._exit(1)  # fault injection for recovery tests: a real process death
        t0 = time.perf_counter()
        self.state, grad, metrics = lower_round(
            self.problem, self.state, to_params(lam), self.lower_batch, self.upper_batch, self.cfg, self.eval_batch
        )
        metrics["compute_s"] = time.perf_counter() - t0
        return to_arrays(grad), metrics

    def theta(self) -> Arrays:
        return to_arrays(self.state.theta)

    def node(self) -> str:
        """The Ray node this learner runs on, for the run's summary."""
        from ..placement import node_id

        return node_id()

    def snapshot(self) -> Arrays:
        flat = _prefixed("theta", self.state.theta)
        for name, p in self.state.est_state.items():
            flat.update(_prefixed(f"est{SEP}{name}", p))
        return to_arrays(flat)

    def restore(self, arrays: Arrays) -> None:
        flat = to_params(arrays)
        est_names = {k.split(SEP)[1] for k in flat if k.startswith("est" + SEP)}
        self.state = LowerState(
            _strip("theta", flat), {n: _strip(f"est{SEP}{n}", flat) for n in sorted(est_names)}
        )


class UpperLearner:
    """Owns λ and its optimizer; averages the K parts and steps."""

    def __init__(self, lam0: tree.Params, optimizer: str, lr: float, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.optimizer, self.lr = optimizer, lr
        self.upper = UpperOptimizer(lam0, optimizer, lr)

    def lam(self) -> Arrays:
        return to_arrays(self.upper.value())

    def step(self, *parts: Arrays) -> dict[str, float]:
        grad = average([to_params(p) for p in parts])
        return {"hypergrad_norm": self.upper.step(grad)}

    def step_and_lam(self, *parts: Arrays) -> tuple[dict[str, float], Arrays]:
        """Step, and hand back the new λ as a second object: the next round's broadcast."""
        return self.step(*parts), self.lam()

    def snapshot(self) -> tuple[Arrays, dict]:
        """λ and the optimizer's tensors as arrays; its scalars and groups as JSON."""
        sd = self.upper.opt.state_dict()
        flat = _prefixed("lam", self.upper.value())
        scalars: dict[str, dict[str, float]] = {}
        for idx, st in sd["state"].items():
            for name, val in st.items():
                if isinstance(val, torch.Tensor):
                    flat[f"opt{SEP}{idx}{SEP}{name}"] = val
                else:
                    scalars.setdefault(str(idx), {})[name] = val
        groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
        return to_arrays(flat), {"opt_groups": groups, "opt_scalars": scalars}

    def restore(self, arrays: Arrays, meta: dict) -> None:
        flat = to_params(arrays)
        self.upper = UpperOptimizer(_strip("lam", flat), self.optimizer, self.lr)
        state: dict[int, dict[str, Any]] = {}
        for k, v in flat.items():
            if k.startswith("opt" + SEP):
                _, idx, name = k.split(SEP, 2)
                state.setdefault(int(idx), {})[name] = v
        for idx, sc in meta.get("opt_scalars", {}).items():
            state.setdefault(int(idx), {}).update(sc)
        self.upper.opt.load_state_dict({"state": state, "param_groups": meta["opt_groups"]})
