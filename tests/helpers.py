"""Helpers shared by the end-to-end test modules."""

import signal

import psutil


def kill_tree(pid: int) -> None:
    """SIGKILL a driver and everything it started (embedded Ray's raylet, GCS, workers)."""
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = [parent, *parent.children(recursive=True)]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=15)


def kill_when(cmd: list[str], cwd, ready, timeout: float, what: str, poll: float = 0.2) -> None:
    """Start ``cmd``, wait until ``ready()`` is true, then SIGKILL it with all it started.

    Fails if the command ends before it could be killed, or if ``ready`` stays false."""
    import subprocess
    import time

    import pytest

    driver = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if ready():
                return
            assert driver.poll() is None, f"finished before it could be killed: {what}"
            time.sleep(poll)
        pytest.fail(f"not reached in {timeout:.0f} s: {what}")
    finally:
        kill_tree(driver.pid)


class Killed(Exception):
    """Raised by ``KillAt``: the run stopped as a kill would stop it."""


class KillAt:
    """A run listener that stops the run right after the record whose ``key`` is ``step`` (its records
    after that one unwritten, its checkpoint, if any, older)."""

    def __init__(self, step: int, key: str = "round"):
        self.key, self.step = key, step

    def on_record(self, record):
        if record.get(self.key) == self.step:
            raise Killed

    def on_checkpoint(self, step, path):
        pass

    def on_end(self, summary, run_dir):
        pass
