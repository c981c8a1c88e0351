"""finite_difference and sama against independent references; every estimator on betty's bar; memory.

References: the closed form of what each first-order estimator computes on a quadratic (and on a
problem whose mixed derivative is not constant, for the O(ε²) of the central difference), the
Jacobian of ``torch.optim.Adam``'s own step by central differences (for SAMA's preconditioner),
betty's regression problem with betty's threshold, and the CPU allocator's events for memory.
"""

import dataclasses
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from dist_core import spec
from dist_core.bilevel import BilevelProblem, config as bilevel_config, estimators, hypergradient, solve
from dist_core.bilevel.estimators import sama as sama_mod
from dist_core.bilevel.step import LowerConfig, LowerState, lower_round
from dist_core.bilevel.tasks import betty_regression as br
from dist_core.bilevel.tasks import hyper_cleaning as hc
from dist_core.bilevel.tasks import quadratic

D = 20
F64 = torch.float64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These problems are tiny: a second thread only adds synchronisation (and the box is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def quad():
    q, x = quadratic.make(D)
    return q, x, q.y_star(x)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def identity_hessian_closed_form(q, x, y, precond=None):
    """∇_x f − ∇²_xy g · P∇_y f with ∇_x g = −Bᵀy on the quadratic: ρx + Bᵀ P (y − b)."""
    v = y - q.b
    return q.rho * x + q.B.T @ (v if precond is None else precond * v)


# ------------------------------------------------------------ finite_difference
def test_finite_difference_is_the_identity_hessian_formula_on_the_quadratic(quad):
    q, x, y = quad
    g = hypergradient(q.problem, y, x, None, None, method="finite_difference")
    # ∇_x g is linear in y here, so the central difference is exact up to rounding.
    assert rel(g, identity_hessian_closed_form(q, x, y)) < 1e-10


def test_finite_difference_is_the_exact_hypergradient_when_the_lower_hessian_is_identity(quad):
    q, x, _ = quad
    qi = quadratic.Quadratic(torch.eye(D, dtype=F64), q.B, q.b, q.rho)
    g = hypergradient(qi.problem, qi.y_star(x), x, None, None, method="finite_difference")
    assert rel(g, qi.hypergradient(x)) < 1e-10


def _sine_problem():
    """g = ½yᵀAy − xᵀB sin(y): ∇²_xy g · v = −B(cos y ⊙ v) exactly, while ∇_x g is not linear in y."""
    q, x = quadratic.make(D, seed=4)
    A, B, b, rho = q.A, q.B, q.b, q.rho
    problem = BilevelProblem(lower=lambda y, x_, _: 0.5 * y @ A @ y - x_ @ B @ torch.sin(y),
                             upper=lambda y, x_, _: 0.5 * ((y - b) ** 2).sum() + 0.5 * rho * (x_ ** 2).sum())
    y = 2.0 * torch.randn(D, dtype=F64, generator=torch.Generator().manual_seed(5))
    exact = rho * x + B @ (torch.cos(y) * (y - b))
    return problem, x, y, exact


def test_finite_difference_error_is_second_order_in_the_step():
    problem, x, y, exact = _sine_problem()
    errs = {r: rel(hypergradient(problem, y, x, None, None, method="finite_difference", alpha=r), exact)
            for r in (1e-1, 1e-2, 1e-3)}
    assert errs[1e-1] > 1e-4  # the truncation error is visible at the largest step
    # Central differences: ten times smaller a step, about a hundred times smaller the error.
    assert 50 < errs[1e-1] / errs[1e-2] < 200
    assert 50 < errs[1e-2] / errs[1e-3] < 200


def test_betty_default_step_is_point_zero_one():
    assert estimators.make_options("finite_difference").alpha == 0.01
    assert estimators.make_options("sama").alpha == 1.0


# ------------------------------------------------------------ sama
def _torch_adam_step(theta0, grad, m0, s0, lr, betas, eps):
    """θ after one real ``torch.optim.Adam`` step from the given moments (step count so large that
    bias correction is 1, the case betty's formula describes)."""
    p = torch.nn.Parameter(theta0.clone())
    opt = torch.optim.Adam([p], lr=lr, betas=betas, eps=eps, foreach=False)
    opt.state[p] = {"step": torch.tensor(1e9), "exp_avg": m0.clone(), "exp_avg_sq": s0.clone()}
    p.grad = grad.clone()
    opt.step()
    return p.detach().clone(), opt, p


def _adam_setting(seed=7):
    gen = torch.Generator().manual_seed(seed)
    theta0 = torch.randn(D, dtype=F64, generator=gen)
    grad = torch.randn(D, dtype=F64, generator=gen)
    m0 = 0.3 * torch.randn(D, dtype=F64, generator=gen)
    s0 = 0.1 + torch.rand(D, dtype=F64, generator=gen)
    return theta0, grad, m0, s0, 0.05, (0.9, 0.99), 1e-12


def test_sama_preconditioner_is_the_jacobian_of_torch_adams_step():
    theta0, grad, m0, s0, lr, betas, eps = _adam_setting()
    _, opt, p = _torch_adam_step(theta0, grad, m0, s0, lr, betas, eps)
    pre = sama_mod.adam_preconditioner(sama_mod.adam_state(opt, {"_": p}))["_"]
    # Adam is elementwise, so one perturbation of the whole gradient gives the diagonal Jacobian.
    h = 1e-6
    plus = _torch_adam_step(theta0, grad + h, m0, s0, lr, betas, eps)[0]
    minus = _torch_adam_step(theta0, grad - h, m0, s0, lr, betas, eps)[0]
    jac = -(plus - minus) / (2 * h)  # θ⁺ = θ − η u(γ): P = η ∂u/∂γ = −∂θ⁺/∂γ
    assert rel(pre, jac) < 1e-6


def test_sama_matches_its_definition_on_the_quadratic_with_a_known_adam_state(quad):
    q, x, y = quad
    theta0, grad, m0, s0, lr, betas, eps = _adam_setting()
    _, opt, p = _torch_adam_step(theta0, grad, m0, s0, lr, betas, eps)
    state = sama_mod.adam_state(opt, {"_": p})
    # The state set explicitly: m, s after the step, γ the step's gradient.
    b1, b2 = betas
    m, s = b1 * m0 + (1 - b1) * grad, b2 * s0 + (1 - b2) * grad ** 2
    assert torch.allclose(state["exp_avg"]["_"], m) and torch.allclose(state["exp_avg_sq"]["_"], s)
    precond = lr * ((1 - b1) * s - (1 - b2) * grad * m) / (torch.sqrt(s) + eps) ** 3
    entry = estimators.get("sama")
    est = entry.fn(q.problem, {"_": y}, {"_": x}, None, None, estimators.make_options("sama"), state)
    assert rel(est.grad["_"], identity_hessian_closed_form(q, x, y, precond)) < 1e-10
    assert est.state is not state and set(est.state) == set(state)  # handed back for the next round


def test_sama_without_adam_state_is_betty_sgd_case(quad):
    q, x, y = quad
    g_sama = hypergradient(q.problem, y, x, None, None, method="sama", alpha=0.3)
    g_fd = hypergradient(q.problem, y, x, None, None, method="finite_difference", alpha=0.3)
    assert torch.equal(g_sama, g_fd)


def test_adam_state_refuses_other_optimizers():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(TypeError, match="needs an Adam optimizer"):
        sama_mod.adam_state(torch.optim.SGD([p], lr=0.1), {"p": p})
    with pytest.raises(ValueError, match="take one optimizer step first"):
        sama_mod.adam_state(torch.optim.Adam([p], lr=0.1), {"p": p})


@pytest.mark.parametrize("model", [bilevel_config.FiniteDifference, bilevel_config.Sama])
def test_job_schema_and_estimator_options_name_the_same_knobs(model):
    name = model.model_fields["name"].annotation.__args__[0]
    knobs = {f.name for f in dataclasses.fields(estimators.get(name).options)}
    assert set(model.model_fields) - {"name"} == knobs
    default = estimators.make_options(name)
    assert model(name=name).alpha == default.alpha


# ------------------------------------------------------------ convergence on the quickstart
@pytest.fixture(scope="module")
def quickstart():
    job = spec.load(Path(__file__).resolve().parent.parent / "jobs" / "quickstart.yaml")
    b = job.bilevel
    data = hc.make_data(b.data.n_train, b.data.n_val, b.data.corruption, job.seed)
    return job, data, hc.make_problem(b.model.weight_decay)


@pytest.mark.parametrize("method", ["finite_difference", "sama"])
def test_first_order_estimator_brings_quickstart_validation_loss_below_threshold(quickstart, method):
    """The same bar as tests/test_convergence.py: 0.35 after 40 rounds (start 1.06)."""
    job, data, problem = quickstart
    b = job.bilevel
    k = b.lower.learners
    result = solve(
        problem, [hc.init_model(64, b.model.hidden, job.seed + i) for i in range(k)],
        torch.full((b.data.n_train,), b.upper.init), hc.shards(data, k), {"x": data.x_val, "y": data.y_val},
        lower_learners=k, method=method, rounds=40, inner_steps=b.lower.inner_steps, inner_lr=b.lower.lr,
        upper_lr=b.upper.lr, backend="local",
    )
    assert result.history[0]["upper_loss"] > 1.0
    assert result.history[-1]["upper_loss"] < 0.35
    assert hc.corruption_f1(result.lam, data.corrupted)["corruption_f1"] > 0.6


# ------------------------------------------------------------ betty's regression bar, every estimator
BETTY_OPTIONS = {  # betty's test settings where it has them (cg 3 iterations, neumann 5, unroll 100)
    "implicit_cg": dict(iters=3),
    "implicit_neumann": dict(iters=5, alpha=1.0),
    "unrolled": dict(steps=100, lr=0.1),
    "penalty": dict(gamma=10.0, steps=10, lr=0.5),
    "finite_difference": {},
    "sama": {},
}


@pytest.fixture(scope="module")
def betty_data():
    return br.make_data(seed=0)


@pytest.mark.parametrize("method", estimators.names())
def test_every_estimator_meets_bettys_regression_bar(betty_data, method):
    assert method in BETTY_OPTIONS, f"give {method} its settings for betty's regression problem"
    result = br.run(method, BETTY_OPTIONS[method], data=betty_data)
    assert result.history[0] > 0.55  # λ = 1 at the start: well above the bar
    assert result.val_loss < br.BAR
    assert bool((result.lam >= 1e-8).all())


def test_betty_data_are_seeded_and_split_in_half():
    a, b = br.make_data(3), br.make_data(3)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert a.x_train.shape == (500, 20) and a.x_val.shape == (500, 20)
    assert not torch.equal(a.x_train, br.make_data(4).x_train)


# ------------------------------------------------------------ memory against inner steps
def peak_tensor_bytes(fn) -> int:
    """Peak of (allocated − freed) bytes on the CPU allocator while ``fn`` runs, from torch's profiler."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


MEMORY_METHODS = {
    "implicit_cg": dict(iters=10),
    "implicit_neumann": dict(iters=10, alpha=0.1),
    "penalty": dict(steps=10, lr=0.1),
    "finite_difference": {},
    "sama": {},
}


def _one_round(method, opts, inner_steps):
    """One lower-learner round on betty's regression problem: logistic regression is not linear in θ,
    so reverse mode through its steps has to keep every step's activations."""
    data = br.make_data(0)
    cfg = LowerConfig(method, estimators.make_options(method, **opts), inner_steps, 0.1)
    state = LowerState({"_": torch.zeros(br.DIM)})
    lam = {"_": torch.ones(br.DIM)}
    return lambda: lower_round(br.make_problem(), state, lam, (data.x_train, data.y_train),
                               (data.x_val, data.y_val), cfg)


@pytest.mark.parametrize("method", sorted(MEMORY_METHODS))
def test_hypergradient_memory_is_flat_in_inner_steps(method):
    few = peak_tensor_bytes(_one_round(method, MEMORY_METHODS[method], 5))
    many = peak_tensor_bytes(_one_round(method, MEMORY_METHODS[method], 100))
    assert many <= few * 1.1 + 4096, (few, many)


def test_unrolled_memory_grows_with_steps_and_truncation_bounds_it():
    full = {t: peak_tensor_bytes(_one_round("unrolled", dict(steps=t, lr=0.1), 0)) for t in (10, 100)}
    assert full[100] > 5 * full[10], full
    cut = {t: peak_tensor_bytes(_one_round("unrolled", dict(steps=t, lr=0.1, truncate=10), 0)) for t in (10, 100)}
    assert cut[100] <= cut[10] * 1.1 + 4096, cut


@pytest.mark.parametrize("method", sorted(MEMORY_METHODS))
def test_a_round_leaves_no_graph_behind(method):
    q, x = quadratic.make(D)
    cfg = LowerConfig(method, estimators.make_options(method, **MEMORY_METHODS[method]), 20, 0.1)
    state, grad, _ = lower_round(q.problem, LowerState({"_": torch.zeros(D, dtype=F64)}), {"_": x}, None, None, cfg)
    for t in [*grad.values(), *state.theta.values(), *(v for p in state.est_state.values() for v in p.values())]:
        assert t.grad_fn is None and not t.requires_grad
