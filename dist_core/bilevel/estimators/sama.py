"""SAMA: the finite-difference hypergradient with the lower optimizer's Adam Jacobian (betty ``sama.py``).

SAMA (Choe et al., "Making Scalable Meta Learning Practical", 2023) keeps H⁻¹ ≈ I, like the
finite-difference estimator, but differentiates through one step of the lower level's *actual*
optimizer. For Adam without bias correction, θ⁺ = θ − η·u(γ) with u = m/(√s + δ),
m = β₁m₀ + (1−β₁)γ, s = β₂s₀ + (1−β₂)γ², γ the last gradient; elementwise

    ∂u/∂γ = [(1−β₁)β₂ s₀ − β₁(1−β₂) γ m₀] / (√s + δ)³,    P = η · ∂u/∂γ

(s₀, m₀ recovered from the stored s, m and γ), and then

    ∇F ≈ ∇_λ f − [∇_λ g(θ + εPv, λ) − ∇_λ g(θ − εPv, λ)] / (2ε),   v = ∇_θ f,   ε = r/‖Pv‖

with r = ``alpha`` (betty's ``sama_adam_alpha`` = 1.0). First order: no Hessian-vector products.

Where the Adam state comes from: ``state`` holds the lower optimizer's moments and last gradient
(``exp_avg``, ``exp_avg_sq``, ``last_grad``, keyed like θ) and its hyperparameters
(``adam`` = {lr, beta1, beta2, eps}); ``adam_state`` builds it from a ``torch.optim.Adam``. Without
that state the lower optimizer is taken to be plain SGD, and SAMA does what betty does for SGD:
P = I (betty's ``precondition_sgd``, no factor η), i.e. exactly ``finite_difference`` with
r = ``alpha``. The bilevel engine's lower learners take plain gradient steps, so inside
``solve`` and job files SAMA is that SGD case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from .. import tree
from .base import Estimate, register
from .finite_difference import mixed_product, upper_gradients

ADAM_KEYS = ("exp_avg", "exp_avg_sq", "last_grad", "adam")


@dataclass(frozen=True)
class SamaOptions:
    alpha: float = 1.0  # r: the perturbation θ ± εPv has length r (betty's sama_adam_alpha)


def adam_state(optimizer: torch.optim.Optimizer, params: Mapping[str, torch.Tensor]) -> dict[str, tree.Params]:
    """The SAMA state of the Adam optimizer stepping ``params``; call after ``step()``, before ``zero_grad()``.

    ``p.grad`` is then the gradient of that last step (betty records it as ``last_grad``).
    """
    if "adam" not in type(optimizer).__name__.lower():
        raise TypeError(f"adam_state needs an Adam optimizer, got {type(optimizer).__name__}; "
                        "without one, SAMA uses the identity (the SGD case)")
    out: dict[str, tree.Params] = {"exp_avg": {}, "exp_avg_sq": {}, "last_grad": {}}
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    group = None
    for name, p in params.items():
        st, group = optimizer.state.get(p, {}), groups[id(p)]
        if group.get("amsgrad"):
            raise ValueError("SAMA's Adam preconditioner does not cover amsgrad=True")
        if "exp_avg" not in st or p.grad is None:
            raise ValueError(f"parameter {name!r} has no Adam state yet: take one optimizer step first")
        out["exp_avg"][name] = st["exp_avg"].detach().clone()
        out["exp_avg_sq"][name] = st["exp_avg_sq"].detach().clone()
        out["last_grad"][name] = p.grad.detach().clone()
    beta1, beta2 = group["betas"]
    out["adam"] = {k: torch.tensor(float(v), dtype=torch.float64)
                   for k, v in (("lr", group["lr"]), ("beta1", beta1), ("beta2", beta2), ("eps", group["eps"]))}
    return out


def has_adam_state(state: Mapping[str, tree.Params]) -> bool:
    return all(k in state for k in ADAM_KEYS)


def adam_preconditioner(state: Mapping[str, tree.Params]) -> tree.Params:
    """P = η·∂u/∂γ per element, from the moments after the step and its gradient γ (betty's rule)."""
    hp = {k: float(v) for k, v in state["adam"].items()}
    lr, b1, b2, eps = hp["lr"], hp["beta1"], hp["beta2"], hp["eps"]
    out = {}
    for k, m in state["exp_avg"].items():
        s, gam = state["exp_avg_sq"][k], state["last_grad"][k]
        m_old = (m - (1 - b1) * gam) / b1 if b1 != 0 else torch.zeros_like(m)
        s_old = (s - (1 - b2) * gam * gam) / b2
        scale = ((1 - b1) * b2 * s_old - b1 * (1 - b2) * gam * m_old) / (torch.sqrt(s) + eps) ** 3
        out[k] = lr * scale
    return out


@register("sama", SamaOptions)
def sama(problem, theta, lam, lower_batch, upper_batch, options: SamaOptions, state) -> Estimate:
    df_dtheta, df_dlam = upper_gradients(problem, theta, lam, upper_batch)
    if has_adam_state(state):
        pre = adam_preconditioner(state)
        v = {k: pre[k].to(g.dtype) * g for k, g in df_dtheta.items()}
    else:
        v = df_dtheta  # SGD: betty's precondition_sgd is the identity
    mixed = mixed_product(problem, theta, lam, lower_batch, v, options.alpha)
    # The optimizer's state belongs to the caller: hand it back so a learner keeps it across rounds.
    return Estimate(tree.detached(tree.add(df_dlam, mixed, alpha=-1.0)), state=dict(state))
