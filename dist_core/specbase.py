"""What every job file shares: strict sections, name/seed, cluster and resources.

Kinds live in their own modules (``spec.py``, ``posttrain/config.py``) and subclass ``JobBase``.
"""

from __future__ import annotations

from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClusterSpec(Strict):
    address: str | None = Field(None, description="Ray address to join; None starts embedded Ray")
    runtime_env: dict[str, Any] = Field(default_factory=dict, description="Ray runtime_env for submit")


class ResourcesSpec(Strict):
    num_cpus: float | None = Field(None, gt=0, description="CPUs for embedded Ray (default: all)")
    cpus_per_learner: float = Field(1.0, gt=0, description="CPUs reserved by each lower-learner actor")


class JobBase(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    seed: int = 0
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    def post_validate(self, line_of: Callable[[list], int], shown: str) -> None:
        """Checks across fields or files, after the schema; raise ``SpecError`` at ``line_of(path)``."""
