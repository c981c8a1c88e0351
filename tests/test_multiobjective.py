"""FERERO: the dual's pieces against scipy, the preference-ray Pareto point of a bi-objective quadratic
against its exact parametrisation, actors against the single-process loop, and the job end to end
(bad input, a resume from a mid-run checkpoint that replays no record)."""

import shutil

import numpy as np
import pytest
import scipy.optimize as so
import torch

from dist_core import checkpoint, spec
from dist_core.errors import SpecError
from dist_core.multiobjective import DualConfig, MultiObjectiveProblem, ferero_direction, solve_preference
from dist_core.multiobjective.direction import min_norm_weights, project_simplex, ray_constraints
from dist_core.runner import run_job
from dist_core.runs import RunDir

N = 4


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the actors run one thread: the same here, for bit-equal sums
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------- the quadratic
def quadratic(seed: int = 0):
    rng = np.random.default_rng(seed)

    def spd():
        m = rng.normal(size=(N, N))
        return m @ m.T / N + 0.5 * np.eye(N)

    return [spd(), spd()], [rng.normal(size=N), rng.normal(size=N)]


def values(x: np.ndarray, Q, a) -> np.ndarray:
    return np.array([0.5 * (x - a[i]) @ Q[i] @ (x - a[i]) for i in range(2)])


def ray_pareto_point(Q, a, r) -> np.ndarray:
    """The Pareto set is x(t) = (tQ1 + (1−t)Q2)⁻¹(tQ1a1 + (1−t)Q2a2); root-find t with F(x(t)) on r."""
    def x_of(t):
        return np.linalg.solve(t * Q[0] + (1 - t) * Q[1], t * Q[0] @ a[0] + (1 - t) * Q[1] @ a[1])

    def off_ray(t):
        F = values(x_of(t), Q, a)
        return r[1] * F[0] - r[0] * F[1]

    return x_of(so.brentq(off_ray, 1e-12, 1 - 1e-12, xtol=1e-15))


def min_norm_in_hull(grads: np.ndarray) -> float:
    """‖Σ w_i ∇f_i‖ minimised over the simplex, by scipy's SLSQP (independent of direction.py)."""
    m = len(grads)
    res = so.minimize(lambda w: float(np.sum((w @ grads) ** 2)), np.full(m, 1 / m), method="SLSQP",
                      bounds=[(0, 1)] * m, constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
                      options={"ftol": 1e-16, "maxiter": 500})
    return float(np.sqrt(max(res.fun, 0.0)))


def torch_problem(Q, a, preference, data: bool = False) -> MultiObjectiveProblem:
    Qt = [torch.tensor(q) for q in Q]
    at = [torch.tensor(v) for v in a]

    def objective(i):
        if data:  # the mean over the batch's shifts e_j of ½‖x − a_i − e_j‖²_{Q_i}
            return lambda x, e: 0.5 * torch.einsum("nj,jk,nk->n", x - at[i] - e, Qt[i], x - at[i] - e).mean()
        return lambda x, _batch: 0.5 * (x - at[i]) @ Qt[i] @ (x - at[i])

    return MultiObjectiveProblem([objective(0), objective(1)], preference=preference)


# ---------------------------------------------------------------------------------------- pure math
def test_simplex_projection_matches_a_qp_solver():
    rng = np.random.default_rng(1)
    for _ in range(5):
        y = rng.normal(size=4) * 2
        ref = so.minimize(lambda z: float(np.sum((z - y) ** 2)), np.full(4, 0.25), method="SLSQP",
                          bounds=[(0, 1)] * 4, constraints=[{"type": "eq", "fun": lambda z: z.sum() - 1}],
                          options={"ftol": 1e-14}).x
        np.testing.assert_allclose(project_simplex(y), ref, atol=1e-6)


def test_ray_constraints_vanish_exactly_on_the_ray():
    r = np.array([0.3, 0.7])
    Bh = ray_constraints(r)
    assert np.allclose(Bh, [[0.7, -0.3]] / np.linalg.norm(r))  # the reference's [r2, −r1], r normalised
    assert abs((Bh @ (2.5 * r))[0]) < 1e-15 and abs((Bh @ np.array([1.0, 1.0]))[0]) > 0.1
    r3 = np.array([0.2, 0.3, 0.5])
    B3 = ray_constraints(r3)
    assert B3.shape == (2, 3) and np.allclose(B3 @ r3, 0) and np.allclose(B3 @ B3.T, np.eye(2))


def test_mgda_weights_match_scipy():
    rng = np.random.default_rng(2)
    for m in (2, 3):
        grads = rng.normal(size=(m, 5))
        w = min_norm_weights(grads @ grads.T)
        assert abs(w.sum() - 1) < 1e-12 and (w >= 0).all()
        assert abs(np.linalg.norm(w @ grads) - min_norm_in_hull(grads)) < 1e-6


def test_bad_problems_say_why():
    f = lambda x, b: x.sum()  # noqa: E731
    with pytest.raises(ValueError, match="entry 1 is -0.1"):
        MultiObjectiveProblem([f, f], preference=[0.5, -0.1])
    with pytest.raises(ValueError, match="needs 2 entries"):
        MultiObjectiveProblem([f, f], preference=[1.0])
    with pytest.raises(ValueError, match=r"A must be a \(K, 2\) matrix"):
        MultiObjectiveProblem([f, f], A=np.eye(3))


# ---------------------------------------------------------------------------------------- FERERO on the toy
@pytest.mark.parametrize("r", [[0.3, 0.7], [0.5, 0.5], [0.8, 0.2], [0.15, 0.85]])
def test_ferero_reaches_the_preference_ray_pareto_point(r):
    Q, a = quadratic()
    problem = torch_problem(Q, a, r)
    x, w = torch.zeros(N, dtype=torch.float64), None
    for _ in range(200):
        d, w = ferero_direction(problem, x, None, start=w)  # the dual warm-started from the last step
        assert abs(float(w.lam_f.sum()) - 1) < 1e-12 and float(w.lam_f.min()) >= 0  # λ_f stays in the simplex
        x = x + 0.5 * d
    x_np = x.numpy()
    x_star = ray_pareto_point(Q, a, np.array(r))
    F, F_star = values(x_np, Q, a), values(x_star, Q, a)
    grads = np.stack([Q[i] @ (x_np - a[i]) for i in range(2)])
    Bh = np.array([r[1], -r[0]]) / np.linalg.norm(r)
    assert abs(Bh @ F) < 1e-8  # on the ray
    assert min_norm_in_hull(grads) < 1e-6  # Pareto-stationary
    assert np.abs(x_np - x_star).max() < 1e-6 and np.abs(F - F_star).max() < 1e-8
    # At the solution λ has no negative entries: the ray point is plain Pareto-stationary, with weights λ/Σλ.
    assert float(w.lam.min()) > 0


def test_without_a_preference_ferero_is_mgda():
    Q, a = quadratic(3)
    x = torch.tensor(np.ones(N))
    plain = torch_problem(Q, a, None)
    d, w = ferero_direction(plain, x, None, dual=DualConfig(iters=5000, tol=1e-14))
    _, w_mgda = ferero_direction(plain, x, None, method="mgda")
    assert torch.allclose(w.lam, w_mgda.lam, atol=1e-6)


# ---------------------------------------------------------------------------------------- actors
def shifted_data(seed: int = 5, n: int = 16):
    return torch.tensor(np.random.default_rng(seed).normal(size=(n, N)) * 0.3)


@pytest.mark.parametrize("method", ["ferero", "ferero_single"])
def test_actors_equal_the_single_process_run(ray_session, method):
    Q, a = quadratic()
    problem = torch_problem(Q, a, [0.4, 0.6], data=True)
    e = shifted_data()
    shards = [[e[:4], e[4:8]], [e[8:12], e[12:]]]  # two learners, two batches each, cycled
    kw = dict(steps=12, lr=0.2, learners=2, method=method)
    x0 = torch.zeros(N, dtype=torch.float64)
    # ferero_single also loses learner 1 at step 5: it is replaced, the step redone, the run unchanged.
    fail_at = {1: 5} if method == "ferero_single" else None
    on_ray = solve_preference(problem, x0, shards, backend="ray", fail_at=fail_at, **kw)
    local = solve_preference(problem, x0, shards, backend="local", **kw)
    assert on_ray.restarts == (1 if fail_at else 0)
    assert torch.equal(on_ray.theta, local.theta)
    assert [h["f1"] for h in on_ray.history] == [h["f1"] for h in local.history]
    if method == "ferero":  # against the plain loop on the same batches, unsharded
        x, w = x0.clone(), None
        for t in range(12):
            d, w = ferero_direction(problem, x, torch.cat([shards[0][t % 2], shards[1][t % 2]]), start=w)
            x = x + 0.2 * d
        assert torch.allclose(on_ray.theta, x, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------- the job
TINY = ["multiobjective.preferences=[[0.5,0.5],[0.7,0.3]]", "multiobjective.steps=6",
        "multiobjective.scalarisation=2", "multiobjective.checkpoint_every=3", "multiobjective.eval_every=3",
        "multiobjective.data.n_train=200"]
JOB = "jobs/multiobjective_digits.yaml"


def test_the_job_runs_plots_and_resumes_without_duplicates(ray_session, tmp_path):
    job = spec.load(JOB, TINY)
    summary = run_job(job, out=tmp_path, progress=False, echo=lambda s: None)
    assert summary["status"] == "succeeded" and summary["metrics"]["rays"] == 2
    assert len(summary["rays"]) == 2 and len(summary["scalarisation"]) == 2
    run_dir = RunDir(next(tmp_path.glob("multiobjective_digits-*")))
    assert (run_dir.plots / "front.png").stat().st_size > 0
    records = run_dir.read_metrics()
    assert [r["global_step"] for r in records] == list(range(1, 25))
    assert "test_acc_digit" in records[2] and "test_acc_digit" not in records[0]

    # Back to the checkpoint inside the last run (step 3 of 6): resume replays steps 22..24 exactly once.
    # The resumes run their learners in-process (same numbers as actors, without 4 more actor starts).
    job = spec.load(JOB, [*TINY, "multiobjective.backend=local"])
    partial = RunDir(tmp_path / "partial")
    shutil.copytree(run_dir.path, partial.path)
    checkpoint.write_json_atomic(partial.checkpoints / "latest.json", {"path": "round_000021", "round": 21})
    (partial.path / "summary.json").unlink()
    again = run_job(job, out=tmp_path, run_dir=partial, progress=False, echo=lambda s: None)
    assert partial.read_metrics() == records
    assert again["metrics"] == summary["metrics"] and again["rays"] == summary["rays"]
    # A finished run directory resumed: nothing is replayed, nothing duplicated.
    run_job(job, out=tmp_path, run_dir=run_dir, progress=False, echo=lambda s: None)
    assert run_dir.read_metrics() == records


@pytest.mark.parametrize("override, why", [
    ("multiobjective.preferences=[[0.5,-0.5]]", "multiobjective.preferences.0: preference [0.5, -0.5]: entry 1 is -0.5"),
    ("multiobjective.preferences=[[0.2,0.3,0.5]]", "multiobjective.preferences.0: preference [0.2, 0.3, 0.5]: needs 2"),
    ("multiobjective.preferences=[[0,0]]", "multiobjective.preferences.0: preference [0.0, 0.0]: all entries are 0"),
])
def test_bad_preferences_are_one_line_errors(tmp_path, override, why):
    text = open(JOB).read().replace("    - [0.6, 0.4]\n", "    - " + override.split("=")[1][1:-1] + "\n")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        spec.load(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}:14: ") and why.replace(".0:", ".1:") in message
