"""BL-JUST: InfoNCE against NumPy, the penalty step's gradients per group, the γ ramp, the shipped
comparison on digits (BL-JUST beats supervised-only at equal steps), bit-exact resume, bad input."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_core import runner, spec
from dist_core.bljust import job as bljust_job
from dist_core.bljust.data import make_data
from dist_core.bljust.losses import info_nce
from dist_core.bljust.train import ArmRunner, Ramp, joint_gradients
from dist_core.errors import SpecError
from dist_core.runs import RunDir, RunHooks
from helpers import KillAt, Killed

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "jobs" / "bl_just_digits.yaml"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def numpy_info_nce(p: np.ndarray, t: np.ndarray, tau: float) -> float:
    """Written out independently: cosine similarities, a row-wise log-softmax, the diagonal."""
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    s = p @ t.T / tau
    m = s.max(axis=1, keepdims=True)
    log_softmax = s - m - np.log(np.exp(s - m).sum(axis=1, keepdims=True))
    return float(-np.mean(np.diag(log_softmax)))


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_info_nce_matches_numpy(tau):
    rng = np.random.default_rng(0)
    p, t = rng.normal(size=(12, 5)), rng.normal(size=(12, 5))
    ours = float(info_nce(torch.from_numpy(p), torch.from_numpy(t), tau))
    assert ours == pytest.approx(numpy_info_nce(p, t, tau), rel=1e-10)
    # Perfectly aligned views with a small temperature: the loss goes to 0; a shuffle raises it.
    x = torch.from_numpy(np.eye(6))
    assert float(info_nce(x, x, 0.01)) < 1e-6 < float(info_nce(x, x[torch.tensor([1, 0, 2, 3, 4, 5])], 0.01))


def _cfg(**over):
    job = spec.load(SHIPPED, overrides=[f"bl_just.{k}={v}" for k, v in over.items()])
    return job, bljust_job.arm_config(job)


def test_joint_step_gives_each_group_exactly_its_own_gradient():
    """θ gets ∇_θ(L_s + γL_u), φ_u gets ∇L_u (not γ∇L_u), φ_s gets ∇L_s: replayed on the same batches."""
    job, cfg = _cfg(**{"warmup.steps": 0, "ramp.gamma_max": 2.5, "ramp.ramp_steps": 0})
    data = make_data(0.05, 0.3, 0)
    arm = ArmRunner("bl_just", data, cfg, seed=0, net_kwargs=job.bl_just.model.model_dump())
    before = {k: v.clone() for k, v in arm.net.state_dict().items()}
    rng = arm.gen.get_state()
    record = arm.step()
    assert record["phase"] == "joint" and record["gamma"] == 2.5
    stepped = {name: [p.grad.clone() for p in ps] for name, ps in arm.net.groups().items()}

    replay = ArmRunner("bl_just", data, cfg, seed=0, net_kwargs=job.bl_just.model.model_dump())
    replay.net.load_state_dict(before)
    replay.gen.set_state(rng)
    lu = replay.net.unsup_loss(*replay._unlabelled(), cfg.temperature)
    ls = replay.net.sup_loss(*replay._labelled())
    g = replay.net.groups()
    expect = {
        "encoder": torch.autograd.grad(ls + 2.5 * lu, g["encoder"], retain_graph=True),
        "cpc_head": torch.autograd.grad(lu, g["cpc_head"], retain_graph=True),
        "sup_head": torch.autograd.grad(ls, g["sup_head"], retain_graph=True),
    }
    for name in expect:
        for a, b in zip(stepped[name], expect[name]):
            assert torch.allclose(a, b, atol=1e-7, rtol=1e-6), name
    # The heads are untouched by the other loss: L_s does not reach φ_u, L_u does not reach φ_s.
    assert all(x is None for x in torch.autograd.grad(ls, g["cpc_head"], retain_graph=True, allow_unused=True))
    assert all(x is None for x in torch.autograd.grad(lu, g["sup_head"], retain_graph=True, allow_unused=True))
    # And the encoder's part differs from the plain sum of gradients at γ = 1 (γ really enters).
    direct = joint_gradients(replay.net, ls, lu, 1.0)
    assert not torch.allclose(direct["encoder"][0], expect["encoder"][0])


def test_gamma_follows_its_ramp():
    ramp = Ramp(0.0, 3.0, 200)
    assert [ramp.gamma(t) for t in (1, 100, 200, 201, 1000)] == pytest.approx([0.015, 1.5, 3.0, 3.0, 3.0])
    assert Ramp(0.5, 1.0, 0).gamma(1) == 1.0
    job, cfg = _cfg(**{"warmup.steps": 2, "joint.steps": 5, "finetune.steps": 1, "ramp.ramp_steps": 4,
                       "ramp.gamma_max": 2.0})
    arm = ArmRunner("bl_just", make_data(0.05, 0.3, 0), cfg, seed=0, net_kwargs=job.bl_just.model.model_dump())
    records = [arm.step() for _ in range(8)]
    assert [r["phase"] for r in records] == ["unsup"] * 2 + ["joint"] * 5 + ["sup"]
    assert [r.get("gamma") for r in records[2:7]] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0])


def test_shipped_job_beats_supervised_only_at_equal_steps(tmp_path, capsys):
    """The shipped job end to end through run_job: summary, records, the three curves' PNG.

    Seed 0 (deterministic on one thread): BL-JUST 0.852, supervised-only 0.829, PT+FT 0.824 when
    measured. The margin over supervised-only is asserted at ≥ 1 point; it is not robust across seeds
    (docs/bl_just.md). The pre-training + fine-tuning comparison is reported whatever it is."""
    job = spec.load(SHIPPED)
    summary = runner.run_job(job, tmp_path / "runs", progress=False, echo=lambda s: None)
    m = summary["metrics"]
    print(f"\nBL-JUST {m['test_acc_bl_just']:.3f}  PT+FT {m['test_acc_pretrain_finetune']:.3f}  "
          f"supervised {m['test_acc_supervised']:.3f}")
    assert summary["status"] == "succeeded" and summary["labelled"] == 63
    assert m["margin_vs_supervised"] >= 0.01, m
    assert math.isfinite(m["margin_vs_pretrain_finetune"])
    run_dir = RunDir(Path(next((tmp_path / "runs").iterdir())))
    records = run_dir.read_metrics()
    assert [r["round"] for r in records] == list(range(1, 3 * 750 + 1))
    assert (run_dir.plots / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_continues_bit_for_bit_and_records_every_step_once(tmp_path):
    job = spec.load(SHIPPED, overrides=["bl_just.warmup.steps=5", "bl_just.joint.steps=5",
                                        "bl_just.finetune.steps=3", "bl_just.checkpoint_every=4",
                                        "bl_just.eval_every=3"])

    def run(path, resume=False, listeners=()):
        rd = RunDir(path) if resume else RunDir.create(tmp_path, path.name)
        rd.hooks = RunHooks(progress=False, listeners=list(listeners))
        return rd, bljust_job.run(job, rd, rd.hooks, resume)

    straight, clean = run(tmp_path / "straight")
    broken = RunDir.create(tmp_path, "broken")
    broken.hooks = RunHooks(progress=False, listeners=[KillAt(13 + 6)])  # inside the second arm
    with pytest.raises(Killed):
        bljust_job.run(job, broken, broken.hooks, False)
    assert json.loads((broken.checkpoints / "latest.json").read_text())["round"] == 13 + 4
    _, resumed = run(broken.path, resume=True)
    assert broken.read_metrics() == straight.read_metrics()
    assert [r["round"] for r in broken.read_metrics()] == list(range(1, 40))
    assert resumed.metrics == clean.metrics


@pytest.mark.parametrize("field,value", [("ramp.gamma_max", "0"), ("ramp.gamma_max", "-1.5"),
                                         ("unsupervised.temperature", "0")])
def test_bad_gamma_is_one_line_naming_file_line_field(tmp_path, field, value):
    text = SHIPPED.read_text()
    key, sub = field.split(".")
    bad = tmp_path / "bad.yaml"
    lines = text.splitlines()
    idx = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:"))
    lines[idx] = f"  {key}: {{{sub}: {value}}}" if key != "ramp" else f"  ramp: {{gamma_init: 0.0, {sub}: {value}}}"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpecError) as e:
        spec.load(bad)
    msg = str(e.value)
    assert msg.count("\n") == 0 and msg.startswith(f"{bad}:{idx + 1}: bl_just.{field}: must be > 0")


def test_gamma_init_above_gamma_max_is_refused(tmp_path):
    with pytest.raises(SpecError, match=r"bl_just.*gamma_init \(2.0\) must be <= ramp.gamma_max \(1.0\)"):
        spec.load(SHIPPED, overrides=["bl_just.ramp.gamma_init=2.0", "bl_just.ramp.gamma_max=1.0"])
