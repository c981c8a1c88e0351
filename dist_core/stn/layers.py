"""The STN's structured best response: a linear layer whose rows are gated by a linear map of λ.

    W(h) = s·W_elem + diag(V_w h)·W_hyper,     b(h) = s·b_elem + (V_b h) ⊙ b_hyper
    out  = s·(W_elem x + b_elem) + (V_w h) ⊙ (W_hyper x) + (V_b h) ⊙ b_hyper      (= W(h) x + b(h))

h is the hypernetwork's input (here the unconstrained hyperparameters u), one row per example, so
every example of a batch may see its own perturbed λ at the cost of one extra matrix product. The
layers are functions on a flat dict of tensors (``bilevel.tree.Params``): φ is such a dict.
"""

from __future__ import annotations

import math

import torch

from ..bilevel import tree


def init(prefix: str, n_in: int, n_out: int, n_hyper: int, gen: torch.Generator, bias: bool = True) -> tree.Params:
    bound = 1.0 / math.sqrt(n_in)

    def uniform(*shape: int) -> torch.Tensor:
        return (torch.rand(shape, generator=gen) * 2 - 1) * bound

    p = {f"{prefix}.elem_w": uniform(n_out, n_in), f"{prefix}.hyper_w": uniform(n_out, n_in),
         f"{prefix}.gate_w": torch.randn((n_out, n_hyper), generator=gen) * 0.01,
         f"{prefix}.scalar": torch.ones(1)}
    if bias:
        p.update({f"{prefix}.elem_b": uniform(n_out), f"{prefix}.hyper_b": uniform(n_out),
                  f"{prefix}.gate_b": torch.randn((n_out, n_hyper), generator=gen) * 0.01})
    return p


def forward(p: tree.Params, prefix: str, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """(B, in), (B, H) → (B, out)."""
    s = p[f"{prefix}.scalar"]
    out = s * (x @ p[f"{prefix}.elem_w"].T) + (h @ p[f"{prefix}.gate_w"].T) * (x @ p[f"{prefix}.hyper_w"].T)
    if f"{prefix}.elem_b" in p:
        out = out + s * p[f"{prefix}.elem_b"] + (h @ p[f"{prefix}.gate_b"].T) * p[f"{prefix}.hyper_b"]
    return out


def weight(p: tree.Params, prefix: str, h: torch.Tensor) -> torch.Tensor:
    """The effective weights W(h) of each row of h, (B, out, in)."""
    gate = h @ p[f"{prefix}.gate_w"].T  # (B, out)
    return p[f"{prefix}.scalar"] * p[f"{prefix}.elem_w"] + gate[:, :, None] * p[f"{prefix}.hyper_w"]


def weight_sq_norm(p: tree.Params, prefix: str, h: torch.Tensor) -> torch.Tensor:
    """‖W(h_b)‖² for each row, (B,), without forming W(h_b):
    s²‖W_e‖² + 2s Σ_r g_r ⟨W_e,r, W_h,r⟩ + Σ_r g_r² ‖W_h,r‖², with g = V_w h_b."""
    s, we, wh = p[f"{prefix}.scalar"], p[f"{prefix}.elem_w"], p[f"{prefix}.hyper_w"]
    gate = h @ p[f"{prefix}.gate_w"].T
    return s * s * (we * we).sum() + 2 * s * gate @ (we * wh).sum(1) + (gate * gate) @ (wh * wh).sum(1)
