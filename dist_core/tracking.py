"""TensorBoard and MLflow for any kind: ``RunListener``s on a run's metric records.

A record becomes scalars the same way for both trackers: every numeric field (booleans as 0/1) is
one scalar; its step is the record's ``round``, ``step``, ``outer_step`` or ``epoch`` field, else a
running count; a record that names its phase or schedule (posttrain's ``phase``, analog_pipeline's
``schedule``) has its tags prefixed by it (``main/sft_loss``), so phases that each count from 1 do
not overwrite each other. At the end the summary's metrics go in under ``final/``.

Resume continues the same event directory and the same MLflow run (its id in ``mlflow_run.json``),
and writes each (tag, step) once: what the trackers already hold is read back first, so the rounds
a resumed kind replays from its checkpoint are not logged twice (the first value is kept; resumes
are exact, so it equals the replayed one).

    mlflow ui --backend-store-uri sqlite:///runs/mlflow.db     every run under runs/
    tensorboard --logdir runs                                   every run's tensorboard/ folder

Sweeps use Tune's own ``TBXLoggerCallback`` / ``MLflowLoggerCallback`` (``search/job.py``), which
call ``require``, ``mlflow_uri`` and ``ensure_experiment`` from here.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .errors import ConfigError
from .runs import Record, RunDir, RunListener
from .specbase import JobBase, MlflowSpec, TrackingSpec, missing_tracker_modules, tracker_missing_message

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("dist_core.tracking")

STEP_FIELDS = ("round", "step", "outer_step", "epoch")
PREFIX_FIELDS = ("phase", "schedule")
TENSORBOARD_DIR = "tensorboard"
MLFLOW_RUN_FILE = "mlflow_run.json"
FINAL = "final/"
# MLflow rejects other characters in metric and param keys (aimc_toy's "tiki_taka (s=0.5)").
_BAD_KEY = re.compile(r"[^\w./\- :]")
_MLFLOW_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
_MLFLOW_BATCH = 1000  # metrics per log_batch call (MLflow's limit)
_MLFLOW_PARAM_BATCH = 100  # params per log_batch call (MLflow's limit)
_MLFLOW_PARAM_LEN = 6000  # longest param value MLflow stores
_FLUSH_S = 1.0  # a store round trip per record would slow short rounds (~50 ms) noticeably


def require(name: str) -> None:
    """Raise a one-line ``ConfigError`` naming the install line if tracker ``name``'s packages are missing."""
    missing = missing_tracker_modules(name)
    if missing:
        raise ConfigError(f"tracking.{name}: {tracker_missing_message(name, missing)}")


def mlflow_uri(spec: MlflowSpec, run_dir: RunDir) -> str:
    """The job's store, else a SQLite file beside the run directories: one UI shows every run under ``--out``."""
    return spec.tracking_uri or f"sqlite:///{run_dir.path.resolve().parent / 'mlflow.db'}"


def listeners(job: JobBase, tracking: TrackingSpec, run_dir: RunDir, resume: bool) -> list[RunListener]:
    """The listeners a job's ``tracking:`` section asks for."""
    out: list[RunListener] = []
    if tracking.tensorboard:
        require("tensorboard")
        out.append(TensorBoardListener(run_dir.path / TENSORBOARD_DIR, resume))
    if tracking.mlflow is not None:
        require("mlflow")
        out.append(MlflowListener(job, tracking.mlflow, run_dir, resume))
    return out


# ------------------------------------------------------------ records as scalars
def key(name: str) -> str:
    return _BAD_KEY.sub("_", name)


def is_number(value: Any) -> bool:
    return isinstance(value, (bool, int, float))


def flat_numbers(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Numbers of a nested dict as ``a/b`` keys (lists, strings and None are left out)."""
    for name, value in tree.items():
        if isinstance(value, dict):
            yield from flat_numbers(value, f"{prefix}{name}/")
        elif is_number(value):
            yield key(f"{prefix}{name}"), float(value)


class Scalars:
    """Turns records into ``(step, {tag: value})``, keeping a running count for records with no step field."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.last_step = 0

    def __call__(self, record: Record) -> tuple[int, dict[str, float]]:
        prefix = "".join(f"{record[f]}/" for f in PREFIX_FIELDS if isinstance(record.get(f), str))
        field = next((f for f in STEP_FIELDS if is_number(record.get(f)) and not isinstance(record[f], bool)), None)
        self.counts[prefix] = self.counts.get(prefix, 0) + 1
        step = int(record[field]) if field else self.counts[prefix]
        self.last_step = max(self.last_step, step)
        return step, dict(flat_numbers({k: v for k, v in record.items() if k != field}, prefix))


# ------------------------------------------------------------ TensorBoard
class TensorBoardListener:
    """Event files under ``<run dir>/tensorboard``.

    Written with torch's ``SummaryWriter`` (the tensorboard package's writer), not tensorboardX:
    tensorboardX's ``flush`` leaves queued events unwritten, and a checkpoint must find its rounds
    on disk.
    """

    def __init__(self, logdir: Path, resume: bool):
        from torch.utils.tensorboard import SummaryWriter

        self.scalars = Scalars()
        self.seen = tensorboard_steps(logdir) if resume else set()
        self.writer = SummaryWriter(str(logdir), flush_secs=5)  # a resume adds a file; names keep their order

    def on_record(self, record: Record) -> None:
        step, values = self.scalars(record)
        for tag, value in values.items():
            if (tag, step) not in self.seen:
                self.seen.add((tag, step))
                self.writer.add_scalar(tag, value, step)

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.writer.flush()  # what a checkpoint covers is on disk, for the resume that reads it back

    def on_end(self, summary: dict[str, Any], run_dir: RunDir) -> None:
        for tag, value in flat_numbers(summary.get("metrics", {}), FINAL):
            self.writer.add_scalar(tag, value, self.scalars.last_step)
        self.writer.close()


def tensorboard_steps(logdir: Path) -> set[tuple[str, int]]:
    """The (tag, step) pairs already in a run's event files."""
    if not logdir.is_dir():
        return set()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0}, purge_orphaned_data=False)
    acc.Reload()
    return {(tag, e.step) for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}


# ------------------------------------------------------------ MLflow
def artifact_root(uri: str, experiment: str) -> str | None:
    """Beside a SQLite store, not MLflow's default ``./mlruns`` in whatever directory the run started from."""
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return None
    db = Path(uri.removeprefix("sqlite:///")).resolve()
    return (db.parent / "mlartifacts" / re.sub(r"[^\w.-]", "_", experiment)).as_uri()


def ensure_experiment(client: "MlflowClient", name: str, uri: str) -> str:
    """The id of experiment ``name``, created (artefacts beside a SQLite store) if it does not exist."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_root(uri, name))
        except MlflowException:  # another run created it first
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise ConfigError(f"tracking.mlflow.experiment: MLflow experiment {name!r} was deleted; restore it "
                          f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or name another")
    return exp.experiment_id


def params(job: JobBase) -> dict[str, str]:
    """The resolved job as dotted keys (``bilevel.lower.lr``); values as JSON text, strings as they are."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for name, value in node.items():
                walk(value, f"{prefix}.{name}" if prefix else str(name))
        else:
            text = node if isinstance(node, str) else json.dumps(node)
            out[key(prefix)] = text[:_MLFLOW_PARAM_LEN]

    walk(job.model_dump(mode="json"), "")
    return out


class MlflowListener:
    """One MLflow run per job run: params, per-record metrics, final metrics, artefacts and status."""

    def __init__(self, job: JobBase, spec: MlflowSpec, run_dir: RunDir, resume: bool):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.uri = mlflow_uri(spec, run_dir)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_file = run_dir.path / MLFLOW_RUN_FILE
        self.scalars = Scalars()
        self.pending: list[Any] = []
        self.flushed = time.monotonic()
        self.seen: set[tuple[str, int]] = set()
        self.run_id = self._previous_run() if resume else None
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            self.seen = self._logged_steps()
            return
        experiment = ensure_experiment(self.client, spec.experiment or job.name, self.uri)
        run = self.client.create_run(experiment, run_name=run_dir.path.name,
                                     tags={"dist_core.kind": job.kind, "dist_core.run_dir": str(run_dir.path)})
        self.run_id = run.info.run_id
        from .checkpoint import write_json_atomic

        write_json_atomic(self.run_file, {"run_id": self.run_id, "experiment_id": experiment,
                                          "tracking_uri": self.uri})
        items = [Param(k, v) for k, v in params(job).items()]
        for i in range(0, len(items), _MLFLOW_PARAM_BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + _MLFLOW_PARAM_BATCH])

    def _previous_run(self) -> str | None:
        """The MLflow run this run directory logged to before, if the store still has it."""
        from mlflow.exceptions import MlflowException

        if not self.run_file.exists():
            return None
        run_id = json.loads(self.run_file.read_text())["run_id"]
        try:
            if self.client.get_run(run_id).info.lifecycle_stage == "active":
                return run_id
        except MlflowException:
            pass
        log.warning("MLflow run %s is gone from %s; logging the resumed run to a new one", run_id, self.uri)
        return None

    def _logged_steps(self) -> set[tuple[str, int]]:
        metrics = self.client.get_run(self.run_id).data.metrics
        return {(k, m.step) for k in metrics for m in self.client.get_metric_history(self.run_id, k)}

    def _log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for tag, value in values.items():
            if (tag, step) not in self.seen:
                self.seen.add((tag, step))
                self.pending.append(Metric(tag, value, now, step))

    def flush(self, final: bool = False) -> None:
        self.flushed = time.monotonic()
        try:
            while self.pending:
                self.client.log_batch(self.run_id, metrics=self.pending[:_MLFLOW_BATCH])
                del self.pending[:_MLFLOW_BATCH]
        except Exception:
            if final:
                raise
            # A store that is briefly away (a server restarting, SQLite locked by another run) must
            # not stop hours of training: keep the metrics and try again at the next flush.
            log.warning("MLflow store %s did not take %d metrics; retrying later", self.uri, len(self.pending),
                        exc_info=True)

    def on_record(self, record: Record) -> None:
        step, values = self.scalars(record)
        self._log(values, step)
        if time.monotonic() - self.flushed >= _FLUSH_S or len(self.pending) >= _MLFLOW_BATCH:
            self.flush()

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.flush()  # a resume reads the store back: what the checkpoint covers must be in it

    def on_end(self, summary: dict[str, Any], run_dir: RunDir) -> None:
        self._log(dict(flat_numbers(summary.get("metrics", {}), FINAL)), self.scalars.last_step)
        self.flush(final=True)
        for name in ("summary.json", "spec.yaml"):
            if (run_dir.path / name).exists():
                self.client.log_artifact(self.run_id, str(run_dir.path / name))
        for png in sorted(run_dir.plots.glob("*.png")):
            self.client.log_artifact(self.run_id, str(png), "plots")
        self.client.set_terminated(self.run_id, _MLFLOW_STATUS.get(summary.get("status", ""), "FAILED"))
