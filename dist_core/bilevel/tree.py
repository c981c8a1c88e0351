"""Parameters as flat dicts of tensors.

Users may pass a single tensor or a ``dict[str, Tensor]`` for θ and λ. Internally every
estimator works on dicts (``Params``) so that one code path serves both; ``wrap``/``unwrap``
convert at the public boundary. The helpers here are the vector-space operations that CG and
Neumann iterations need on such dicts.
"""

from __future__ import annotations

from typing import Mapping

import torch

Params = dict[str, torch.Tensor]
ParamsLike = torch.Tensor | Mapping[str, torch.Tensor]

_SINGLE = "_"  # key used when the user passed a bare tensor


def wrap(x: ParamsLike) -> tuple[Params, bool]:
    """Return ``(params_dict, was_tensor)``."""
    if isinstance(x, torch.Tensor):
        return {_SINGLE: x}, True
    if isinstance(x, Mapping):
        return dict(x), False
    raise TypeError(f"expected a tensor or a dict of tensors, got {type(x).__name__}")


def unwrap(p: Params, was_tensor: bool) -> ParamsLike:
    return p[_SINGLE] if was_tensor else p


def as_user(p: Params) -> ParamsLike:
    """The form a user's ``f``/``g`` receives: a bare tensor if that is what they passed."""
    return p[_SINGLE] if list(p) == [_SINGLE] else p


def detached(p: Params, requires_grad: bool = False) -> Params:
    return {k: v.detach().clone().requires_grad_(requires_grad) for k, v in p.items()}


def zeros_like(p: Params) -> Params:
    return {k: torch.zeros_like(v) for k, v in p.items()}


def add(a: Params, b: Params, alpha: float = 1.0) -> Params:
    return {k: a[k] + alpha * b[k] for k in a}


def scale(a: Params, s: float) -> Params:
    return {k: s * v for k, v in a.items()}


def dot(a: Params, b: Params) -> torch.Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def norm(a: Params) -> float:
    return float(torch.sqrt(dot(a, a)))


def grads_or_zeros(grads: tuple[torch.Tensor | None, ...], like: Params) -> Params:
    """``torch.autograd.grad(..., allow_unused=True)`` returns None for unused inputs."""
    return {k: (torch.zeros_like(v) if g is None else g) for (k, v), g in zip(like.items(), grads)}


def flatten(p: Params) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in p.values()]) if p else torch.zeros(0)


def unflatten(vec: torch.Tensor, like: Params) -> Params:
    out, i = {}, 0
    for k, v in like.items():
        out[k] = vec[i : i + v.numel()].view_as(v).clone()
        i += v.numel()
    return out
