"""Everything a diffusion run needs to continue bit for bit, as safetensors arrays plus JSON meta.

A ``Snapshot`` holds, after ``step`` steps of a method (outer steps for ``bilevel``, lower steps
for ``fixed``): the models' weights, the optimizers' moment estimates and step counts, every
``torch.Generator``'s state and the global torch RNG state, plus named plain tensors (ψ). The
optimizers' hyperparameters are not stored: they come from the job on resume, so a PBT exploit
that changes a learning rate takes effect. Nothing here is pickled.

Flat keys: ``model/<name>/<param>``, ``optim/<name>/<param index>/<key>``, ``rng/<name>``,
``tensor/<name>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import checkpoint
from ..errors import RunError

GLOBAL_RNG = "torch_global"


@dataclass
class Snapshot:
    method: str
    step: int
    lower_steps: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def capture(cls, method: str, step: int, lower_steps: int, *, models: dict[str, nn.Module],
                optimizers: dict[str, torch.optim.Optimizer], generators: dict[str, torch.Generator],
                tensors: dict[str, torch.Tensor] | None = None, meta: dict[str, Any] | None = None) -> "Snapshot":
        arrays: dict[str, np.ndarray] = {}
        for name, model in models.items():
            for key, value in model.state_dict().items():
                arrays[f"model/{name}/{key}"] = _array(value)
        for name, opt in optimizers.items():
            for index, per_param in opt.state_dict()["state"].items():
                for key, value in per_param.items():
                    arrays[f"optim/{name}/{index}/{key}"] = _array(torch.as_tensor(value))
        for name, gen in generators.items():
            arrays[f"rng/{name}"] = _array(gen.get_state())
        arrays[f"rng/{GLOBAL_RNG}"] = _array(torch.get_rng_state())
        for name, value in (tensors or {}).items():
            arrays[f"tensor/{name}"] = _array(value)
        return cls(method, step, lower_steps, arrays, dict(meta or {}))

    def restore(self, *, models: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
        """Load the state into freshly built objects (same shapes); returns the plain tensors."""
        for name, model in models.items():
            prefix = f"model/{name}/"
            model.load_state_dict({k[len(prefix):]: torch.from_numpy(v.copy()) for k, v in self.arrays.items()
                                   if k.startswith(prefix)})
        for name, opt in optimizers.items():
            prefix = f"optim/{name}/"
            state: dict[int, dict[str, torch.Tensor]] = {}
            for k, v in self.arrays.items():
                if k.startswith(prefix):
                    index, key = k[len(prefix):].split("/", 1)
                    state.setdefault(int(index), {})[key] = torch.from_numpy(v.copy())
            # Hyperparameters (lr, betas) from the optimizer as the job built it, state from the snapshot.
            opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
        for name, gen in generators.items():
            gen.set_state(torch.from_numpy(self.arrays[f"rng/{name}"].copy()))
        torch.set_rng_state(torch.from_numpy(self.arrays[f"rng/{GLOBAL_RNG}"].copy()))
        return {k.removeprefix("tensor/"): torch.from_numpy(v.copy()) for k, v in self.arrays.items()
                if k.startswith("tensor/")}

    def to_flat(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        # "round" is what a sweep trial reads to place a restored checkpoint (search/trainable.py).
        return self.arrays, {**self.meta, "method": self.method, "step": self.step, "round": self.step,
                             "lower_steps": self.lower_steps}

    @classmethod
    def from_flat(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> "Snapshot":
        rest = {k: v for k, v in meta.items() if k not in ("method", "step", "round", "lower_steps")}
        return cls(meta["method"], int(meta["step"]), int(meta["lower_steps"]), dict(arrays), rest)

    @classmethod
    def load(cls, path: Path, method: str) -> "Snapshot":
        """Read a checkpoint directory, refusing one written by the other method."""
        snap = cls.from_flat(*checkpoint.load(path))
        if snap.method != method:
            raise RunError(f"{path} is a checkpoint of method {snap.method!r}, but this job has method "
                           f"{method!r}; resume it with method: {snap.method}, or start a new run")
        return snap


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy().copy()
