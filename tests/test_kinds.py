"""The kinds registry: every shipped kind resolves, a new kind needs no edit of spec.py or runner.py,
and validating any shipped job file imports neither torch nor Ray."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from dist_core import cli, kinds, runner
from dist_core.runs import JobResult, RunDir, RunHooks
from dist_core.specbase import JobBase

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["bilevel", "sweep", "diffusion_schedule", "analog_pipeline", "aimc_toy", "posttrain"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_kind_resolves(name):
    kind = kinds.get(name)
    schema = kinds.schema(name)
    assert issubclass(schema, JobBase)
    assert schema.model_fields["kind"].annotation == Literal[name]
    assert callable(kinds.entry(name))
    hooks = kinds.sweep_hooks(name)
    assert (hooks is None) == (name == "sweep")  # every kind but sweep itself can be swept
    assert kind.needs_ray or name in ("diffusion_schedule", "aimc_toy")


# ------------------------------------------------------------ a throwaway kind, registered alone
class CountJob(JobBase):
    kind: Literal["count_test"]
    steps: int = Field(3, ge=1, description="records to write")


def run_count(job: CountJob, run_dir: RunDir, hooks: RunHooks, resume: bool = False) -> JobResult:
    start = 0
    if resume:
        start = max((r["step"] for r in run_dir.read_metrics()), default=0)
    for step in range(start + 1, job.steps + 1):
        run_dir.log_metrics({"step": step, "value": step * 0.5})
    return JobResult({"last": job.steps * 0.5}, None, {"resumed_from": start})


@pytest.fixture
def count_kind():
    kinds.register(kinds.Kind("count_test", f"{__name__}:CountJob", f"{__name__}:run_count", needs_ray=False))
    yield
    kinds.unregister("count_test")


def test_throwaway_kind_validates_and_runs_through_run_job(count_kind, tmp_path, capsys):
    job_file = tmp_path / "count.yaml"
    job_file.write_text("kind: count_test\nname: c\nsteps: 4\n")
    assert cli.main(["validate", str(job_file), "--quiet"]) == 0
    job_file.write_text("kind: count_test\nname: c\nsteps: 0\n")
    assert cli.main(["validate", str(job_file)]) == 2
    assert capsys.readouterr().err == f"{job_file}:3: steps: must be >= 1, got 0\n"

    from dist_core import spec

    job = spec.load_text("kind: count_test\nname: c\nsteps: 4\n", "count.yaml")
    seen = []

    class Listener:
        def on_record(self, record):
            seen.append(record["step"])

        def on_checkpoint(self, step, path):
            pass

        def on_end(self, summary, run_dir):
            seen.append(summary["status"])

    summary = runner.run_job(job, tmp_path / "runs", progress=False, echo=lambda s: None, listeners=[Listener()])
    assert summary["status"] == "succeeded" and summary["metrics"] == {"last": 2.0}
    assert seen == [1, 2, 3, 4, "succeeded"]
    run_dir = next((tmp_path / "runs").iterdir())
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_unknown_kind_lists_the_registered_ones(count_kind, tmp_path, capsys):
    job_file = tmp_path / "x.yaml"
    job_file.write_text("kind: nope\nname: x\n")
    assert cli.main(["validate", str(job_file)]) == 2
    assert f"unknown kind 'nope' (valid: {', '.join(kinds.names())})" in capsys.readouterr().err
    assert "count_test" in kinds.names()


def test_spec_error_raised_inside_a_run_exits_2(tmp_path, capsys, monkeypatch):
    """A job that turns out to be invalid only once it runs still gets the one-line, exit-2 answer."""
    from dist_core.errors import SpecError

    def bad(job, run_dir, hooks, resume=False):
        raise SpecError("data.jsonl", 7, "chosen", "required field missing")

    kinds.register(kinds.Kind("count_test", f"{__name__}:CountJob", f"{__name__}:run_count", needs_ray=False))
    monkeypatch.setattr(kinds, "entry", lambda name: bad)
    try:
        job_file = tmp_path / "count.yaml"
        job_file.write_text("kind: count_test\nname: c\n")
        assert cli.main(["run", str(job_file), "--out", str(tmp_path / "runs"), "--no-progress"]) == 2
        assert capsys.readouterr().err == "data.jsonl:7: chosen: required field missing\n"
    finally:
        kinds.unregister("count_test")


def test_validate_imports_neither_torch_nor_ray():
    files = sorted(str(p) for p in (ROOT / "jobs").glob("*.yaml"))
    code = ("import sys; from dist_core import cli\n"
            f"for f in {files!r}:\n"
            "    assert cli.main(['validate', f, '--quiet']) == 0, f\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray', 'deepspeed', 'transformers'))\n"
            "print(heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_one_line_keeps_the_cause_of_a_wrapped_worker_error():
    wrapped = RuntimeError("Training failed due to worker errors:\n[Rank 0 Error Snippet]:\nTraceback (most recent call "
                           "last):\n  File \"worker.py\", line 3, in run\n    load()\nOSError: Repo id must be in the "
                           "form 'repo_name' or 'namespace/repo_name': 'runs/x/init_model'\n")
    assert runner.one_line(wrapped) == ("OSError: Repo id must be in the form 'repo_name' or 'namespace/repo_name': "
                                        "'runs/x/init_model'")
    assert runner.one_line(ValueError("lr must be > 0")) == "lr must be > 0"
    assert runner.one_line(RuntimeError("")) == "RuntimeError"
