"""The job's distillation loss on one micro-batch, in the worker's layout.

A micro-batch is 2b rows: b prompts with the teacher's response (TGO) then the same b prompts with
the student's (SGO), labels ``-100`` on prompt and padding (``posttrain.data.preference_batch``). This
module shifts logits and labels so position t predicts token t+1, splits the halves and calls
``posttrain.distill_losses.distill_loss`` by name. The loss is a batch mean of per-sequence token
means, so DeepSpeed's mean over accumulation steps and ranks is the mean over the global batch.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..posttrain import distill_losses as L
from .config import LossSection

MicroLoss = Callable[[torch.Tensor, Any, torch.Tensor, int], tuple[torch.Tensor, dict[str, float]]]


def halves(student_logits: torch.Tensor, teacher: Any, labels: torch.Tensor) -> tuple[L.Side, L.Side]:
    """(TGO, SGO) sides, shifted: ``teacher`` is (2b, T, V) logits or log-probs, or a callable
    ``teacher(rows: slice) -> Teacher`` already aligned with the shifted positions (a top-k lookup)."""
    targets = labels[:, 1:]
    mask = targets != -100
    safe = targets.masked_fill(~mask, 0)
    s = student_logits[:, :-1]
    b = labels.shape[0] // 2
    sides = []
    for rows in (slice(0, b), slice(b, 2 * b)):
        t = teacher(rows) if callable(teacher) else (teacher[rows, :-1] if teacher is not None else None)
        sides.append(L.Side(student_logits=s[rows], mask=mask[rows], teacher=t, targets=safe[rows]))
    return sides[0], sides[1]


def make(section: LossSection, total_steps: int) -> MicroLoss:
    """``loss(student_logits, teacher, labels, step) -> (scalar, stats)`` for the job's ``loss:`` section."""
    entry = L.get(section.name)
    options = L.make_options(section.name, **section.options())
    alpha_state = L.AdaptiveAlphaState() if section.adaptive_alpha else None

    def loss(student_logits: torch.Tensor, teacher: Any, labels: torch.Tensor, step: int):
        tgo, sgo = halves(student_logits, teacher, labels)
        progress = L.Progress(step=step, total_steps=total_steps, alpha_state=alpha_state)
        value = L.distill_loss(entry.name, tgo if entry.needs_tgo else None, sgo if entry.needs_sgo else None,
                               options, progress)
        stats = {"loss": float(value.detach())}
        if section.name == "distillm_v2":
            stats["beta"] = L.beta_schedule(step, total_steps) if section.curriculum else section.beta
        return value, stats

    return loss
