"""Submit the quickstart to a real Ray head (``ray start --head``, token auth on) via the Jobs API."""

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from dist_core.localcluster import LocalHead

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def head():
    h = LocalHead(num_cpus=2).start()
    yield h
    assert h.stop() > 0  # only this head's processes, never a blanket `ray stop`


def launch(head, *args, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env=head.env(), timeout=timeout)


def test_dashboard_listens_on_loopback_only(head):
    listening = [c for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == head.dashboard_port]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening)


def test_submit_follow_status_logs(head):
    proc = launch(head, "submit", "jobs/quickstart.yaml", "--address", head.api_address,
                  "--set", "bilevel.rounds=20", "--follow")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_id = proc.stdout.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_")
    assert "quickstart: succeeded" in proc.stdout
    assert f"job {job_id}: SUCCEEDED" in proc.stdout

    status = launch(head, "status", job_id, "--address", head.api_address)
    assert status.returncode == 0 and status.stdout.strip() == "SUCCEEDED"
    logs = launch(head, "logs", job_id, "--address", head.api_address)
    assert "test_acc_noisy_baseline" in logs.stdout
    stop = launch(head, "stop", job_id, "--address", head.api_address)
    assert stop.returncode == 0 and stop.stdout.strip() == "already finished"


def test_submit_validates_before_uploading(head):
    proc = launch(head, "submit", "jobs/quickstart.yaml", "--address", head.api_address, "--set", "bilevel.rounds=0")
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("bilevel.rounds: must be >= 1, got 0 (from --set)")


def test_unknown_job_id_is_one_line(head):
    proc = launch(head, "status", "raysubmit_nope", "--address", head.api_address)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "raysubmit_nope" in proc.stderr and "Traceback" not in proc.stderr
