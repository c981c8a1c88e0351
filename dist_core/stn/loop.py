"""The STN alternation on a ``bilevel.BilevelProblem`` whose θ is the hypernetwork φ.

The problem's objectives take ``(φ, u, batch)`` with ``u`` a (B, H) tensor of unconstrained
hyperparameters, one row per example: ``lower`` is L_T(λ, ŵ_φ(λ)) (training loss with its
regularisers), ``upper`` is L_V(λ, ŵ_φ(λ)) (validation loss). λ reaches L_V only through the
hypernetwork, which is what lets STNs tune dropout rates (no gradient of the loss itself). Then

    warm-up:  φ-steps only
    cycle:    ``train_steps`` φ-steps on  E_ε L_T(u + ε, ŵ_φ(u + ε))              (SGD + momentum)
              ``valid_steps`` (u, s)-steps on E_ε L_V(u + ε, ŵ_φ(u + ε)) − τ·H[p(ε|s)]  (Adam)

with ε = softplus(s)·N(0, I) (``hyper.perturb``). With ``tune_scales: false`` the validation step
uses u itself and s stays fixed. One *step* below is one cycle (``train_steps`` + ``valid_steps``
updates); ``state.step`` counts them, warm-up steps included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..bilevel import tree
from ..bilevel.problem import BilevelProblem
from . import hyper


@dataclass(frozen=True)
class STNConfig:
    train_steps: int = 2  # φ-steps per cycle
    valid_steps: int = 1  # (u, s)-steps per cycle
    warmup_steps: int = 0  # cycles of φ-steps only, before λ moves
    lr_phi: float = 0.01
    momentum: float = 0.9
    phi_optimizer: str = "sgd"  # "sgd" (with momentum, as the paper) or "adam"
    lr_lam: float = 3e-3
    lr_scale: float = 3e-3
    entropy_weight: float = 1e-3  # τ
    tune_scales: bool = True
    perturb: bool = True  # false: train at u itself (a fixed-hyperparameter run for a grid)


@dataclass
class STNState:
    phi: tree.Params
    u: torch.Tensor  # (H,) unconstrained hyperparameters
    scale: torch.Tensor  # (H,) softplus⁻¹ of the perturbation's standard deviation
    gen: torch.Generator
    step: int = 0
    optim: dict[str, dict[str, Any]] = field(default_factory=dict)  # optimizer state_dicts, for resume


class STN:
    """Owns φ, u, s and their optimizers; ``cycle`` advances one step."""

    def __init__(self, problem: BilevelProblem, state: STNState, cfg: STNConfig):
        self.problem, self.cfg, self.state = problem, cfg, state
        # Sorted keys: a checkpoint (safetensors sorts them) must give the optimizer the same order.
        self.phi = tree.detached(dict(sorted(state.phi.items())), requires_grad=True)
        self.u = state.u.detach().clone().requires_grad_(True)
        self.scale = state.scale.detach().clone().requires_grad_(True)
        params = list(self.phi.values())
        if cfg.phi_optimizer == "adam":
            self.opt_phi: torch.optim.Optimizer = torch.optim.Adam(params, lr=cfg.lr_phi)
        elif cfg.phi_optimizer == "sgd":
            self.opt_phi = torch.optim.SGD(params, lr=cfg.lr_phi, momentum=cfg.momentum)
        else:
            raise ValueError(f"unknown phi optimizer {cfg.phi_optimizer!r}; valid: adam, sgd")
        self.opt_u = torch.optim.Adam([self.u], lr=cfg.lr_lam)
        self.opt_s = torch.optim.Adam([self.scale], lr=cfg.lr_scale)
        for name, opt in self._optimizers().items():
            if name in state.optim:
                opt.load_state_dict(state.optim[name])

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"phi": self.opt_phi, "u": self.opt_u, "scale": self.opt_s}

    def _draw(self, n: int, live: bool) -> torch.Tensor:
        if not self.cfg.perturb:
            return self.u.expand(n, -1) if live else self.u.detach().expand(n, -1)
        u = hyper.perturb(self.u, self.scale, n, self.state.gen)
        return u if live else u.detach()

    def phi_step(self, batch: Any, n: int) -> float:
        loss = self.problem.g(self.phi, {"_": self._draw(n, live=False)}, batch)
        self.opt_phi.zero_grad()
        loss.backward()
        self.opt_phi.step()
        return float(loss.detach())

    def hyper_step(self, batch: Any, n: int) -> tuple[float, float]:
        live = self.cfg.tune_scales and self.cfg.perturb
        u = self._draw(n, live=True) if live else self.u.expand(n, -1)
        val = self.problem.f({k: v.detach() for k, v in self.phi.items()}, {"_": u}, batch)
        ent = hyper.entropy(self.scale)
        loss = val - self.cfg.entropy_weight * ent if live else val
        self.opt_u.zero_grad()
        self.opt_s.zero_grad()
        loss.backward()
        self.opt_u.step()
        if live:
            self.opt_s.step()
        return float(val.detach()), float(ent.detach())

    def cycle(self, next_train: Callable[[], tuple[Any, int]], next_valid: Callable[[], tuple[Any, int]]) -> dict:
        """One step: φ-steps, then (after the warm-up) hyperparameter steps; returns its numbers."""
        train = [self.phi_step(*next_train()) for _ in range(self.cfg.train_steps)]
        record: dict[str, float] = {"train_loss": sum(train) / len(train)}
        if self.state.step >= self.cfg.warmup_steps and self.cfg.valid_steps > 0:
            steps = [self.hyper_step(*next_valid()) for _ in range(self.cfg.valid_steps)]
            record["valid_loss"] = sum(v for v, _ in steps) / len(steps)
            record["entropy"] = steps[-1][1]
        self.state.step += 1
        return record

    def snapshot(self) -> STNState:
        return STNState(tree.detached(self.phi), self.u.detach().clone(), self.scale.detach().clone(),
                        self.state.gen, self.state.step,
                        {name: opt.state_dict() for name, opt in self._optimizers().items()})


def state_to_arrays(state: STNState) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Tensors for safetensors (φ, u, s, optimizer moments, RNG) and JSON for the rest."""
    arrays = {f"phi/{k}": v.numpy().copy() for k, v in state.phi.items()}
    arrays["u"], arrays["scale"] = state.u.numpy().copy(), state.scale.numpy().copy()
    arrays["rng"] = state.gen.get_state().numpy().copy()
    meta: dict[str, Any] = {"step": state.step, "round": state.step, "optim": {}}
    for name, sd in state.optim.items():
        scalars = {}
        for idx, per in sd["state"].items():
            for key, val in per.items():
                if isinstance(val, torch.Tensor):
                    arrays[f"optim/{name}/{idx}/{key}"] = val.detach().numpy().copy().reshape(val.shape)
                else:
                    scalars.setdefault(str(idx), {})[key] = val
        meta["optim"][name] = {"param_groups": sd["param_groups"], "scalars": scalars}
    return arrays, meta


def state_from_arrays(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> STNState:
    t = lambda a: torch.from_numpy(np.array(a, copy=True))  # noqa: E731  (read-only safetensors views)
    phi = {k.removeprefix("phi/"): t(v) for k, v in arrays.items() if k.startswith("phi/")}
    gen = torch.Generator()
    gen.set_state(t(arrays["rng"]))
    optim: dict[str, dict[str, Any]] = {}
    for name, m in meta["optim"].items():
        state: dict[int, dict[str, Any]] = {}
        for k, v in arrays.items():
            if k.startswith(f"optim/{name}/"):
                _, _, idx, key = k.split("/", 3)
                state.setdefault(int(idx), {})[key] = t(v)
        for idx, sc in m["scalars"].items():
            state.setdefault(int(idx), {}).update(sc)
        optim[name] = {"state": state, "param_groups": m["param_groups"]}
    return STNState(phi, t(arrays["u"]), t(arrays["scale"]), gen, int(meta["step"]), optim)
