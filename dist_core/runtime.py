"""Embedded Ray vs. an existing cluster; 127.0.0.1 binding; token auth; quiet terminals."""

from __future__ import annotations

import contextlib
import logging
import os
import re
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


_TRACEBACK = "Traceback (most recent call last):"
_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*:")


def _joined(e: BaseException) -> str:
    text = str(e)
    if _TRACEBACK in text:  # Ray pastes a formatted traceback into some messages: keep its exception line
        head, _, tb = text.partition(_TRACEBACK)
        lines = tb.splitlines()
        starts = [i for i, ln in enumerate(lines) if _EXC_LINE.match(ln)]
        text = head + (" ".join(lines[starts[-1]:]) if starts else "")
    return " ".join(ln.strip() for ln in text.splitlines() if ln.strip()) or type(e).__name__


def one_line(e: BaseException, limit: int = 800) -> str:
    """Ray's message as one line, every line kept: the first is often only a heading and the point
    follows (a version mismatch lists the cluster's and this process's versions on later lines).

    Ray wraps the reason in generic errors (``ConnectionError: Failed to connect to Ray cluster``
    raised from an ``AuthenticationError``), so the innermost cause is appended when there is one."""
    root = e
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    text = _joined(e)
    if root is not e:
        text += f" ({type(root).__name__}: {_joined(root)})"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def embedded_token_auth() -> None:
    """Keep token auth on for a new embedded cluster, with a token only this user can read.

    Ray already turns token mode on for a new local cluster when ``RAY_AUTH_MODE`` is unset, but
    writes ``~/.ray/auth_token`` with the umask's mode (usually world-readable): create it private
    first (0600 in a 0700 directory), or tighten the one Ray wrote. An explicit
    ``RAY_AUTH_MODE=disabled`` is the user's choice and is left alone.

    ``RAY_AUTH_MODE`` itself is left to Ray: setting it here, after ``import ray`` has read its
    config, would leave this driver in "disabled" mode while its own GCS requires the token."""
    from .localcluster import create_private_token, tighten_token

    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() != "token":
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    token = Path.home() / ".ray" / "auth_token"
    if token.exists():
        tighten_token(token)
    else:
        create_private_token(token, tighten_dir=True)  # ~/.ray is Ray's own directory


def enable_token_auth() -> None:
    """A cluster we talk to by address needs the token; Ray's clients don't switch auth on alone."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or TOKEN_FILE.exists():
        # Ray's own switch: sets RAY_AUTH_MODE and refreshes the config `import ray` already read
        # (the variable alone would leave this process in "disabled" mode, and be refused).
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()


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
            embedded_token_auth()
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
        raise ClusterError(f"could not start or join {where}: {one_line(e)}") from None
    try:
        yield
    finally:
        ray.shutdown()
