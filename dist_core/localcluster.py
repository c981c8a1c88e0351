"""A real single-node Ray head on 127.0.0.1 that can be stopped without touching other clusters.

``ray stop`` kills every Ray process on the machine (RUNTIME.md); ``LocalHead.stop`` kills only
the processes of this head's own ``--temp-dir`` session and their children. Token auth stays on:
the head and every client read the same token file (``RAY_AUTH_TOKEN_PATH``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ClusterError


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalHead:
    num_cpus: int = 2
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dc-ray-")))
    port: int = field(default_factory=_free_port)
    dashboard_port: int = field(default_factory=_free_port)
    # Not Ray's default 10001: a client server left behind by another head there blocks this head's job agent.
    client_port: int = field(default_factory=_free_port)

    @property
    def token_path(self) -> Path:
        return self.temp_dir / "auth_token"

    @property
    def api_address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for this head and its clients: token auth on, this head's token, and this
        interpreter first on PATH so that a job's ``python`` entrypoint runs in the same venv."""
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        return {**os.environ, "PATH": path, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def start(self, timeout: float = 120.0) -> "LocalHead":
        if not self.token_path.exists():
            self.token_path.write_text(secrets.token_hex(32))
            self.token_path.chmod(0o600)
        ray_bin = Path(sys.executable).with_name("ray")
        cmd = [
            str(ray_bin) if ray_bin.exists() else "ray", "start", "--head",
            "--node-ip-address", "127.0.0.1", "--port", str(self.port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
            "--temp-dir", str(self.temp_dir), "--num-cpus", str(self.num_cpus), "--disable-usage-stats",
            "--ray-client-server-port", str(self.client_port),
        ]
        proc = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ClusterError(f"ray start failed ({proc.returncode}): {tail[0]}")
        return self

    def stop(self) -> int:
        """Kill this head's processes (and their children); return how many were killed."""
        import psutil

        mine = (str(self.temp_dir), f"--port={self.client_port}")  # the client server names only its port
        roots = [p for p in psutil.process_iter(["cmdline"])
                 if any(m in c for c in (p.info["cmdline"] or []) for m in mine)]
        procs = {p.pid: p for p in roots}
        for p in roots:
            try:
                procs.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
        for p in procs.values():
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(list(procs.values()), timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return len(procs)
