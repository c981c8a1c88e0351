"""InfoNCE, the contrastive loss of CPC (van den Oord et al., 2018) that BL-JUST uses as L_u.

For N predictions p_i and their targets t_i, every other target in the batch is a negative:

    s_ij = ⟨p̂_i, t̂_j⟩ / τ          (p̂, t̂: L2-normalised when ``normalize``)
    L    = −(1/N) Σ_i log( exp(s_ii) / Σ_j exp(s_ij) )

i.e. cross-entropy of the similarity matrix's rows against the diagonal. A (B, K, D) pair of
multi-step CPC predictions is flattened to N = B·K rows first, as in the BL-JUST reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(pred: torch.Tensor, target: torch.Tensor, temperature: float = 0.1,
             normalize: bool = True) -> torch.Tensor:
    """Mean InfoNCE of ``pred`` against ``target`` (same shape, last dimension the features)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    p = pred.reshape(-1, pred.shape[-1])
    t = target.reshape(-1, target.shape[-1])
    if normalize:
        p, t = F.normalize(p, dim=-1), F.normalize(t, dim=-1)
    logits = p @ t.T / temperature
    return F.cross_entropy(logits, torch.arange(len(p), device=p.device))
