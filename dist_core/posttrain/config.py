"""The ``kind: posttrain`` job file: model, tokenizer, data, method and a real DeepSpeed config.

Validation catches what would otherwise fail minutes later inside a worker: missing directories,
a ZeRO stage DeepSpeed does not have, and batch sizes that do not multiply out, with the numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import SpecError
from ..kinds import SweepHooks
from ..specbase import JobBase, JobDir, JobPath, Strict
from .rows import load_checked


class ModelSource(Strict):
    path: JobDir | None = Field(None, description="a local Hugging Face model directory")
    config: dict[str, Any] | None = Field(
        None, description="build a tiny model from this config (model_type, hidden_size, ...); it is saved "
                          "and then loaded with from_pretrained, the same path as a real model")

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSource":
        if (self.path is None) == (self.config is None):
            raise ValueError("give exactly one of path (a model directory) or config (a tiny model to build)")
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("config needs a model_type (e.g. llama, gpt2)")
        return self


class TokenizerSource(Strict):
    path: JobDir = Field(description="a local directory AutoTokenizer.from_pretrained loads")


class Split(Strict):
    train: JobPath = Field(description="JSONL, Parquet, or a datasets save_to_disk directory")
    eval: JobPath | None = Field(None, description="held-out rows for the (f_SFT, f_DPO) plane; default: train")

    @model_validator(mode="after")
    def _exist(self) -> "Split":
        for name in ("train", "eval"):
            p = getattr(self, name)
            if p is not None and not p.exists():
                raise ValueError(f"{name}: no such file or directory: {p}")
        return self


class DataSection(Strict):
    sft: Split | None = Field(None, description="rows prompt/completion or messages")
    preference: Split | None = Field(None, description="rows prompt/chosen/rejected")
    max_length: int = Field(128, ge=8, description="tokens per sequence (prompt + answer), truncated")
    eval_rows: int = Field(128, ge=1, description="rows of each eval split used per evaluation")
    train_rows: int | None = Field(None, ge=1, description="train on the first N rows of each training split "
                                                            "only (a quick run); null: all rows")

    def training_rows(self, split: Split) -> list[dict[str, Any]]:
        from .rows import read_rows

        return read_rows(split.train)[: self.train_rows]


class OptimSection(Strict):
    lr: float = Field(1e-3, gt=0.0, description="AdamW learning rate")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    schedule: Literal["constant", "linear", "cosine"] = Field("constant",
                                                              description="learning-rate schedule after warm-up")
    warmup_steps: int = Field(0, ge=0, description="steps of linear learning-rate warm-up")


class Offload(Strict):
    device: Literal["none", "cpu"] = Field("none", description="cpu: ZeRO offload to host memory")
    pin_memory: bool = Field(False, description="pinned host buffers for the offload")


class ZeroSection(BaseModel):
    """DeepSpeed's ``zero_optimization``; its tuning knobs (bucket sizes, ...) pass through untouched."""

    model_config = ConfigDict(extra="allow")
    stage: int = Field(2, ge=0, le=3, description="ZeRO stage 0-3")
    offload_optimizer: Offload | None = None
    offload_param: Offload | None = None


class Enabled(Strict):
    enabled: bool = Field(False, description="DeepSpeed bf16 mixed precision (untested)")


class DeepSpeedSection(Strict):
    """A DeepSpeed config, in DeepSpeed's own key names; passed to ``deepspeed.initialize``."""

    train_batch_size: int = Field(16, ge=1, description="global batch = micro × accumulation × workers")
    train_micro_batch_size_per_gpu: int = Field(8, ge=1,
                                                description="micro-batch per rank (DeepSpeed's name; a CPU rank here)")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    gradient_clipping: float = Field(1.0, ge=0.0, description="clip the global gradient norm to this; 0: no clipping")
    zero_optimization: ZeroSection = Field(default_factory=ZeroSection)
    bf16: Enabled = Field(default_factory=Enabled)
    steps_per_print: int = Field(10**9, ge=1, description="DeepSpeed's own logging (off: dist_core logs the steps)")

    def as_dict(self) -> dict[str, Any]:
        cfg = self.model_dump(mode="json", exclude_none=True)
        cfg["zero_allow_untested_optimizer"] = True  # we pass torch's AdamW (no JIT-built fused Adam)
        return cfg


class Optima(Strict):
    sft: float = Field(description="f*_SFT")
    dpo: float = Field(description="f*_DPO")


class PosttrainJob(JobBase):
    kind: Literal["posttrain"]
    model: ModelSource
    tokenizer: TokenizerSource
    data: DataSection
    method: Literal["sft", "dpo", "sequential", "mix", "alright", "maxright"] = Field(
        "alright", description="sft, dpo: one objective; sequential, mix, alright, maxright: both, balanced by lam")
    lam: float = Field(0.5, ge=0.0, le=1.0, description="the DPO weight λ: min (1-λ)·f_SFT + λ·f_DPO")
    beta: float = Field(0.1, gt=0.0, description="DPO's β")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="cDPO's ε")
    epochs: int = Field(2, ge=1, description="epochs of the method's run (estimate_optima's runs have as many)")
    sft_epochs: int | None = Field(None, ge=1, description="sequential: SFT epochs (default ≈ (1-λ)·epochs)")
    max_eval_steps: int = Field(10, ge=1, description="maxright: steps between re-evaluating both losses")
    optima: Optima | None = Field(None, description="(f*_SFT, f*_DPO); unknown: 0, or estimate_optima")
    estimate_optima: bool = Field(False, description="train SFT-only and DPO-only runs first, record f*")
    precompute_ref: bool = Field(True, description="the frozen reference's log-probs as tables made once and cached "
                                 "on disk by fingerprint; false: a reference model runs beside the policy")
    optim: OptimSection = Field(default_factory=OptimSection)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    workers: int = Field(2, ge=1, description="Ray Train workers (one DeepSpeed rank each)")
    cpus_per_worker: float = Field(1.0, gt=0.0, description="CPUs each Ray Train worker reserves")
    placement: Literal["pack", "spread", "strict_spread"] = Field(
        "pack", description="Ray Train's placement of the workers: pack on as few nodes as fit; spread over "
                            "nodes where possible; strict_spread: a distinct node per worker or fail")
    eval_every: int = Field(10, ge=1, description="steps between (f_SFT, f_DPO) evaluations")
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
        for section, needed in (("sft", self.method != "dpo"), ("preference", self.method != "sft")):
            if needed and getattr(self.data, section) is None:
                raise SpecError(shown, line_of(["data"]), f"data.{section}", f"method {self.method} needs it")
        if self.method == "sequential" and self.epochs < 2:
            raise SpecError(shown, line_of(["epochs"]), "epochs", "sequential needs >= 2 (SFT epochs, then DPO epochs)")
        if self.sft_epochs is not None and self.sft_epochs >= self.epochs:
            raise SpecError(shown, line_of(["sft_epochs"]), "sft_epochs",
                            f"must be < epochs ({self.epochs}), got {self.sft_epochs}")
        for section, kind in (("sft", "sft"), ("preference", "preference")):
            split = getattr(self.data, section)
            for path in ([split.train, split.eval] if split is not None else []):
                if path is not None:
                    load_checked(path, kind)

    def batches_per_epoch(self, n_sft: int, n_pref: int) -> int:
        """Steps per epoch: joint methods walk both data sets side by side (equal lengths in the paper)."""
        sizes = {"sft": [n_sft], "dpo": [n_pref]}.get(self.method, [n_sft, n_pref])
        return min(sizes) // self.deepspeed.train_batch_size


def total_steps(job: PosttrainJob) -> int:
    """Optimizer steps of one phase, from the row counts (what the workers will compute)."""
    sizes = {name: len(job.data.training_rows(split)) if split is not None else 0
             for name, split in (("sft", job.data.sft), ("pref", job.data.preference))}
    return job.batches_per_epoch(sizes["sft"], sizes["pref"]) * job.epochs


def _eval_reports(job: PosttrainJob) -> int:
    """Evaluations of the main phase after step 0 (every eval_every steps, the last step): Tune's max_t."""
    return 1 + total_steps(job) // job.eval_every


def _is_report(record: dict) -> bool:
    """A main-phase evaluation after step 0 is one Tune iteration. Step 0 is left out, so with
    ``checkpoint_every = k·eval_every`` every k-th iteration carries a checkpoint, the iterations PBT
    perturbs at when ``perturbation_interval = k``."""
    return record.get("phase") == "main" and "f_sft" in record and "event" not in record and record.get("step", 0) > 0


# Ray Train places its workers in a placement group of its own, outside the trial's: the trial
# reserves only its driver, and the sweep counts the workers' CPUs when it sizes concurrency.
SWEEP = SweepHooks(bundles=lambda job, trial_cpus: [{"CPU": trial_cpus}], iterations=_eval_reports,
                   is_report=_is_report,
                   plot="dist_core.posttrain.job:plot_pareto",
                   outside=lambda job: job.workers * job.cpus_per_worker, restorable=True)
