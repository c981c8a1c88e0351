"""Job files: the pydantic schema (``extra="forbid"``) and a loader that reports ``file:line: field``.

Every job has ``kind``, ``name``, optional ``cluster:`` and ``resources:``, and the section its
kind needs. ``load(path, overrides)`` returns a validated job or raises ``SpecError`` whose text is
exactly one line, e.g. ``jobs/x.yaml:14: bilevel.lower.lr: must be > 0, got -0.1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Field, FilePath, ValidationError, ValidationInfo, field_validator, model_validator

from .errors import SpecError
from .posttrain.config import PosttrainJob
from .specbase import ClusterSpec, JobBase, ResourcesSpec, Strict  # noqa: F401  (re-exported)


# ---------------------------------------------------------------- kind: bilevel
class DataSpec(Strict):
    dataset: Literal["digits"] = "digits"
    path: FilePath | None = Field(None, description="a .npz with X (n, d) and y (n,) instead of digits")
    n_train: int = Field(1000, ge=10)
    n_val: int = Field(300, ge=10)
    corruption: float = Field(0.4, ge=0.0, lt=1.0, description="share of training labels flipped")


class ModelSpec(Strict):
    hidden: int = Field(0, ge=0, description="0: softmax regression; >0: one ReLU hidden layer")
    weight_decay: float = Field(1e-2, ge=0.0)


class LowerSpec(Strict):
    learners: int = Field(2, ge=1, le=256, description="K lower-learner actors")
    inner_steps: int = Field(20, ge=0, description="T gradient steps on g per round")
    lr: float = Field(0.5, gt=0.0)


class UpperSpec(Strict):
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(0.3, gt=0.0)
    init: float = Field(2.0, description="initial λ_i (σ(2) ≈ 0.88: nothing flagged at the start)")
    hypergradient: bool = Field(True, description="false: λ stays at init (the 'hypergradient off' arm)")


class ImplicitCG(Strict):
    name: Literal["implicit_cg"]
    iters: int = Field(20, ge=1)
    tol: float = Field(1e-10, ge=0.0)
    damping: float = Field(0.0, ge=0.0)


class ImplicitNeumann(Strict):
    name: Literal["implicit_neumann"]
    iters: int = Field(20, ge=0)
    alpha: float = Field(0.5, gt=0.0)


class Unrolled(Strict):
    name: Literal["unrolled"]
    steps: int = Field(10, ge=1)
    lr: float | None = Field(None, gt=0.0, description="default: bilevel.lower.lr")
    truncate: int | None = Field(None, ge=1)


class Penalty(Strict):
    name: Literal["penalty"]
    gamma: float = Field(10.0, gt=0.0)
    steps: int = Field(10, ge=0)
    lr: float | None = Field(None, gt=0.0, description="default: bilevel.lower.lr")


MethodSpec = Annotated[Union[ImplicitCG, ImplicitNeumann, Unrolled, Penalty], Field(discriminator="name")]


class BilevelSpec(Strict):
    task: Literal["hyper_cleaning"] = "hyper_cleaning"
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    lower: LowerSpec = Field(default_factory=LowerSpec)
    upper: UpperSpec = Field(default_factory=UpperSpec)
    method: MethodSpec = Field(default_factory=lambda: Penalty(name="penalty"))
    rounds: int = Field(150, ge=1)
    checkpoint_every: int = Field(25, ge=0, description="rounds between checkpoints; 0: none")
    max_restarts: int = Field(1, ge=0, description="recoveries from a dead actor before failing")
    backend: Literal["ray", "local"] = "ray"
    baseline: bool = Field(True, description="also train on unweighted noisy labels, same budget")

    def method_options(self) -> dict[str, Any]:
        """The estimator's knobs, with unset step sizes defaulting to the lower learner's."""
        opts = self.method.model_dump(exclude={"name"})
        if "lr" in opts and opts["lr"] is None:
            opts["lr"] = self.lower.lr
        return opts


class BilevelJob(JobBase):
    kind: Literal["bilevel"]
    bilevel: BilevelSpec = Field(default_factory=BilevelSpec)


# ---------------------------------------------------------------- kind: diffusion_schedule
class RingSpec(Strict):
    modes: int = Field(8, ge=1)
    radius: float = Field(2.0, gt=0.0)
    std: float = Field(0.15, gt=0.0)


class ScheduleBilevelSpec(Strict):
    outer_steps: int = Field(100, ge=1)
    y_steps: int = Field(20, ge=1, description="DDPM steps on θ_y per outer step")
    z_steps: int = Field(5, ge=1, description="steps on θ_z (f/γ + g) per outer step")
    gamma: float = Field(1.0, gt=0.0)
    lr_psi: float = Field(0.02, gt=0.0)
    warmup_steps: int = Field(500, ge=0)


class DiffusionSpec(Strict):
    data: RingSpec = Field(default_factory=RingSpec)
    T: int = Field(100, ge=2, description="diffusion timesteps")
    ddim_steps: int = Field(10, ge=1)
    hidden: int = Field(64, ge=4)
    batch: int = Field(256, ge=8)
    lr: float = Field(2e-3, gt=0.0)
    psi0: list[float] = Field([0.0, 1.0, 1.0, 0.008], min_length=4, max_length=4,
                              description="(s, e, τ, ε); (0, 1, 1, 0.008) is the cosine schedule")
    bilevel: ScheduleBilevelSpec = Field(default_factory=ScheduleBilevelSpec)
    compare_cosine: bool = Field(True, description="also train under the fixed cosine schedule, same steps")

    @field_validator("psi0")
    @classmethod
    def _feasible(cls, psi0: list[float]) -> list[float]:
        s, e, tau, eps = psi0
        if not (0.0 <= s < e <= 1.0 and tau > 0 and 0 < eps <= 1):
            raise ValueError(f"needs 0 <= s < e <= 1, tau > 0, 0 < eps <= 1, got {psi0}")
        return psi0

    @model_validator(mode="after")
    def _steps(self) -> "DiffusionSpec":
        if self.ddim_steps > self.T:
            raise ValueError(f"ddim_steps ({self.ddim_steps}) must be <= T ({self.T})")
        return self


class DiffusionJob(JobBase):
    kind: Literal["diffusion_schedule"]
    diffusion: DiffusionSpec = Field(default_factory=DiffusionSpec)


# ---------------------------------------------------------------- kind: analog_pipeline
class AnalogDeviceSpec(Strict):
    name: str = Field("ideal_constant", description="a device or preset of dist_core.analog.devices")
    params: dict[str, float | bool] = Field(default_factory=dict, description="aihwkit-named parameters")

    @model_validator(mode="after")
    def _buildable(self) -> "AnalogDeviceSpec":
        from .analog import devices

        try:
            devices.make(self.name, **self.params)
        except devices.DeviceConfigError as e:
            raise ValueError(str(e)) from None
        return self


class AnalogPipelineSpec(Strict):
    hidden: list[int] = Field([64, 32], description="hidden widths of the MLP (digits: 64 in, 10 out)")
    stages: int = Field(3, ge=1, description="S pipeline stages, each a Ray actor")
    micro_batch: int = Field(16, ge=1, description="samples per micro-batch")
    micro_batches: int = Field(4, ge=1, description="B micro-batches per synchronous mini-batch")
    epochs: int = Field(3, ge=1)
    lr: float = Field(0.05, gt=0.0)
    schedules: list[Literal["sync", "async"]] = Field(["sync", "async"], min_length=1)
    device: AnalogDeviceSpec | None = Field(None, description="None: digital weights")
    backend: Literal["ray", "local"] = "ray"

    @field_validator("stages")
    @classmethod
    def _stages_fit(cls, stages: int, info: ValidationInfo) -> int:
        layers = len(info.data.get("hidden", [])) + 1
        if stages > layers:
            raise ValueError(f"more stages ({stages}) than layers ({layers}); add hidden layers or use fewer stages")
        return stages


class AnalogPipelineJob(JobBase):
    kind: Literal["analog_pipeline"]
    analog: AnalogPipelineSpec = Field(default_factory=AnalogPipelineSpec)


class AimcToySpec(Strict):
    """The least-squares toy of RESEARCH.md §4a/§7.4 (dist_core.analog.toy)."""

    d: int = Field(40, ge=1, description="dimension of W and x*")
    n: int = Field(100, ge=1, description="rows of the design X")
    tau: float = Field(3.0, gt=0.0, description="soft bounds ±τ of the weight devices (Analog SGD, Tiki-Taka's C)")
    tau_fast: float = Field(1.0, gt=0.0, description="soft bounds ±τ_A of Tiki-Taka's fast array A")
    dw_min: float = Field(1e-4, gt=0.0, description="pulse granularity of every device")
    sigma: float = Field(0.1, ge=0.0, description="std of the additive gradient noise")
    steps: int = Field(40_000, ge=2)
    alphas: list[float] = Field([0.1, 0.05, 0.02, 0.01], description="step sizes α, swept")
    methods: list[Literal["digital", "analog_sgd", "tiki_taka_v1", "tiki_taka_v2"]] = Field(
        ["digital", "analog_sgd", "tiki_taka_v1", "tiki_taka_v2"], min_length=1)
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


# ---------------------------------------------------------------- kind: sweep
class Distribution(Strict):
    """One dimension of a search space, over a dotted field of the base job."""

    type: Literal["uniform", "loguniform", "int", "choice", "grid"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = Field(None, min_length=1)

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
    name: Literal["fifo", "asha", "pbt"] = "fifo"
    grace_period: int = Field(5, ge=1, description="ASHA: rounds before a trial may be stopped")
    reduction_factor: float = Field(3.0, gt=1.0, description="ASHA: keep 1/η of trials per rung")
    perturbation_interval: int = Field(10, ge=1, description="PBT: rounds between exploit/explore")
    quantile_fraction: float = Field(0.25, gt=0.0, le=0.5, description="PBT: bottom/top share")


class SearchSpec(Strict):
    space: dict[str, Distribution] = Field(min_length=1)
    searcher: Literal["random", "grid", "optuna", "hyperopt", "bohb"] = "random"
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    num_samples: int = Field(8, ge=1, description="trials (for grid: repeats of the whole grid)")
    max_concurrent: int = Field(2, ge=1)
    max_failures: int = Field(0, ge=-1, description="retries of a failed trial (-1: forever)")
    trial_cpus: float = Field(0.01, gt=0.0, description="the trial's own driver; learners get bundles")
    seed: int | None = Field(None, description="searcher seed (default: the job's seed)")


class SweepJob(JobBase):
    kind: Literal["sweep"]
    base: FilePath = Field(description="the job file every trial runs, with the sampled fields set")
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


KINDS: dict[str, type[JobBase]] = {"bilevel": BilevelJob, "sweep": SweepJob, "diffusion_schedule": DiffusionJob,
                                   "analog_pipeline": AnalogPipelineJob, "aimc_toy": AimcToyJob,
                                   "posttrain": PosttrainJob}
Job = BilevelJob | SweepJob | DiffusionJob | AnalogPipelineJob | AimcToyJob | PosttrainJob
SWEEPABLE = ("bilevel",)


# ---------------------------------------------------------------- loading
def load(path: str | Path, overrides: list[str] | None = None) -> Job:
    """Read, override and validate a job file; any mistake raises a one-line ``SpecError``."""
    shown = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise SpecError(shown, 1, "file", "no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise SpecError(shown, 1, "file", f"cannot read ({type(e).__name__})") from None
    return load_text(text, shown, overrides)


def load_text(text: str, shown: str, overrides: list[str] | None = None) -> Job:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(shown, line, "yaml", f"invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise SpecError(shown, 1, "(top)", f"a job file is a mapping of fields, got {type(data).__name__}")
    set_keys = _apply_overrides(data, overrides or [], shown)

    kind = data.get("kind")
    if kind is None:
        raise SpecError(shown, 1, "kind", f"required field missing (valid kinds: {', '.join(KINDS)})")
    if kind not in KINDS:
        raise SpecError(shown, _line_of(root, ["kind"]), "kind", f"unknown kind {kind!r} (valid: {', '.join(KINDS)})")
    model = KINDS[kind]
    try:
        job = model.model_validate(data)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        path = _data_path(data, err["loc"])
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path.append(err.get("ctx", {}).get("discriminator", "name").strip("'"))
        field = ".".join(str(p) for p in path) or "(top)"
        reason = _reason(err, _model_at(model, data, path))
        if field in set_keys or any(field.startswith(k + ".") for k in set_keys):
            reason += " (from --set)"
        raise SpecError(shown, _line_of(root, path), field, reason) from None
    if isinstance(job, SweepJob):
        _check_sweep(job, root, shown)
    job.post_validate(lambda path: _line_of(root, path), shown)
    return job


def _check_sweep(job: SweepJob, root: yaml.Node | None, shown: str) -> None:
    """Every searched key must name a field of the base job, and every bound must be valid there."""
    try:
        base = load(job.base, job.fixed_overrides())
    except SpecError as e:
        if e.file != str(job.base) or e.field == "file":
            raise
        raise SpecError(shown, _line_of(root, ["overrides"]), "overrides", f"makes {job.base} invalid: {e.field}: {e.reason.removesuffix(' (from --set)')}") from None
    if base.kind not in SWEEPABLE:
        raise SpecError(shown, _line_of(root, ["base"]), "base", f"a sweep wraps a {'/'.join(SWEEPABLE)} job, got kind {base.kind!r}")
    for key, dist in job.search.space.items():
        where = ["search", "space", key]
        line = _line_of(root, where)
        field = f"search.space.{key}"
        if not _names_field(base, key.split(".")):
            raise SpecError(shown, line, field, f"names no field of {job.base}")
        if job.search.searcher == "grid" and dist.type not in ("grid", "choice"):
            raise SpecError(shown, line, f"{field}.type", f"the grid searcher needs grid or choice, got {dist.type!r}")
        for value in dist.representatives():
            try:
                load(job.base, job.fixed_overrides() + [f"{key}={_yaml_value(value)}"])
            except SpecError as e:
                raise SpecError(shown, line, field, f"value {value!r} is invalid in {job.base}: {e.reason.removesuffix(' (from --set)')}") from None


def _names_field(obj: Any, parts: list[str]) -> bool:
    for part in parts:
        if isinstance(obj, BaseModel) and part in type(obj).model_fields:
            obj = getattr(obj, part)
        elif isinstance(obj, dict) and part in obj:
            obj = obj[part]
        else:
            return False
    return True


def _yaml_value(value: Any) -> str:
    """A value as ``--set`` text: JSON is YAML, and keeps strings, numbers and mappings exact."""
    import json

    return json.dumps(value)


def dump(job: Job) -> str:
    """The resolved job as YAML (every default filled in), for the run directory."""
    return yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False)


def _apply_overrides(data: dict, overrides: list[str], shown: str) -> set[str]:
    keys = set()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(shown, 1, "--set", f"expected dotted.key=value, got {item!r}")
        key = key.strip()
        parts = key.split(".")
        node = data
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise SpecError(shown, 1, key, f"cannot parse --set value {raw!r}") from None
        keys.add(key)
    return keys


def _data_path(data: Any, loc: tuple) -> list:
    """Pydantic's location minus the union tags it inserts (``method.penalty.gamma``)."""
    out, node = [], data
    for part in loc:
        if isinstance(node, dict) and part in node:
            out.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            out.append(part)
            node = node[part]
        elif isinstance(node, dict) and part not in node and not _is_tag(node, part):
            out.append(part)  # a missing field: name it
            node = None
    return out


def _is_tag(node: dict, part: Any) -> bool:
    return isinstance(part, str) and node.get("name") == part


def _line_of(root: yaml.Node | None, path: list) -> int:
    """1-based line of the deepest node of ``path`` present in the YAML (the key's own line)."""
    line = 1 if root is None else root.start_mark.line + 1
    node = root
    for part in path:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(part):
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _model_at(model: type[BaseModel], data: Any, path: list) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at ``path[-1]`` (for 'valid fields' hints)."""
    cur: Any = model
    for part in path[:-1]:
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)) or part not in cur.model_fields:
            return None
        data = data.get(part) if isinstance(data, dict) else None
        cur = _pick_model(cur.model_fields[part].annotation, data)
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def _pick_model(ann: Any, data: Any) -> Any:
    """The model inside an annotation; for a tagged union, the member whose ``name`` matches."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    members = [m for arg in getattr(ann, "__args__", ()) if (m := _pick_model(arg, data)) is not None]
    tag = data.get("name") if isinstance(data, dict) else None
    for m in members:
        field = m.model_fields.get("name")
        if field is not None and tag in getattr(field.annotation, "__args__", ()):
            return m
    return members[0] if members else None


def _reason(err: dict, holder: type[BaseModel] | None) -> str:
    t, ctx, got = err["type"], err.get("ctx", {}), err.get("input")
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if t in bounds:
        bound = next(iter(ctx.values()))
        return f"must be {bounds[t]} {bound}, got {got!r}"
    if t == "extra_forbidden":
        valid = f" (valid: {', '.join(holder.model_fields)})" if holder is not None else ""
        return f"unknown field{valid}"
    if t == "missing":
        return "required field missing"
    if t == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {got!r}"
    if t == "union_tag_invalid":
        expected = str(ctx.get("expected_tags", "")).replace("'", "")
        return f"unknown {ctx.get('tag')!r} (valid: {expected})"
    if t == "union_tag_not_found":
        return f"needs a {ctx.get('discriminator')!s} field"
    if t.startswith("int_"):
        return f"must be an integer, got {got!r}"
    if t.startswith("float_"):
        return f"must be a number, got {got!r}"
    if t.startswith("bool_"):
        return f"must be true or false, got {got!r}"
    if t.startswith("string_type"):
        return f"must be a string, got {got!r}"
    if t == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}, got {got!r}"
    if t == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if t in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping, got {got!r}"
    if t in ("path_not_file", "path_not_exists"):
        return f"no such file: {got}"
    msg = err["msg"].removeprefix("Value error, ")
    if t == "value_error":  # our own validators already name the offending values
        return msg
    return f"{msg[:1].lower()}{msg[1:]}, got {got!r}"
