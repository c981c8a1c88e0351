"""Embedded Ray vs. an existing cluster; 127.0.0.1 binding; token auth; quiet terminals."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Iterator

from .errors import ClusterError

TOKEN_FILE = Path.home() / ".ray" / "auth_token"


def quiet() -> None:
    """Keep Ray's start-up and worker chatter out of the terminal (it still goes to Ray's logs)."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Tune's newer console output prints its boxes whatever `verbose` says; the classic reporter
    # honours verbose=0, and a sweep draws its own bar over trials.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # The driver's own log lines from Ray's internals are INFO; people want ours, not theirs.
    for name in ("ray", "ray.tune", "ray.train", "ray.data", "ray._private"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Notices for Ray's own users, not ours: kept out of the terminal (run.log still has ours).
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    logging.getLogger("ray.tune.execution.experiment_state").setLevel(logging.ERROR)  # snapshot-time warnings
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="ray")


def enable_token_auth() -> None:
    """A cluster we talk to by address needs the token; Ray's clients don't switch auth on alone."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or TOKEN_FILE.exists():
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def resolve_address(address: str | None) -> str | None:
    """``None`` means embedded, unless we run inside a Ray job (``RAY_ADDRESS`` set by the cluster)."""
    if address:
        return address
    return os.environ.get("RAY_ADDRESS") or None


@contextlib.contextmanager
def connect(address: str | None = None, num_cpus: float | None = None, dashboard: bool = False) -> Iterator[None]:
    """Start embedded Ray bound to 127.0.0.1, or join ``address``; shut down what we started."""
    import ray

    quiet()
    if ray.is_initialized():  # the caller (a test, a notebook) owns the session
        yield
        return
    address = resolve_address(address)
    # ERROR: Ray's start-up notices (token auth on, dashboard URL) are for Ray's own log files.
    common = dict(logging_level=logging.ERROR, log_to_driver=False, configure_logging=True)
    try:
        if address:
            enable_token_auth()
            ray.init(address=address, **common)
        else:
            # Always a new local cluster: a bare ray.init() joins whatever head the machine has.
            # Token auth is Ray's default for it (its notice about that goes to run.log).
            ray.init(
                address="local",
                num_cpus=int(num_cpus) if num_cpus else None,
                include_dashboard=dashboard,
                dashboard_host="127.0.0.1",
                _node_ip_address="127.0.0.1",
                **common,
            )
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "embedded Ray"
        raise ClusterError(f"could not start or join {where}: {str(e).splitlines()[0]}") from None
    try:
        yield
    finally:
        ray.shutdown()
