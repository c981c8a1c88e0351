"""What every job file shares: strict sections, name/seed, cluster, resources and tracking.

Each kind's schema lives in its capability's ``config.py`` and subclasses ``JobBase``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Any, Callable

from pydantic import (BaseModel, BeforeValidator, ConfigDict, DirectoryPath, Field, FilePath, ValidationInfo,
                      field_validator)


def resolve_path(value: Any, info: ValidationInfo) -> Any:
    """A relative path in a job file, made absolute before any Ray worker (another cwd) sees it.

    Looked up from the invoking directory first, then from the job file's folder and the folder
    above it, so the shipped jobs (which cite ``data/...`` and ``jobs/...``) run from anywhere. A
    path found nowhere is left relative to the invoking directory, for the "no such file" error.
    """
    if value is None or not isinstance(value, (str, Path)) or Path(value).is_absolute():
        return value
    job_file = (info.context or {}).get("job_file")
    candidates = [Path.cwd()]
    if job_file is not None:
        folder = Path(job_file).resolve().parent
        candidates += [folder, folder.parent]
    for root in candidates:
        if (root / value).exists():
            return str((root / value).resolve())
    return value


def shown_path(path: Path | str) -> str:
    """A path as a person reads it in a message: relative when under the invoking directory."""
    p = Path(path)
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


JobFile = Annotated[FilePath, BeforeValidator(resolve_path)]
JobDir = Annotated[DirectoryPath, BeforeValidator(resolve_path)]
JobPath = Annotated[Path, BeforeValidator(resolve_path)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClusterSpec(Strict):
    address: str | None = Field(None, description="Ray address to join; None starts embedded Ray")
    runtime_env: dict[str, Any] = Field(default_factory=dict, description="Ray runtime_env for submit")


class ResourcesSpec(Strict):
    num_cpus: float | None = Field(None, gt=0, description="CPUs for embedded Ray (default: all)")


class MlflowSpec(Strict):
    tracking_uri: str | None = Field(None, description="an MLflow store or server; default: sqlite:///<out>/mlflow.db "
                                                        "beside the run directories")
    experiment: str | None = Field(None, description="MLflow experiment name; default: the job's name")


# The modules each tracker imports, and the line that installs them. mlflow-skinny also provides
# ``mlflow`` but not the SQL store that the default ``sqlite:///`` URI needs, hence sqlalchemy/alembic.
# A job's event files are written through ``tensorboard``'s writer, a sweep's by Tune with tensorboardX.
TRACKER_MODULES: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboardX", "tensorboard"),
    "mlflow": ("mlflow", "sqlalchemy", "alembic"),
}
TRACKING_INSTALL = 'pip install -e ".[tracking]"'


def missing_tracker_modules(tracker: str) -> list[str]:
    """Modules ``tracker`` needs that are not installed; ``find_spec`` imports nothing (validate stays light)."""
    return [m for m in TRACKER_MODULES[tracker] if importlib.util.find_spec(m) is None]


def tracker_missing_message(tracker: str, missing: list[str]) -> str:
    return f"{tracker} is not installed (missing: {', '.join(missing)}): {TRACKING_INSTALL}"


class TrackingSpec(Strict):
    tensorboard: bool = Field(False, description="write TensorBoard event files under the run directory")
    mlflow: MlflowSpec | None = Field(None, description="log params, metrics and artefacts to MLflow")

    # Checked with the file, so a missing package stops the run before Ray starts, at the line that asks.
    @field_validator("tensorboard")
    @classmethod
    def _tensorboard_installed(cls, on: bool) -> bool:
        if on and (missing := missing_tracker_modules("tensorboard")):
            raise ValueError(tracker_missing_message("tensorboard", missing))
        return on

    @field_validator("mlflow")
    @classmethod
    def _mlflow_installed(cls, spec: MlflowSpec | None) -> MlflowSpec | None:
        if spec is not None and (missing := missing_tracker_modules("mlflow")):
            raise ValueError(tracker_missing_message("mlflow", missing))
        return spec

    @property
    def enabled(self) -> bool:
        return self.tensorboard or self.mlflow is not None


class JobBase(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100,
                      description="names the run directory, `runs/<name>-<timestamp>/`")
    seed: int = Field(0, description="seed of every random draw in the run (data, initialisation, sampling)")
    cluster: ClusterSpec = Field(default_factory=ClusterSpec, description="where the job runs")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="what the job reserves")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="TensorBoard / MLflow (pip install "
                                                                            "-e \".[tracking]\")")

    def post_validate(self, line_of: Callable[[list], int], shown: str) -> None:
        """Checks across fields or files, after the schema; raise ``SpecError`` at ``line_of(path)``."""
