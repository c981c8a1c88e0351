"""Ray Jobs API client: submit a job file to a cluster, then status / logs / stop by id."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Iterator

from . import runtime, spec
from .errors import ClusterError, SpecError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Never upload history, run outputs or environments with the working_dir.
EXCLUDES = [".git", "runs", "bench/results", ".venv", "venv", "*.egg-info", "__pycache__", ".pytest_cache"]
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
AGENT_WAIT_S = 60.0


def _client(address: str):
    runtime.quiet()
    runtime.enable_token_auth()
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # Ray raises ConnectionError, RuntimeError, or its own auth errors
        raise ClusterError(f"cannot reach the Ray Jobs API at {address}: {str(e).splitlines()[0]}") from None


def entrypoint(job_file: str, overrides: list[str]) -> str:
    """The command the cluster runs, relative to the uploaded project."""
    path = Path(job_file).resolve()
    try:
        rel = path.relative_to(PROJECT_ROOT)
    except ValueError:
        raise SpecError(job_file, 1, "file", f"must be inside the project ({PROJECT_ROOT}) to be uploaded") from None
    args = ["python", "launch.py", "run", str(rel)]
    for o in overrides:
        args += ["--set", o]
    return " ".join(shlex.quote(a) for a in args)


def submit(job_file: str, overrides: list[str], address: str) -> str:
    job = spec.load(job_file, overrides)  # fail here, not on the cluster
    runtime_env = {"working_dir": str(PROJECT_ROOT), "excludes": list(EXCLUDES)}
    runtime_env.update(job.cluster.runtime_env)
    client = _client(address)
    kwargs = dict(entrypoint=entrypoint(job_file, overrides), runtime_env=runtime_env,
                  metadata={"dist_core_job": job.name, "kind": job.kind})
    # A head that has just started answers 500 "No available agent" until its job agent registers
    # (seconds; longer on a loaded machine), so retry that one answer for a while.
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(**kwargs)
        except Exception as e:  # the SDK raises RuntimeError with the HTTP answer in its text
            text = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            if "No available agent" not in text or time.monotonic() > deadline:
                raise ClusterError(f"submit to {address}: {text}") from None
            time.sleep(1.0)


def _call(address: str, what: str, fn):
    try:
        return fn(_client(address))
    except ClusterError:
        raise
    except Exception as e:
        raise ClusterError(f"{what}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None


def status(job_id: str, address: str) -> str:
    return str(_call(address, f"status of {job_id}", lambda c: c.get_job_status(job_id)).value)


def logs(job_id: str, address: str) -> str:
    return _call(address, f"logs of {job_id}", lambda c: c.get_job_logs(job_id))


def follow(job_id: str, address: str) -> Iterator[str]:
    """Yield log chunks until the job ends (the Jobs API's websocket tail)."""
    import asyncio

    client = _client(address)
    agen = client.tail_job_logs(job_id)
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.close()


def stop(job_id: str, address: str) -> bool:
    return bool(_call(address, f"stop {job_id}", lambda c: c.stop_job(job_id)))
