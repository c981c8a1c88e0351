"""The least-squares toy of the Analog SGD paper (RESEARCH.md §4a, §7.4): f(W) = ‖XW − y‖²/(2N).

Every method sees the gradient plus additive Gaussian noise σ·ξ (the same draws for every method:
common random numbers, so differences between methods are not sampling noise). All step sizes α
run at once as the rows of one tile (rows never interact: every update here is elementwise or
per row), so one sweep costs one simulation.

* digital:       W ← W − α·g
* analog_sgd:    W ← W ⊕ (−α·g) on soft-bounds devices ±τ (expected pulses, §4a); its error has a
                 floor set by σ and τ (the implicit penalty) that does not vanish as α → 0
* tiki_taka_v1:  A ← A ⊕ (−α·g(C)),  C ← C ⊕ (α_t·A)        (fast array A on ±τ_A, every column
                 read every step as in the paper's toy; α_t = s·α with a transfer scale s)
* tiki_taka_v2:  as v1, with A read into a digital buffer H and whole pulses sent to C (TikiTakaV2)

Why the transfer scale matters: A is itself Analog SGD on ±τ_A, so it settles where
E[g] + E|g|·A/τ_A = 0, i.e. A ≈ −τ_A·E[g]/(cσ) (c = √(2/π)): the fast array amplifies the mean
gradient by τ_A/(cσ). With s = 1 (the paper's HamiltonianDescent, W ⊕ −lr·P) C's effective step is
α·τ_A/(cσ), and so is its noise; s = cσ/τ_A gives C digital SGD's effective step α.

The reported error is ‖W − x*‖² averaged over the second half of the run (stationary regime).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..threads import torch_threads
from . import devices
from .optim import TikiTaka, TikiTakaV2, expected_increment

METHODS = ("digital", "analog_sgd", "tiki_taka_v1", "tiki_taka_v2")


@dataclass(frozen=True)
class Problem:
    hessian: torch.Tensor  # XᵀX/N (d × d)
    xty: torch.Tensor  # Xᵀy/N (d)
    x_star: torch.Tensor  # d, the minimiser (f(x*) = 0)

    def grad(self, w: torch.Tensor) -> torch.Tensor:
        """∇f = (XᵀX/N)W − Xᵀy/N for each row of w (rows × d): one small matmul per step."""
        return w @ self.hessian - self.xty


def make_problem(d: int, n: int, seed: int) -> Problem:
    """The paper's instance: X ~ N(0, 1), x* ~ 0.45·N(0, I) (RESEARCH.md §4a), noiseless targets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x_star = 0.45 * torch.randn(d, generator=g, dtype=torch.float64)
    y = x @ x_star
    return Problem(x.T @ x / n, x.T @ y / n, x_star)


@dataclass(frozen=True)
class ToySettings:
    steps: int = 40_000
    sigma: float = 0.1  # std of the additive gradient noise
    tau: float = 3.0  # soft bounds ±τ of the weights (Analog SGD, and Tiki-Taka's C)
    dw_min: float = 1e-4  # pulse granularity of every device
    tau_fast: float = 1.0  # soft bounds ±τ_A of Tiki-Taka's fast array A (symmetric point 0)
    gamma: float = 0.0  # W̄ = γ·A + C
    curve_points: int = 100  # block averages of the error kept for the curves


def _device(tau: float, dw_min: float, seed: int) -> devices.Device:
    # No device-to-device spread or cycle noise: the toy isolates the asymmetry of soft bounds.
    return devices.make("soft_bounds", seed=seed, dw_min=dw_min, w_max=tau, w_min=-tau, dw_min_dtod=0.0,
                        dw_min_std=0.0, w_max_dtod=0.0, w_min_dtod=0.0, up_down_dtod=0.0)


def simulate(problem: Problem, method: str, alphas: list[float], s: ToySettings, seed: int = 0,
             transfer_lrs: list[float] | None = None) -> tuple[list[float], list[list[float]]]:
    """Run ``method`` for every α at once (one row each; Tiki-Taka's row r transfers with
    ``transfer_lrs[r]``, default α). Returns (final error per row, error curve: one list per row of
    ``curve_points`` block averages of ‖W − x*‖²)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    with torch_threads(1):
        return _simulate(problem, method, alphas, s, seed, transfer_lrs)


def _simulate(problem: Problem, method: str, alphas: list[float], s: ToySettings, seed: int,
              transfer_lrs: list[float] | None) -> tuple[list[float], list[list[float]]]:
    rows, d = len(alphas), len(problem.x_star)
    lr = torch.tensor(alphas, dtype=torch.float64)[:, None]
    transfer = lr if transfer_lrs is None else torch.tensor(transfer_lrs, dtype=torch.float64)[:, None]
    gen = torch.Generator().manual_seed(seed)
    w = torch.zeros(rows, d, dtype=torch.float64)  # digital / analog weights, or Tiki-Taka's C
    a = torch.zeros_like(w)
    slow = _device(s.tau, s.dw_min, seed)
    tt: TikiTaka | TikiTakaV2 | None = None
    if method.startswith("tiki_taka"):
        cls = TikiTaka if method == "tiki_taka_v1" else TikiTakaV2
        tt = cls(_device(s.tau_fast, s.dw_min, seed), slow, fast_lr=lr, transfer_lr=transfer,
                 gamma=s.gamma, n_reads=d)  # every column read each step, as the paper's toy does
    block = max(1, s.steps // s.curve_points)
    tail = torch.zeros(rows, dtype=torch.float64)
    acc = torch.zeros(rows, dtype=torch.float64)
    curve: list[torch.Tensor] = []
    for k in range(s.steps):
        weights = w if tt is None else tt.effective(a, w)
        g = problem.grad(weights) + s.sigma * torch.randn(rows, d, generator=gen, dtype=torch.float64)
        if method == "digital":
            w = w - lr * g
        elif method == "analog_sgd":
            w = expected_increment(slow, w, -lr * g)
        else:
            a, w = tt.step(a, w, g)
        err = ((weights - problem.x_star) ** 2).sum(1)
        acc += err
        if k >= s.steps // 2:
            tail += err
        if (k + 1) % block == 0:
            curve.append(acc / block)
            acc = torch.zeros_like(acc)
    final = tail / (s.steps - s.steps // 2)
    curves = torch.stack(curve, 1) if curve else torch.zeros(rows, 0, dtype=torch.float64)
    return final.tolist(), curves.tolist()
