"""The Pareto merit function of semivectorial bilevel learning and its smoothing (pure torch, no Ray).

    u_ℓ(x)   = max_y  min_i [f_i(x) − f_i(y)] − (ℓ/2)‖x − y‖²                 (Tanabe, Fukuda, Yamashita)
    v_ℓ,τ(x) = max_y  smin_τ(f(x) − f(y)) − (ℓ/2)‖x − y‖² + τ log M,
    smin_τ(a) = −τ log Σ_i exp(−a_i / τ)

u_ℓ ≥ 0 (take y = x), and for convex f_i it is 0 exactly on the weakly Pareto-optimal set. Since
min_i a_i − τ log M ≤ smin_τ(a) ≤ min_i a_i, the shift by τ log M makes the smoothed merit an upper
bound: u_ℓ ≤ v_ℓ,τ ≤ u_ℓ + τ log M, so v_ℓ,τ ≥ 0 as well and tends to u_ℓ as τ → 0.

Everything here works on values F (M,) and Jacobians J (M, P) over a flat parameter vector, the
form the shard learners return, so the solver and these definitions cannot drift apart:

- the inner max over y is concave for convex f_i. The softmin's curvature grows like 1/τ, so plain
  gradient ascent on y needs steps of order τ. Instead each y-step maximises a minorant: every f_i
  majorised at y by its linearisation plus (L/2)‖y' − y‖², which turns the step into a dual over the
  simplex, min_w wᵀc + τ Σ w log w + ‖ℓe − Jᵀw‖²/(2(L + ℓ)) (c = F(x) − F(y), e = x − y), solved
  here in numpy; the new point is y' = y + (ℓe − Jᵀw)/(L + ℓ). L backtracks until the majorisation
  holds at y', so G rises monotonically, for any τ ≥ 0 (τ = 0: the hard merit u_ℓ itself);
- Danskin: at the maximiser y*, ∇v(x) = J(x)ᵀw − ℓ(x − y*) (the y-dependence drops out), w the
  softmin's weights there, softmax(−(F(x) − F(y*))/τ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..multiobjective.direction import project_simplex

ValuesAndJacobian = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # x (P,) -> F (M,), J (M, P)


def softmin(a: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """smin_τ(a) and its gradient w (softmax(−a/τ), on the simplex); τ = 0: the hard min, w one-hot."""
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    if tau == 0:
        i = int(torch.argmin(a))
        return a[i], torch.nn.functional.one_hot(torch.tensor(i), a.numel()).to(a.dtype)
    z = -a / tau
    return -tau * torch.logsumexp(z, 0), torch.softmax(z, 0)


def merit_gap(Fx: torch.Tensor, Fy: torch.Tensor, x: torch.Tensor, y: torch.Tensor, ell: float,
              tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The inner objective smin_τ(F(x) − F(y)) − (ℓ/2)‖x − y‖² + τ log M at one y, and the weights w.

    Its max over y is v_ℓ,τ(x); any y gives a lower bound, y = x gives 0 (τ log M − τ log M)."""
    value, w = softmin(Fx - Fy, tau)
    return value - 0.5 * ell * torch.dot(x - y, x - y) + tau * math.log(Fx.numel()), w


def merit_gradient(Jx: torch.Tensor, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                   ell: float) -> torch.Tensor:
    """Danskin's ∇v_ℓ,τ(x) = J(x)ᵀw − ℓ(x − y), exact when y is the inner maximiser."""
    return Jx.T @ w - ell * (x - y)


def step_weights(c: np.ndarray, G: np.ndarray, Je: np.ndarray, curvature: float, tau: float,
                 iters: int = 5000, tol: float = 1e-14) -> np.ndarray:
    """The weights of one y-step: argmin over the simplex of wᵀq + ½wᵀHw + τ Σ w log w.

    q = c − ℓJe/(L + ℓ), H = G/(L + ℓ) with G = JJᵀ (here ``Je`` is ℓ·J(x − y) already). τ = 0:
    projected gradient with step 1/λ_max(H); τ > 0: entropic mirror descent with its exact prox
    (w ← (w·exp(−η∇))^{1/(1+ητ)}, normalised), step 1/max|H_ij|, the KL geometry's constant."""
    q = c - Je / curvature
    H = G / curvature
    m = c.size
    if m == 2:
        return _two_weights(q, H, tau)
    w = np.full(m, 1.0 / m)
    if tau == 0.0:
        eta = 1.0 / max(float(np.linalg.eigvalsh(H).max()), 1e-300)
        for _ in range(iters):
            new = project_simplex(w - eta * (q + H @ w))
            if np.abs(new - w).sum() < tol:
                return new
            w = new
        return w
    eta = 1.0 / max(float(np.abs(H).max()), tau, 1e-300)
    logw = np.log(w)
    for _ in range(iters):
        z = (logw - eta * (q + H @ w)) / (1.0 + eta * tau)
        z -= z.max()
        new_log = z - np.log(np.exp(z).sum())
        new = np.exp(new_log)
        if np.abs(new - w).sum() < tol:
            return new
        w, logw = new, new_log
    return w


def _two_weights(q: np.ndarray, H: np.ndarray, tau: float) -> np.ndarray:
    """M = 2 exactly: w = (t, 1 − t), the objective's derivative a·t + b (+ τ·logit t) is increasing in t."""
    a = H[0, 0] - 2.0 * H[0, 1] + H[1, 1]
    b = H[0, 1] - H[1, 1] + q[0] - q[1]
    if tau == 0.0:
        if a <= 0.0:  # linear in t (parallel gradients): an end point
            t = 0.0 if b > 0 else 1.0
        else:
            t = min(1.0, max(0.0, -b / a))
        return np.array([t, 1.0 - t])
    lo, hi = -800.0, 800.0  # bisection on the logit z, t = sigmoid(z): derivative a·t + b + τ·z
    for _ in range(200):
        z = 0.5 * (lo + hi)
        t = 0.5 * (1.0 + np.tanh(0.5 * z))
        if a * t + b + tau * z > 0.0:
            hi = z
        else:
            lo = z
        if hi - lo < 1e-13:
            break
    t = 0.5 * (1.0 + np.tanh(0.25 * (lo + hi)))
    return np.array([t, 1.0 - t])


@dataclass(frozen=True)
class AscentStep:
    y: torch.Tensor
    Fy: torch.Tensor
    Jy: torch.Tensor
    curvature: float  # L to try next time
    weights: torch.Tensor  # the step's simplex weights
    evaluations: int
    moved: float  # ‖y_new − y‖ (0 when no step was taken)


def ascent_step(fn: ValuesAndJacobian, Fx: torch.Tensor, x: torch.Tensor, y: torch.Tensor, Fy: torch.Tensor,
                Jy: torch.Tensor, ell: float, tau: float, curvature: float = 1.0, max_doublings: int = 60,
                relax: float = 1.2) -> AscentStep:
    """One y-step on the inner objective: maximise its minorant at y, doubling L until it is one.

    Each trial costs one evaluation of F, J at the trial point (on the learners, in the solver); an
    accepted trial's F(y'), J(y') serve the next step, and L shrinks by ``relax`` after a success,
    so a step usually costs one evaluation."""
    c = (Fx - Fy).numpy()
    J = Jy.numpy()
    G = J @ J.T
    e = (x - y).numpy()
    Je = ell * (J @ e)
    slack = 1e-12 * (1.0 + float(np.abs(Fy.numpy()).max()))  # rounding of F itself
    L = curvature
    for n in range(1, max_doublings + 1):
        w = step_weights(c, G, Je, L + ell, tau)
        s = (ell * e - J.T @ w) / (L + ell)
        trial = y + torch.from_numpy(s)
        Ft, Jt = fn(trial)
        bound = Fy.numpy() + J @ s + 0.5 * L * float(s @ s)
        if np.all(Ft.numpy() <= bound + slack):
            return AscentStep(trial, Ft, Jt, L / relax, torch.from_numpy(w), n, float(np.linalg.norm(s)))
        L *= 2.0
    return AscentStep(y, Fy, Jy, L, torch.from_numpy(w), max_doublings, 0.0)


@dataclass(frozen=True)
class Merit:
    value: float  # v_ℓ,τ(x) up to the inner solver's tolerance (from below)
    y: torch.Tensor  # the inner maximiser
    weights: torch.Tensor  # w of the last y-step
    gradient: torch.Tensor  # Danskin's ∇v_ℓ,τ(x)
    iters: int


def smoothed_merit(fn: ValuesAndJacobian, x: torch.Tensor, ell: float = 1.0, tau: float = 0.01,
                   curvature: float = 1.0, iters: int = 10_000, tol: float = 1e-12) -> Merit:
    """v_ℓ,τ(x) (τ = 0: u_ℓ(x)) by minorant ascent on y from y = x, until a step moves y less than ``tol``.

    The single-process reference; the solver takes the same steps, one or a few per x-step,
    warm-started at the previous y."""
    if not (ell > 0 and tau >= 0):
        raise ValueError(f"ell must be > 0 and tau >= 0, got ell={ell}, tau={tau}")
    Fx, Jx = fn(x)
    y, Fy, Jy = x.clone(), Fx, Jx
    n, w = 0, None
    for n in range(1, iters + 1):
        step = ascent_step(fn, Fx, x, y, Fy, Jy, ell, tau, curvature)
        y, Fy, Jy, curvature, w = step.y, step.Fy, step.Jy, step.curvature, step.weights
        if step.moved < tol:
            break
    # The step's dual weights, not the softmin's at (x, y): with τ = 0 the min ties at the maximiser
    # and only the dual says how the tie splits; with τ > 0 the two agree at convergence.
    value, _ = merit_gap(Fx, Fy, x, y, ell, tau)
    return Merit(float(value), y, w, merit_gradient(Jx, w, x, y, ell), n)
