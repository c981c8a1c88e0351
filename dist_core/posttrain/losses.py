"""The two post-training objectives on tensors: SFT cross-entropy and (c)DPO (RESEARCH.md §1).

Pure torch, no distribution: the trainer, the tests and the benchmark call the same functions.
Labels follow Hugging Face's convention: a token's label is its own id, and ``-100`` marks
positions that do not count (the prompt, padding); logits at position t predict token t+1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log π(y_t | y_<t) on shifted positions, and the mask of counted tokens.

    Shapes: logits (B, T, V), labels (B, T) → both outputs (B, T−1).
    """
    logits = logits[:, :-1, :]
    targets = labels[:, 1:]
    mask = targets != IGNORE
    safe = targets.masked_fill(~mask, 0)
    # log_softmax then gather: the obvious form; logsumexp-based variants save memory, not time, here.
    logps = torch.gather(logits.float().log_softmax(-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    return logps * mask, mask


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log π(y | x) per row: the **sum** over response tokens, prompt masked (the paper's code)."""
    logps, _ = token_logps(logits, labels)
    return logps.sum(-1)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean cross-entropy over all response tokens of the batch (``GPTLMLoss``)."""
    logps, mask = token_logps(logits, labels)
    return -logps.sum() / mask.sum().clamp(min=1)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean DPO loss with cDPO's label smoothing ε, and the implicit rewards of both answers.

    z = [log π(y_w) − log π(y_l)] − [log π_ref(y_w) − log π_ref(y_l)];
    loss = mean[−(1−ε)·log σ(βz) − ε·log σ(−βz)]; r = β(log π − log π_ref), detached.
    """
    z = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * z) - label_smoothing * F.logsigmoid(-beta * z)
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses.mean(), chosen_rewards, rejected_rewards
