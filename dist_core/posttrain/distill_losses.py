"""DistiLLM-2's contrastive distillation loss and its baselines, on tensors (RESEARCH.md §2).

Pure torch, no distribution. Notation: p is the teacher's next-token distribution, q the student's,
sg the stop-gradient. Per token,

    SKL_α(p‖q)  = Σ_v p_v · log[ p_v / (α·p_v + (1−α)·q_v) ]            (on teacher outputs, TGO)
    SRKL_α(q‖p) = Σ_v q_v · log[ q_v / ((1−α)·p_v + α·sg(q_v)) ]         (on student outputs, SGO)

and DistiLLM-2 trains on  L = batch-mean[(2−β)·tokmean_TGO SKL_α1 + β·tokmean_SGO SRKL_α2].

Conventions shared by every function here:

- ``student_logits`` and the teacher are aligned: position t of both predicts the same token. The
  teacher is full logits ``(B, T, V)`` or a :class:`~dist_core.posttrain.teacher_topk.TopKTeacher`
  (the ``teacher_cache: topk`` representation; see that module for what is exact and the error bound).
- ``mask`` ``(B, T)`` bool marks the positions that count (response tokens). Only those rows are
  gathered, so whatever sits at a masked position (padding, prompt, even inf) never reaches the loss
  or its gradient.
- Logits of any dtype are upcast once (bf16/fp16 → float32; float64 stays float64) inside
  ``log_softmax``; everything after runs in log space (``logaddexp`` for the mixtures), so no
  ``log(0)`` is ever taken. Teacher log-probs are floored at ``LOG_FLOOR`` (a mass of e^-10⁴, which
  is 0 in every float type), so a teacher with ``-inf`` logits (a padded vocabulary) gives finite
  losses. Student logits must be finite, as any model's are.
- The teacher is a constant: its logits are detached.
- Memory: SKL and SRKL keep two (N, V) tensors for backward, log q and log p (their backward is
  written out and recomputes the mixture), where autograd through the reference code's
  ``stack`` + ``logsumexp`` keeps five (SKL) and three (SRKL). N counts only the masked-in positions.
- Per-sequence divergences return ``(B,)``: the mean over the sequence's counted tokens (0 for a
  sequence with none), as the reference code's ``average_log_prob=True``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Union

import torch
from torch.autograd.function import once_differentiable

from ..errors import ConfigError

if TYPE_CHECKING:
    from .teacher_topk import TopKTeacher

LOG_FLOOR = -1.0e4  # exp(LOG_FLOOR) == 0 in float16/32/64: a zero mass that keeps log-space arithmetic finite

Teacher = Union[torch.Tensor, "TopKTeacher"]
Alpha = Union[float, torch.Tensor]  # a scalar, or one value per sequence (B,) (adaptive α)


# ---------------------------------------------------------------- rows and reductions
def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types, float64 kept: the precision every loss is computed in."""
    return torch.promote_types(dtype, torch.float32)


def check_shapes(student_logits: torch.Tensor, mask: torch.Tensor) -> None:
    if student_logits.dim() != 3:
        raise ValueError(f"student logits must be (B, T, V), got shape {tuple(student_logits.shape)}")
    if mask.shape != student_logits.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(student_logits.shape[:2])}, "
                         f"got {mask.dtype} {tuple(mask.shape)}")


def aligned_logps(student_logits: torch.Tensor, teacher: Teacher, mask: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probs ``(N, C)`` on the N counted positions, in the same support.

    Full teacher logits: C = V. A top-k teacher: C = k + 1 buckets (its k tokens, then the rest).
    """
    check_shapes(student_logits, mask)
    if not isinstance(teacher, torch.Tensor):
        from .teacher_topk import bucket_logps  # imported here: teacher_topk builds on this module

        return bucket_logps(student_logits, teacher, mask)
    if teacher.shape != student_logits.shape:
        raise ValueError(f"teacher logits {tuple(teacher.shape)} and student logits "
                         f"{tuple(student_logits.shape)} must have the same shape")
    dt = compute_dtype(student_logits.dtype)
    lq = torch.log_softmax(student_logits[mask], dim=-1, dtype=dt)
    with torch.no_grad():
        lp = torch.log_softmax(teacher.detach()[mask], dim=-1, dtype=dt).clamp_(min=LOG_FLOOR)
    return lq, lp


def sequence_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(N,)`` values at the counted positions (row-major order of ``mask``) → ``(B,)`` token means."""
    rows = mask.nonzero(as_tuple=True)[0]
    sums = per_token.new_zeros(mask.shape[0]).index_add(0, rows, per_token)
    return sums / mask.sum(-1).clamp(min=1).to(per_token.dtype)


def alpha_rows(alpha: Alpha, mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """α as an ``(N, 1)`` column matching the counted rows; checks 0 ≤ α ≤ 1."""
    a = torch.as_tensor(alpha, dtype=like.dtype, device=like.device).detach()
    if a.dim() == 0:
        a = a.expand(mask.shape[0])
    if a.shape != (mask.shape[0],):
        raise ValueError(f"alpha must be a number or one value per sequence ({mask.shape[0]},), got {tuple(a.shape)}")
    if bool(((a < 0) | (a > 1)).any()):
        raise ValueError(f"alpha must lie in [0, 1], got {a.tolist()}")
    return a[mask.nonzero(as_tuple=True)[0]].unsqueeze(-1)


# ---------------------------------------------------------------- per-token divergences on (N, C) log-probs
class _SkewKL(torch.autograd.Function):
    """SKL_α per row with a hand-written backward that keeps only log q and log p.

    Autograd through ``logaddexp`` would keep both of its full-size inputs and p as well; here the
    mixture is recomputed in backward. ∂SKL/∂log q_v = −p_v·(1−α)·q_v / m_v.
    """

    @staticmethod
    def forward(ctx, lq, lp, log_a, log_1ma):
        ctx.save_for_backward(lq, lp, log_a, log_1ma)
        lm = torch.logaddexp(lp + log_a, lq + log_1ma)
        return lm.neg_().add_(lp).mul_(lp.exp()).sum(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        lq, lp, log_a, log_1ma = ctx.saved_tensors
        lm = torch.logaddexp(lp + log_a, lq + log_1ma)
        grad = lm.neg_().add_(lp).add_(lq).add_(log_1ma).exp_().mul_(-grad_out.unsqueeze(-1))
        return grad, None, None, None


class _SkewReverseKL(torch.autograd.Function):
    """SRKL_α per row, q constant inside the mixture: ∂SRKL/∂log q_v = q_v·(log q_v − log m_v + 1)."""

    @staticmethod
    def forward(ctx, lq, lp, log_a, log_1ma):
        ctx.save_for_backward(lq, lp, log_a, log_1ma)
        lm = torch.logaddexp(lp + log_1ma, lq + log_a)
        return lm.neg_().add_(lq).mul_(lq.exp()).sum(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        lq, lp, log_a, log_1ma = ctx.saved_tensors
        lm = torch.logaddexp(lp + log_1ma, lq + log_a)
        grad = lm.neg_().add_(lq).add_(1.0).mul_(lq.exp()).mul_(grad_out.unsqueeze(-1))
        return grad, None, None, None


def skl_tokens(lq: torch.Tensor, lp: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """SKL_α(p‖q) per row; log m = logaddexp(log α + log p, log(1−α) + log q). ``a`` is (N, 1)."""
    return _SkewKL.apply(lq, lp.detach(), a.log(), torch.log1p(-a))


def srkl_tokens(lq: torch.Tensor, lp: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """SRKL_α(q‖p) per row, q detached inside the mixture only (the reference code's choice)."""
    return _SkewReverseKL.apply(lq, lp.detach(), a.log(), torch.log1p(-a))


def fkl_tokens(lq: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) per row."""
    return (lp.exp() * (lp - lq)).sum(-1)


def rkl_tokens(lq: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
    """KL(q‖p) per row."""
    return (lq.exp() * (lq - lp)).sum(-1)


def gjsd_tokens(lq: torch.Tensor, lp: torch.Tensor, beta: float) -> torch.Tensor:
    """TRL's generalized JSD per row: β·KL(p‖m) + (1−β)·KL(q‖m), m = β·p + (1−β)·q.

    As TRL does, β = 0 is KL(p‖q) and β = 1 is KL(q‖p) (the formula itself would vanish there).
    """
    if beta == 0.0:
        return fkl_tokens(lq, lp)
    if beta == 1.0:
        return rkl_tokens(lq, lp)
    b = torch.tensor(beta, dtype=lq.dtype, device=lq.device)
    lm = torch.logaddexp(lp + b.log(), lq + torch.log1p(-b))
    return beta * (lp.exp() * (lp - lm)).sum(-1) + (1.0 - beta) * (lq.exp() * (lq - lm)).sum(-1)


# ---------------------------------------------------------------- per-sequence divergences (B,)
def skew_kl(student_logits: torch.Tensor, teacher_logits: Teacher, mask: torch.Tensor,
            alpha: Alpha = 0.1) -> torch.Tensor:
    """Token mean per sequence of SKL_α(p‖q) = Σ_v p log(p / (αp + (1−α)q)); α = 0: KL(p‖q), α = 1: 0."""
    lq, lp = aligned_logps(student_logits, teacher_logits, mask)
    return sequence_mean(skl_tokens(lq, lp, alpha_rows(alpha, mask, lq)), mask)


def skew_reverse_kl(student_logits: torch.Tensor, teacher_logits: Teacher, mask: torch.Tensor,
                    alpha: Alpha = 0.1) -> torch.Tensor:
    """Token mean per sequence of SRKL_α(q‖p) = Σ_v q log(q / ((1−α)p + α·sg(q))); α = 0 is KL(q‖p)."""
    lq, lp = aligned_logps(student_logits, teacher_logits, mask)
    return sequence_mean(srkl_tokens(lq, lp, alpha_rows(alpha, mask, lq)), mask)


def forward_kl(student_logits: torch.Tensor, teacher_logits: Teacher, mask: torch.Tensor) -> torch.Tensor:
    """Token mean per sequence of KL(p‖q) (the ``kd`` baseline)."""
    lq, lp = aligned_logps(student_logits, teacher_logits, mask)
    return sequence_mean(fkl_tokens(lq, lp), mask)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: Teacher, mask: torch.Tensor) -> torch.Tensor:
    """Token mean per sequence of KL(q‖p) (the ``rkl`` baseline)."""
    lq, lp = aligned_logps(student_logits, teacher_logits, mask)
    return sequence_mean(rkl_tokens(lq, lp), mask)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: Teacher, mask: torch.Tensor,
                    beta: float = 0.5) -> torch.Tensor:
    """Token mean per sequence of TRL's generalized JSD with teacher weight β (see :func:`gjsd_tokens`).

    TRL's ``generalized_jsd_loss(..., reduction="batchmean")`` is the token mean over the whole batch,
    i.e. ``(generalized_jsd(...) * n).sum() / n.sum()`` with n the counted tokens per sequence; it is
    taken at temperature 1 (TRL divides both logits by its temperature first).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"gkd beta must lie in [0, 1], got {beta}")
    lq, lp = aligned_logps(student_logits, teacher_logits, mask)
    return sequence_mean(gjsd_tokens(lq, lp, beta), mask)


def token_logps(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` log-prob of ``targets[b, t]`` under ``logits[b, t]`` at counted positions, 0 elsewhere."""
    check_shapes(logits, mask)
    z = logits[mask].to(compute_dtype(logits.dtype))
    picked = z.gather(-1, targets[mask].long().unsqueeze(-1)).squeeze(-1) - z.logsumexp(-1)
    return torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device).masked_scatter(mask, picked)


def sequence_nll(student_logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token mean per sequence of −log q(y_t) (the ``seqkd`` baseline: SFT on teacher outputs)."""
    logps = token_logps(student_logits, targets, mask)
    return -logps.sum(-1) / mask.sum(-1).clamp(min=1).to(logps.dtype)


def distillm2_loss(student_logits_tgo: torch.Tensor, teacher_logits_tgo: Teacher, mask_tgo: torch.Tensor,
                   student_logits_sgo: torch.Tensor, teacher_logits_sgo: Teacher, mask_sgo: torch.Tensor,
                   alpha1: Alpha = 0.1, alpha2: Alpha = 0.1, beta: float = 1.0) -> torch.Tensor:
    """DistiLLM-2's loss, a scalar: batch mean of (2−β)·SKL_α1 on TGO + β·SRKL_α2 on SGO.

    Row b of TGO and row b of SGO answer the same prompt (the reference's chosen/rejected pair).
    """
    skl = skew_kl(student_logits_tgo, teacher_logits_tgo, mask_tgo, alpha1)
    srkl = skew_reverse_kl(student_logits_sgo, teacher_logits_sgo, mask_sgo, alpha2)
    return ((2.0 - beta) * skl + beta * srkl).mean()


# ---------------------------------------------------------------- schedules
def beta_schedule(step: int, total_steps: int) -> float:
    """The reference's ``gradual_beta``: β_k = 1 + 0.5·min(1, 2k/K), from 1 to 1.5 over the first half."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    return 1.0 + 0.5 * min(1.0, 2.0 * step / total_steps)


def adaptive_alpha(gap: torch.Tensor, anchor: float, base_alpha: float, floor: float = 0.01) -> torch.Tensor:
    """Per-sequence α = clip(1 − (1−α0)·A / (gap + 1e-5), floor, α0), detached.

    ``gap`` is p̄ − q̄ on TGO (q̄ − p̄ on SGO), where p̄ = exp(token-mean log p(y)) and likewise q̄;
    ``anchor`` A is that gap's batch mean frozen early in training. The α solving
    (1−α)·gap = (1−α0)·A keeps the teacher-to-mixture gap at its initial level; the clip keeps α in
    [floor, α0]. For A > 0 that means: α0 where gap ≥ A (or gap < 0), the floor where
    0 < gap ≤ (1−α0)·A/(1−floor), and the solution in between; so α only ever moves below α0.
    """
    a = 1.0 - (1.0 - base_alpha) * anchor / (gap.detach() + 1e-5)
    return a.clamp(min=floor, max=base_alpha)


@dataclass
class AdaptiveAlphaState:
    """The two anchors of adaptive α, frozen at the first batch each side sees (JSON-serialisable).

    Departures from the reference code, on purpose:

    - The reference freezes the anchors in ``log()`` from ``self._stored_metrics['logps_logqs/chosen']``,
      but that dict is keyed by ``"train"``/``"eval"`` first, so it reads an empty default dict; the
      multiplication that follows raises and a bare ``except`` falls back to the base α. With
      ``update_alpha=True`` its α therefore never adapts. Here the anchor is the first batch's mean gap
      (or the value a checkpoint restores).
    - The reference's α is computed from the student's log-probs without ``detach``, so the loss
      would also be differentiated through α; here α is a constant of each step, as its role
      (a skew chosen per sequence) implies.
    """

    anchor_tgo: float | None = None
    anchor_sgo: float | None = None

    def alphas(self, gap_tgo: torch.Tensor, gap_sgo: torch.Tensor, alpha1: float, alpha2: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.anchor_tgo is None:
            self.anchor_tgo = float(gap_tgo.detach().mean())
        if self.anchor_sgo is None:
            self.anchor_sgo = float(gap_sgo.detach().mean())
        return adaptive_alpha(gap_tgo, self.anchor_tgo, alpha1), adaptive_alpha(gap_sgo, self.anchor_sgo, alpha2)


def _mean_prob(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """p̄ = exp(token-mean log-prob) per sequence."""
    return (logps.sum(-1) / mask.sum(-1).clamp(min=1).to(logps.dtype)).exp()


def teacher_token_logps(teacher: Teacher, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` teacher log p(y_t); a top-k teacher answers from its cache (see ``TopKTeacher.token_logps``)."""
    if isinstance(teacher, torch.Tensor):
        with torch.no_grad():
            return token_logps(teacher.detach(), targets, mask)
    return teacher.token_logps(targets, mask)


# ---------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Side:
    """One half of a batch: the student's and teacher's logits on TGO (teacher outputs) or SGO (student outputs).

    ``targets`` ``(B, T)`` are the token ids each position predicts (the response itself, aligned like the
    logits); ``seqkd`` and adaptive α need them. ``teacher`` may be None for ``seqkd``.
    """

    student_logits: torch.Tensor
    mask: torch.Tensor
    teacher: Teacher | None = None
    targets: torch.Tensor | None = None


@dataclass(frozen=True)
class NoOptions:
    pass


@dataclass(frozen=True)
class GKDOptions:
    beta: float = 0.9  # teacher weight in the mixture; the DistiLLM-2 code's gkd uses 0.9 (TRL's default is 0.5)


@dataclass(frozen=True)
class DistillmV1Options:
    alpha: float = 0.1  # SRKL skew on both halves


@dataclass(frozen=True)
class DistillmV2Options:
    alpha1: float = 0.1  # SKL skew on TGO
    alpha2: float = 0.1  # SRKL skew on SGO
    beta: float = 1.0  # L = (2−β)·SKL + β·SRKL
    gradual_beta: bool = False  # β from beta_schedule(step, total_steps) instead (the paper's curriculum)
    adaptive_alpha: bool = False  # per-sequence α (needs targets and an AdaptiveAlphaState)


@dataclass(frozen=True)
class Progress:
    """Where training stands, for losses whose knobs move with it (β curriculum, adaptive α's anchors)."""

    step: int = 0
    total_steps: int = 1
    alpha_state: AdaptiveAlphaState | None = None


LossFn = Callable[[Side | None, Side | None, Any, Progress], torch.Tensor]


@dataclass(frozen=True)
class LossEntry:
    """A distillation loss and what it needs, so the job loads only that."""

    name: str
    fn: LossFn
    options: type
    needs_tgo: bool
    needs_sgo: bool
    needs_teacher: bool
    needs_targets: bool
    doc: str


def _need(side: Side | None, name: str, half: str, teacher: bool = True, targets: bool = False) -> Side:
    if side is None:
        raise ConfigError(f"loss {name!r} needs the {half} half of the batch")
    if teacher and side.teacher is None:
        raise ConfigError(f"loss {name!r} needs teacher logits on {half}")
    if targets and side.targets is None:
        raise ConfigError(f"loss {name!r} needs targets on {half}")
    return side


def _kd(tgo, sgo, o, pr):
    t = _need(tgo, "kd", "TGO")
    return forward_kl(t.student_logits, t.teacher, t.mask).mean()


def _seqkd(tgo, sgo, o, pr):
    t = _need(tgo, "seqkd", "TGO", teacher=False, targets=True)
    return sequence_nll(t.student_logits, t.targets, t.mask).mean()


def _rkl(tgo, sgo, o, pr):
    s = _need(sgo, "rkl", "SGO")
    return reverse_kl(s.student_logits, s.teacher, s.mask).mean()


def _gkd(tgo, sgo, o: GKDOptions, pr):
    t, s = _need(tgo, "gkd", "TGO"), _need(sgo, "gkd", "SGO")
    return (generalized_jsd(t.student_logits, t.teacher, t.mask, o.beta)
            + generalized_jsd(s.student_logits, s.teacher, s.mask, o.beta)).mean()


def _distillm_v1(tgo, sgo, o: DistillmV1Options, pr):
    t, s = _need(tgo, "distillm_v1", "TGO"), _need(sgo, "distillm_v1", "SGO")
    return (skew_reverse_kl(t.student_logits, t.teacher, t.mask, o.alpha)
            + skew_reverse_kl(s.student_logits, s.teacher, s.mask, o.alpha)).mean()


def _distillm_v2(tgo, sgo, o: DistillmV2Options, pr: Progress):
    t = _need(tgo, "distillm_v2", "TGO", targets=o.adaptive_alpha)
    s = _need(sgo, "distillm_v2", "SGO", targets=o.adaptive_alpha)
    beta = beta_schedule(pr.step, pr.total_steps) if o.gradual_beta else o.beta
    alpha1: Alpha = o.alpha1
    alpha2: Alpha = o.alpha2
    if o.adaptive_alpha:
        if pr.alpha_state is None:
            raise ConfigError("distillm_v2 with adaptive_alpha needs Progress.alpha_state (an AdaptiveAlphaState)")
        with torch.no_grad():
            gap_tgo = (_mean_prob(teacher_token_logps(t.teacher, t.targets, t.mask), t.mask)
                       - _mean_prob(token_logps(t.student_logits, t.targets, t.mask), t.mask))
            gap_sgo = (_mean_prob(token_logps(s.student_logits, s.targets, s.mask), s.mask)
                       - _mean_prob(teacher_token_logps(s.teacher, s.targets, s.mask), s.mask))
        alpha1, alpha2 = pr.alpha_state.alphas(gap_tgo, gap_sgo, o.alpha1, o.alpha2)
    return distillm2_loss(t.student_logits, t.teacher, t.mask, s.student_logits, s.teacher, s.mask,
                          alpha1=alpha1, alpha2=alpha2, beta=beta)


_REGISTRY: dict[str, LossEntry] = {e.name: e for e in (
    LossEntry("kd", _kd, NoOptions, True, False, True, False, "forward KL(p‖q) on TGO"),
    LossEntry("seqkd", _seqkd, NoOptions, True, False, False, True, "NLL of the TGO tokens"),
    LossEntry("rkl", _rkl, NoOptions, False, True, True, False, "reverse KL(q‖p) on SGO"),
    LossEntry("gkd", _gkd, GKDOptions, True, True, True, False, "generalized JSD(β) on TGO + on SGO"),
    LossEntry("distillm_v1", _distillm_v1, DistillmV1Options, True, True, True, False, "SRKL_α on TGO + on SGO"),
    LossEntry("distillm_v2", _distillm_v2, DistillmV2Options, True, True, True, False,
              "(2−β)·SKL_α1 on TGO + β·SRKL_α2 on SGO"),
)}


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> LossEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown distillation loss {name!r}; valid: {', '.join(names())}") from None


def make_options(name: str, **overrides: Any) -> Any:
    """The options dataclass of ``name``; an unknown knob names the valid ones."""
    entry = get(name)
    valid = {f.name for f in dataclasses.fields(entry.options)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(f"loss {name!r} has no option {', '.join(unknown)}; "
                          f"valid: {', '.join(sorted(valid)) or '(none)'}")
    return entry.options(**overrides)


def distill_loss(name: str, tgo: Side | None, sgo: Side | None, options: Any = None,
                 progress: Progress | None = None) -> torch.Tensor:
    """The scalar training loss ``name`` (batch mean) on the halves it needs; ``options`` default to the
    method's defaults. The halves a method does not use may be None."""
    entry = get(name)
    opts = entry.options() if options is None else options
    if not isinstance(opts, entry.options):
        raise ConfigError(f"loss {name!r} takes {entry.options.__name__}, got {type(opts).__name__}")
    return entry.fn(tgo, sgo, opts, progress or Progress())
