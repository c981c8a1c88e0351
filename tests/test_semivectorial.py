"""Semivectorial bilevel: the merit function against its closed form on quadratics (0 exactly on the
Pareto set, the smoothing's bound, Danskin's gradient against finite differences), the penalty run
within O(1/γ) of the constrained optimum, actors equal to one process with a learner lost, and the
job through the CLI: run, SIGKILL, resume, bad input."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize as so
import torch

from dist_core import spec
from dist_core.runner import run_job
from dist_core.errors import SpecError
from dist_core.semivectorial import PenaltyConfig, SemivectorialProblem, smoothed_merit, solve_semivectorial
from dist_core.semivectorial.merit import step_weights
from helpers import kill_when

ROOT = Path(__file__).resolve().parent.parent
ELL = 1.0
ANCHORS = np.array([[0.0, 0.0], [2.0, 1.0]])  # f_i = ½‖x − a_i‖²: the Pareto set is the segment [a1, a2]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the actors run one thread: the same here, for bit-equal sums
    yield
    torch.set_num_threads(threads)


def quadratics(anchors: np.ndarray):
    a = torch.tensor(anchors)
    return lambda x: (0.5 * ((x - a) ** 2).sum(1), x - a)


def hull_distance(x: np.ndarray, anchors: np.ndarray) -> float:
    """Distance from x to the convex hull of the anchors (a small QP over the simplex, by scipy)."""
    m = len(anchors)
    res = so.minimize(lambda w: float(np.sum((x - w @ anchors) ** 2)), np.full(m, 1 / m), method="SLSQP",
                      bounds=[(0, 1)] * m, constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
                      options={"ftol": 1e-15, "maxiter": 500})
    return math.sqrt(max(res.fun, 0.0))


def merit_by_scipy(x: np.ndarray, anchors: np.ndarray) -> float:
    """u_ℓ(x) straight from its definition, max_y min_i [f_i(x) − f_i(y)] − (ℓ/2)‖x − y‖², as an epigraph NLP."""
    f = lambda z: 0.5 * np.sum((z - anchors) ** 2, axis=1)  # noqa: E731
    cons = [{"type": "ineq", "fun": lambda v, i=i: (f(x)[i] - f(v[:2])[i]) - v[2]} for i in range(len(anchors))]
    res = so.minimize(lambda v: -(v[2] - 0.5 * ELL * np.sum((x - v[:2]) ** 2)), np.r_[x, 0.0], method="SLSQP",
                      constraints=cons, options={"ftol": 1e-15, "maxiter": 500})
    return -res.fun


OFF = [np.array([1.0, 2.0]), np.array([-1.0, 0.3]), np.array([3.0, -1.0]), np.array([0.2, -0.4])]
ON = [np.array([1.0, 0.5]), np.array([0.3, 0.15]), np.array([2.0, 1.0]), np.array([0.0, 0.0])]


def test_the_merit_is_zero_exactly_on_the_pareto_set_and_its_closed_form_off_it():
    fn = quadratics(ANCHORS)
    for x in ON:
        assert abs(smoothed_merit(fn, torch.tensor(x), ELL, tau=0.0).value) < 1e-14
    for x in OFF:
        u = smoothed_merit(fn, torch.tensor(x), ELL, tau=0.0).value
        # For identity quadratics the max over y has the closed form dist(x, hull)² / (2(1 + ℓ)).
        closed = hull_distance(x, ANCHORS) ** 2 / (2 * (1 + ELL))
        assert u > 0.01 and u == pytest.approx(closed, rel=1e-8)
        assert u == pytest.approx(merit_by_scipy(x, ANCHORS), rel=1e-6)  # the definition itself


def test_three_objectives_use_the_iterative_dual_and_agree_with_the_hull():
    anchors = np.array([[0.0, 0.0], [2.0, 0.0], [0.5, 1.5]])  # the Pareto set is the triangle
    fn = quadratics(anchors)
    for x in [np.array([1.0, 0.5]), np.array([3.0, 1.0]), np.array([-1.0, -1.0]), np.array([1.5, 1.5])]:
        u = smoothed_merit(fn, torch.tensor(x), ELL, tau=0.0).value
        assert u == pytest.approx(hull_distance(x, anchors) ** 2 / (2 * (1 + ELL)), rel=1e-6, abs=1e-12)


def test_the_entropic_dual_matches_scipy():
    rng = np.random.default_rng(0)
    J = rng.normal(size=(3, 5))
    c, Je = rng.normal(size=3), rng.normal(size=3)
    for tau in (0.0, 0.05):
        w = step_weights(c, J @ J.T, Je, 2.0, tau)
        obj = lambda v: float(v @ (c - Je / 2) + 0.5 * v @ (J @ J.T / 2) @ v  # noqa: E731
                              + tau * np.sum(v * np.log(np.maximum(v, 1e-300))))
        ref = so.minimize(obj, np.full(3, 1 / 3), method="SLSQP", bounds=[(0, 1)] * 3,
                          constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1}], options={"ftol": 1e-15})
        assert abs(w.sum() - 1) < 1e-12 and (w >= 0).all()
        assert obj(w) <= ref.fun + 1e-9


@pytest.mark.parametrize("tau", [0.1, 0.01])
def test_smoothing_overestimates_by_at_most_tau_log_m(tau):
    fn = quadratics(ANCHORS)
    for x in ON + OFF:
        u = smoothed_merit(fn, torch.tensor(x), ELL, tau=0.0).value
        v = smoothed_merit(fn, torch.tensor(x), ELL, tau=tau).value
        assert u - 1e-12 <= v <= u + tau * math.log(2) + 1e-12


@pytest.mark.parametrize("tau", [0.0, 0.01])
def test_danskins_gradient_matches_finite_differences(tau):
    fn = quadratics(ANCHORS)
    for x in OFF:
        x = torch.tensor(x)
        grad = smoothed_merit(fn, x, ELL, tau=tau).gradient
        eps = 1e-6
        fd = torch.tensor([(smoothed_merit(fn, x + eps * e, ELL, tau).value
                           - smoothed_merit(fn, x - eps * e, ELL, tau).value) / (2 * eps) for e in torch.eye(2, dtype=torch.float64)], dtype=torch.float64)
        assert torch.allclose(grad, fd, atol=1e-6)


def toy_problem(c=(0.5, 2.0)):
    a1, a2, c = (torch.tensor(v, dtype=torch.float64) for v in (ANCHORS[0], ANCHORS[1], c))
    return SemivectorialProblem(lambda x, b: 0.5 * ((x - c) ** 2).sum(),
                                [lambda x, b: 0.5 * ((x - a1) ** 2).sum(), lambda x, b: 0.5 * ((x - a2) ** 2).sum()])


def test_the_penalty_solution_is_within_order_one_over_gamma_of_the_constrained_optimum():
    # f0 = ½‖x − c‖² on the segment: the optimum is c projected onto it, (1.2, 0.6). The exact penalty
    # f0 + γ·dist²/(2(1 + ℓ)) puts its minimiser at distance d_c(1 + ℓ)/(1 + ℓ + γ) from it: O(1/γ).
    star, d_c = torch.tensor([1.2, 0.6], dtype=torch.float64), math.sqrt(0.7 ** 2 + 1.4 ** 2)
    errors = []
    for gamma in (10.0, 30.0, 100.0):
        stiff = 1 + gamma / (1 + ELL)
        result = solve_semivectorial(toy_problem(), torch.tensor([3.0, -1.0], dtype=torch.float64), [None],
                                     steps=int(20 * stiff), learners=1, backend="local",
                                     config=PenaltyConfig(gamma=gamma, ell=ELL, tau=0.0, lr=1 / stiff))
        err = float(torch.linalg.vector_norm(result.theta - star))
        assert err == pytest.approx(d_c * (1 + ELL) / (1 + ELL + gamma), rel=1e-3)
        assert 0 <= result.merit < 0.02
        errors.append(err * gamma)
    assert max(errors) < 2 * d_c * (1 + ELL)  # err·γ stays bounded


def test_actors_equal_the_single_process_run_with_a_learner_lost(ray_session):
    rng = np.random.default_rng(3)
    noise = [torch.tensor(rng.normal(size=2) * 0.1) for _ in range(4)]
    a1, a2, c = (torch.tensor(v, dtype=torch.float64) for v in ([0.0, 0.0], [2.0, 1.0], [0.5, 2.0]))
    problem = SemivectorialProblem(shifted(c), [shifted(a1), shifted(a2)])
    shards = [[noise[0], noise[1]], [noise[2], noise[3]]]  # two learners, two batches each, cycled
    kw = dict(steps=15, learners=2, config=PenaltyConfig(gamma=10.0, lr=0.15, tau=0.01, y_steps=2))
    x0 = torch.tensor([3.0, -1.0], dtype=torch.float64)
    on_ray = solve_semivectorial(problem, x0, shards, backend="ray", fail_at={1: 7}, **kw)
    local = solve_semivectorial(problem, x0, shards, backend="local", **kw)
    assert on_ray.restarts == 1
    assert torch.equal(on_ray.theta, local.theta)
    assert [h["merit"] for h in on_ray.history] == [h["merit"] for h in local.history]


def shifted(a: torch.Tensor):
    """½‖x − a − ε‖², ε the batch (a closure: Ray pickles it by value, the test module is not importable there)."""
    return lambda x, batch: 0.5 * ((x - a - batch) ** 2).sum()


# ---------------------------------------------------------------------------------------- the job
JOB = "jobs/semivectorial_digits.yaml"
# 200 steps a run: long enough that the kill below lands inside the penalty run.
TINY = ["semivectorial.steps=200", "semivectorial.scalarisation=2", "semivectorial.checkpoint_every=25",
        "semivectorial.eval_every=100", "semivectorial.data.n_train=200", "semivectorial.data.n_val=60"]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def sets(overrides: list[str]) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


def test_the_job_through_the_cli_killed_and_resumed(ray_session, tmp_path):
    # The reference runs in this process with in-process learners (the same numbers as actors).
    job = spec.load(JOB, [*TINY, "semivectorial.backend=local"])
    reference = run_job(job, out=tmp_path / "reference", progress=False, echo=lambda s: None)
    assert reference["status"] == "succeeded" and reference["metrics"]["scalarisation_runs"] == 2
    assert reference["metrics"]["pareto_gap"] >= 0 and len(reference["scalarisation"]) == 2

    out = tmp_path / "killed"

    def inside_the_penalty_run() -> bool:
        pointer = list(out.glob("*/checkpoints/latest.json"))
        return bool(pointer) and json.loads(pointer[0].read_text())["round"] >= 25

    kill_when([sys.executable, str(ROOT / "launch.py"), "run", JOB, "--out", str(out), *sets(TINY), "--no-progress"],
              ROOT, inside_the_penalty_run, 300, "a checkpoint at step >= 25", poll=0.05)
    run_dir = next(out.iterdir())
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"
    resumed = cli("resume", str(run_dir), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded"
    assert (run_dir / "plots" / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in records] == list(range(1, 601))  # nothing replayed twice
    assert {r["method"] for r in records} == {"semivectorial", "linear"}
    assert "val_f0" in records[99] and "val_f0" not in records[0]
    for name, value in reference["metrics"].items():
        assert summary["metrics"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name


@pytest.mark.parametrize("override, why", [
    ("semivectorial.penalty.gamma=0", ":15: semivectorial.penalty.gamma: must be > 0.0, got 0"),
    ("semivectorial.penalty.tau=-0.1", ":17: semivectorial.penalty.tau: must be >= 0.0, got -0.1"),
    ("semivectorial.data.n_val=1000", ":9: semivectorial.data: n_train + n_val must be <= 1700"),
])
def test_bad_input_is_one_line(override, why):
    with pytest.raises(SpecError) as err:
        spec.load(JOB, [override])
    message = str(err.value)
    assert "\n" not in message and message.startswith(JOB) and why in message
