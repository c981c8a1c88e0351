"""The ``kind: distill`` job file: teacher, student, data, the distillation loss and a real DeepSpeed config.

Validation catches what would otherwise fail minutes later inside a worker, each as one line at the
job file's line: a teacher and student that do not share a vocabulary (both sizes named), a pair
row without ``rejected`` (reported at the data file's line), ``topk_k`` larger than the vocabulary,
and batch sizes that do not multiply out. Vocabulary sizes are read from ``config.json`` and
``tokenizer.json`` as JSON, so ``launch.py validate`` imports no torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, model_validator

from ..errors import SpecError
from ..kinds import SweepHooks
from ..posttrain.config import DeepSpeedSection, ModelSource, OptimSection, Split, TokenizerSource
from ..specbase import JobBase, JobPath, Strict

LOSSES = ("kd", "seqkd", "rkl", "gkd", "distillm_v1", "distillm_v2")


class Warmup(Strict):
    """SFT of a model before distillation (a cached preliminary phase), as the paper SFTs its student."""

    data: JobPath = Field(description="SFT rows prompt/completion (JSONL, Parquet or save_to_disk)")
    rows: int | None = Field(None, ge=1, description="use only the first rows of data (a weaker model); default: all")
    epochs: int = Field(2, ge=1, description="SFT epochs")
    lr: float = Field(3e-3, gt=0.0, description="AdamW learning rate of the warm-up")
    batch: int = Field(32, ge=1, description="global batch of the warm-up (split over the job's workers)")

    @model_validator(mode="after")
    def _exists(self) -> "Warmup":
        if not self.data.exists():
            raise ValueError(f"data: no such file or directory: {self.data}")
        return self


class DistillModel(ModelSource):
    sft: Warmup | None = Field(None, description="SFT warm-up before distillation; the result is cached by "
                                                 "fingerprint under ~/.cache/dist_core/distill_models/")


class DistillData(Strict):
    prompts: Split | None = Field(None, description="rows with prompt (eval rows may add completion, the reference "
                                                    "answer for exact match); pairs are sampled from both models")
    pairs: Split | None = Field(None, description="ready pairs prompt/chosen (teacher) /rejected (student)")
    answers: JobPath | None = Field(None, description="held-out prompt/completion rows for exact-match accuracy; "
                                                      "default: prompts.eval when its rows carry completion")
    max_length: int = Field(64, ge=8, description="tokens per sequence (prompt + response), truncated")
    eval_rows: int = Field(64, ge=1, description="held-out pairs (and exact-match prompts) used per evaluation")

    @model_validator(mode="after")
    def _one_source(self) -> "DistillData":
        if (self.prompts is None) == (self.pairs is None):
            raise ValueError("give exactly one of prompts (responses are sampled) or pairs (ready prompt/chosen/"
                             "rejected rows)")
        if self.answers is not None and not self.answers.exists():
            raise ValueError(f"answers: no such file or directory: {self.answers}")
        return self


class Generation(Strict):
    """Data curation (the paper's ``generate_vllm.py``): one sampled response per prompt and model."""

    temperature: float = Field(0.8, ge=0.0, description="sampling temperature (0: greedy)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    max_new_tokens: int = Field(16, ge=1, description="tokens per sampled response (stops at EOS)")
    actors: int = Field(2, ge=1, description="parallel Ray tasks that sample (and decode for exact match), each a "
                                              "share of the prompts")
    cpus_per_actor: float = Field(1.0, gt=0.0, description="CPUs each sampling task reserves")


class LossSection(Strict):
    name: Literal["kd", "seqkd", "rkl", "gkd", "distillm_v1", "distillm_v2"] = Field(
        "distillm_v2", description="distillm_v2: skew KL on teacher outputs + skew reverse KL on student outputs; "
                                   "kd: forward KL, seqkd: NLL, rkl: reverse KL, gkd: JSD, distillm_v1: skew reverse KL")
    alpha: float = Field(0.1, gt=0.0, le=1.0, description="skew α of both terms (α1 = α2), in (0, 1]")
    beta: float = Field(1.0, ge=0.0, le=2.0, description="distillm_v2's β: L = (2-β)·SKL(TGO) + β·SRKL(SGO)")
    curriculum: bool = Field(False, description="distillm_v2: β from 1 to 1.5 over the first half of training, "
                                                "in place of beta (the paper's gradual_beta)")
    adaptive_alpha: bool = Field(False, description="distillm_v2: α per sequence from the teacher-student gap "
                                                    "(the paper's update_alpha)")
    gkd_beta: float = Field(0.9, ge=0.0, le=1.0, description="gkd: the teacher's weight in the JSD mixture")

    @model_validator(mode="after")
    def _v2_only(self) -> "LossSection":
        for knob in ("curriculum", "adaptive_alpha"):
            if getattr(self, knob) and self.name != "distillm_v2":
                raise ValueError(f"{knob} is a distillm_v2 option; loss {self.name} has none")
        return self

    def options(self) -> dict[str, Any]:
        """The knobs of ``distill_losses.make_options(name, ...)``."""
        return {"kd": {}, "seqkd": {}, "rkl": {}, "gkd": {"beta": self.gkd_beta},
                "distillm_v1": {"alpha": self.alpha},
                "distillm_v2": {"alpha1": self.alpha, "alpha2": self.alpha, "beta": self.beta,
                                "gradual_beta": self.curriculum, "adaptive_alpha": self.adaptive_alpha}}[self.name]


class DistillJob(JobBase):
    kind: Literal["distill"]
    teacher: DistillModel = Field(description="the model distilled from (no gradient)")
    student: DistillModel = Field(description="the model trained; same vocabulary as the teacher")
    tokenizer: TokenizerSource = Field(description="the tokenizer both models share")
    data: DistillData = Field(description="prompts to sample pairs from, or ready pairs")
    generation: Generation = Field(default_factory=Generation)
    loss: LossSection = Field(default_factory=LossSection)
    teacher_cache: Literal["online", "topk"] = Field(
        "online", description="online: teacher forward each step (ZeRO-3: a sharded inference engine); topk: the "
                              "teacher's top-k log-probs computed once, cached on disk by fingerprint")
    topk_k: int = Field(16, ge=1, description="teacher_cache topk: probabilities kept per token")
    optim: OptimSection = Field(default_factory=OptimSection)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    workers: int = Field(2, ge=1, description="Ray Train workers (one DeepSpeed rank each)")
    cpus_per_worker: float = Field(1.0, gt=0.0, description="CPUs each Ray Train worker reserves")
    placement: Literal["pack", "spread", "strict_spread"] = Field(
        "pack", description="Ray Train's placement of the workers: pack on as few nodes as fit; spread over "
                            "nodes where possible; strict_spread: a distinct node per worker or fail")
    epochs: int = Field(2, ge=1, description="epochs over the training pairs")
    eval_every: int = Field(10, ge=1, description="steps between held-out log-likelihood evaluations")
    checkpoint_every: int = Field(20, ge=0, description="steps between Ray Train checkpoints; 0: none")
    max_failures: int = Field(1, ge=0, description="worker-group restarts from the last checkpoint")

    def post_validate(self, line_of: Callable[[list], int], shown: str) -> None:
        ds = self.deepspeed
        product = ds.train_micro_batch_size_per_gpu * ds.gradient_accumulation_steps * self.workers
        if ds.train_batch_size != product:
            raise SpecError(shown, line_of(["deepspeed", "train_batch_size"]), "deepspeed.train_batch_size",
                            f"must equal micro batch {ds.train_micro_batch_size_per_gpu} x accumulation "
                            f"{ds.gradient_accumulation_steps} x workers {self.workers} = {product}, "
                            f"got {ds.train_batch_size}")
        for side in ("teacher", "student"):
            warm = getattr(self, side).sft
            if warm is not None and warm.batch % self.workers:
                raise SpecError(shown, line_of([side, "sft", "batch"]), f"{side}.sft.batch",
                                f"must be a multiple of workers ({self.workers}), got {warm.batch}")
        tok_size = tokenizer_size(self.tokenizer.path)
        sizes = {side: vocab_size(getattr(self, side), tok_size) for side in ("teacher", "student")}
        if sizes["teacher"] != sizes["student"]:
            raise SpecError(shown, line_of(["student"]), "student",
                            f"vocabulary of {sizes['student']} tokens, but the teacher's has {sizes['teacher']}: "
                            "teacher and student must share one vocabulary")
        if self.teacher_cache == "topk" and self.topk_k > sizes["teacher"]:
            raise SpecError(shown, line_of(["topk_k"]), "topk_k",
                            f"must be <= the vocabulary size {sizes['teacher']}, got {self.topk_k}")
        self._check_rows()

    def _check_rows(self) -> None:
        from ..posttrain.rows import _row_lines, load_checked, read_rows

        if self.data.pairs is not None:
            for path in (self.data.pairs.train, self.data.pairs.eval):
                if path is not None:
                    load_checked(path, "preference")
        else:
            for path in (self.data.prompts.train, self.data.prompts.eval):
                if path is None:
                    continue
                rows = read_rows(path)
                if not rows:
                    raise SpecError(str(path), 1, "(rows)", "no rows: prompt data must not be empty")
                for line, row in zip(_row_lines(Path(path), len(rows)), rows):
                    if not (isinstance(row.get("prompt"), str) and row["prompt"]):
                        raise SpecError(str(path), line, "prompt", "required: a non-empty string in every prompt row")
        if self.data.answers is not None:
            load_checked(self.data.answers, "sft")

    def steps_per_epoch(self, n_pairs: int) -> int:
        return n_pairs // self.deepspeed.train_batch_size


def tokenizer_size(path: Path) -> int | None:
    """``len(tokenizer)``: the highest id in ``tokenizer.json`` (vocabulary and added tokens) plus one."""
    file = Path(path) / "tokenizer.json"
    if not file.exists():
        return None
    data = json.loads(file.read_text())
    ids = list((data.get("model") or {}).get("vocab", {}).values()) + [t["id"] for t in data.get("added_tokens", [])]
    return max(ids) + 1 if ids else None


def vocab_size(source: ModelSource, tok_size: int | None) -> int | None:
    """A model's output vocabulary: its ``config.json``, or the tiny config (default: the tokenizer's size)."""
    if source.path is not None:
        conf: dict[str, Any] = json.loads((Path(source.path) / "config.json").read_text()) \
            if (Path(source.path) / "config.json").exists() else {}
        conf = conf.get("text_config", conf)
    else:
        conf = source.config or {}
    return conf.get("vocab_size", tok_size)


def _eval_reports(job: DistillJob) -> int:
    from ..posttrain.rows import read_rows

    split = job.data.pairs or job.data.prompts
    total = job.steps_per_epoch(len(read_rows(split.train))) * job.epochs
    return 2 + total // job.eval_every


# Ray Train places its workers in a placement group of its own: the trial reserves only its driver.
SWEEP = SweepHooks(bundles=lambda job, trial_cpus: [{"CPU": trial_cpus}], iterations=_eval_reports,
                   is_report=lambda r: r.get("phase") == "main" and "eval_ll_teacher" in r and "event" not in r,
                   outside=lambda job: job.workers * job.cpus_per_worker)
