"""Self-Tuning Networks: the hyper-linear layer's algebra, the best response on ridge regression
against its closed form (value and slope), weight decay moving toward a 1-D grid's validation
optimum on digits, the job end to end with bit-exact resume, and bad input."""

import json
from pathlib import Path

import pytest
import torch

from dist_core import runner, spec
from dist_core.errors import SpecError
from dist_core.runs import RunDir, RunHooks
from dist_core.stn import digits, hyper, layers, ridge
from dist_core.stn import job as stn_job
from dist_core.stn.loop import STN, STNConfig, STNState
from helpers import KillAt, Killed

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "jobs" / "stn_digits.yaml"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_hyper_linear_is_its_effective_weight_and_norm():
    gen = torch.Generator().manual_seed(0)
    p = layers.init("l", 5, 3, 2, gen)
    p["l.scalar"] = torch.tensor([1.3])
    p["l.gate_w"] = torch.randn((3, 2), generator=gen)
    x, h = torch.randn((4, 5), generator=gen), torch.randn((4, 2), generator=gen)
    w = layers.weight(p, "l", h)
    bias = 1.3 * p["l.elem_b"] + (h @ p["l.gate_b"].T) * p["l.hyper_b"]
    assert torch.allclose(layers.forward(p, "l", x, h), torch.einsum("boi,bi->bo", w, x) + bias, atol=1e-6)
    assert torch.allclose(layers.weight_sq_norm(p, "l", h), (w * w).sum((1, 2)), atol=1e-5)


def test_hyperparameter_transforms_and_entropy():
    assert float(digits.DROPOUT.constrain(torch.tensor(digits.DROPOUT.unconstrain(0.3)))) == pytest.approx(0.3)
    assert float(digits.WEIGHT_DECAY.constrain(torch.tensor(digits.WEIGHT_DECAY.unconstrain(1e-3)))) == \
        pytest.approx(1e-3)
    s = torch.tensor([hyper.inv_softplus(0.5)])
    # Entropy of N(0, 0.5²): ½ log(2πe·0.25).
    assert float(hyper.entropy(s)) == pytest.approx(0.5 * torch.log(torch.tensor(2 * torch.pi * torch.e * 0.25)).item())


def _stn(problem, phi, u0, sigma, cfg, seed=0):
    state = STNState(phi, torch.tensor([u0], dtype=torch.float64),
                     torch.tensor([hyper.inv_softplus(sigma)], dtype=torch.float64), torch.Generator().manual_seed(seed))
    return STN(problem, state, cfg)


def test_ridge_best_response_matches_the_closed_form_value_and_slope():
    """ŵ_φ(u) and dŵ/du at the learned u against (XᵀX + e^u I)⁻¹Xᵀy and its derivative, and u against
    the validation optimum of a fine 1-D grid over the closed form."""
    data = ridge.make_data(20, 50, 5, 1.0, seed=0)
    cfg = STNConfig(train_steps=3, valid_steps=1, warmup_steps=150, lr_phi=0.03, phi_optimizer="adam",
                    lr_lam=0.03, tune_scales=False)
    stn = _stn(ridge.make_problem(data), ridge.init_phi(5, 0), 0.0, 0.2, cfg)
    for _ in range(700):
        stn.cycle(lambda: (None, 64), lambda: (None, 1))
    u = float(stn.u.detach())
    w_star, slope_star = ridge.closed_form(data, u)
    uu = torch.tensor([[u]], dtype=torch.float64, requires_grad=True)
    w_hat = ridge.best_response(stn.phi, uu)[0]
    slope_hat = torch.stack([torch.autograd.grad(w_hat[i], uu, retain_graph=True)[0][0, 0] for i in range(5)])
    assert float((w_hat - w_star).norm() / w_star.norm()) < 0.01
    assert float((slope_hat - slope_star).norm() / slope_star.norm()) < 0.05

    grid = torch.linspace(-4.0, 5.0, 901)
    val = torch.stack([ridge.validation_loss(data, ridge.closed_form(data, float(g))[0]) for g in grid])
    assert abs(u - float(grid[int(val.argmin())])) < 0.15


def _fixed_run(task, data, wd, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = STNState(digits.init_phi(32, 1, seed), torch.tensor([digits.WEIGHT_DECAY.unconstrain(wd)]),
                     torch.tensor([0.0]), gen)
    stn = STN(digits.make_problem(task, gen), state, cfg := STNConfig(train_steps=1, valid_steps=0, lr_phi=0.02,
                                                                        perturb=False))
    del cfg
    tr = digits.sampler(data.x_train, data.y_train, 64, gen)
    for _ in range(steps):
        stn.cycle(tr, tr)
    return stn


def test_learned_weight_decay_moves_toward_the_grid_optimum():
    """A 1-D grid of fixed-weight-decay runs (same steps each) gives the validation optimum; the STN,
    started two decades below it, must end closer to it in log space and on the right side of the start."""
    data = digits.make_data(200, 300, seed=0)
    task = digits.Task((digits.WEIGHT_DECAY,), {"dropout": 0.0})
    grid = [1e-4, 1e-3, 1e-2, 1e-1]
    val = [digits.evaluate((s := _fixed_run(task, data, wd, 400)).phi, s.u.detach(), data)["val_loss"] for wd in grid]
    best = grid[min(range(len(grid)), key=val.__getitem__)]
    print(f"\ngrid val loss {dict(zip(grid, [round(v, 4) for v in val]))}; best {best}")
    assert best > 1e-4

    gen = torch.Generator().manual_seed(0)
    state = STNState(digits.init_phi(32, 1, 0), torch.tensor([digits.WEIGHT_DECAY.unconstrain(1e-4)]),
                     torch.tensor([hyper.inv_softplus(0.5)]), gen)
    stn = STN(digits.make_problem(task, gen), state,
              STNConfig(train_steps=2, valid_steps=1, warmup_steps=100, lr_phi=0.02, lr_lam=0.03, lr_scale=0.03))
    tr = digits.sampler(data.x_train, data.y_train, 64, gen)
    va = digits.sampler(data.x_val, data.y_val, 64, gen)
    for _ in range(300):
        stn.cycle(tr, va)
    learned = float(digits.WEIGHT_DECAY.constrain(stn.u.detach()[0]))
    print(f"STN weight decay 1e-4 -> {learned:.3g}")
    import math
    assert abs(math.log(learned) - math.log(best)) < abs(math.log(1e-4) - math.log(best))
    assert learned > 1e-4


def test_job_end_to_end_and_bit_exact_resume(tmp_path):
    job = spec.load(SHIPPED, overrides=["stn.steps=30", "stn.warmup_steps=10", "stn.checkpoint_every=10",
                                        "stn.eval_every=10", "stn.hidden=16"])
    summary = runner.run_job(job, tmp_path / "runs", progress=False, echo=lambda s: None)
    assert summary["status"] == "succeeded" and summary["tuned"] == ["dropout", "weight_decay"]
    straight = RunDir(next((tmp_path / "runs").iterdir()))
    assert [r["round"] for r in straight.read_metrics()] == list(range(1, 31))
    assert (straight.plots / "schedule.png").read_bytes()[:4] == b"\x89PNG"
    assert summary["metrics"]["dropout"] != pytest.approx(0.05, abs=1e-6)  # λ moved

    broken = RunDir.create(tmp_path, "broken")
    broken.hooks = RunHooks(progress=False, listeners=[KillAt(25)])
    with pytest.raises(Killed):
        stn_job.run(job, broken, broken.hooks, False)
    assert json.loads((broken.checkpoints / "latest.json").read_text())["round"] == 20
    broken.hooks = RunHooks(progress=False)
    resumed = stn_job.run(job, broken, broken.hooks, True)
    assert broken.read_metrics() == straight.read_metrics()
    assert resumed.metrics == summary["metrics"]


@pytest.mark.parametrize("value", ["1.0", "-0.1", "1.5"])
def test_dropout_out_of_range_is_one_line(tmp_path, value):
    bad = tmp_path / "bad.yaml"
    lines = SHIPPED.read_text().splitlines()
    idx = next(i for i, line in enumerate(lines) if "dropout:" in line and "init" in line)
    lines[idx] = f"    dropout: {{init: {value}, tune: true}}"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpecError) as e:
        spec.load(bad)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{bad}:{idx + 1}: stn.hyper.dropout.init: must be ")


def test_nothing_tuned_is_refused():
    with pytest.raises(SpecError, match="nothing to tune"):
        spec.load(SHIPPED, overrides=["stn.hyper.dropout.tune=false", "stn.hyper.weight_decay.tune=false"])
