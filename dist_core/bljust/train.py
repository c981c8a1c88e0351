"""The three arms of a BL-JUST comparison as phase lists, and the step of each phase (pure torch).

A *phase* is (kind, steps, lr). Kinds and their updates (θ encoder, φ_s / φ_u the heads):

    unsup  (warm-up / pre-training):  (θ, φ_u) ← Adam step on L_u
    joint  (BL-JUST's penalty step):  θ ← step on ∇_θ(L_s + γ_t·L_u);  φ_u ← step on ∇L_u;  φ_s ← step on ∇L_s
    sup    (supervised / fine-tuning): (θ, φ_s) ← Adam step on L_s

γ_t = γ_init + (γ_max − γ_init)·min(1, t/ramp_steps) counts the joint phase's own steps from t = 1.
Each group steps with its own optimizer on exactly its own gradient (``torch.autograd.grad`` on
that group's parameters only). Every arm takes the same number of steps S = W + J + F:

    bl_just:            unsup(W) → joint(J) → sup(F, fine-tune lr)
    pretrain_finetune:  unsup(W) → sup(J)   → sup(F, fine-tune lr)      (BL-JUST with γ ≡ 0)
    supervised:         sup(W)   → sup(J)   → sup(F, fine-tune lr)      (no unlabelled data)

so BL-JUST differs from pre-training + fine-tuning only in its joint phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .data import SemiSupervised
from .model import BLJustNet, augment

ARMS = ("bl_just", "pretrain_finetune", "supervised")


@dataclass(frozen=True)
class Phase:
    kind: str  # "unsup", "joint" or "sup"
    steps: int
    lr: float


@dataclass(frozen=True)
class Ramp:
    gamma_init: float
    gamma_max: float
    ramp_steps: int

    def gamma(self, t: int) -> float:
        """γ at the t-th joint step (t = 1, 2, …)."""
        frac = 1.0 if self.ramp_steps == 0 else min(1.0, t / self.ramp_steps)
        return self.gamma_init + (self.gamma_max - self.gamma_init) * frac


@dataclass(frozen=True)
class ArmConfig:
    warmup: Phase
    joint: Phase
    finetune: Phase
    ramp: Ramp
    temperature: float
    batch: int
    shift: int
    noise: float


def phases(arm: str, cfg: ArmConfig) -> list[Phase]:
    w, j, f = cfg.warmup, cfg.joint, cfg.finetune
    if arm == "bl_just":
        return [w, j, f]
    if arm == "pretrain_finetune":
        return [w, Phase("sup", j.steps, j.lr), f]
    if arm == "supervised":
        return [Phase("sup", w.steps, j.lr), Phase("sup", j.steps, j.lr), f]
    raise ValueError(f"unknown arm {arm!r}; valid: {', '.join(ARMS)}")


def _optimizers(net: BLJustNet, plan: list[Phase]) -> dict[str, torch.optim.Optimizer]:
    """One optimizer per parameter group a phase steps, built up front so a checkpoint holds all."""
    g = net.groups()
    out: dict[str, torch.optim.Optimizer] = {}
    for i, ph in enumerate(plan):
        if ph.kind == "unsup":
            out[f"{i}/encoder+cpc_head"] = torch.optim.Adam(g["encoder"] + g["cpc_head"], lr=ph.lr)
        elif ph.kind == "sup":
            out[f"{i}/encoder+sup_head"] = torch.optim.Adam(g["encoder"] + g["sup_head"], lr=ph.lr)
        else:
            for name in ("encoder", "cpc_head", "sup_head"):
                out[f"{i}/{name}"] = torch.optim.Adam(g[name], lr=ph.lr)
    return out


def joint_gradients(net: BLJustNet, sup_loss: torch.Tensor, unsup_loss: torch.Tensor,
                    gamma: float) -> dict[str, tuple[torch.Tensor, ...]]:
    """The penalty step's gradients: ∇_θ(L_s + γL_u), ∇_{φ_u}L_u, ∇_{φ_s}L_s, one per group."""
    g = net.groups()
    return {
        "encoder": torch.autograd.grad(sup_loss + gamma * unsup_loss, g["encoder"], retain_graph=True),
        "cpc_head": torch.autograd.grad(unsup_loss, g["cpc_head"], retain_graph=True),
        "sup_head": torch.autograd.grad(sup_loss, g["sup_head"]),
    }


class ArmRunner:
    """One arm: its network, optimizers and batch generator; ``step`` advances it by one step."""

    def __init__(self, arm: str, data: SemiSupervised, cfg: ArmConfig, seed: int, net_kwargs: dict[str, int]):
        self.arm, self.data, self.cfg = arm, data, cfg
        torch.manual_seed(seed)  # every arm starts from the same weights
        self.net = BLJustNet(**net_kwargs)
        self.plan = phases(arm, cfg)
        self.opts = _optimizers(self.net, self.plan)
        self.gen = torch.Generator().manual_seed(seed)
        self.step_count = 0
        self.total = sum(p.steps for p in self.plan)

    def phase_at(self, step: int) -> tuple[int, int]:
        """(phase index, 1-based step within it) of the arm's ``step``-th step."""
        for i, ph in enumerate(self.plan):
            if step <= ph.steps:
                return i, step
            step -= ph.steps
        raise IndexError("past the arm's last step")

    def _unlabelled(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.data.x_unlabelled), (self.cfg.batch,), generator=self.gen)
        x = self.data.x_unlabelled[idx]
        c = self.cfg
        return augment(x, self.gen, c.shift, c.noise), augment(x, self.gen, c.shift, c.noise)

    def _labelled(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.data.y_labelled)
        idx = torch.randint(n, (min(self.cfg.batch, n),), generator=self.gen)
        return self.data.x_labelled[idx], self.data.y_labelled[idx]

    def step(self) -> dict[str, Any]:
        self.step_count += 1
        i, t = self.phase_at(self.step_count)
        ph = self.plan[i]
        record: dict[str, Any] = {"arm": self.arm, "step": self.step_count, "phase": ph.kind}
        if ph.kind == "unsup":
            loss = self.net.unsup_loss(*self._unlabelled(), self.cfg.temperature)
            self._apply(f"{i}/encoder+cpc_head", loss)
            record["unsup_loss"] = float(loss.detach())
        elif ph.kind == "sup":
            loss = self.net.sup_loss(*self._labelled())
            self._apply(f"{i}/encoder+sup_head", loss)
            record["sup_loss"] = float(loss.detach())
        else:
            gamma = self.cfg.ramp.gamma(t)
            lu = self.net.unsup_loss(*self._unlabelled(), self.cfg.temperature)
            ls = self.net.sup_loss(*self._labelled())
            grads = joint_gradients(self.net, ls, lu, gamma)
            groups = self.net.groups()
            for name, gs in grads.items():
                for p, g in zip(groups[name], gs):
                    p.grad = g
                self.opts[f"{i}/{name}"].step()
            record.update(gamma=gamma, sup_loss=float(ls.detach()), unsup_loss=float(lu.detach()))
        return record

    def _apply(self, name: str, loss: torch.Tensor) -> None:
        opt = self.opts[name]
        opt.zero_grad()
        loss.backward()
        opt.step()

    def test_accuracy(self) -> float:
        with torch.no_grad():
            pred = self.net.logits(self.data.x_test).argmax(-1)
        return float((pred == self.data.y_test).float().mean())

    # ------------------------------------------------------------ checkpoint
    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {f"model/{k}": v.detach().numpy().copy() for k, v in self.net.state_dict().items()}
        for name, opt in self.opts.items():
            for idx, per in opt.state_dict()["state"].items():
                for key, val in per.items():
                    out[f"optim/{name}/{idx}/{key}"] = torch.as_tensor(val).detach().numpy().copy()
        out["rng"] = self.gen.get_state().numpy().copy()
        return out

    def restore(self, arrays: dict[str, np.ndarray], step: int) -> None:
        t = lambda a: torch.from_numpy(np.array(a, copy=True))  # noqa: E731  (read-only views)
        self.net.load_state_dict({k[6:]: t(v) for k, v in arrays.items() if k.startswith("model/")})
        for name, opt in self.opts.items():
            state: dict[int, dict[str, torch.Tensor]] = {}
            prefix = f"optim/{name}/"
            for k, v in arrays.items():
                if k.startswith(prefix):
                    idx, key = k[len(prefix):].split("/", 1)
                    state.setdefault(int(idx), {})[key] = t(v)
            opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
        self.gen.set_state(t(arrays["rng"]))
        self.step_count = step
