"""The analog job files: ``kind: analog_pipeline`` (an MLP cut into stage actors) and ``kind: aimc_toy``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ..errors import DeviceConfigError
from ..kinds import SweepHooks
from ..specbase import JobBase, ResourcesSpec, Strict
from . import device_params


class AnalogDeviceSpec(Strict):
    name: str = Field("ideal_constant", description="a device or preset of dist_core.analog.devices")
    params: dict[str, float | bool] = Field(default_factory=dict, description="aihwkit-named parameters")

    @model_validator(mode="after")
    def _buildable(self) -> "AnalogDeviceSpec":
        try:
            device_params.resolve(self.name, **self.params)
        except DeviceConfigError as e:
            raise ValueError(str(e)) from None
        return self


class AnalogPipelineSpec(Strict):
    hidden: list[int] = Field([64, 32], description="hidden widths of the MLP (digits: 64 in, 10 out)")
    stages: int = Field(3, ge=1, description="S pipeline stages, each a Ray actor")
    micro_batch: int = Field(16, ge=1, description="samples per micro-batch")
    micro_batches: int = Field(4, ge=1, description="B micro-batches per synchronous mini-batch")
    epochs: int = Field(3, ge=1, description="passes over the training digits, per schedule")
    lr: float = Field(0.05, gt=0.0, description="step size of every stage's update")
    schedules: list[Literal["sync", "async"]] = Field(["sync", "async"], min_length=1,
                                                      description="run in turn; sync: GPipe, a flush per "
                                                                  "mini-batch; async: 1F1B, stale weights, no flush")
    device: AnalogDeviceSpec | None = Field(None, description="None: digital weights")
    backend: Literal["ray", "local"] = Field("ray", description="ray: stages are Ray actors; local: one process")

    @field_validator("stages")
    @classmethod
    def _stages_fit(cls, stages: int, info: ValidationInfo) -> int:
        layers = len(info.data.get("hidden", [])) + 1
        if stages > layers:
            raise ValueError(f"more stages ({stages}) than layers ({layers}); add hidden layers or use fewer stages")
        return stages


class AnalogPipelineResources(ResourcesSpec):
    placement: Literal["pack", "spread", "strict_spread"] = Field(
        "pack", description="pack: Ray's default scheduling; spread: one placement-group bundle per stage, on "
                            "different nodes where possible; strict_spread: a distinct node per stage or fail")


class AnalogPipelineJob(JobBase):
    kind: Literal["analog_pipeline"]
    resources: AnalogPipelineResources = Field(default_factory=AnalogPipelineResources)
    analog: AnalogPipelineSpec = Field(default_factory=AnalogPipelineSpec)


class AimcToySpec(Strict):
    """The least-squares toy of RESEARCH.md §4a/§7.4 (dist_core.analog.toy)."""

    d: int = Field(40, ge=1, description="dimension of W and x*")
    n: int = Field(100, ge=1, description="rows of the design X")
    tau: float = Field(3.0, gt=0.0, description="soft bounds ±τ of the weight devices (Analog SGD, Tiki-Taka's C)")
    tau_fast: float = Field(1.0, gt=0.0, description="soft bounds ±τ_A of Tiki-Taka's fast array A")
    dw_min: float = Field(1e-4, gt=0.0, description="pulse granularity of every device")
    sigma: float = Field(0.1, ge=0.0, description="std of the additive gradient noise")
    steps: int = Field(40_000, ge=2,
                       description="iterations of each (method, α) run; the error is averaged over the second half")
    alphas: list[float] = Field([0.1, 0.05, 0.02, 0.01], description="step sizes α, swept")
    methods: list[Literal["digital", "analog_sgd", "tiki_taka_v1", "tiki_taka_v2"]] = Field(
        ["digital", "analog_sgd", "tiki_taka_v1", "tiki_taka_v2"], min_length=1, description="the methods simulated")
    gamma: float = Field(0.0, ge=0.0, description="Tiki-Taka's W̄ = γ·A + C")
    transfer_scales: list[float] = Field([1.0, 0.08], description="Tiki-Taka transfer lr = scale·α, one run each")
    curve_points: int = Field(100, ge=1, description="block averages kept per error curve")

    @field_validator("alphas", "transfer_scales")
    @classmethod
    def _positive_list(cls, values: list[float], info: ValidationInfo) -> list[float]:
        if not values or min(values) <= 0:
            raise ValueError(f"{info.field_name} must be a non-empty list of numbers > 0, got {values}")
        return values


class AimcToyJob(JobBase):
    kind: Literal["aimc_toy"]
    toy: AimcToySpec = Field(default_factory=AimcToySpec)


def _one_process(job: JobBase, trial_cpus: float) -> list[dict[str, float]]:
    """Stage actors take no CPU reservation of their own (they are pipelined, mostly waiting)."""
    return [{"CPU": max(trial_cpus, 1.0)}]


# Every epoch is a report with a checkpoint of its own (analog/job.py): Tune can restore a trial, PBT copy one.
PIPELINE_SWEEP = SweepHooks(bundles=_one_process,
                            iterations=lambda job: job.analog.epochs * len(job.analog.schedules),
                            is_report=lambda record: "epoch" in record, restorable=True)
# The toy is one simulation per method: a trial reports once, at the end.
TOY_SWEEP = SweepHooks(bundles=_one_process, iterations=lambda job: 1, is_report=lambda record: False)
