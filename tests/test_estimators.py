"""Hypergradients against independent references: closed forms and central finite differences."""

import dataclasses

import pytest
import torch

from dist_core.bilevel import config as bilevel_config
from dist_core.bilevel import BilevelProblem, estimators, hypergradient
from dist_core.bilevel.tasks import quadratic

D = 20


@pytest.fixture(scope="module")
def quad():
    q, x = quadratic.make(D)
    y_star = q.y_star(x)
    return dict(A=q.A, B=q.B, b=q.b, x=x, rho=q.rho, problem=q.problem, y_star=y_star,
                exact=q.hypergradient(x), lmax=q.lambda_max)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_cg_matches_closed_form(quad):
    g = hypergradient(quad["problem"], quad["y_star"], quad["x"], None, None, method="implicit_cg", iters=3 * D, tol=0.0)
    assert rel(g, quad["exact"]) < 1e-5


def test_neumann_matches_closed_form(quad):
    g = hypergradient(quad["problem"], quad["y_star"], quad["x"], None, None,
                      method="implicit_neumann", iters=3000, alpha=1.0 / quad["lmax"])
    assert rel(g, quad["exact"]) < 1e-5


def test_neumann_with_few_terms_is_visibly_biased(quad):
    g = hypergradient(quad["problem"], quad["y_star"], quad["x"], None, None,
                      method="implicit_neumann", iters=2, alpha=1.0 / quad["lmax"])
    assert rel(g, quad["exact"]) > 1e-2


@pytest.mark.parametrize("truncate", [None, 3])
def test_unrolled_is_exact_derivative_of_unrolled_map(quad, truncate):
    """y_{t+1} = (I − ηA) y_t + ηBx; d y_T/dx over the last K steps is Σ_{j<K} (I − ηA)^j ηB."""
    A, B, b, x, rho = quad["A"], quad["B"], quad["b"], quad["x"], quad["rho"]
    eta, T = 0.05, 7
    y0 = torch.randn(D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = hypergradient(quad["problem"], y0, x, None, None, method="unrolled", steps=T, lr=eta, truncate=truncate)
    M = torch.eye(D, dtype=torch.float64) - eta * A
    y = y0.clone()
    for _ in range(T):
        y = M @ y + eta * B @ x
    K = T if truncate is None else truncate
    J = sum(torch.linalg.matrix_power(M, j) for j in range(K)) @ (eta * B)
    assert rel(g, rho * x + J.T @ (y - b)) < 1e-10


def test_unrolled_error_decays_with_steps(quad):
    errs = []
    for T in (5, 20, 80):
        g = hypergradient(quad["problem"], quad["y_star"] * 0, quad["x"], None, None,
                          method="unrolled", steps=T, lr=1.0 / quad["lmax"])
        errs.append(rel(g, quad["exact"]))
    assert errs[0] > errs[1] > errs[2]


def test_penalty_bias_is_order_one_over_gamma(quad):
    lr = 0.5 / quad["lmax"]
    errs = {}
    for gamma in (10.0, 100.0):
        g = hypergradient(quad["problem"], quad["y_star"], quad["x"], None, None,
                          method="penalty", gamma=gamma, steps=20000, lr=lr)
        errs[gamma] = rel(g, quad["exact"])
    assert errs[100.0] < 0.02
    # O(1/γ): ten times the penalty, about a tenth of the error.
    assert 5.0 < errs[10.0] / errs[100.0] < 20.0


def test_dict_params_and_tensor_params_agree(quad):
    p = quad["problem"]
    dict_problem = BilevelProblem(lower=lambda y, x, _: p.lower(y["y"], x["x"], None),
                                  upper=lambda y, x, _: p.upper(y["y"], x["x"], None))
    g1 = hypergradient(p, quad["y_star"], quad["x"], None, None, method="implicit_cg", iters=40)
    g2 = hypergradient(dict_problem, {"y": quad["y_star"]}, {"x": quad["x"]}, None, None, method="implicit_cg", iters=40)
    assert torch.equal(g1, g2["x"])


# ------------------------------------------------------------ nonlinear network vs finite differences
def _mlp_problem():
    """Lower: a tanh MLP trained with weight decay e^λ; upper: its loss on held-out points."""
    gen = torch.Generator().manual_seed(3)
    xs, xv = torch.randn(40, 3, generator=gen, dtype=torch.float64), torch.randn(30, 3, generator=gen, dtype=torch.float64)
    ys, yv = torch.sin(xs.sum(1)), torch.sin(xv.sum(1))

    def net(th, x):
        return torch.tanh(x @ th["w1"] + th["b1"]) @ th["w2"]

    def lower(th, lam, batch):
        reg = sum((v * v).sum() for v in th.values())
        return ((net(th, xs) - ys) ** 2).mean() + 0.5 * torch.exp(lam["log_wd"]).sum() * reg

    def upper(th, lam, batch):
        return ((net(th, xv) - yv) ** 2).mean()

    theta0 = {"w1": 0.5 * torch.randn(3, 6, generator=gen, dtype=torch.float64),
              "b1": torch.zeros(6, dtype=torch.float64),
              "w2": 0.5 * torch.randn(6, generator=gen, dtype=torch.float64)}
    return BilevelProblem(lower=lower, upper=upper), theta0


def _solve_lower(problem, theta, lam):
    th = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    opt = torch.optim.LBFGS(list(th.values()), lr=1.0, max_iter=500, tolerance_grad=1e-13,
                            tolerance_change=1e-15, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = problem.lower(th, lam, None)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    return {k: v.detach() for k, v in th.items()}


@pytest.mark.parametrize("method,opts", [("implicit_cg", dict(iters=100, tol=0.0)),
                                         ("implicit_neumann", dict(iters=3000, alpha=0.2))])
def test_implicit_on_mlp_matches_central_differences(method, opts):
    problem, theta0 = _mlp_problem()
    lam = {"log_wd": torch.tensor([-2.0], dtype=torch.float64)}
    theta_star = _solve_lower(problem, theta0, lam)
    g = hypergradient(problem, theta_star, lam, None, None, method=method, **opts)["log_wd"]
    # ε balances the O(ε²) truncation error against the inner solver's ~1e-8 residual.
    eps = 1e-3

    def F(v):
        lam_v = {"log_wd": torch.tensor([v], dtype=torch.float64)}
        return float(problem.upper(_solve_lower(problem, theta_star, lam_v), lam_v, None))

    fd = (F(-2.0 + eps) - F(-2.0 - eps)) / (2 * eps)
    assert abs(float(g) - fd) / abs(fd) < 1e-4


def test_unrolled_on_mlp_matches_central_differences_of_the_unrolled_map():
    problem, theta0 = _mlp_problem()
    steps, lr = 15, 0.1

    def F(v):
        lam_v = {"log_wd": torch.tensor([v], dtype=torch.float64)}
        th = {k: x.clone().requires_grad_(True) for k, x in theta0.items()}
        for _ in range(steps):
            grads = torch.autograd.grad(problem.lower(th, lam_v, None), list(th.values()))
            th = {k: (x - lr * gr).detach().requires_grad_(True) for (k, x), gr in zip(th.items(), grads)}
        return float(problem.upper(th, lam_v, None).detach())

    lam = {"log_wd": torch.tensor([-1.0], dtype=torch.float64)}
    g = hypergradient(problem, theta0, lam, None, None, method="unrolled", steps=steps, lr=lr)["log_wd"]
    eps = 1e-5
    fd = (F(-1.0 + eps) - F(-1.0 - eps)) / (2 * eps)
    assert abs(float(g) - fd) / abs(fd) < 1e-6


# ------------------------------------------------------------ registry
def test_unknown_estimator_lists_valid_names(quad):
    with pytest.raises(estimators.UnknownEstimatorError, match="finite_difference, implicit_cg, implicit_neumann, penalty, sama, unrolled"):
        hypergradient(quad["problem"], quad["y_star"], quad["x"], None, None, method="darts")


def test_unknown_option_lists_valid_options(quad):
    with pytest.raises(TypeError, match="valid: damping, iters, tol"):
        hypergradient(quad["problem"], quad["y_star"], quad["x"], None, None, method="implicit_cg", alpha=1.0)


@pytest.mark.parametrize("model", [bilevel_config.ImplicitCG, bilevel_config.ImplicitNeumann, bilevel_config.Unrolled, bilevel_config.Penalty])
def test_job_schema_and_estimator_options_name_the_same_knobs(model):
    name = model.model_fields["name"].annotation.__args__[0]
    knobs = {f.name for f in dataclasses.fields(estimators.get(name).options)}
    assert set(model.model_fields) - {"name"} == knobs
