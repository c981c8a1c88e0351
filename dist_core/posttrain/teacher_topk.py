"""``teacher_cache: topk``: the teacher kept as its k most likely tokens per position plus one bucket.

Per position the cache holds the teacher's top-k log-probs and token ids, ``log_rest`` = log(1 − Σ_topk p)
(computed as a masked logsumexp, not by subtraction, so a tail of 1e-12 stays accurate), and
``log_min_rest``, the log of the smallest teacher probability outside the top-k (it makes the
reverse-KL error bound computable). A divergence then runs on k + 1 buckets: the teacher's k tokens,
exactly, and "everything else", where the student's mass outside the teacher's top-k is aggregated
the same way. The student side stays exact: its logits are full at training time.

Error bound. Write S for the kept tokens, R for the rest, and for a distribution a write a_R = Σ_R a_v
and ā for its (k+1)-bucket version. Every divergence here is a KL(a‖b) between two distributions
(SKL: a = p, b = αp + (1−α)q; SRKL: a = q, b = (1−α)p + αq, the stop-gradient changes gradients, not
values; KD: a = p, b = q; RKL: a = q, b = p), and mixing commutes with bucketing (b̄ is the same mix
of p̄ and q̄). KL's chain rule splits the full divergence into the bucketed one plus the rest's share:

    KL(a‖b) = KL(ā‖b̄) + a_R · KL(a|R ‖ b|R),       a|R = a_v / a_R on R,

so the bucketed value is never above the full one (gap ≥ 0), and gap = a_R·Σ_R â_v log(â_v / b̂_v) is
bounded by the largest log-ratio on R:

- SKL_α:  p_v/m_v ≤ 1/α, so  gap ≤ p_R · log(m_R / (α·p_R))  ≤ p_R · log(1 / (α·p_R)).
- SRKL_α: q_v/m_v ≤ 1/α, so  gap ≤ q_R · log(m_R / (α·q_R))  ≤ (1−α)·p_R / α   (log(1+x) ≤ x).
- KD:     log â_v ≤ 0, so gap ≤ −p_R · Σ â_v log q̂_v ≤ p_R · log(q_R / min_R q_v).
- RKL:    likewise gap ≤ q_R · log(p_R / min_R p_v)   (min_R p_v from ``log_min_rest``).

m_R and q_R are the mixture's and the student's mass on R. Each bound vanishes with the teacher's tail
(p_R → 0 for SKL, SRKL, KD; the RKL one needs q_R·log(p_R/min p) → 0), is 0 for k = V, and holds token by
token, hence for token means. :func:`topk_error_bound` evaluates them; the tests check
0 ≤ full − bucketed ≤ bound on random logits. The skewed losses' bounds depend on the teacher's tail
mass and α only, so the cache alone says how good it is; the unskewed ones also need the student's
(KD) or the teacher's (RKL) smallest probability in the tail, which can be tiny: with a small k, KD and
RKL can be far off where the skewed losses are not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..errors import ConfigError
from .distill_losses import (
    LOG_FLOOR,
    Alpha,
    alpha_rows,
    check_shapes,
    compute_dtype,
    forward_kl,
    reverse_kl,
    sequence_mean,
    skew_kl,
    skew_reverse_kl,
)

_FILL = 1.0e4  # kept entries are pushed this far below the row's max: zero mass, yet finite gradients


@dataclass(frozen=True)
class TopKTeacher:
    """The cached teacher for positions (B, T): k log-probs (descending), their token ids, and the rest."""

    logp: torch.Tensor  # (B, T, k) float32 (float64 for float64 logits)
    index: torch.Tensor  # (B, T, k) int32 token ids
    log_rest: torch.Tensor  # (B, T) log(1 − Σ_topk p); LOG_FLOOR when k = V
    log_min_rest: torch.Tensor  # (B, T) log min_{v ∉ topk} p_v; equals log_rest when k = V

    def __post_init__(self) -> None:
        if self.logp.shape != self.index.shape or self.logp.dim() != 3:
            raise ValueError(f"logp {tuple(self.logp.shape)} and index {tuple(self.index.shape)} must share a "
                             "(B, T, k) shape")
        for name in ("log_rest", "log_min_rest"):
            if getattr(self, name).shape != self.logp.shape[:2]:
                raise ValueError(f"{name} must be (B, T) = {tuple(self.logp.shape[:2])}, "
                                 f"got {tuple(getattr(self, name).shape)}")

    @property
    def k(self) -> int:
        return self.logp.shape[-1]

    def to(self, device: torch.device | str) -> "TopKTeacher":
        return TopKTeacher(self.logp.to(device), self.index.to(device), self.log_rest.to(device),
                           self.log_min_rest.to(device))

    def token_logps(self, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` log p(y_t) where y_t is among the k tokens; else min(log_rest, k-th log-prob), an upper
        bound on it (the cache no longer knows the token's own probability). 0 at masked positions."""
        hit = self.index.long() == targets.long().unsqueeze(-1)
        found = torch.where(hit, self.logp, torch.zeros_like(self.logp)).sum(-1)
        ceiling = torch.minimum(self.log_rest, self.logp[..., -1])
        out = torch.where(hit.any(-1), found, ceiling)
        return torch.where(mask, out, torch.zeros_like(out))


@torch.no_grad()
def topk_teacher(logits: torch.Tensor, k: int) -> TopKTeacher:
    """The top-k cache of teacher logits (B, T, V), computed in float32 (float64 kept)."""
    if logits.dim() != 3:
        raise ValueError(f"teacher logits must be (B, T, V), got shape {tuple(logits.shape)}")
    vocab = logits.shape[-1]
    if not 1 <= k <= vocab:
        raise ConfigError(f"top-k k={k} must lie in [1, vocabulary size {vocab}]")
    z = logits.detach().to(compute_dtype(logits.dtype))
    lse = z.logsumexp(-1, keepdim=True)
    vals, idx = z.topk(k, dim=-1)
    rest = z.scatter(-1, idx, float("-inf"))
    log_rest = (rest.logsumexp(-1) - lse.squeeze(-1)).clamp(min=LOG_FLOOR)
    log_min = rest.scatter_(-1, idx, float("inf")).amin(-1) - lse.squeeze(-1)
    log_min = torch.where(torch.isinf(log_min), log_rest, log_min.clamp(min=LOG_FLOOR))
    return TopKTeacher((vals - lse).clamp(min=LOG_FLOOR), idx.to(torch.int32), log_rest, log_min)


def _student_buckets(student_logits: torch.Tensor, index: torch.Tensor, mask: torch.Tensor, with_min: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Student log-probs on the teacher's k tokens (N, k), its log-mass outside them (N, 1), and (with_min)
    the log of its smallest probability outside them (N,), detached; on the counted rows."""
    z = student_logits[mask].to(compute_dtype(student_logits.dtype))
    idx = index[mask].long()
    lse = z.logsumexp(-1, keepdim=True)
    kept = z.gather(-1, idx) - lse
    # Kept entries are replaced by a finite value far below the max rather than -inf: with k = V, a
    # logsumexp over only -inf has a NaN gradient, while this one has the exact zero mass.
    fill = (z.detach().amax(-1, keepdim=True) - _FILL).expand_as(idx)
    rest = (z.scatter(-1, idx, fill).logsumexp(-1, keepdim=True) - lse).clamp(min=LOG_FLOOR)
    if not with_min:
        return kept, rest, None
    with torch.no_grad():
        low = z.detach().scatter(-1, idx, float("inf")).amin(-1) - lse.detach().squeeze(-1)
        low = torch.where(torch.isinf(low), rest.detach().squeeze(-1), low)
    return kept, rest, low


def bucket_logps(student_logits: torch.Tensor, topk: TopKTeacher, mask: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probs on the k + 1 buckets (the teacher's k tokens, then the rest), (N, k+1)."""
    check_shapes(student_logits, mask)
    if topk.logp.shape[:2] != student_logits.shape[:2]:
        raise ValueError(f"top-k teacher covers positions {tuple(topk.logp.shape[:2])}, student logits "
                         f"{tuple(student_logits.shape[:2])}")
    kept, rest, _ = _student_buckets(student_logits, topk.index, mask)
    lq = torch.cat([kept, rest], dim=-1)
    lp = torch.cat([topk.logp[mask], topk.log_rest[mask].unsqueeze(-1)], dim=-1).to(lq.dtype).clamp(min=LOG_FLOOR)
    return lq, lp


# The losses on a top-k teacher: the same functions, which accept either teacher representation.
def skew_kl_topk(student_logits: torch.Tensor, topk: TopKTeacher, mask: torch.Tensor,
                 alpha: Alpha = 0.1) -> torch.Tensor:
    return skew_kl(student_logits, topk, mask, alpha)


def skew_reverse_kl_topk(student_logits: torch.Tensor, topk: TopKTeacher, mask: torch.Tensor,
                         alpha: Alpha = 0.1) -> torch.Tensor:
    return skew_reverse_kl(student_logits, topk, mask, alpha)


def kd_topk(student_logits: torch.Tensor, topk: TopKTeacher, mask: torch.Tensor) -> torch.Tensor:
    return forward_kl(student_logits, topk, mask)


def rkl_topk(student_logits: torch.Tensor, topk: TopKTeacher, mask: torch.Tensor) -> torch.Tensor:
    return reverse_kl(student_logits, topk, mask)


BoundedLoss = Literal["skew_kl", "skew_reverse_kl", "kd", "rkl"]


@torch.no_grad()
def topk_error_bound(loss: BoundedLoss, student_logits: torch.Tensor, topk: TopKTeacher, mask: torch.Tensor,
                     alpha: Alpha = 0.1) -> torch.Tensor:
    """(B,) bound on full-teacher loss − top-k loss (token means), which is itself ≥ 0 (module docstring)."""
    check_shapes(student_logits, mask)
    _, lq_rest, lq_min = _student_buckets(student_logits, topk.index, mask, with_min=True)
    lq_r = lq_rest.squeeze(-1)
    lp_r = topk.log_rest[mask].to(lq_r.dtype)
    if loss in ("skew_kl", "skew_reverse_kl"):
        a = alpha_rows(alpha, mask, lq_r).squeeze(-1)
        if bool((a == 0).any()):
            raise ValueError("the skewed bounds need alpha > 0; use the kd/rkl bounds for alpha = 0")
        if loss == "skew_kl":  # p_R·log(m_R / (α p_R)),  m_R = α p_R + (1−α) q_R
            lm = torch.logaddexp(a.log() + lp_r, torch.log1p(-a) + lq_r)
            per_token = lp_r.exp() * (lm - a.log() - lp_r)
        else:  # q_R·log(m_R / (α q_R)),  m_R = (1−α) p_R + α q_R
            lm = torch.logaddexp(torch.log1p(-a) + lp_r, a.log() + lq_r)
            per_token = lq_r.exp() * (lm - a.log() - lq_r)
    elif loss == "kd":  # p_R·log(q_R / min_R q)
        per_token = lp_r.exp() * (lq_r - lq_min)
    elif loss == "rkl":  # q_R·log(p_R / min_R p)
        per_token = lq_r.exp() * (lp_r - topk.log_min_rest[mask].to(lq_r.dtype))
    else:
        raise ConfigError(f"no top-k error bound for {loss!r}; valid: skew_kl, skew_reverse_kl, kd, rkl")
    return sequence_mean(per_token.clamp(min=0), mask)


# ---------------------------------------------------------------- on disk
_FIELDS = ("logp", "index", "log_rest", "log_min_rest")


def save_topk(path: str | Path, topk: TopKTeacher, fingerprint: str = "") -> None:
    """Write the cache as safetensors (atomically: a reader never sees half a file); ``fingerprint``,
    computed by the caller from whatever the cache depends on, is stored in the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tensors = {f: getattr(topk, f).detach().cpu().contiguous() for f in _FIELDS}
    save_file(tensors, str(tmp), metadata={"fingerprint": fingerprint, "k": str(topk.k)})
    os.replace(tmp, path)


def stored_fingerprint(path: str | Path) -> str:
    """The fingerprint a cache file was saved under."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("fingerprint", "")


def load_topk(path: str | Path, fingerprint: str | None = None) -> TopKTeacher:
    """Read a cache written by :func:`save_topk`; with ``fingerprint``, refuse a file saved under another."""
    from safetensors.torch import load_file

    if fingerprint is not None:
        found = stored_fingerprint(path)
        if found != fingerprint:
            raise ConfigError(f"{path}: top-k teacher cache has fingerprint {found!r}, expected {fingerprint!r} "
                              "(stale: delete it or recompute)")
    tensors = load_file(str(path))
    return TopKTeacher(*(tensors[f] for f in _FIELDS))
