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
