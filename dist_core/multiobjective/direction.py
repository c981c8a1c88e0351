"""FERERO's update direction and its peers, as pure math on (F, Gram) tensors.

FERERO (Chen, Saif, Shen, Chen; NeurIPS 2024; code ``lisha-chen/FERERO``,
``toy_experiments/solvers/min_norm_solvers_numpy.py::find_min_norm_element_PGD_H``) finds a point
that is Pareto-optimal under the partial order of A and lies on the preference ray B_h·F = 0. Its
direction subproblem

    min_{d, c}  c + ½‖d‖²   s.t.  A ∇F d ≤ c·1,   B_h ∇F d = −B_h F

has the dual (λ_f ∈ simplex, λ_h free, λ = Aᵀλ_f + B_hᵀλ_h)

    min  ½ λᵀ G λ − λ_hᵀ B_h F,      G = ∇F ∇Fᵀ  (the M × M Gram of the objectives' gradients)

and the direction d = −∇Fᵀλ. The dual is solved by projected gradient steps

    λ_f ← Π_Δ(λ_f − γ A G λ),    λ_h ← λ_h − γ (B_h G λ − κ B_h F)

(κ = ``h_scale``: 1 in the reference's full solve, 0.1 / 0.5 in its single-step variants). Only G
and F enter, so a data-parallel run reduces the per-shard Jacobians to an M × M matrix.

Rules (one registry, ``RULES``): ``ferero`` (dual solved afresh each step, as the reference's full
solver), ``ferero_single`` (one or a few dual steps per batch, the dual warm-started across steps:
the stochastic variant for networks), ``mgda`` (min-norm element of the gradients' convex hull,
Sener & Koltun 2018) and ``linear`` (fixed weights: linear scalarisation).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

DTYPE = torch.float64  # the dual is M × M: do it in double whatever the model's dtype


# ---------------------------------------------------------------------------------------- geometry
# The dual lives in numpy: it is M × M, and a torch call's overhead (~10 µs) would dominate its
# hundreds of tiny steps. Tensors come in and go out at ``weights_for``.
def project_simplex(y: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {z : z ≥ 0, Σz = 1} (sort-based; Held, Wolfe & Crowder 1974)."""
    u = np.sort(y)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.arange(1, y.size + 1)
    rho = int(np.nonzero(u - css / k > 0)[0].max())
    return np.maximum(y - css[rho] / (rho + 1), 0.0)


def unit_ray(preference) -> np.ndarray:
    """The preference as a unit vector (the reference normalises it the same way)."""
    r = np.asarray(preference, dtype=np.float64)
    return r / np.linalg.norm(r)


def ray_constraints(preference) -> np.ndarray:
    """B_h with B_h·F = 0 exactly when F is parallel to the preference r.

    Two objectives: the reference's single row [r2, −r1] (r normalised). M > 2: an orthonormal basis
    of r⊥, M − 1 rows (a row space equal to r⊥ is all the constraint needs).
    """
    r = unit_ray(preference)
    m = r.size
    if m == 2:
        return np.array([[r[1], -r[0]]])
    # Complete r to an orthonormal basis: the last M-1 columns of Q in a QR of [r, I] span r⊥.
    q, _ = np.linalg.qr(np.concatenate([r.reshape(m, 1), np.eye(m)], 1))
    return np.ascontiguousarray(q[:, 1:m].T)


# ---------------------------------------------------------------------------------------- the dual
@dataclass(frozen=True)
class DualConfig:
    """Projected gradient on FERERO's dual.

    ``lr`` None: γ = 1/L with L the largest eigenvalue of C G Cᵀ (C = [A; B_h]), which converges
    for any scale of the objectives; the reference's fixed γ = 0.1 diverges once that eigenvalue
    exceeds 20. ``iters``/``tol``: stop after ``iters`` steps or when ‖Δλ‖₁ < tol (the reference:
    250 and 1e-5). ``steps``: dual steps per batch in ``ferero_single``. ``normalize``: scale λ to
    Σ|λ_i| = 1 before stepping θ (the reference's network training does, so ``lr`` keeps its meaning).
    ``warm_start`` (``ferero``): start each step's dual where the last one ended, instead of the
    reference's fresh start; with the reference's tolerance a fresh start leaves θ stalled at an
    error of the order of the dual's (about 3e-5 on the quadratic of the tests), a warm one does not.
    """

    lr: float | None = None
    iters: int = 250
    tol: float = 1e-5
    h_scale: float = 1.0
    steps: int = 1
    normalize: bool = False
    warm_start: bool = True

    def __post_init__(self) -> None:
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"dual lr must be > 0 (or None for 1/L), got {self.lr}")
        if self.iters < 1 or self.steps < 1:
            raise ValueError(f"dual iters and steps must be >= 1, got {self.iters}, {self.steps}")
        if self.tol < 0 or self.h_scale < 0:
            raise ValueError(f"dual tol and h_scale must be >= 0, got {self.tol}, {self.h_scale}")


@dataclass(frozen=True)
class DualState:
    lam_f: np.ndarray  # (K,) on the simplex: weights of the rows of A
    lam_h: np.ndarray  # (Mh,) free: multipliers of the preference constraints


@dataclass(frozen=True)
class DualWeights:
    """What one direction step found: λ (the objectives' weights in d = −∇Fᵀλ) and its parts."""

    lam: torch.Tensor  # (M,) Aᵀλ_f + B_hᵀλ_h, float64; may have negative entries (the ray's multipliers)
    lam_f: torch.Tensor  # (K,) on the simplex
    lam_h: torch.Tensor  # (Mh,)
    iters: int  # dual steps taken


def initial_dual(k: int, mh: int, lam_h: float) -> DualState:
    return DualState(np.full(k, 1.0 / k), np.full(mh, lam_h))


def combine(state: DualState, A: np.ndarray, Bh: np.ndarray) -> np.ndarray:
    return A.T @ state.lam_f + Bh.T @ state.lam_h


def dual_lipschitz(gram: np.ndarray, A: np.ndarray, Bh: np.ndarray) -> float:
    C = np.concatenate([A, Bh], 0)
    return float(np.linalg.eigvalsh(C @ gram @ C.T).max())


def dual_step(state: DualState, gram: np.ndarray, F: np.ndarray, A: np.ndarray, Bh: np.ndarray,
              lr: float, h_scale: float) -> DualState:
    g = gram @ combine(state, A, Bh)  # ∇F ∇Fᵀ λ
    lam_f = project_simplex(state.lam_f - lr * (A @ g))
    lam_h = state.lam_h - lr * (Bh @ g - h_scale * (Bh @ F))
    return DualState(lam_f, lam_h)


def _step_size(cfg: DualConfig, gram: np.ndarray, A: np.ndarray, Bh: np.ndarray) -> float:
    if cfg.lr is not None:
        return cfg.lr
    L = dual_lipschitz(gram, A, Bh)
    return 1.0 / L if L > 1e-300 else 1.0  # all gradients zero: any step leaves λ where it is


def solve_dual(gram: np.ndarray, F: np.ndarray, A: np.ndarray, Bh: np.ndarray, cfg: DualConfig,
               state: DualState, max_steps: int | None = None) -> tuple[DualState, int]:
    """Up to ``max_steps`` (default ``cfg.iters``) projected steps, stopping at ‖Δλ‖₁ < tol."""
    lr = _step_size(cfg, gram, A, Bh)
    lam = combine(state, A, Bh)
    n = cfg.iters if max_steps is None else max_steps
    for i in range(1, n + 1):
        new = dual_step(state, gram, F, A, Bh, lr, cfg.h_scale)
        new_lam = combine(new, A, Bh)
        change = float(np.abs(new_lam - lam).sum())
        state, lam = new, new_lam
        if change < cfg.tol:
            return state, i
    return state, n


# ---------------------------------------------------------------------------------------- MGDA
def min_norm_weights(gram: np.ndarray, iters: int = 2000, tol: float = 1e-12) -> np.ndarray:
    """argmin_{w ∈ Δ} wᵀ G w: the min-norm element of the convex hull of the gradients (MGDA).

    Two objectives in closed form (Sener & Koltun's ``_min_norm_element_from2``); more by projected
    gradient with step 1/λ_max(G).
    """
    gram = np.asarray(gram, dtype=np.float64)
    m = gram.shape[0]
    if m == 1:
        return np.ones(1)
    if m == 2:
        g11, g12, g22 = gram[0, 0], gram[0, 1], gram[1, 1]
        denom = g11 + g22 - 2 * g12
        c = 0.5 if denom <= 0 else float(np.clip((g22 - g12) / denom, 0.0, 1.0))
        return np.array([c, 1.0 - c])
    L = float(np.linalg.eigvalsh(gram).max())
    w = np.full(m, 1.0 / m)
    if L <= 0:
        return w
    for _ in range(iters):
        new = project_simplex(w - (gram @ w) / L)
        if float(np.abs(new - w).sum()) < tol:
            return new
        w = new
    return w


# ---------------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Geometry:
    """What a rule needs of the problem besides (F, G): A, B_h and the preference (float64)."""

    A: np.ndarray  # (K, M)
    Bh: np.ndarray  # (Mh, M); (0, M) without a preference
    preference: np.ndarray | None  # (M,), raw (for ``linear``)


Weights = tuple[np.ndarray, np.ndarray, np.ndarray, int]  # λ, λ_f, λ_h, dual steps
StepFn = Callable[[np.ndarray, np.ndarray, Geometry, DualConfig, "DualState | None"],
                  tuple[Weights, "DualState | None"]]


def _ferero(gram, F, geo: Geometry, cfg: DualConfig, state):
    # The reference re-initialises the dual every step (λ_f uniform, λ_h = 1/Mh); warm-started, the
    # steps accumulate over θ steps, and the dual's error no longer stalls θ short of the solution.
    if state is None or not cfg.warm_start:
        mh = geo.Bh.shape[0]
        state = initial_dual(geo.A.shape[0], mh, 1.0 / mh if mh else 0.0)
    state, n = solve_dual(gram, F, geo.A, geo.Bh, cfg, state)
    return (combine(state, geo.A, geo.Bh), state.lam_f, state.lam_h, n), state


def _ferero_single(gram, F, geo: Geometry, cfg: DualConfig, state):
    # The stochastic variant: λ starts at (uniform, 0) once and takes ``steps`` dual steps per batch.
    if state is None:
        state = initial_dual(geo.A.shape[0], geo.Bh.shape[0], 0.0)
    single = replace(cfg, tol=0.0)  # always exactly ``steps``: the variant's step count is its budget
    state, n = solve_dual(gram, F, geo.A, geo.Bh, single, state, max_steps=cfg.steps)
    return (combine(state, geo.A, geo.Bh), state.lam_f, state.lam_h, n), state


def _mgda(gram, F, geo: Geometry, cfg: DualConfig, _state):
    w = min_norm_weights(gram)
    return (w, w, np.zeros(0), 0), None


def _linear(gram, F, geo: Geometry, cfg: DualConfig, _state):
    m = F.size
    w = np.full(m, 1.0 / m) if geo.preference is None else geo.preference / geo.preference.sum()
    return (w, w, np.zeros(0), 0), None


RULES: dict[str, StepFn] = {"ferero": _ferero, "ferero_single": _ferero_single, "mgda": _mgda, "linear": _linear}


def rule(name: str) -> StepFn:
    if name not in RULES:
        raise ValueError(f"unknown multi-objective method {name!r} (valid: {', '.join(RULES)})")
    return RULES[name]


def weights_for(method: str, gram: torch.Tensor, F: torch.Tensor, geo: Geometry, cfg: DualConfig,
                state: DualState | None = None) -> tuple[DualWeights, DualState | None]:
    """λ for one step of ``method`` from the objectives' values F and Gram G = J Jᵀ.

    ``cfg.normalize`` rescales λ to Σ|λ_i| = 1 (the dual state itself is left as it is)."""
    g = gram.detach().to(DTYPE).numpy() if isinstance(gram, torch.Tensor) else np.asarray(gram, np.float64)
    f = F.detach().to(DTYPE).numpy() if isinstance(F, torch.Tensor) else np.asarray(F, np.float64)
    (lam, lam_f, lam_h, n), state = rule(method)(g, f, geo, cfg, state)
    if cfg.normalize:
        total = float(np.abs(lam).sum())
        if total > 0:
            lam = lam / total
    t = torch.from_numpy
    return DualWeights(t(np.array(lam)), t(np.array(lam_f)), t(np.array(lam_h)), n), state
