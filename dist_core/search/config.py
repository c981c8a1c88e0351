"""The ``kind: sweep`` job file: a search space over fields of a base job of any sweepable kind."""

from __future__ import annotations

import json
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field, model_validator

from ..errors import SpecError
from ..specbase import JobBase, JobFile, Strict, shown_path


class Distribution(Strict):
    """One dimension of a search space, over a dotted field of the base job."""

    type: Literal["uniform", "loguniform", "int", "choice", "grid"] = Field(
        description="uniform, loguniform and int take low and high; choice and grid take values")
    low: float | None = Field(None, description="lower bound (uniform, loguniform, int)")
    high: float | None = Field(None, description="upper bound (uniform, loguniform, int)")
    values: list[Any] | None = Field(None, min_length=1, description="what choice samples from, or grid walks through")

    @model_validator(mode="after")
    def _consistent(self) -> "Distribution":
        if self.type in ("uniform", "loguniform", "int"):
            if self.low is None or self.high is None:
                raise ValueError(f"{self.type} needs low and high")
            if not self.low < self.high:
                raise ValueError(f"low must be < high, got low={self.low}, high={self.high}")
            if self.type == "loguniform" and self.low <= 0:
                raise ValueError(f"loguniform needs low > 0, got {self.low}")
            if self.values is not None:
                raise ValueError(f"{self.type} takes low/high, not values")
        elif self.values is None:
            raise ValueError(f"{self.type} needs a non-empty list of values")
        return self

    def representatives(self) -> list[Any]:
        """Values that must each make a valid base job (bounds, or every listed value)."""
        if self.values is not None:
            return list(self.values)
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


class SchedulerSpec(Strict):
    name: Literal["fifo", "asha", "pbt"] = Field("fifo", description="fifo: run every trial to the end; asha: stop "
                                                                     "bad ones early; pbt: copy good ones")
    grace_period: int = Field(5, ge=1, description="ASHA: rounds before a trial may be stopped")
    reduction_factor: float = Field(3.0, gt=1.0, description="ASHA: keep 1/η of trials per rung")
    perturbation_interval: int = Field(10, ge=1, description="PBT: rounds between exploit/explore")
    quantile_fraction: float = Field(0.25, gt=0.0, le=0.5, description="PBT: bottom/top share")


class SearchSpec(Strict):
    space: dict[str, Distribution] = Field(min_length=1,
                                           description="a dotted field of the base job → how Tune draws it")
    searcher: Literal["random", "grid", "optuna", "hyperopt", "bohb"] = Field(
        "random", description="optuna is TPE; hyperopt and bohb need pip install -e \".[search]\"")
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    metric: str = Field("val_loss", description="a key of the base kind's metric records, for searcher and scheduler")
    mode: Literal["min", "max"] = Field("min", description="minimise or maximise metric")
    num_samples: int = Field(8, ge=1, description="trials (for grid: repeats of the whole grid)")
    max_concurrent: int = Field(2, ge=1, description="trials at once, at most")
    max_failures: int = Field(0, ge=-1, description="retries of a failed trial (-1: forever)")
    trial_cpus: float = Field(0.01, gt=0.0, description="the trial's own driver; learners get bundles")
    seed: int | None = Field(None, description="searcher seed (default: the job's seed)")


class SweepJob(JobBase):
    kind: Literal["sweep"]
    base: JobFile = Field(description="the job file every trial runs, with the sampled fields set (any kind "
                                       "but sweep); a relative path is taken from the invoking directory")
    overrides: dict[str, Any] = Field(default_factory=dict, description="fixed changes to the base, nested like it")
    search: SearchSpec

    def fixed_overrides(self) -> list[str]:
        """``overrides`` as ``--set`` strings, one per leaf."""
        out: list[str] = []

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, dict) and node and not ("name" in node and prefix.endswith("method")):
                for k, v in node.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out.append(f"{prefix}={_yaml_value(node)}")

        if self.overrides:
            walk("", self.overrides)
        return out

    def post_validate(self, line_of: Callable[[list], int], shown: str) -> None:
        """The base must be a sweepable job, every searched key a field of it, every bound valid there."""
        from .. import kinds, spec

        base_file = shown_path(self.base)
        try:
            base = spec.load(base_file, self.fixed_overrides())
        except SpecError as e:
            if e.file != base_file or e.field == "file":
                raise
            raise SpecError(shown, line_of(["overrides"]), "overrides",
                            f"makes {base_file} invalid: {e.field}: {e.reason.removesuffix(' (from --set)')}") from None
        if base.kind == "sweep":
            raise SpecError(shown, line_of(["base"]), "base", f"{base_file} is itself a sweep; a sweep's base is one "
                            f"job of kind {', '.join(kinds.sweepable())}")
        hooks = kinds.sweep_hooks(base.kind)
        if hooks is None:
            raise SpecError(shown, line_of(["base"]), "base", f"kind {base.kind!r} registers no sweep hooks "
                            f"(sweepable: {', '.join(kinds.sweepable())})")
        if self.search.scheduler.name == "pbt" and not hooks.restorable:
            raise SpecError(shown, line_of(["search", "scheduler", "name"]), "search.scheduler.name",
                            f"pbt copies trials' checkpoints, and {base.kind} trials report none; use fifo or asha")
        for key, dist in self.search.space.items():
            line = line_of(["search", "space", key])
            field = f"search.space.{key}"
            if not _names_field(base, key.split(".")):
                raise SpecError(shown, line, field, f"names no field of {base_file}")
            if self.search.searcher == "grid" and dist.type not in ("grid", "choice"):
                raise SpecError(shown, line, f"{field}.type", f"the grid searcher needs grid or choice, got {dist.type!r}")
            for value in dist.representatives():
                try:
                    spec.load(base_file, self.fixed_overrides() + [f"{key}={_yaml_value(value)}"])
                except SpecError as e:
                    raise SpecError(shown, line, field, f"value {value!r} is invalid in {base_file}: "
                                    f"{e.reason.removesuffix(' (from --set)')}") from None


def _names_field(obj: Any, parts: list[str]) -> bool:
    for part in parts:
        if isinstance(obj, BaseModel) and part in type(obj).model_fields:
            obj = getattr(obj, part)
        elif isinstance(obj, dict) and part in obj:
            obj = obj[part]
        elif isinstance(obj, (list, tuple)) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return False
    return True


def _yaml_value(value: Any) -> str:
    """A value as ``--set`` text: JSON is YAML, and keeps strings, numbers and mappings exact."""
    return json.dumps(value)
