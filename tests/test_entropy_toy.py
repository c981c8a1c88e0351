"""Scenario 1 (entropy-regularised fine-tuning weight λ) against finite differences and λ*."""

import math

import pytest
import torch

from dist_core.diffusion import entropy_toy


@pytest.fixture(scope="module")
def toy():
    return entropy_toy.make(d=4, seed=0)


def test_penalised_lower_is_the_tilted_density(toy):
    """p_{λ,γ} ∝ p_data e^{(r1/γ + r2)/λ}: its log-density, minus that expression, is constant in u."""
    lam, gamma = 0.7, 3.0
    mean, var = toy.penalised_lower(lam, gamma)
    us = torch.randn(5, toy.d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    log_p = -((us - mean) ** 2).sum(1) / (2 * var)
    tilted = -(us**2).sum(1) / 2 + (us @ toy.a - ((us - toy.c) ** 2).sum(1) / gamma) / lam
    diff = log_p - tilted
    assert torch.allclose(diff, diff[0].expand_as(diff), atol=1e-12)


@pytest.mark.parametrize("lam,gamma", [(0.5, 1.0), (1.3, 10.0), (2.0, 100.0), (0.8, 1e3)])
def test_envelope_gradient_matches_finite_differences(toy, lam, gamma):
    eps = 1e-5 * lam
    fd = (toy.penalty_value(lam + eps, gamma) - toy.penalty_value(lam - eps, gamma)) / (2 * eps)
    assert abs(toy.penalty_gradient(lam, gamma) - fd) / abs(fd) < 1e-4


def test_penalty_value_tends_to_the_upper_objective(toy):
    lam = 1.1
    gaps = [abs(toy.penalty_value(lam, g) - toy.upper(lam)) for g in (10.0, 100.0, 1000.0)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-2 * toy.upper(lam)


def test_reference_code_est1_is_not_the_gradient(toy):
    """est1 = −E[r1]/λ − γ log E e^{r2/λ} + γ log E e^{(r1/γ+r2)/λ}, all under p_data (exact here)."""
    lam, gamma = 1.3, 10.0
    alpha = 2.0 / (gamma * lam)
    b = toy.a / lam + alpha * toy.c
    log_e_pen = -0.5 * toy.d * math.log1p(alpha) + float(b @ b) / (2 * (1 + alpha)) - 0.5 * alpha * float(toy.c @ toy.c)
    mean_r1 = -(toy.d + float(toy.c @ toy.c))
    est1 = -mean_r1 / lam - gamma * float(toy.a @ toy.a) / (2 * lam**2) + gamma * log_e_pen
    truth = toy.penalty_gradient(lam, gamma)
    assert abs(est1 - truth) > 0.1 * abs(truth)


def test_projected_gradient_descent_finds_lambda_star(toy):
    path = entropy_toy.optimise(toy, lam0=3.0, gamma=1e4, lr=0.02, steps=3000)
    assert abs(path[-1] - toy.lam_star) / toy.lam_star < 1e-2
    assert toy.upper(path[-1]) < toy.upper(path[0])
