"""One Ray Train worker of a distillation run: a DeepSpeed rank that trains the student.

It reuses the post-training worker's machinery (``posttrain.worker``: torch AdamW under DeepSpeed,
the learning-rate schedule, the frozen model that is a ZeRO-3 inference engine under ZeRO-3, the
``save_pretrained`` export) and its batching (``posttrain.data``: a global batch is cut into
micro-batches so any workers × accumulation split of it sees the same rows).

Each micro-batch holds b pairs: the prompt with the teacher's response (TGO, ``chosen``) and with
the student's (SGO, ``rejected``), padded into one batch of 2b rows, so one student forward and one
teacher forward give both halves. The teacher is a forward of the frozen model (``online``) or a
lookup in the precomputed top-k table (``topk``, see ``teacher.py``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..posttrain import data as D
from ..posttrain import distill_losses
from ..posttrain.losses import token_logps
from ..posttrain.worker import (STATE_TAG, _all_mean, _gather_floats, _lr_lambda, _optimizer, _peak_rss_mb,
                                announce_node, export_model, frozen_model, import_deepspeed)
from . import objective, teacher as T
from .config import DistillJob


class DistillTrainer:
    """The step loop of one rank. ``run()`` returns the final metrics."""

    def __init__(self, cfg: dict[str, Any]):
        import ray.train
        from transformers import AutoModelForCausalLM, AutoTokenizer

        deepspeed = import_deepspeed()
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.cfg = cfg
        self.job = job = DistillJob.model_validate(cfg["job"])
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        torch.set_num_threads(max(1, int(job.cpus_per_worker)))
        deepspeed.init_distributed(dist_backend="gloo")
        self.sink, self.phase = cfg.get("sink"), cfg["phase"]
        announce_node(self.sink, self.rank)

        self.tok = AutoTokenizer.from_pretrained(str(job.tokenizer.path))
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        L = job.data.max_length
        self.tgo, self.sgo = D.encode_preference(self.tok, D.read_rows(cfg["pairs"]["train"]), L)
        eval_rows = D.read_rows(cfg["pairs"]["eval"])[:job.data.eval_rows]
        self.tgo_eval, self.sgo_eval = D.encode_preference(self.tok, eval_rows, L)
        self.spe = job.steps_per_epoch(len(self.tgo))
        if self.spe < 1:
            raise ValueError(f"fewer pairs ({len(self.tgo)}) than one global batch ({job.deepspeed.train_batch_size})")
        self.total = self.spe * job.epochs
        ds = job.deepspeed
        self.micro, self.accum, self.G = ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps, \
            ds.train_batch_size

        torch.manual_seed(job.seed)
        model = AutoModelForCausalLM.from_pretrained(cfg["student_dir"], dtype=torch.float32)
        opt = _optimizer(model, job)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(job, self.total))
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                                    config=ds.as_dict())
        self.loss = objective.make(job.loss, self.total)
        self.table = self.teacher_model = None
        if not distill_losses.get(job.loss.name).needs_teacher:
            pass  # seqkd: NLL of the teacher's responses, no teacher forward
        elif job.teacher_cache == "online":
            self.teacher_model = frozen_model(cfg["teacher_dir"], ds.zero_optimization.stage, self.micro,
                                              self.accum, self.G)
        else:
            self.table = T.load_table(Path(cfg["topk"]))
        self.start_step = 0
        self._restore()

    # ------------------------------------------------------------ checkpoints
    def _restore(self) -> None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return
        with ckpt.as_directory() as d:
            _, client = self.engine.load_checkpoint(d, tag=STATE_TAG)
            self.start_step = int(client["step"])
        if self.rank == 0:
            self._emit({"event": "resumed", "step": self.start_step})

    def _save(self, step: int) -> None:
        import ray.train
        from ray.train import Checkpoint

        with tempfile.TemporaryDirectory() as d:
            self.engine.save_checkpoint(d, tag=STATE_TAG, client_state={"step": step})
            ray.train.report({"step": step}, checkpoint=Checkpoint.from_directory(d))

    def _emit(self, record: dict[str, Any]) -> None:
        if self.sink is not None:
            self.sink.put.remote({"phase": self.phase, **record})

    # ------------------------------------------------------------ the step
    def _teacher(self, batch: dict[str, torch.Tensor], rows: np.ndarray) -> Any:
        """The teacher on the batch: its logits (2b, T, V) from a forward, a top-k lookup, or None (seqkd)."""
        if self.table is not None:
            return T.lookup(self.table, rows, batch["input_ids"].shape[1])
        if self.teacher_model is None:
            return None
        with torch.no_grad():
            return self.teacher_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def _micro_loss(self, epoch: int, s: int, a: int, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        idx = D.micro_slice(D.global_batch(len(self.tgo), self.G, self.job.seed, epoch, s), self.micro, a,
                            self.rank, self.world)
        batch = D.preference_batch(self.tgo, self.sgo, idx, self.pad)
        logits = self.engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, stats = self.loss(logits, self._teacher(batch, idx), batch["labels"], step)
        stats["tokens"] = float(batch["attention_mask"].sum())
        return loss, stats

    def _step(self, step: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        epoch, s = divmod(step, self.spe)
        sums: dict[str, float] = {}
        for a in range(self.accum):
            loss, stats = self._micro_loss(epoch, s, a, step)
            self.engine.backward(loss)
            self.engine.step()
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + (v if k == "tokens" else v / self.accum)
        keys = sorted(sums)
        means = _all_mean([sums[k] for k in keys], self.world)
        record: dict[str, Any] = {"step": step + 1, "epoch": epoch}
        record.update({k: (v * self.world if k == "tokens" else v) for k, v in zip(keys, means)})
        record["step_s"] = time.perf_counter() - t0
        record["tokens_per_s"] = record["tokens"] / max(record["step_s"], 1e-9)
        record["lr"] = self.engine.get_lr()[0]
        return record

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The student's mean per-token log-likelihood of held-out teacher (TGO) and student (SGO) responses."""
        self.engine.eval()
        rows = len(self.tgo_eval)
        total = torch.zeros(4, dtype=torch.float64)  # (sum log q on TGO, tokens, on SGO, tokens)
        per_rank = -(-rows // self.world)
        mine = list(range(self.rank, per_rank * self.world, self.world))
        # Every rank runs as many forwards (ZeRO-3 gathers collectively); padded rows count nothing.
        for start in range(0, per_rank, self.micro):
            part = mine[start:start + self.micro]
            idx = np.asarray([r if r < rows else 0 for r in part])
            keep = torch.tensor([r < rows for r in part])
            batch = D.preference_batch(self.tgo_eval, self.sgo_eval, idx, self.pad)
            batch["labels"][~torch.cat([keep, keep])] = -100
            logits = self.engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            lp, mask = token_logps(logits, batch["labels"])
            b = len(idx)
            total += torch.tensor([float(lp[:b].sum()), float(mask[:b].sum()), float(lp[b:].sum()),
                                   float(mask[b:].sum())], dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(total)
        self.engine.train()
        return {"eval_ll_teacher": float(total[0] / total[1]), "eval_ll_student": float(total[2] / total[3])}

    def run(self) -> dict[str, Any]:
        job = self.job
        if self.start_step == 0:
            start = self.evaluate()
            if self.rank == 0:
                self._emit({"step": 0, **start})
        last: dict[str, Any] = {}
        for step in range(self.start_step, self.total):
            record = self._step(step)
            done = step + 1
            if done % job.eval_every == 0 or done == self.total:
                record.update(self.evaluate())
            if self.rank == 0:
                self._emit(record)
            last = record
            if job.checkpoint_every and done % job.checkpoint_every == 0 and done < self.total:
                self._save(done)
        final = {k: v for k, v in last.items() if isinstance(v, (int, float))}
        if "eval_ll_teacher" not in final:
            final.update(self.evaluate())
        final["steps"] = self.total
        final["peak_rss_mb_by_rank"] = _gather_floats(_peak_rss_mb(), self.world)
        export_model(self.engine, self.tok, self.rank, final)
        return final


def train_loop(cfg: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``."""
    DistillTrainer(cfg).run()
