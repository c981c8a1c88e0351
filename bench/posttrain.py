"""Post-training benchmark: DPO throughput vs TRL, method cost vs Sequential, MFU, fidelity over seeds.

    python bench/posttrain.py                       # throughput, profile, methods, fidelity (+ MFU): ~25 min, 2 quiet cores
    python bench/posttrain.py --parts methods,fidelity    # some parts; the others are kept from the last JSON
    python bench/posttrain.py --parts mfu           # re-measure the matmul peak, recompute MFU
    python bench/posttrain.py --render --reading r.json   # re-render posttrain.md from the JSON with readings
    python bench/posttrain.py --quick               # smoke run: fewer steps, one seed

Writes bench/results/posttrain.json (raw numbers + machine/commit/date), posttrain.md (tables) and
posttrain_plane.png / posttrain_throughput.png.

* throughput: a DPO step of our Ray Train + DeepSpeed trainer (2 workers x 1 CPU, ZeRO-2; also 1
  worker x 2 threads and ZeRO-0) against TRL's ``DPOTrainer`` (one process, 2 threads) on the same
  model, data, global batch (32 pairs), max_length (48), with a frozen reference model and with
  precomputed reference log-probs. Tokens = non-pad tokens of the chosen+rejected policy forward on
  both sides (ours: the trainer's ``tokens`` record, checked here against the tokenised data; TRL:
  ``attention_mask.sum()`` of its batches, its own ``num_tokens`` counter). Steady state: the first
  ``WARMUP`` steps of each run are dropped; a step is measured end to end (batch building included)
  on both sides. TRL runs in a child process, before Ray starts, so its peak RSS is its own.
* methods: Sequential, Mix, ALRIGHT, MAXRIGHT at λ=0.5, same epochs and data: training-loop time
  (sum of step_s, step 1 excluded as it holds the start-of-run evaluation) and wall of the phase,
  every method reading reference tables as the job's default does (``--frozen-ref``: a frozen
  reference model runs beside the policy instead; Sequential's DPO stage reads a table either way).
* mfu: model FLOPs = 6·N per trained token + 2·N per reference-forward token (N = parameters
  without the input embedding; attention score FLOPs are < 2% at these lengths and left out)
  against a 2048² fp32 matmul on 2 threads measured here.
* fidelity: final ideal distance ‖(f_SFT − f*_SFT, f_DPO − f*_DPO)‖ per method over seeds 0, 1, 2;
  f* per seed from an SFT-only and a DPO-only run of the same length, passed as ``optima``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, median, write  # noqa: E402

JOB = ROOT / "jobs" / "sft_dpo_alright.yaml"  # the shipped job: tiny Llama, synthlang data, G=32, L=48
DATA = ROOT / "data" / "synthlang"
WARMUP = 5  # steps dropped at the start of every run (allocator, caches, first gloo buckets)
G, MAX_LEN, LR, BETA = 32, 48, 0.003, 0.1
MODELS = {
    # the shipped jobs' model
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
    # large enough that matmuls, not per-op overhead, take most of a step
    "small": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 2},
}
METHODS = ["sequential", "mix", "alright", "maxright"]
PAPER = {"time_vs_sequential": {"mix": 0.37, "alright": -0.01, "maxright": 0.025},
         "ideal_distance": {"sequential": 0.83, "mix": 0.165, "alright": 0.26, "maxright": 0.16}}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


# ---------------------------------------------------------------- machine peak
def matmul_peak(threads: int, n: int = 2048, repeats: int = 10) -> dict[str, float]:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    torch.set_num_threads(old)
    flops = 2.0 * n ** 3
    return {"threads": threads, "n": n, "gflops_median": flops / median(times) / 1e9,
            "gflops_best": flops / min(times) / 1e9}


# ---------------------------------------------------------------- model and data helpers
def model_config(size: str) -> dict[str, Any]:
    return {"model_type": "llama", **MODELS[size], "max_position_embeddings": 128, "tie_word_embeddings": False}


def build_model(size: str, root: Path, seed: int = 0) -> Path:
    from dist_core.posttrain.init_model import build_model_dir

    return build_model_dir(model_config(size), DATA / "tokenizer", root / f"init-{size}-seed{seed}", seed)


def flop_params(model_dir: Path) -> dict[str, int]:
    """N for the FLOP count: every parameter except the input embedding (a lookup, not a matmul)."""
    from safetensors import safe_open

    total = embed = 0
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        for k in f.keys():
            n = int(np.prod(f.get_slice(k).get_shape()))
            total += n
            if "embed_tokens" in k:
                embed += n
    return {"total": total, "input_embedding": embed, "flop_params": total - embed}


def tokenised():
    """Our tokenisation of the shipped data (the trainer's own code)."""
    from transformers import AutoTokenizer

    from dist_core.posttrain import data as D

    tok = AutoTokenizer.from_pretrained(str(DATA / "tokenizer"))
    chosen, rejected = D.encode_preference(tok, D.read_rows(DATA / "pref_train.jsonl"), MAX_LEN)
    sft = D.encode_sft(tok, D.read_rows(DATA / "sft_train.jsonl"), MAX_LEN)
    return sft, chosen, rejected


def expected_tokens(method_weights: list[tuple[float, float]], seed: int, sft, chosen, rejected) -> list[int]:
    """Non-pad tokens of the policy forward per step, rebuilt from the deterministic batch order."""
    from dist_core.posttrain import data as D

    spe = min(len(sft), len(chosen)) // G
    out = []
    for step, w in enumerate(method_weights):
        epoch, s = divmod(step, spe)
        n = 0
        if w[0] > 0:
            n += sum(len(sft.ids[i]) for i in D.global_batch(len(sft), G, seed, epoch, s))
        if w[1] > 0:
            idx = D.global_batch(len(chosen), G, seed + 1, epoch, s)
            n += sum(len(chosen.ids[i]) + len(rejected.ids[i]) for i in idx)
        out.append(n)
    return out


# ---------------------------------------------------------------- TRL (child process)
def trl_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """One DPOTrainer run in this (fresh) process: step times, tokens per step, peak RSS."""
    import torch

    torch.set_num_threads(cfg["threads"])
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(cfg["tokenizer"])
    model = AutoModelForCausalLM.from_pretrained(cfg["model_dir"], dtype=torch.float32)
    ds = datasets.load_dataset("json", data_files=cfg["data"], split="train")
    args = DPOConfig(output_dir=cfg["out"], per_device_train_batch_size=G, gradient_accumulation_steps=1,
                     num_train_epochs=cfg["epochs"], learning_rate=LR, lr_scheduler_type="constant",
                     warmup_steps=0, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0, max_grad_norm=1.0,
                     beta=BETA, max_length=MAX_LEN, precompute_ref_log_probs=cfg["precompute"], report_to=[],
                     use_cpu=True, save_strategy="no", eval_strategy="no", logging_steps=10**6,
                     disable_tqdm=True, seed=0, dataloader_num_workers=0, bf16=False)
    t_init = time.perf_counter()
    box: dict[str, Any] = {}

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.step_s: list[float] = []
            self.tokens: list[int] = []
            self.last = 0.0
            self.prev_tokens = 0

        def on_train_begin(self, args, state, control, **kw):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.step_s.append(now - self.last)
            self.last = now
            total = int(box["trainer"]._total_train_tokens)
            self.tokens.append(total - self.prev_tokens)
            self.prev_tokens = total

    timer = Timer()
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=ds, processing_class=tok,
                         callbacks=[timer])
    box["trainer"] = trainer
    init_s = time.perf_counter() - t_init  # includes the reference pass when precomputing
    rss_ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    rows = trainer.train_dataset
    per_row = [len(p) + len(c) + len(r) + len(p) for p, c, r in
               zip(rows["prompt_ids"], rows["chosen_ids"], rows["rejected_ids"])]
    return {"step_s": timer.step_s, "tokens": timer.tokens, "init_s": init_s, "train_s": train_s,
            "rss_start_mb": rss_start, "rss_ready_mb": rss_ready,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "pair_tokens_total": int(sum(per_row)), "rows": len(per_row),
            "optim": str(trainer.args.optim), "trl": __import__("trl").__version__}


def run_trl(model_dir: Path, precompute: bool, epochs: int, tmp: Path, threads: int = 2) -> dict[str, Any]:
    out = tmp / f"trl-{model_dir.name}-{int(precompute)}"
    cfg = {"model_dir": str(model_dir), "tokenizer": str(DATA / "tokenizer"), "data": str(DATA / "pref_train.jsonl"),
           "precompute": precompute, "epochs": epochs, "threads": threads, "out": str(out)}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--trl-child", json.dumps(cfg)], capture_output=True,
                          text=True, env=env, cwd=str(ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"TRL child failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = time.perf_counter() - t0
    return res


# ---------------------------------------------------------------- ours (Ray Train + DeepSpeed)
def ray_start() -> None:
    import logging

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             logging_level=logging.ERROR)


def run_ours(name: str, overrides: list[str], runs: Path) -> dict[str, Any]:
    """One job through the real runner; the main phase's records, phase file and summary."""
    from dist_core import spec
    from dist_core.runner import run_job

    base = [f"name={name}", "estimate_optima=false", "checkpoint_every=0", "eval_every=1000000"]
    job = spec.load(JOB, base + overrides)
    t0 = time.perf_counter()
    summary = run_job(job, out=runs, progress=False, echo=lambda s: None)
    wall = time.perf_counter() - t0
    run_dir = Path(summary["checkpoint"]).parent
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    main = [r for r in records if r.get("phase") == "main" and "event" not in r]
    phase = json.loads((run_dir / "phases" / "main.json").read_text())
    steps = [r for r in main if r.get("step", 0) > 0]
    return {"summary": summary["metrics"], "job_wall_s": wall, "phase_wall_s": phase["wall_s"],
            "peak_rss_mb_by_rank": phase.get("peak_rss_mb_by_rank"),
            "start": next((r for r in main if r.get("step") == 0), None),
            "step_s": [r["step_s"] for r in steps], "tokens": [int(r["tokens"]) for r in steps],
            "w": [(r["w_sft"], r["w_dpo"]) for r in steps],
            "events": [r for r in records if "event" in r]}


def steady(step_s: list[float], tokens: list[int], warmup: int = WARMUP) -> dict[str, float]:
    """tokens/s = mean tokens per step / median step time: robust to the neighbours' load spikes, which hit
    single steps (the mean-based rate, sum(tokens)/sum(step_s), is kept beside it)."""
    s, t = step_s[warmup:], tokens[warmup:]
    return {"steps": len(s), "median_step_s": median(s), "mean_step_s": sum(s) / len(s),
            "p90_step_s": float(np.percentile(s, 90)), "tokens_per_step": sum(t) / len(t),
            "tokens_per_s": (sum(t) / len(t)) / median(s), "tokens_per_s_mean_based": sum(t) / sum(s)}


# ---------------------------------------------------------------- part 1: throughput
def cpu_busy(interval: float = 1.0) -> float:
    """Fraction of all cores busy over ``interval`` (other people's jobs share this machine)."""
    def read() -> tuple[int, int]:
        v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(v), v[3] + v[4]

    t0, i0 = read()
    time.sleep(interval)
    t1, i1 = read()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(limit: float = 0.3, max_wait: float = 15.0) -> dict[str, float]:
    """Wait (a little) until the machine is mostly idle before a timed run; record how busy it was."""
    t0 = time.perf_counter()
    while True:
        busy = cpu_busy()
        if busy < limit or time.perf_counter() - t0 > max_wait:
            return {"cpu_busy_before": busy, "waited_s": time.perf_counter() - t0}


def ours_variants(size: str) -> list[tuple[str, list[str]]]:
    two = ["workers=2", "cpus_per_worker=1"]
    one = ["workers=1", "cpus_per_worker=2", "deepspeed.train_micro_batch_size_per_gpu=32"]
    z = lambda k: [f"deepspeed.zero_optimization.stage={k}"]  # noqa: E731
    frozen = ["precompute_ref=false"]
    v = [("2w x 1 CPU, ZeRO-2, ref model", two + z(2) + frozen),
         ("2w x 1 CPU, ZeRO-2, precomputed", two + z(2) + ["precompute_ref=true"]),
         ("2w x 1 CPU, ZeRO-0, ref model", two + z(0) + frozen),
         ("1w x 2 threads, ZeRO-2, ref model", one + z(2) + frozen)]
    if size != "tiny":  # the larger model: the two main variants only (each run costs a TorchTrainer start)
        v = v[:2]
    return v


def part_throughput(tmp: Path, runs: Path, toks, quick: bool, sizes: list[str], repeats: int) -> dict[str, Any]:
    """TRL and our main variant alternate (repeats times, the median run kept): neighbours' load hits
    both alike."""
    sft, chosen, rejected = toks
    epochs = {"tiny": 1 if quick else 3, "small": 1}
    out: dict[str, Any] = {"global_batch_pairs": G, "max_length": MAX_LEN, "warmup_steps_dropped": WARMUP,
                           "epochs": epochs, "repeats": repeats, "models": {}, "trl": {}, "ours": {}}
    n_run = [0]

    def ours(size: str, label: str, ov: list[str]) -> dict[str, Any]:
        cfg = [f"model.config.{k}={v}" for k, v in MODELS[size].items()]
        quiet = wait_quiet()
        r = run_ours(f"tp-{size}-{n_run[0]}", ["method=dpo", f"epochs={epochs[size]}"] + cfg + ov, runs)
        n_run[0] += 1
        r.update(quiet, loadavg_after=loadavg(), steady=steady(r["step_s"], r["tokens"]),
                 total_peak_rss_mb=sum(r["peak_rss_mb_by_rank"]))
        # the trainer's token count against the tokenised data, step by step
        exp = expected_tokens(r["w"], 0, sft, chosen, rejected)
        r["tokens_match_data"] = r["tokens"] == exp
        r["tokens_mismatch"] = [(i + 1, g, e) for i, (g, e) in enumerate(zip(r["tokens"], exp)) if g != e][:10]
        r["steps_recorded"] = len(r["tokens"])
        del r["w"]
        log(f"  ours {size}/{label}: {r['steady']['tokens_per_s']:.0f} tok/s, median step "
            f"{1e3 * r['steady']['median_step_s']:.1f} ms, RSS {[round(x) for x in r['peak_rss_mb_by_rank']]} MB, "
            f"tokens match data: {r['tokens_match_data']}, busy before {quiet['cpu_busy_before']:.2f}")
        return r

    def trl(size: str, mdir: Path, pre: bool) -> dict[str, Any]:
        quiet = wait_quiet()
        r = run_trl(mdir, pre, epochs[size], tmp)
        r.update(quiet, loadavg_after=loadavg(), steady=steady(r["step_s"], r["tokens"]))
        log(f"  TRL {size}/{'precomputed' if pre else 'ref model'}: {r['steady']['tokens_per_s']:.0f} tok/s, median "
            f"step {1e3 * r['steady']['median_step_s']:.1f} ms, peak RSS {r['peak_rss_mb']:.0f} MB, "
            f"busy before {quiet['cpu_busy_before']:.2f}")
        return r

    def best(rs: list[dict[str, Any]]) -> dict[str, Any]:
        """The run with the median tokens/s (the upper middle of an even count), with every repeat's
        tokens/s and which runs started on a busy machine (over 30% of the CPUs in use)."""
        ranked = sorted(rs, key=lambda r: r["steady"]["tokens_per_s"])
        b = dict(ranked[len(ranked) // 2])
        b["repeats_tokens_per_s"] = [r["steady"]["tokens_per_s"] for r in rs]
        b["repeats_busy_before"] = [r["cpu_busy_before"] for r in rs]
        b["busy_repeats"] = sum(r["cpu_busy_before"] > 0.3 for r in rs)
        return b

    for size in sizes:
        mdir = build_model(size, tmp)
        out["models"][size] = {"config": model_config(size), "params": flop_params(mdir)}
        variants = ours_variants(size)
        for pre in (False, True):
            ref = "precomputed" if pre else "ref_model"
            label, ov = variants[1 if pre else 0]
            log(f"throughput {size}, {ref}: TRL and ours alternating x{repeats}")
            t_runs, o_runs = [], []
            for _ in range(repeats):
                t_runs.append(trl(size, mdir, pre))
                o_runs.append(ours(size, label, ov))
            out["trl"][f"{size}/{ref}"] = best(t_runs)
            out["ours"][f"{size}/{label}"] = best(o_runs)
        for label, ov in variants[2:]:
            out["ours"][f"{size}/{label}"] = best([ours(size, label, ov)])
        # identical initial weights on both sides (the job builds the same model from the same seed)
        job_init = next(runs.glob(f"tp-{size}-*/init_model/model.safetensors"))
        out["models"][size]["same_init_as_trl"] = job_init.read_bytes() == (mdir / "model.safetensors").read_bytes()
    # token definition: per pair, ours vs TRL's tokenisation of the same rows
    ours_pairs = sum(len(c) + len(r) for c, r in zip(chosen.ids, rejected.ids))
    trl_any = next(iter(out["trl"].values()))
    out["token_check"] = {"ours_tokens_all_pairs": ours_pairs, "trl_tokens_all_pairs": trl_any["pair_tokens_total"],
                          "rows": len(chosen), "identical": ours_pairs == trl_any["pair_tokens_total"],
                          "ours_trainer_tokens_match_data": all(r["tokens_match_data"] for r in out["ours"].values())}
    out["ratios"] = {}
    for size in out["models"]:
        for label, _ in ours_variants(size):
            ref = "precomputed" if label.endswith("precomputed") else "ref_model"
            o, t = out["ours"][f"{size}/{label}"], out["trl"][f"{size}/{ref}"]
            out["ratios"][f"{size}/{label} vs TRL {ref}"] = {
                "tokens_per_s": o["steady"]["tokens_per_s"] / t["steady"]["tokens_per_s"],
                "peak_rss_total": o["total_peak_rss_mb"] / t["peak_rss_mb"]}
    return out


# ---------------------------------------------------------------- profile: where a step of ours goes
def profile_loop(cfg: dict[str, Any]) -> None:
    """A Ray Train worker: the real ``worker.Trainer``, its step's pieces timed by wrapping them."""
    import torch

    from dist_core.posttrain import worker as W

    tr = W.Trainer(cfg)
    acc: dict[str, float] = {}

    def wrap(obj: Any, name: str, key: str) -> None:
        f = getattr(obj, name)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                acc[key] = acc.get(key, 0.0) + time.perf_counter() - t
        setattr(obj, name, timed)

    wrap(tr, "_batches", "batch building (collate, both data sets)")
    wrap(tr.engine, "forward", "policy forward")
    wrap(tr.ref, "logps", "reference log-probs (frozen model forward or table lookup)")
    wrap(tr, "_losses", "forward + losses (incl. the two above)")
    wrap(tr.engine, "backward", "backward (incl. ZeRO-2 gradient reduce)")
    wrap(tr.engine, "step", "optimizer step (DeepSpeed)")
    wrap(W, "_all_mean", "metric all-reduce")
    wrap(W, "_broadcast_weights", "weights broadcast")
    warm, n = cfg["warm"], cfg["steps"]
    for s in range(warm):
        tr._step(s)
    acc.clear()
    t0 = time.perf_counter()
    for s in range(warm, warm + n):
        tr._step(s)
    total = time.perf_counter() - t0
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for s in range(warm + n, warm + n + 5):
            tr._step(s)
    if tr.rank == 0:
        out = {"step_ms": 1e3 * total / n, "parts_ms": {k: 1e3 * v / n for k, v in acc.items()},
               "torch_threads": torch.get_num_threads(),
               "top_ops": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)}
        Path(cfg["out_file"]).write_text(json.dumps(out))


def profile_trl(mdir: Path, pre: bool, steps: int, warm: int) -> dict[str, Any]:
    """TRL's step split the same way (in this process, 2 threads)."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as d:
        args = DPOConfig(output_dir=d, per_device_train_batch_size=G, max_length=MAX_LEN, report_to=[], use_cpu=True,
                         save_strategy="no", logging_steps=10**6, disable_tqdm=True, learning_rate=LR, beta=BETA,
                         precompute_ref_log_probs=pre, max_grad_norm=1.0)
        tr = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(str(mdir)), args=args,
                        train_dataset=datasets.load_dataset("json", data_files=str(DATA / "pref_train.jsonl"),
                                                            split="train"),
                        processing_class=AutoTokenizer.from_pretrained(str(DATA / "tokenizer")))
        tr.create_optimizer_and_scheduler(num_training_steps=1000)
        tr.current_gradient_accumulation_steps = 1
        it = iter(tr.get_train_dataloader())
        acc: dict[str, float] = {}

        def timed(key, f, *a, **k):
            t = time.perf_counter()
            out = f(*a, **k)
            acc[key] = acc.get(key, 0.0) + time.perf_counter() - t
            return out

        def step():
            batch = timed("batch building (collate)", next, it)
            tr.model.train()
            loss = timed("forward + losses (incl. reference)", tr.compute_loss, tr.model, batch)
            timed("backward", tr.accelerator.backward, loss)
            timed("clip + optimizer step", lambda: (torch.nn.utils.clip_grad_norm_(tr.model.parameters(), 1.0),
                                                    tr.optimizer.step(), tr.optimizer.zero_grad()))
        for _ in range(warm):
            step()
        acc.clear()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        total = time.perf_counter() - t0
    return {"step_ms": 1e3 * total / steps, "parts_ms": {k: 1e3 * v / steps for k, v in acc.items()}}


def part_profile(tmp: Path) -> dict[str, Any]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from dist_core import spec
    from dist_core.posttrain.job import absolute, reference_cache_dir

    mdir = build_model("tiny", tmp)
    out: dict[str, Any] = {"model": "tiny", "warm_steps": 5, "timed_steps": 15}
    for label, ov in ours_variants("tiny")[:2]:
        job = absolute(spec.load(JOB, ["method=dpo", "epochs=3", "checkpoint_every=0", "estimate_optima=false", *ov]))
        f = tmp / f"profile-{len(out)}.json"
        cfg = {"job": job.model_dump(mode="json"), "method": "dpo", "phase": "main", "optima": None,
               "model_dir": str(mdir), "ref_cache": str(reference_cache_dir()), "sink": None, "out_file": str(f),
               "warm": 5, "steps": 15}
        wait_quiet()
        log(f"profile ours tiny/{label} ...")
        TorchTrainer(profile_loop, train_loop_config=cfg, torch_config=TorchConfig(backend="gloo"),
                     scaling_config=ScalingConfig(num_workers=job.workers, use_gpu=False,
                                                  resources_per_worker={"CPU": job.cpus_per_worker}),
                     run_config=RunConfig(name=f"profile-{len(out)}", storage_path=str(tmp / "profile"))).fit()
        out[f"ours {label}"] = json.loads(f.read_text())
    for pre in (False, True):
        wait_quiet()
        log(f"profile TRL tiny/{'precomputed' if pre else 'ref model'} ...")
        out[f"TRL {'precomputed' if pre else 'ref model'}"] = profile_trl(mdir, pre, 15, 5)
    for k, v in out.items():
        if isinstance(v, dict) and "parts_ms" in v:
            log(f"  {k}: {v['step_ms']:.1f} ms/step: " + ", ".join(f"{a} {b:.1f}" for a, b in v["parts_ms"].items()))
    return out


# ---------------------------------------------------------------- part 2+4: methods and fidelity
def run_seed(seed: int, epochs: int, runs: Path, toks, extra: list[str] = ()) -> dict[str, Any]:
    sft, chosen, rejected = toks
    out: dict[str, Any] = {}
    common = [f"seed={seed}", f"epochs={epochs}", *extra]
    for m in ("sft", "dpo"):
        log(f"seed {seed}: {m}-only (for f*) ...")
        r = run_ours(f"opt-{m}-s{seed}", [f"method={m}", *common], runs)
        out[m] = slim(r, seed, toks)
    optima = {"sft": out["sft"]["f_sft"], "dpo": out["dpo"]["f_dpo"]}
    for m in METHODS:
        log(f"seed {seed}: {m} ...")
        r = run_ours(f"{m}-s{seed}", [f"method={m}", "lam=0.5", f"optima={{sft: {optima['sft']!r}, dpo: {optima['dpo']!r}}}",
                                      *common], runs)
        out[m] = slim(r, seed, toks)
        log(f"  {m}: f=({out[m]['f_sft']:.4f}, {out[m]['f_dpo']:.4f}) ideal distance "
            f"{out[m]['ideal_distance']:.4f}, loop {out[m]['loop_s']:.1f} s, phase wall {out[m]['phase_wall_s']:.1f} s")
    out["optima"] = optima
    return out


def slim(r: dict[str, Any], seed: int, toks) -> dict[str, Any]:
    sft, chosen, rejected = toks
    s = r["summary"]
    w = r["w"]
    exp = expected_tokens(w, seed, sft, chosen, rejected)
    pref_tok = expected_tokens([(0.0, x[1]) for x in w], seed, sft, chosen, rejected)
    n_dpo_steps = sum(1 for x in w if x[1] > 0)
    return {"f_sft": s.get("f_sft"), "f_dpo": s.get("f_dpo"), "gap_sft": s.get("gap_sft"), "gap_dpo": s.get("gap_dpo"),
            "ideal_distance": s.get("ideal_distance"), "eval_reward_acc": s.get("eval_reward_acc"),
            "start": {k: r["start"][k] for k in ("f_sft", "f_dpo") if r["start"] and k in r["start"]},
            "steps": len(r["step_s"]), "dpo_steps": n_dpo_steps, "sft_steps": sum(1 for x in w if x[0] > 0),
            # step 1 also holds the start-of-run evaluation: left out of the loop time
            "loop_s": sum(r["step_s"][1:]), "median_step_s": median(r["step_s"][1:]),
            "phase_wall_s": r["phase_wall_s"], "job_wall_s": r["job_wall_s"],
            "tokens_policy": sum(r["tokens"][1:]), "tokens_pref": sum(pref_tok[1:]),
            "tokens_match_data": r["tokens"] == exp, "peak_rss_mb_by_rank": r["peak_rss_mb_by_rank"],
            "step_s": r["step_s"], "w": w}


def summarize_methods(seeds: dict[int, dict[str, Any]]) -> dict[str, Any]:
    per: dict[str, Any] = {}
    for m in METHODS:
        vals = [seeds[s][m] for s in seeds]
        seq = [seeds[s]["sequential"] for s in seeds]
        rel_loop = [v["loop_s"] / q["loop_s"] - 1 for v, q in zip(vals, seq)]
        rel_wall = [v["phase_wall_s"] / q["phase_wall_s"] - 1 for v, q in zip(vals, seq)]
        d = [v["ideal_distance"] for v in vals]
        per[m] = {"loop_s_mean": statistics.mean(v["loop_s"] for v in vals),
                  "phase_wall_s_mean": statistics.mean(v["phase_wall_s"] for v in vals),
                  "median_step_ms": 1e3 * statistics.mean(v["median_step_s"] for v in vals),
                  "loop_vs_sequential": statistics.mean(rel_loop), "wall_vs_sequential": statistics.mean(rel_wall),
                  "loop_vs_sequential_by_seed": rel_loop, "loop_vs_sequential_median": statistics.median(rel_loop),
                  "wall_vs_sequential_by_seed": rel_wall,
                  "dpo_steps": statistics.mean(v["dpo_steps"] for v in vals),
                  "sft_steps": statistics.mean(v["sft_steps"] for v in vals),
                  "ideal_distance_mean": statistics.mean(d), "ideal_distance_std": statistics.stdev(d) if len(d) > 1 else 0.0,
                  "gap_sft_mean": statistics.mean(v["gap_sft"] for v in vals),
                  "gap_dpo_mean": statistics.mean(v["gap_dpo"] for v in vals),
                  "ideal_distance_by_seed": d}
    return per


# ---------------------------------------------------------------- MFU
def mfu_rows(res: dict[str, Any], peak: float) -> list[dict[str, Any]]:
    rows = []
    tp = res.get("throughput")
    if tp:
        for side in ("trl", "ours"):
            for key, r in tp.get(side, {}).items():
                size = key.split("/")[0]
                n = tp["models"][size]["params"]["flop_params"]
                ref_fwd = "precomputed" not in key
                tps = r["steady"]["tokens_per_s"]
                flops = (6 + (2 if ref_fwd else 0)) * n * tps
                rows.append({"run": f"{'TRL' if side == 'trl' else 'ours'} {key}", "flop_params": n,
                             "tokens_per_s": tps, "gflops": flops / 1e9, "mfu": flops / 1e9 / peak})
    ms = res.get("methods_fidelity")
    if ms:
        n = ms["flop_params"]
        for m in METHODS:
            tot_f = tot_s = 0.0
            for s, runs in ms["seeds"].items():
                v = runs[m]
                trained, pref = v["tokens_policy"], v["tokens_pref"]
                ref_tokens = pref if not ms["precompute_ref"] and m != "sequential" else 0
                if m == "sequential":  # the reference table of the SFT result over all pairs, once
                    ref_tokens = ms["pref_tokens_all_pairs"]
                tot_f += (6 * trained + 2 * ref_tokens) * n
                tot_s += v["loop_s"]
            rows.append({"run": f"ours {m} (tiny, λ=0.5, all seeds)", "flop_params": n,
                         "tokens_per_s": None, "gflops": tot_f / tot_s / 1e9, "mfu": tot_f / tot_s / 1e9 / peak})
    return rows


# ---------------------------------------------------------------- outputs
def plane_png(path: Path, mf: dict[str, Any]) -> None:
    from dist_core.plots import _plt

    plt = _plt()
    seeds = list(mf["seeds"])
    fig, axes = plt.subplots(1, len(seeds), figsize=(4.6 * len(seeds), 4.2), squeeze=False)
    colours = {"sequential": "tab:gray", "mix": "tab:orange", "alright": "tab:blue", "maxright": "tab:green"}
    for ax, s in zip(axes[0], seeds):
        runs = mf["seeds"][s]
        o = runs["optima"]
        for m in METHODS:
            ax.plot([runs[m]["f_sft"]], [runs[m]["f_dpo"]], "o", ms=8, color=colours[m],
                    label=f"{m} (d={runs[m]['ideal_distance']:.3f})")
        st = runs["mix"].get("start") or {}
        if st:
            ax.plot([st["f_sft"]], [st["f_dpo"]], "x", ms=8, color="black", label="start")
        ax.plot([o["sft"]], [o["dpo"]], "*", ms=15, color="tab:red", label="ideal (f*_SFT, f*_DPO)")
        ax.set_xscale("log")
        ax.set_xlabel("f_SFT (eval, log scale)")
        ax.set_ylabel("f_DPO (eval)")
        ax.set_title(f"seed {s}, λ=0.5")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("final points of the four methods in the (f_SFT, f_DPO) plane")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def throughput_png(path: Path, tp: dict[str, Any]) -> None:
    from dist_core.plots import _plt

    plt = _plt()
    sizes = list(tp["models"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.0), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        labels, vals, cols = [], [], []
        for ref in ("ref_model", "precomputed"):
            labels.append(f"TRL\n{ref}")
            vals.append(tp["trl"][f"{size}/{ref}"]["steady"]["tokens_per_s"])
            cols.append("tab:gray")
        for label, _ in ours_variants(size):
            labels.append("ours\n" + label.replace(", ", "\n"))
            vals.append(tp["ours"][f"{size}/{label}"]["steady"]["tokens_per_s"])
            cols.append("tab:blue")
        ax.bar(range(len(vals)), vals, color=cols)
        ax.set_xticks(range(len(vals)), labels, fontsize=6)
        ax.set_ylabel("tokens/s (steady state)")
        ax.set_title(f"DPO step throughput, {size} model")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def markdown(doc: dict[str, Any]) -> str:
    L: list[str] = ["# Post-training benchmark (`bench/posttrain.py`)", "",
                    f"Machine: {doc['machine']['cpu']}, {doc['machine']['cores']} cores; commit {doc['commit']}; "
                    f"{doc['date']}. fp32 matmul peak (2048², best of 20): "
                    f"**{doc['peak']['2_threads']['gflops_best']:.0f} GFLOP/s on 2 threads** "
                    f"(1 thread: {doc['peak']['1_thread']['gflops_best']:.0f}). Other sessions ran jobs on the same "
                    f"2 cores during the run (CPU busy before each timed run and load averages are in the JSON).", ""]
    tp = doc.get("throughput")
    if tp:
        L += ["## DPO step throughput vs TRL's DPOTrainer", "",
              f"Same model weights, data (`pref_train.jsonl`, {tp['token_check']['rows']} pairs), global batch "
              f"{tp['global_batch_pairs']} pairs, max_length {tp['max_length']}, lr/β/AdamW betas/clipping, 2 cores. "
              f"Tokens = non-pad tokens of the chosen+rejected policy forward (identical definition: both "
              f"tokenisations give {tp['token_check']['ours_tokens_all_pairs']} vs "
              f"{tp['token_check']['trl_tokens_all_pairs']} tokens over all pairs). Steady state: first "
              f"{tp['warmup_steps_dropped']} steps dropped; tokens/s = mean tokens per step / median step time (each step "
              f"timed end to end, batch building included; median because other jobs share this machine and "
              f"slow single steps); TRL and our ZeRO-2 runs alternate, the median of {tp.get('repeats', 1)} kept. "
              f"TRL: one process, 2 threads, its default optimizer (fused AdamW); ours: torch AdamW. "
              f"Peak memory: max RSS (ours: per Ray Train worker, summed; TRL: its process).", ""]
        for size in tp["models"]:
            p = tp["models"][size]["params"]
            L += [f"**{size}** model ({tp['models'][size]['config']['hidden_size']} hidden, "
                  f"{tp['models'][size]['config']['num_hidden_layers']} layers, {p['total'] / 1e6:.2f} M parameters, "
                  f"{tp['epochs'][size]} epochs = {tp['epochs'][size] * 32} steps per run):", "",
                  "| run | reference | median step (ms) | tokens/s | vs TRL (same reference) | peak RSS (MB) | vs TRL |",
                  "|---|---|---|---|---|---|---|"]
            for ref in ("ref_model", "precomputed"):
                t = tp["trl"][f"{size}/{ref}"]
                L.append(f"| TRL DPOTrainer, 1 proc × 2 threads | {ref.replace('_', ' ')} | "
                         f"{1e3 * t['steady']['median_step_s']:.1f} | {t['steady']['tokens_per_s']:.0f} | 1.00× | "
                         f"{t['peak_rss_mb']:.0f} | 1.00× |")
            for label, _ in ours_variants(size):
                o = tp["ours"][f"{size}/{label}"]
                ref = "precomputed" if "precomputed" in label else "ref_model"
                t = tp["trl"][f"{size}/{ref}"]
                rss = " + ".join(f"{x:.0f}" for x in o["peak_rss_mb_by_rank"])
                L.append(f"| ours, {label.rsplit(', ', 1)[0]} | {ref.replace('_', ' ')} | "
                         f"{1e3 * o['steady']['median_step_s']:.1f} | {o['steady']['tokens_per_s']:.0f} | "
                         f"**{o['steady']['tokens_per_s'] / t['steady']['tokens_per_s']:.2f}×** | {rss} = "
                         f"{o['total_peak_rss_mb']:.0f} | {o['total_peak_rss_mb'] / t['peak_rss_mb']:.2f}× |")
            L.append("")
        L += [doc.get("reading", {}).get("throughput", ""), ""]
    mf = doc.get("methods_fidelity")
    if mf:
        per = mf["per_method"]
        L += ["## Time of each method relative to Sequential (λ = 0.5)", "",
              f"Tiny model, {mf['epochs']} epochs × {mf['steps_per_epoch']} steps, 2 workers × 1 CPU, ZeRO-2, "
              f"{'precomputed reference' if mf['precompute_ref'] else 'frozen reference model'}; means over seeds "
              f"{', '.join(map(str, mf['seeds']))}. Loop = sum of per-step times (step 1, which holds the start-of-run "
              f"evaluation, left out); phase wall = the phase in the workers, from loading the model to the final "
              f"evaluation and export (Ray Train's start-up not included).", "",
              "| method | SFT / DPO steps | median step (ms) | loop (s) | loop vs Sequential: mean (median; by seed) | phase wall (s) | wall vs Sequential | paper (runtime vs Sequential) |",
              "|---|---|---|---|---|---|---|---|"]
        for m in METHODS:
            p = per[m]
            paper = "—" if m == "sequential" else pct(PAPER["time_vs_sequential"][m])
            L.append(f"| {m} | {p['sft_steps']:.0f} / {p['dpo_steps']:.0f} | {p['median_step_ms']:.1f} | "
                     f"{p['loop_s_mean']:.2f} | {'—' if m == 'sequential' else pct(p['loop_vs_sequential']) + ' (' + pct(p['loop_vs_sequential_median']) + '; ' + ', '.join(pct(x) for x in p['loop_vs_sequential_by_seed']) + ')'} | "
                     f"{p['phase_wall_s_mean']:.1f} | {'—' if m == 'sequential' else pct(p['wall_vs_sequential'])} | {paper} |")
        L += ["", doc.get("reading", {}).get("methods", ""), ""]
    mfu = doc.get("mfu")
    if mfu:
        L += ["## Model FLOPs utilisation", "",
              "Model FLOPs = 6·N per trained token + 2·N per reference-forward token, N = parameters without the input "
              f"embedding; against the measured {doc['peak']['2_threads']['gflops_best']:.0f} GFLOP/s (2 threads).", "",
              "| run | N | tokens/s | model GFLOP/s | MFU (measured peak) | MFU vs 175 GFLOP/s (RUNTIME.md, quiet machine) |",
              "|---|---|---|---|---|---|"]
        for r in mfu:
            tps = f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else "—"
            L.append(f"| {r['run']} | {r['flop_params'] / 1e6:.3f} M | {tps} | {r['gflops']:.2f} | {100 * r['mfu']:.1f}% | "
                     f"{100 * r['gflops'] / 175:.1f}% |")
        L += ["", doc.get("reading", {}).get("mfu", ""), ""]
    if mf and len(mf["seeds"]) >= 1:
        per = mf["per_method"]
        L += ["## Fidelity: final ideal distance at λ = 0.5", "",
              f"‖(f_SFT − f*_SFT, f_DPO − f*_DPO)‖ on the eval splits at the end of training; f* per seed from an "
              f"SFT-only and a DPO-only run of the same length ({mf['epochs']} epochs). Mean ± std over seeds "
              f"{', '.join(map(str, mf['seeds']))}.", "",
              "| method | SFT gap | DPO gap | ideal distance | by seed | paper (Pythia-1b) |", "|---|---|---|---|---|---|"]
        for m in METHODS:
            p = per[m]
            L.append(f"| {m} | {p['gap_sft_mean']:.3f} | {p['gap_dpo_mean']:.3f} | **{p['ideal_distance_mean']:.3f} ± "
                     f"{p['ideal_distance_std']:.3f}** | {', '.join(f'{x:.3f}' for x in p['ideal_distance_by_seed'])} | "
                     f"{PAPER['ideal_distance'][m]} |")
        opt = [mf["seeds"][s]["optima"] for s in mf["seeds"]]
        L += ["", "f* by seed: " + "; ".join(f"seed {s}: ({o['sft']:.4f}, {o['dpo']:.4f})" for s, o in zip(mf["seeds"], opt)),
              "", "![final points](posttrain_plane.png)", "", doc.get("reading", {}).get("fidelity", ""), ""]
    return "\n".join(L).rstrip() + "\n"


def render(doc: dict[str, Any]) -> None:
    if doc.get("methods_fidelity"):
        doc["methods_fidelity"]["per_method"] = summarize_methods(doc["methods_fidelity"]["seeds"])
    if doc.get("throughput"):
        throughput_png(RESULTS / "posttrain_throughput.png", doc["throughput"])
    if doc.get("methods_fidelity"):
        plane_png(RESULTS / "posttrain_plane.png", doc["methods_fidelity"])
    (RESULTS / "posttrain.md").write_text(markdown(doc))
    print(markdown(doc))


# ---------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="throughput,profile,methods,fidelity",
                    help="comma list of throughput, profile, methods, fidelity (mfu comes with whichever ran)")
    ap.add_argument("--sizes", default="tiny,small", help="models for the throughput part")
    ap.add_argument("--epochs", type=int, default=4, help="epochs of the method runs (even: Sequential splits evenly)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--repeats", type=int, default=2, help="alternating TRL/ours repeats of the main variants")
    ap.add_argument("--frozen-ref", action="store_true",
                    help="methods/fidelity: a frozen reference model instead of the default reference tables")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 epoch throughput, seed 0 only, 2 epochs")
    ap.add_argument("--keep", type=Path, default=None, help="keep run directories here (default: a temp dir)")
    ap.add_argument("--render", action="store_true", help="only re-render posttrain.md and the PNGs from the JSON")
    ap.add_argument("--reading", type=Path, default=None, help="with --render: a JSON of the tables' readings")
    ap.add_argument("--trl-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.render:  # re-render the tables and PNGs from the JSON (after editing the readings)
        doc = json.loads((RESULTS / "posttrain.json").read_text())
        if args.reading:
            doc["reading"] = json.loads(args.reading.read_text())
            (RESULTS / "posttrain.json").write_text(json.dumps(doc, indent=2) + "\n")
        render(doc)
        return
    if args.trl_child:
        res = trl_child(json.loads(args.trl_child))
        print(json.dumps(res))
        return
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"throughput", "methods", "fidelity", "mfu", "profile"}
    if unknown:
        ap.error(f"unknown parts: {sorted(unknown)}")
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    if "fidelity" not in parts:
        seeds = seeds[:1]  # timing alone needs one seed
    epochs = 2 if args.quick else args.epochs

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    prev = json.loads((RESULTS / "posttrain.json").read_text()) if (RESULTS / "posttrain.json").exists() else {}
    doc: dict[str, Any] = {k: v for k, v in prev.items() if k in ("throughput", "methods_fidelity", "profile", "reading", "bench_timings_s", "invocations")}
    t_all = time.perf_counter()
    doc["loadavg_start"] = loadavg()
    # the machine's capability: the best of this and earlier invocations (neighbours only ever lower it)
    now = {"1_thread": matmul_peak(1, repeats=20), "2_threads": matmul_peak(2, repeats=20), "date": time.strftime("%H:%M:%S")}
    doc["peak_measurements"] = [*prev.get("peak_measurements", []), now][-4:]
    doc["peak"] = {k: max((m[k] for m in doc["peak_measurements"]), key=lambda x: x["gflops_best"])
                   for k in ("1_thread", "2_threads")}
    torch.set_num_threads(2)
    log(f"matmul peak: {doc['peak']['2_threads']['gflops_best']:.0f} GFLOP/s (2 threads), "
        f"{doc['peak']['1_thread']['gflops_best']:.0f} (1 thread); load {doc['loadavg_start']}")
    tmp_ctx = tempfile.TemporaryDirectory(prefix="bench-posttrain-")
    tmp = Path(tmp_ctx.name)
    runs = args.keep or tmp / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    os.environ["DIST_CORE_CACHE"] = str(tmp / "cache")  # a cold reference-table cache for this run
    toks = tokenised()
    timings: dict[str, float] = dict(doc.get("bench_timings_s", {}))

    import ray

    if parts & {"throughput", "methods", "fidelity", "profile"}:
        ray_start()
    try:
        if "throughput" in parts:
            t0 = time.perf_counter()
            doc["throughput"] = part_throughput(tmp, runs, toks, args.quick, [s for s in args.sizes.split(",") if s],
                                                1 if args.quick else args.repeats)
            timings["throughput_s"] = time.perf_counter() - t0
        if "profile" in parts:
            t0 = time.perf_counter()
            doc["profile"] = part_profile(tmp)
            timings["profile_s"] = time.perf_counter() - t0
        if parts & {"methods", "fidelity"}:
            t0 = time.perf_counter()
            extra = ["precompute_ref=false"] if args.frozen_ref else []
            by_seed = {s: run_seed(s, epochs, runs, toks, extra) for s in seeds}
            mdir = build_model(list(MODELS)[0], tmp)
            mf = {"epochs": epochs, "steps_per_epoch": min(len(toks[0]), len(toks[1])) // G, "lam": 0.5,
                  "precompute_ref": not args.frozen_ref, "seeds": {str(s): v for s, v in by_seed.items()},
                  "flop_params": flop_params(mdir)["flop_params"],
                  "pref_tokens_all_pairs": sum(len(c) + len(r) for c, r in zip(toks[1].ids, toks[2].ids))}
            for s in mf["seeds"].values():
                for m in ["sft", "dpo", *METHODS]:
                    s[m]["w"] = [list(x) for x in s[m]["w"]]
            mf["per_method"] = summarize_methods(mf["seeds"])
            mf["tokens_match_data_all"] = all(s[m]["tokens_match_data"] for s in mf["seeds"].values()
                                              for m in ["sft", "dpo", *METHODS])
            doc["methods_fidelity"] = mf
            timings["methods_fidelity_s"] = time.perf_counter() - t0
    finally:
        if ray.is_initialized():
            ray.shutdown()
    doc["mfu"] = mfu_rows(doc, doc["peak"]["2_threads"]["gflops_best"])
    doc["loadavg_end"] = loadavg()
    timings["total_s"] = time.perf_counter() - t_all
    doc["bench_timings_s"] = timings
    doc["quick"] = args.quick
    doc.setdefault("invocations", prev.get("invocations", []) if isinstance(prev.get("invocations"), list) else [])
    doc["invocations"].append({"parts": sorted(parts), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "minutes": timings["total_s"] / 60, "loadavg_start": doc["loadavg_start"],
                               "loadavg_end": doc["loadavg_end"]})
    out = write("posttrain", doc)
    render(json.loads(out.read_text()))
    log(f"wrote {out} in {timings['total_s'] / 60:.1f} min")
    tmp_ctx.cleanup()


if __name__ == "__main__":
    main()
