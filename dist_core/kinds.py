"""The registry of job kinds: kind → schema, entry point, Ray needs and sweep hooks.

Everything is a dotted path (``"package.module:attribute"``) resolved on first use, so that
``launch.py validate`` imports only the schema of the file's own kind (no torch, no Ray). A new
kind is a folder with ``config.py`` (its pydantic job model) and ``job.py`` (its
``run(job, run_dir, hooks, resume)``) plus one ``register(...)`` line below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .specbase import JobBase

Bundles = list[dict[str, float]]


@dataclass(frozen=True)
class SweepHooks:
    """How Ray Tune runs trials of one kind.

    ``bundles(job, trial_cpus)`` are the placement-group bundles of one trial: the trial's own
    driver first, then whatever actors it starts, so no trial waits on a sibling's CPUs.
    ``iterations(job)`` is the number of reports a full trial makes (ASHA's and PBT's ``max_t``).
    ``is_report(record)`` picks the metric records that are one Tune iteration. ``restorable``: the
    kind checkpoints through ``RunDir.save_checkpoint`` and resumes from the run directory, so Tune
    can restore a trial (and PBT copy one) by placing a checkpoint there. ``plot``, if given, is a
    dotted path to ``plot(run_dir, rows, sweep_job)`` that draws the kind's own sweep figure.
    ``outside(job)``: CPUs the job reserves in placement groups of its own (Ray Train's workers),
    counted when the sweep sizes how many trials run at once.
    """

    bundles: Callable[["JobBase", float], Bundles]
    iterations: Callable[["JobBase"], int]
    is_report: Callable[[dict[str, Any]], bool]
    restorable: bool = False
    plot: str | None = None
    outside: Callable[["JobBase"], float] | None = None  # CPUs a trial's job takes outside its bundles


@dataclass(frozen=True)
class Kind:
    name: str
    schema: str  # "module:Class", a JobBase subclass with ``kind: Literal[name]``
    entry: str  # "module:function", run(job, run_dir, hooks, resume) -> JobResult
    needs_ray: bool = True
    dashboard: bool = False  # Tune frees trials' placement groups through the State API
    sweep: str | None = None  # "module:attribute" holding a SweepHooks


_KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add (or replace) a kind; a test registers a throwaway kind this way."""
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    _KINDS.pop(name, None)


def names() -> list[str]:
    return list(_KINDS)


def get(name: str) -> Kind:
    if name not in _KINDS:
        raise KeyError(f"unknown kind {name!r} (valid: {', '.join(_KINDS)})")
    return _KINDS[name]


def resolve(dotted: str) -> Any:
    module, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module), attr)


def schema(name: str) -> type["JobBase"]:
    return resolve(get(name).schema)


def entry(name: str) -> Callable[..., Any]:
    return resolve(get(name).entry)


def sweep_hooks(name: str) -> SweepHooks | None:
    dotted = get(name).sweep
    return resolve(dotted) if dotted else None


def sweepable() -> list[str]:
    return [k.name for k in _KINDS.values() if k.sweep]


register(Kind("bilevel", "dist_core.bilevel.config:BilevelJob", "dist_core.bilevel.job:run",
              sweep="dist_core.bilevel.config:SWEEP"))
register(Kind("sweep", "dist_core.search.config:SweepJob", "dist_core.search.job:run", dashboard=True))
register(Kind("diffusion_schedule", "dist_core.diffusion.config:DiffusionJob", "dist_core.diffusion.job:run",
              needs_ray=False, sweep="dist_core.diffusion.config:SWEEP"))
register(Kind("analog_pipeline", "dist_core.analog.config:AnalogPipelineJob", "dist_core.analog.job:run",
              sweep="dist_core.analog.config:PIPELINE_SWEEP"))
register(Kind("aimc_toy", "dist_core.analog.config:AimcToyJob", "dist_core.analog.toy_job:run",
              needs_ray=False, sweep="dist_core.analog.config:TOY_SWEEP"))
register(Kind("posttrain", "dist_core.posttrain.config:PosttrainJob", "dist_core.posttrain.job:run",
              sweep="dist_core.posttrain.config:SWEEP"))
register(Kind("distill", "dist_core.distill.config:DistillJob", "dist_core.distill.job:run",
              sweep="dist_core.distill.config:SWEEP"))
register(Kind("multiobjective", "dist_core.multiobjective.config:MultiObjectiveJob", "dist_core.multiobjective.job:run"))
register(Kind("bl_just", "dist_core.bljust.config:BLJustJob", "dist_core.bljust.job:run", needs_ray=False,
              sweep="dist_core.bljust.config:SWEEP"))
register(Kind("stn", "dist_core.stn.config:STNJob", "dist_core.stn.job:run", needs_ray=False,
              sweep="dist_core.stn.config:SWEEP"))
register(Kind("semivectorial", "dist_core.semivectorial.config:SemivectorialJob", "dist_core.semivectorial.job:run"))
