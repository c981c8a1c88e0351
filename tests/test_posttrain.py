"""Post-training on real Ray Train + DeepSpeed (CPU, gloo): invariances, the ALRIGHT coin, a killed
worker, and the CLI run of Sequential. The first DeepSpeed start JIT-compiles its shm comm op
(~1-2 min, cached in ~/.cache/torch_extensions); later starts take ~20 s each."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from dist_core import spec
from dist_core.posttrain import methods
from dist_core.runner import run_job
from dist_core.runs import RunDir

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

JOB = """\
kind: posttrain
name: {name}
seed: 0
model:
  config: {{model_type: llama, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
           num_attention_heads: 2, num_key_value_heads: 1, max_position_embeddings: 64,
           tie_word_embeddings: false}}
tokenizer: {{path: {root}/data/synthlang/tokenizer}}
data:
  sft: {{train: {sft}, eval: {root}/data/synthlang/sft_eval.jsonl}}
  preference: {{train: {pref}, eval: {root}/data/synthlang/pref_eval.jsonl}}
  max_length: 48
  eval_rows: 32
method: mix
optima: {{sft: 0.3, dpo: 0.2}}
epochs: 2
optim: {{lr: 0.003}}
deepspeed:
  train_batch_size: 16
  train_micro_batch_size_per_gpu: 8
  gradient_accumulation_steps: 1
  zero_optimization: {{stage: 2}}
workers: 2
eval_every: 4
checkpoint_every: 0
precompute_ref: false
"""


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """The first 128 rows of each shipped training file: 8 global batches of 16 per epoch."""
    d = tmp_path_factory.mktemp("data")
    out = {}
    for key, name in (("sft", "sft_train.jsonl"), ("pref", "pref_train.jsonl")):
        lines = (ROOT / "data/synthlang" / name).read_text().splitlines()[:128]
        (d / name).write_text("\n".join(lines) + "\n")
        out[key] = d / name
    return out


def _job(name, data, overrides=(), sft=None, pref=None):
    text = JOB.format(name=name, root=ROOT, sft=sft or data["sft"], pref=pref or data["pref"])
    return spec.load_text(text, f"{name}.yaml", list(overrides))


def _run(job, out, listeners=(), run_dir=None):
    summary = run_job(job, out=out, progress=False, echo=lambda s: None, listeners=list(listeners), run_dir=run_dir)
    run_dir = Path(summary["checkpoint"]).parent
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, run_dir, [r for r in records if r.get("phase") == "main" and "event" not in r]


def _trajectory(records, key):
    return np.array([r[key] for r in records if key in r and r["step"] > 0])


def test_one_worker_two_workers_and_zero3_follow_the_same_trajectory(ray_session, small_data, tmp_path, monkeypatch):
    monkeypatch.setenv("DIST_CORE_CACHE", str(tmp_path / "cache"))  # reference tables, not in ~/.cache
    # Same global batch of 16: 1 worker x 8 x 2 accumulation, 2 workers x 8, and 2 workers on ZeRO-3.
    # The 1-worker run also uses precomputed reference tables instead of the reference model. The ZeRO-3
    # run estimates the optima first: its main phase runs third in the same workers, after an SFT-only and
    # a DPO-only phase, and must still follow the trajectory of a main phase that a fresh group runs.
    runs = {
        "w1": _job("w1", small_data, ["workers=1", "deepspeed.gradient_accumulation_steps=2", "precompute_ref=true"]),
        "w2": _job("w2", small_data),
        "z3": _job("z3", small_data, ["deepspeed.zero_optimization.stage=3", "optima=null", "estimate_optima=true"]),
    }
    out = {k: _run(job, tmp_path / k) for k, job in runs.items()}
    for key in ("sft_loss", "dpo_loss", "f_sft", "f_dpo"):
        base = _trajectory(out["w2"][2], key)
        assert len(base) >= 4
        for other in ("w1", "z3"):
            # fp32 sums in another order (gloo all-reduce, ZeRO-3 gathers): measured <= 1.1e-7 relative.
            np.testing.assert_allclose(_trajectory(out[other][2], key), base, rtol=1e-5, err_msg=f"{other}: {key}")
    assert len(list((tmp_path / "cache" / "ref_logps").glob("*.safetensors"))) == 2  # train and eval tables
    z3_dir = out["z3"][1]
    events = [json.loads(line) for line in (z3_dir / "metrics.jsonl").read_text().splitlines()]
    done = {e["phase"]: e for e in events if e.get("event") == "phase_done"}
    assert list(done) == ["opt_sft", "opt_dpo", "main"]
    assert len({e["pid"] for e in done.values()}) == 1, "one worker group runs every phase"
    optima = json.loads((z3_dir / "optima.json").read_text())
    opt_sft = json.loads((z3_dir / "phases" / "opt_sft.json").read_text())
    assert optima["sft"] == opt_sft["f_sft"] < out["w2"][0]["metrics"]["f_sft"]  # SFT alone fits SFT best
    assert out["z3"][0]["metrics"]["startup_s"] > 0
    first = next(r for r in out["w2"][2] if r["step"] == 1)
    assert first["dpo_loss"] == pytest.approx(np.log(2), abs=1e-5)  # π = π_ref at step 1
    assert out["w2"][2][-1]["sft_loss"] < 0.7 * first["sft_loss"]
    summary = out["w2"][0]
    assert summary["status"] == "succeeded" and summary["metrics"]["steps"] == 16
    assert summary["metrics"]["ideal_distance"] == pytest.approx(
        np.hypot(summary["metrics"]["f_sft"] - 0.3, summary["metrics"]["f_dpo"] - 0.2))


def _train_workers() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any("RayTrainWorker" in part for part in (p.info["cmdline"] or [])):
                found.append(p)
        except psutil.Error:
            pass
    return found


def test_alright_coin_is_one_per_step_and_a_killed_worker_resumes_from_the_checkpoint(ray_session, small_data,
                                                                                       tmp_path):
    # 8 steps per epoch x 4 epochs = 32 steps, a checkpoint every 8; the kill comes after step 20, once
    # Ray Train has registered the checkpoints of steps 8 and 16.
    job = _job("kill", small_data, ["method=alright", "lam=0.5", "epochs=4", "checkpoint_every=8", "max_failures=1"])
    box = {}
    handed = CheckpointLog()
    thread = threading.Thread(target=lambda: box.update(r=_run(job, tmp_path, [handed])))
    thread.start()
    killed = None
    deadline = time.time() + 400
    while thread.is_alive() and time.time() < deadline and killed is None:
        metrics = list(tmp_path.glob("kill-*/metrics.jsonl"))
        steps = [json.loads(x).get("step", 0) for x in metrics[0].read_text().splitlines()] if metrics else []
        workers = _train_workers()
        if steps and max(steps) >= 20 and workers:
            killed = max(steps)
            workers[-1].send_signal(signal.SIGKILL)
        time.sleep(0.2)
    thread.join(timeout=400)
    assert killed is not None, "the run ended before a worker could be killed"
    summary, run_dir, records = box["r"]
    assert summary["status"] == "succeeded"
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    resumed = [e["step"] for e in events if e.get("event") == "resumed"]
    assert resumed and resumed[0] % 8 == 0 and 0 < resumed[0] <= 32
    steps = [r["step"] for r in records if r["step"] > 0]
    assert steps == list(range(1, 33)), "every step once, replayed steps deduplicated"
    coin = methods.Alright(0.5, seed=0)
    for r in records[1:]:
        assert r["coin_by_rank"] == [r["w_dpo"]] * 2, "every rank steps on the same objective"
        assert (r["w_sft"], r["w_dpo"]) == coin.pick(r["step"] - 1, 0)
    assert 0.35 < np.mean([r["w_dpo"] for r in records[1:]]) < 0.65
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(run_dir / "model"))
    assert (run_dir / "model" / "model.safetensors").exists() and model.config.model_type == "llama"
    assert (run_dir / "plots" / "plane.png").stat().st_size > 10_000

    # The checkpoints a Tune trial reports: each main-phase checkpoint handed to the listeners, whole.
    assert [step for step, _ in handed.seen][-1] == 24 and all(step % 8 == 0 for step, _ in handed.seen)
    step, source = handed.seen[-1]
    assert json.loads((source / "meta.json").read_text()) == {"phase": "main", "step": 24}
    # Placed in a new run directory as Tune places a restored (or PBT-copied) trial's checkpoint, it is
    # where that run continues: steps 25-32 only, to the same final losses.
    again = RunDir.create(tmp_path / "restored", job.name)
    again.place_checkpoint(source, step)
    summary2, _, records2 = _run(job, tmp_path / "restored", run_dir=again)
    assert [r["step"] for r in records2] == list(range(25, 33))
    for key in ("f_sft", "f_dpo"):
        assert summary2["metrics"][key] == pytest.approx(summary["metrics"][key], rel=1e-6)


class CheckpointLog:
    """A run listener that keeps the checkpoints a run hands out (what a Tune trial reports)."""

    def __init__(self):
        self.seen = []

    def on_record(self, record):
        pass

    def on_checkpoint(self, step, path):
        self.seen.append((step, Path(path)))

    def on_end(self, summary, run_dir):
        pass


def test_sequential_job_through_the_cli(small_data, tmp_path):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    # The shipped file on 128 of its rows (8 steps of 16 per epoch), 4 epochs: 2 of SFT, then 2 of DPO.
    proc = subprocess.run(
        [sys.executable, "launch.py", "run", "jobs/sft_dpo_sequential.yaml", "--out", str(tmp_path),
         "--set", f"data.sft.train={small_data['sft']}", "--set", f"data.preference.train={small_data['pref']}",
         "--set", "epochs=4", "--set", "estimate_optima=false", "--set", "optima={sft: 0.3, dpo: 0.2}",
         "--set", "workers=1", "--set", "deepspeed.train_batch_size=16", "--set", "eval_every=8",
         "--set", "checkpoint_every=16"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = next(tmp_path.glob("sft-dpo-sequential-*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded"
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    main = [r for r in records if r.get("phase") == "main" and "event" not in r and r["step"] > 0]
    half = len(main) // 2
    assert all(r["w_sft"] == 1.0 for r in main[:half]) and all(r["w_dpo"] == 1.0 for r in main[half:])
    # DPO's reference is the SFT result: the first DPO step starts at ln 2 again.
    assert main[half]["dpo_loss"] == pytest.approx(np.log(2), abs=1e-4)
    assert main[-1]["dpo_loss"] < 0.6
    for key in ("f_sft", "f_dpo", "gap_sft", "gap_dpo", "ideal_distance", "tokens_per_s"):
        assert key in summary["metrics"]
