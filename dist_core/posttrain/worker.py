"""One Ray Train worker: a DeepSpeed rank that trains the policy with the job's method.

The driver (``job.py``) starts one ``TorchTrainer`` per job with ``train_loop`` and a plain-dict
config that lists the job's phases (the SFT-only and DPO-only runs of ``estimate_optima``, then the
job's method). Each worker sets up once what every phase shares (the process group, tokenizer, data,
the frozen reference) in a :class:`Workspace`, then runs the phases one after another in the same
process: each phase loads the model with ``from_pretrained`` and wraps it with a fresh
``deepspeed.initialize`` (torch AdamW, the job's DeepSpeed config, gloo on CPU). Rank 0 streams
metric records to the driver's sink actor and every rank writes its ZeRO shard into Ray Train
checkpoints, each carrying ``progress.json`` (the finished phases and the current one); a restarted
worker group skips the finished phases and continues the current one from the newest checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from . import data as D
from . import methods
from .config import PosttrainJob
from .init_model import build_model, save_model_dir
from .losses import dpo_loss, sequence_logps, sft_loss, token_logps
from .reference import Reference, cached_table, fingerprint, logps_table

STATE_TAG = "state"
PROGRESS = "progress.json"  # in every checkpoint: {"done": {phase: final}, "current": phase | None}


@dataclass
class Corpus:
    """Tokenized data of one worker (every rank holds all rows; batches pick rows by index)."""

    sft: D.Encoded | None
    sft_eval: D.Encoded | None
    chosen: D.Encoded | None
    rejected: D.Encoded | None
    chosen_eval: D.Encoded | None
    rejected_eval: D.Encoded | None


def _encode_split(tok: Any, job: PosttrainJob) -> Corpus:
    L = job.data.max_length
    sft = sft_eval = chosen = rejected = chosen_eval = rejected_eval = None
    if job.data.sft is not None:
        sft = D.encode_sft(tok, job.data.training_rows(job.data.sft), L)
        sft_eval = D.encode_sft(tok, D.read_rows(job.data.sft.eval or job.data.sft.train), L)
    if job.data.preference is not None:
        chosen, rejected = D.encode_preference(tok, job.data.training_rows(job.data.preference), L)
        chosen_eval, rejected_eval = D.encode_preference(
            tok, D.read_rows(job.data.preference.eval or job.data.preference.train), L)
    return Corpus(sft, sft_eval, chosen, rejected, chosen_eval, rejected_eval)


def _lr_lambda(job: PosttrainJob, total: int):
    warm, kind = job.optim.warmup_steps, job.optim.schedule

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        frac = (step - warm) / max(1, total - warm)
        if kind == "linear":
            return max(0.0, 1.0 - frac)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))
        return 1.0

    return f


def _all_mean(values: list[float], world: int) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return (t / world).tolist()


def _broadcast_weights(w: tuple[float, float], world: int) -> tuple[float, float]:
    """Rank 0's choice for everyone (the reference code drew ALRIGHT's coin on each rank)."""
    if world == 1:
        return w
    t = torch.tensor(w, dtype=torch.float64)
    dist.broadcast(t, src=0)
    return (float(t[0]), float(t[1]))


def _gather_floats(x: float, world: int) -> list[float]:
    if world == 1:
        return [x]
    parts = [torch.zeros(1, dtype=torch.float64) for _ in range(world)]
    dist.all_gather(parts, torch.tensor([x], dtype=torch.float64))
    return [float(p) for p in parts]


def _optimizer(model: torch.nn.Module, job: PosttrainJob) -> torch.optim.Optimizer:
    """torch AdamW; with ZeRO-Offload, DeepSpeed's CPU Adam (JIT-built once, ~90 s), which DeepSpeed
    requires there because a plain torch optimizer on offloaded states is slow."""
    kw = dict(lr=job.optim.lr, betas=job.optim.betas, weight_decay=job.optim.weight_decay)
    offload = job.deepspeed.zero_optimization.offload_optimizer
    if offload is not None and offload.device == "cpu":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(model.parameters(), adamw_mode=True, **kw)
    return torch.optim.AdamW(model.parameters(), **kw)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def frozen_model(model_dir: str, stage: int, micro: int, accum: int, global_batch: int):
    """A frozen model from ``model_dir`` for no-grad forwards (DPO's reference, a distillation teacher):
    under ZeRO-3 a DeepSpeed inference engine sharded like the policy, else a whole copy per rank.

    Under ZeRO-3 every rank must run the same number of forwards (parameters are gathered collectively).
    """
    import deepspeed
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref.requires_grad_(False).eval()
    if stage == 3:
        cfg = {"train_micro_batch_size_per_gpu": micro, "zero_optimization": {"stage": 3},
               "steps_per_print": 10**9, "train_batch_size": global_batch, "gradient_accumulation_steps": accum}
        engine, *_ = deepspeed.initialize(model=ref, config=cfg)
        engine.eval()
        return engine
    return ref


def export_model(engine: Any, tok: Any, rank: int, metrics: dict[str, Any]) -> None:
    """The engine's model as ``save_pretrained`` safetensors (ZeRO-3 shards gathered) with the tokenizer
    and ``final.json`` (``metrics``), reported by rank 0 as the run's last Ray Train checkpoint."""
    import deepspeed
    import ray.train
    from ray.train import Checkpoint

    module = engine.module
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        state = {k: v.detach().clone() for k, v in module.state_dict().items()} if rank == 0 else None
    with tempfile.TemporaryDirectory() as d:
        if rank == 0:
            module.save_pretrained(os.path.join(d, "model"), state_dict=state, safe_serialization=True)
            tok.save_pretrained(os.path.join(d, "model"))
            Path(d, "final.json").write_text(json.dumps(metrics))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d) if rank == 0 else None)


SHM_OP = "deepspeed_shm_comm"  # ShareMemCommBuilder.NAME


def import_deepspeed() -> Any:
    """``import deepspeed`` without the eager ``import mlflow`` of its autotuner (about 1.6 s per rank
    here when mlflow is installed), and without its shared-memory all-reduce op.

    A training run never uses the autotuner, and a later ``import mlflow`` in the same process works
    as usual. The shm op serves only ``inference_all_reduce`` (tensor-parallel inference layers),
    yet ``init_distributed`` JIT-compiles it on CPU: 49–110 s on 2 cores, once per environment.
    Marked incompatible, it is not built, and ``inference_all_reduce`` would fall back to
    ``torch.distributed``; training collectives never touch it."""
    if "deepspeed" in sys.modules:
        return sys.modules["deepspeed"]
    hide = "mlflow" not in sys.modules
    if hide:
        sys.modules["mlflow"] = None  # type: ignore[assignment]  # makes ``import mlflow`` raise ImportError
    try:
        import deepspeed
    finally:
        if hide:
            del sys.modules["mlflow"]
    deepspeed.ops.__compatible_ops__[SHM_OP] = False
    return deepspeed


def announce_node(sink: Any, rank: int) -> None:
    """Tell the driver which Ray node this rank runs on (it writes them to ``workers.json``)."""
    if sink is not None:
        from ..placement import node_id

        sink.put.remote({"event": "worker_node", "rank": rank, "node": node_id()})


class Workspace:
    """What one rank keeps across the phases of a job: process group, tokenizer, data, the frozen
    reference model and its eval table. Phases differ only in model state, optimizer and method."""

    def __init__(self, cfg: dict[str, Any]):
        self.entered_unix = time.time()  # when Ray Train handed this rank the loop
        import ray.train
        from transformers import AutoTokenizer

        deepspeed = import_deepspeed()
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.cfg = cfg
        self.job = job = PosttrainJob.model_validate(cfg["job"])
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        torch.set_num_threads(max(1, int(job.cpus_per_worker)))
        deepspeed.init_distributed(dist_backend="gloo")
        if cfg.get("build_model"):
            if not (Path(cfg["model_dir"]) / "config.json").exists():
                # Every rank builds the same seeded model (the model classes' import, most of the cost,
                # is needed by every rank anyway); rank 0 writes it, all load it with from_pretrained.
                model = build_model(job.model.config, job.tokenizer.path, job.seed)
                if self.rank == 0:
                    save_model_dir(model, Path(cfg["model_dir"]))
                del model
            dist.barrier()
        self.sink = cfg.get("sink")
        announce_node(self.sink, self.rank)
        self.tok = AutoTokenizer.from_pretrained(str(job.tokenizer.path))
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.corpus = _encode_split(self.tok, job)
        n_sft = len(self.corpus.sft) if self.corpus.sft is not None else 0
        n_pref = len(self.corpus.chosen) if self.corpus.chosen is not None else 0
        self.spe = job.batches_per_epoch(n_sft, n_pref)
        if self.spe < 1:
            raise ValueError(f"fewer rows ({min(n_sft, n_pref) if n_sft and n_pref else max(n_sft, n_pref)}) "
                             f"than one global batch ({job.deepspeed.train_batch_size})")
        self.total = self.spe * job.epochs
        ds = job.deepspeed
        self.micro, self.accum = ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps
        self.G = ds.train_batch_size
        self.ref_model: Any = None  # built by the first phase that needs it, then shared
        self.ref_eval: torch.Tensor | None = None


class Trainer:
    """The step loop of one rank in one phase. ``run()`` returns the phase's final metrics."""

    def __init__(self, ws: Workspace, phase: str, method: str, optima: tuple[float, float] | None,
                 checkpoint: Any = None):
        import deepspeed
        from transformers import AutoModelForCausalLM

        self.t_start = time.perf_counter()
        self.ws, self.cfg, self.job = ws, ws.cfg, ws.job
        job = self.job
        self.rank, self.world, self.sink = ws.rank, ws.world, ws.sink
        self.tok, self.pad, self.corpus = ws.tok, ws.pad, ws.corpus
        self.spe, self.total = ws.spe, ws.total
        self.micro, self.accum, self.G = ws.micro, ws.accum, ws.G
        self.method_name, self.phase = method, phase

        torch.manual_seed(job.seed)
        model = AutoModelForCausalLM.from_pretrained(self.cfg["model_dir"], dtype=torch.float32)
        opt = _optimizer(model, job)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(job, self.total))
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                                    config=job.deepspeed.as_dict())
        self.method = methods.make(method, job.lam, job.epochs, job.seed, *(optima or (0.0, 0.0)),
                                   job.max_eval_steps, job.sft_epochs)
        self.start_step = 0
        self.done: dict[str, dict[str, Any]] = {}  # finished phases' finals, saved in every checkpoint
        self.ref_train: torch.Tensor | None = None  # Sequential's table from the SFT result
        if checkpoint is not None:
            self._restore(checkpoint)
        if self._needs_ref_model() and ws.ref_model is None:
            ws.ref_model = self._reference_model()
        self.ref_model = ws.ref_model if self._needs_ref_model() else None
        if self.corpus.chosen is not None and ws.ref_eval is None:
            ws.ref_eval = self._eval_reference()
        self.ref_eval = ws.ref_eval
        self.ref = self._train_reference()

    def close(self) -> None:
        """Free this phase's engine before the next phase builds its own."""
        destroy = getattr(self.engine, "destroy", None)
        if destroy is not None:
            destroy()
        self.engine = None

    # ------------------------------------------------------------ set-up helpers
    def _needs_ref_model(self) -> bool:
        if self.corpus.chosen is None:
            return False
        # Sequential's DPO reference is the SFT result (a table made at the switch), but the plane's
        # f_DPO is measured against the initial model like every other method's: keep it for eval.
        return not self.job.precompute_ref

    def _reference_model(self):
        """A frozen copy of the initial model: ZeRO-3-sharded like the policy, else whole per rank."""
        return frozen_model(self.cfg["model_dir"], self.job.deepspeed.zero_optimization.stage, self.micro,
                            self.accum, self.G)

    def _forward_fn(self, model):
        def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return forward

    def _initial_forward(self):
        """log-probs of the *initial* model: the reference model, or the untrained policy."""
        if self.ref_model is not None:
            return self._forward_fn(self.ref_model)
        if self.start_step > 0:
            # Resumed without the table cache (another machine, a cleared cache): the policy has moved
            # on, so the initial model is loaded from its directory for the table.
            if self.ws.ref_model is None:
                self.ws.ref_model = self._reference_model()
            return self._forward_fn(self.ws.ref_model)
        return self._forward_fn(self.engine)

    def _table(self, chosen: D.Encoded, rejected: D.Encoded, rows: int, forward, key: str | None) -> torch.Tensor:
        def compute() -> torch.Tensor:
            self.engine.eval()
            t = logps_table(forward, chosen, rejected, rows, self.micro, self.pad, self.rank, self.world)
            self.engine.train()
            return t

        cache = Path(self.cfg["ref_cache"]) if self.cfg.get("ref_cache") and key else None
        table, hit = cached_table(cache, key or "", compute, self.rank)
        if self.rank == 0 and key:
            self._emit({"event": "reference_table", "rows": rows, "cache_hit": hit, "key": key})
        return table

    def _key(self, split: str, rows: int) -> str | None:
        if not self.job.precompute_ref:
            return None
        j = self.job
        files = [Path(self.cfg["model_dir"]), j.tokenizer.path,
                 j.data.preference.train if split == "train" else (j.data.preference.eval or j.data.preference.train)]
        return f"{split}-" + fingerprint(files, {"max_length": j.data.max_length, "rows": rows})

    def _eval_reference(self) -> torch.Tensor:
        rows = min(self.job.data.eval_rows, len(self.corpus.chosen_eval))
        key = self._key("eval", rows)
        if key is None or not (Path(self.cfg.get("ref_cache") or "") / f"{key}.safetensors").exists():
            forward = self._initial_forward()
        else:
            forward = None  # served from the cache
        return self._table(self.corpus.chosen_eval, self.corpus.rejected_eval, rows, forward, key)

    def _train_reference(self) -> Reference | None:
        if self.corpus.chosen is None:
            return None
        if self.ref_train is not None:
            return Reference(table=self.ref_train)
        if isinstance(self.method, methods.Sequential):
            return None  # DPO starts after the SFT epochs, against their result (_switch_reference)
        if self.job.precompute_ref:
            rows = len(self.corpus.chosen)
            key = self._key("train", rows)
            cached = (Path(self.cfg["ref_cache"]) / f"{key}.safetensors").exists()
            forward = None if cached else self._initial_forward()
            return Reference(table=self._table(self.corpus.chosen, self.corpus.rejected, rows, forward, key))
        return Reference(forward=self._forward_fn(self.ref_model))

    # ------------------------------------------------------------ checkpoints
    def _restore(self, ckpt: Any) -> None:
        with ckpt.as_directory() as d:
            _, client = self.engine.load_checkpoint(d, tag=STATE_TAG)
            self.start_step = int(client["step"])
            if isinstance(self.method, methods.Maxright):
                self.method.stale = list(client["maxright_stale"])
            table = Path(d) / "ref_train.safetensors"
            if table.exists():
                from safetensors.torch import load_file

                self.ref_train = load_file(str(table))["logps"]
        if self.rank == 0:
            self._emit({"event": "resumed", "step": self.start_step})

    def _save(self, step: int, metrics: dict[str, Any]) -> None:
        import ray.train
        from ray.train import Checkpoint

        client = {"step": step, "phase": self.phase}
        if isinstance(self.method, methods.Maxright):
            client["maxright_stale"] = list(self.method.stale)
        with tempfile.TemporaryDirectory() as d:
            self.engine.save_checkpoint(d, tag=STATE_TAG, client_state=client)
            if self.rank == 0:
                write_progress(Path(d), self.done, self.phase)
                (Path(d) / "meta.json").write_text(json.dumps({"phase": self.phase, "step": step}))
                if self.ref_train is not None:
                    from safetensors.torch import save_file

                    save_file({"logps": self.ref_train.contiguous()}, str(Path(d) / "ref_train.safetensors"))
            name = checkpoint_name(self.phase, step)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d), checkpoint_dir_name=name)
        dist.barrier()  # every rank's shard is uploaded: the driver may hand the directory on (to Tune)
        if self.rank == 0:
            self._emit({"event": "checkpoint", "step": step, "dir": name})

    def _finish(self, final: dict[str, Any], is_last: bool) -> None:
        """End the phase with a checkpoint: the exported model after the last phase, else only the
        progress, so a restarted worker group skips this phase."""
        import ray.train
        from ray.train import Checkpoint

        self.done[self.phase] = final
        if is_last:
            export_model(self.engine, self.tok, self.rank, {**final, "phases": self.done})
            return
        with tempfile.TemporaryDirectory() as d:
            if self.rank == 0:
                write_progress(Path(d), self.done, None)
            ray.train.report({"phase": self.phase, "step": final["steps"]},
                             checkpoint=Checkpoint.from_directory(d) if self.rank == 0 else None)

    # ------------------------------------------------------------ the step
    def _emit(self, record: dict[str, Any]) -> None:
        if self.sink is not None:
            self.sink.put.remote({"phase": self.phase, **record})

    def _batches(self, epoch: int, s: int, a: int, w: tuple[float, float]) -> tuple[dict | None, dict | None]:
        """This rank's micro-batch ``a`` of step ``s``: only the parts whose weight is not zero."""
        seed = self.job.seed
        sft = pref = None
        if self.corpus.sft is not None and w[0] > 0:
            idx = D.micro_slice(D.global_batch(len(self.corpus.sft), self.G, seed, epoch, s), self.micro, a,
                                self.rank, self.world)
            sft = D.sft_batch(self.corpus.sft, idx, self.pad)
        if self.corpus.chosen is not None and w[1] > 0:
            idx = D.micro_slice(D.global_batch(len(self.corpus.chosen), self.G, seed + 1, epoch, s), self.micro,
                                a, self.rank, self.world)
            pref = D.preference_batch(self.corpus.chosen, self.corpus.rejected, idx, self.pad)
        return sft, pref

    def _losses(self, sft: dict | None, pref: dict | None, w: tuple[float, float], model) -> tuple[torch.Tensor, dict[str, float]]:
        """(w_SFT·f_SFT + w_DPO·f_DPO on this micro-batch, statistics) with one forward for both parts."""
        parts = [b for b, weight in ((sft, w[0]), (pref, w[1])) if b is not None and weight > 0]
        ids = torch.nn.utils.rnn.pad_sequence([r for b in parts for r in b["input_ids"]], batch_first=True,
                                              padding_value=self.pad)
        width = ids.shape[1]

        def padded(key: str, fill: int) -> torch.Tensor:
            rows = [torch.nn.functional.pad(b[key], (0, width - b[key].shape[1]), value=fill) for b in parts]
            return torch.cat(rows)

        logits = model(input_ids=ids, attention_mask=padded("attention_mask", 0)).logits
        labels = padded("labels", -100)
        loss = torch.zeros(())
        stats: dict[str, float] = {"tokens": float(padded("attention_mask", 0).sum())}
        offset = 0
        if sft is not None and w[0] > 0:
            n = sft["input_ids"].shape[0]
            l_sft = sft_loss(logits[offset:offset + n], labels[offset:offset + n])
            loss = loss + w[0] * l_sft
            stats["sft_loss"] = float(l_sft)
            offset += n
        if pref is not None and w[1] > 0:
            lp = sequence_logps(logits[offset:], labels[offset:])
            pc, pr = lp.chunk(2)
            rc, rr = self.ref.logps(pref)
            l_dpo, r_c, r_r = dpo_loss(pc, pr, rc, rr, self.job.beta, self.job.label_smoothing)
            loss = loss + w[1] * l_dpo
            stats.update(dpo_loss=float(l_dpo), reward_margin=float((r_c - r_r).mean()),
                         reward_acc=float((r_c > r_r).float().mean()))
        return loss, stats

    @torch.no_grad()
    def _refresh_maxright(self, epoch: int, s: int) -> None:
        vals = [0.0, 0.0]
        for a in range(self.accum):
            sft, pref = self._batches(epoch, s, a, (1.0, 1.0))
            _, st = self._losses(sft, pref, (1.0, 1.0), self.engine)
            vals[0] += st["sft_loss"] / self.accum
            vals[1] += st["dpo_loss"] / self.accum
        self.method.refresh(*_all_mean(vals, self.world))

    def _step(self, step: int) -> dict[str, Any]:
        t0 = time.perf_counter()  # the step alone: evaluations and checkpoints happen outside
        epoch, s = divmod(step, self.spe)
        if isinstance(self.method, methods.Sequential) and epoch == self.method.sft_epochs and s == 0:
            self._switch_reference()
        if isinstance(self.method, methods.Maxright) and self.method.needs_refresh(step):
            self._refresh_maxright(epoch, s)
        w = _broadcast_weights(self.method.pick(step, epoch), self.world)
        record: dict[str, Any] = {"step": step + 1, "epoch": epoch, "w_sft": w[0], "w_dpo": w[1]}
        if isinstance(self.method, methods.Alright):
            record["coin_by_rank"] = _gather_floats(w[1], self.world)
        sums: dict[str, float] = {}
        for a in range(self.accum):
            sft, pref = self._batches(epoch, s, a, w)
            loss, stats = self._losses(sft, pref, w, self.engine)
            self.engine.backward(loss)
            self.engine.step()
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + (v if k == "tokens" else v / self.accum)
        keys = sorted(sums)
        means = _all_mean([sums[k] for k in keys], self.world)
        record.update({k: (v * self.world if k == "tokens" else v) for k, v in zip(keys, means)})
        self.method.observe(w, record.get("sft_loss"), record.get("dpo_loss"))
        if isinstance(self.method, methods.Maxright):
            record["gap_sft"], record["gap_dpo"] = self.method.gaps()
        record["step_s"] = time.perf_counter() - t0
        record["tokens_per_s"] = record["tokens"] / max(record["step_s"], 1e-9)
        record["lr"] = self.engine.get_lr()[0]
        return record

    def _switch_reference(self) -> None:
        """Sequential: DPO's reference becomes the SFT result, tabled once over the preference rows."""
        if self.ref_train is None:
            rows = len(self.corpus.chosen)
            self.ref_train = self._table(self.corpus.chosen, self.corpus.rejected, rows,
                                         self._forward_fn(self.engine), None)
        self.ref = Reference(table=self.ref_train)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """f_SFT (token mean) and f_DPO (against the initial model) on the eval rows, all ranks together."""
        self.engine.eval()
        out: dict[str, float] = {}
        if self.corpus.sft_eval is not None:
            rows = min(self.job.data.eval_rows, len(self.corpus.sft_eval))
            total = torch.zeros(2, dtype=torch.float64)
            per_rank = -(-rows // self.world)
            mine = [r for r in range(self.rank, per_rank * self.world, self.world)]
            for start in range(0, per_rank, self.micro):
                idx = np.asarray([r if r < rows else 0 for r in mine[start:start + self.micro]])
                keep = torch.tensor([r < rows for r in mine[start:start + self.micro]])
                b = D.sft_batch(self.corpus.sft_eval, idx, self.pad)
                b["labels"][~keep] = -100  # padded rows count nothing
                logits = self.engine(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                lp, mask = token_logps(logits, b["labels"])
                total += torch.tensor([-float(lp.sum()), float(mask.sum())], dtype=torch.float64)
            if self.world > 1:
                dist.all_reduce(total)
            out["f_sft"] = float(total[0] / total[1])
        if self.corpus.chosen_eval is not None:
            rows = self.ref_eval.shape[0]
            pol = logps_table(self._forward_fn(self.engine), self.corpus.chosen_eval, self.corpus.rejected_eval,
                              rows, self.micro, self.pad, self.rank, self.world)
            loss, r_c, r_r = dpo_loss(pol[:, 0], pol[:, 1], self.ref_eval[:, 0], self.ref_eval[:, 1],
                                      self.job.beta, self.job.label_smoothing)
            out.update(f_dpo=float(loss), eval_reward_acc=float((r_c > r_r).float().mean()))
        self.engine.train()
        return out

    def run(self, finished: dict[str, dict[str, Any]], is_last: bool = True) -> dict[str, Any]:
        """Train this phase; ``finished`` holds the finished phases' finals and gains this one's."""
        job = self.job
        self.done = finished
        first_step_unix = None
        if self.start_step == 0:
            start = self.evaluate()  # collective: every rank evaluates its shard
            if self.rank == 0:
                self._emit({"step": 0, **start})
        last: dict[str, Any] = {}
        for step in range(self.start_step, self.total):
            if first_step_unix is None:
                first_step_unix = time.time()
                setup_s = time.perf_counter() - self.t_start
            record = self._step(step)
            done = step + 1
            if done % job.eval_every == 0 or done == self.total:
                record.update(self.evaluate())
            if self.rank == 0:
                self._emit(record)
            last = record
            if job.checkpoint_every and done % job.checkpoint_every == 0 and done < self.total:
                self._save(done, {"step": done})
        final = {k: v for k, v in last.items() if isinstance(v, (int, float))}
        final.update(self.evaluate() if not {"f_sft", "f_dpo"} & set(last) else {})
        final["steps"] = self.total
        final["peak_rss_mb_by_rank"] = _gather_floats(_peak_rss_mb(), self.world)
        if first_step_unix is not None:
            final.update(setup_s=setup_s, first_step_unix=first_step_unix, entered_unix=self.ws.entered_unix)
        final["wall_s"] = time.perf_counter() - self.t_start
        if self.rank == 0:
            self._emit({"event": "phase_done", "method": self.method_name, "wall_s": final["wall_s"], "pid": os.getpid(),
                        **{k: final[k] for k in ("f_sft", "f_dpo") if k in final}})
        self._finish(final, is_last)
        return final


def checkpoint_name(phase: str, step: int) -> str:
    """The directory of a mid-phase checkpoint in the Ray Train run (the same name on every rank)."""
    return f"{phase}_step_{step:06d}"


def write_progress(d: Path, done: dict[str, dict[str, Any]], current: str | None) -> None:
    (d / PROGRESS).write_text(json.dumps({"done": done, "current": current}))


def read_progress(ckpt: Any) -> tuple[dict[str, dict[str, Any]], str | None]:
    """(finished phases' finals, the phase whose engine state the checkpoint holds) of a checkpoint."""
    if ckpt is None:
        return {}, None
    with ckpt.as_directory() as d:
        path = Path(d, PROGRESS)
        if not path.exists():
            return {}, None
        saved = json.loads(path.read_text())
    return saved["done"], saved["current"]


def phase_optima(spec: dict[str, Any], done: dict[str, dict[str, Any]]) -> tuple[float, float] | None:
    """A phase's (f*_SFT, f*_DPO): given, or the finals of the SFT-only and DPO-only phases."""
    if spec.get("estimated"):
        return (done["opt_sft"]["f_sft"], done["opt_dpo"]["f_dpo"])
    return tuple(spec["optima"]) if spec.get("optima") else None


def train_loop(cfg: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``: the job's unfinished phases, in order, in this process.

    ``cfg["phases"]``: ``[{"name", "method", "optima" | "estimated"}]``; ``cfg["done"]``: finals of
    phases an earlier run of the job finished."""
    import gc

    import ray.train

    ws = Workspace(cfg)
    ckpt = ray.train.get_checkpoint()
    if ckpt is None and cfg.get("resume_from"):  # a Tune trial restored, or a PBT exploit
        ckpt = ray.train.Checkpoint.from_directory(cfg["resume_from"])
    saved, current = read_progress(ckpt)
    done = {**(cfg.get("done") or {}), **saved}
    phases = cfg["phases"]
    for i, spec in enumerate(phases):
        if spec["name"] in done:
            continue
        trainer = Trainer(ws, spec["name"], spec["method"], phase_optima(spec, done),
                          ckpt if current == spec["name"] else None)
        trainer.run(done, is_last=i == len(phases) - 1)
        trainer.close()
        del trainer
        gc.collect()
