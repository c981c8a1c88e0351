"""A real head started by ``LocalCluster`` (``ray start --block``, token auth on): clients without
the token, or with a wrong one, are refused; the dashboard listens on 127.0.0.1 only; the token file
is private; and an embedded run never joins that head, even where a bare ``ray.init()`` would.

Every Ray client here runs in its own subprocess: Ray caches the auth mode and token per process,
so a client in the test process would leak this head's token into later test modules.
"""

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from dist_core.errors import ClusterError
from dist_core.localcluster import LocalCluster, create_private_token
from dist_core.runtime import one_line

ROOT = Path(__file__).resolve().parent.parent

# One client per identity: a driver (ray.init by address) and a Jobs API client, each reported.
CLIENT = r"""
import json, sys
from dist_core.runtime import one_line
out = {}
try:
    import ray
    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
    out["driver"] = "ok CPU=%s" % ray.cluster_resources().get("CPU")
    ray.shutdown()
except Exception as e:
    out["driver"] = "%s: %s" % (type(e).__name__, one_line(e))
try:
    from ray.job_submission import JobSubmissionClient
    out["jobs"] = "ok %d" % len(JobSubmissionClient(sys.argv[2]).list_jobs())
except Exception as e:
    out["jobs"] = "%s: %s" % (type(e).__name__, one_line(e))
print(json.dumps(out))
"""

# The project's own client path (launch.py --address): only the token file is given, no RAY_AUTH_MODE.
PROJECT_CLIENT = r"""
import sys, ray
from dist_core import runtime
with runtime.connect(address=sys.argv[1]):
    print("ok CPU=%s" % ray.cluster_resources().get("CPU"))
"""

# A bare ray.init(), as a careless embedded run would do it: where does it land?
BARE_INIT = r"""
import sys, ray
ray.init(logging_level="ERROR", log_to_driver=False)
print(ray.get_runtime_context().gcs_address)
"""

DRIVERS = r"""
import sys
from ray.job_submission import JobSubmissionClient
jobs = JobSubmissionClient(sys.argv[1]).list_jobs()
print(sum(1 for j in jobs if str(j.type).endswith("DRIVER")))
"""


@pytest.fixture(scope="module")
def head():
    c = LocalCluster(workers=0, cpus_per_node=1, dashboard=True).start()  # short temp dir: socket paths ≤ 107 bytes
    yield c
    assert c.stop(grace=1.0) > 0  # only this cluster's processes, never a blanket `ray stop`
    leftovers = [p.pid for p in psutil.process_iter(["cmdline"]) if any(str(c.temp_dir) in a for a in p.info["cmdline"] or [])]
    assert leftovers == []


def no_token_env(home: Path) -> dict:
    """An environment with no token anywhere: no RAY_AUTH_* variables, an empty HOME."""
    home.mkdir(exist_ok=True)
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"},
            "HOME": str(home)}


def refused_client_env(home: Path) -> dict:
    # A refused driver retries its GCS connection ~20 times, a second apart; 3 tries show the refusal.
    return {**no_token_env(home), "RAY_gcs_server_port_wait_time_s": "3"}


def python(code: str, *args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out.strip().splitlines()[-1]


def test_token_file_is_private(head):
    assert stat.S_IMODE(head.token_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(head.token_path.parent.stat().st_mode) == 0o700


def test_private_token_ignores_umask_and_refuses_planted_files(tmp_path):
    old = os.umask(0)  # a umask that would make a plain open() world-readable
    try:
        token = create_private_token(tmp_path / "d" / "auth_token")
    finally:
        os.umask(old)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert len(token.read_text()) == 64
    assert create_private_token(token) == token  # an existing private token is kept (a restart)

    readable = tmp_path / "d" / "readable"
    readable.write_text("x")
    readable.chmod(0o644)
    with pytest.raises(ClusterError, match="mode 600"):
        create_private_token(readable)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(ClusterError, match="lets others in"):
        create_private_token(shared / "auth_token")
    assert stat.S_IMODE(create_private_token(shared / "auth_token", tighten_dir=True).parent.stat().st_mode) == 0o700
    planted = tmp_path / "d" / "planted"
    planted.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ClusterError, match="regular file"):
        create_private_token(planted)
    assert not (tmp_path / "elsewhere").exists()


def test_clients_need_the_token(head, tmp_path):
    env_none = refused_client_env(tmp_path / "home-none")
    env_wrong = {**env_none, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
    args = (head.gcs_address, head.api_address)
    env_path_only = {**no_token_env(tmp_path / "home-path"), "RAY_AUTH_TOKEN_PATH": str(head.token_path)}
    project = python(PROJECT_CLIENT, head.gcs_address, env=env_path_only)
    procs = {name: python(CLIENT, *args, env=env) for name, env in
             [("none", env_none), ("wrong", env_wrong), ("right", head.env())]}
    got = {name: json.loads(finish(p)) for name, p in procs.items()}
    assert finish(project) == "ok CPU=1.0"  # runtime.connect switches token mode on by itself

    assert got["right"]["driver"] == "ok CPU=1.0" and got["right"]["jobs"].startswith("ok"), got
    # Refused with Ray's own reasons (the driver's ConnectionError carries its AuthenticationError).
    assert got["none"]["driver"].startswith("ConnectionError: Failed to connect to Ray cluster"), got
    for name in ("none", "wrong"):
        assert "AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing or incorrect" in got[name]["driver"], got
        assert "Traceback" not in got[name]["driver"], got
    assert got["none"]["jobs"].startswith("AuthenticationError: Authentication required: Unauthorized: Missing authentication token"), got
    assert got["wrong"]["jobs"].startswith("AuthenticationError: Authentication failed: Forbidden: Invalid authentication token"), got


def test_dashboard_listens_on_loopback_only_and_gcs_everywhere(head):
    def listening(port):
        return {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port}

    assert listening(head.dashboard_port) == {"127.0.0.1"}
    # Ray binds its GCS on every interface whatever --node-ip-address says: the token is the guard.
    assert listening(head.port) & {"0.0.0.0", "::"}
    external = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                if a.family == socket.AF_INET and not a.address.startswith("127.")]
    for ip in external:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((ip, head.dashboard_port), timeout=5).close()


def test_embedded_run_never_joins_the_running_head(head, tmp_path, request):
    # Leave the head's address where a `ray start --head` in Ray's default temp dir leaves it,
    # under a private RAY_TMPDIR: a bare ray.init() there joins the head (the control arm).
    ray_tmp = Path(tempfile.mkdtemp(prefix="dc-rt-"))  # short: Ray's socket paths must fit in 107 bytes
    request.addfinalizer(lambda: shutil.rmtree(ray_tmp, ignore_errors=True))
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text((head.nodes["head"].temp_dir / "ray_current_cluster").read_text())
    joined = finish(python(BARE_INIT, env={**head.env(), "RAY_TMPDIR": str(ray_tmp)}))
    assert joined.rsplit(":", 1)[1] == str(head.port)
    before = int(finish(python(DRIVERS, head.api_address, env=head.env())))
    assert before >= 1  # the control arm's driver is seen

    home = tmp_path / "home"
    env = {**no_token_env(home), "RAY_TMPDIR": str(ray_tmp),
           "MPLCONFIGDIR": str(Path.home() / ".config" / "matplotlib")}  # keep matplotlib's font cache warm
    run = subprocess.run([sys.executable, "launch.py", "run", "jobs/quickstart.yaml", "--out", str(tmp_path / "runs"),
                          "--no-progress", "--set", "bilevel.rounds=3", "--set", "bilevel.data.n_train=200",
                          "--set", "bilevel.data.n_val=100", "--set", "bilevel.lower.inner_steps=2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]

    assert head.nodes["head"].alive()
    assert int(finish(python(DRIVERS, head.api_address, env=head.env()))) == before  # nothing joined the head
    # The embedded run kept token auth on, with a token file only this user can read.
    token = home / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and stat.S_IMODE(token.parent.stat().st_mode) == 0o700


def test_cluster_error_keeps_rays_detail():
    from ray._private.utils import check_version_info

    with pytest.raises(RuntimeError) as e:  # Ray's own message for a head of another version
        check_version_info({"ray_version": "2.58.0", "python_version": "3.11.2"}, "node 127.0.0.1")
    assert str(e.value).count("\n") >= 4
    line = one_line(e.value)
    assert "\n" not in line
    assert line.startswith("Version mismatch: The cluster was started with: Ray: 2.58.0 Python: 3.11.2")
    import ray

    assert f"This process on node 127.0.0.1 was started with: Ray: {ray.__version__}" in line
    # Ray's refusal of a driver: a ConnectionError raised from a RuntimeError that pastes a traceback.
    inner = RuntimeError("Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n"
                         '  File "node.py", line 996, in _init_gcs_client\n    client = GcsClient(\n'
                         "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: token is missing\n")
    outer = ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")
    outer.__cause__ = inner
    assert one_line(outer) == ("Failed to connect to Ray cluster at 10.0.0.1:6379 (RuntimeError: Failed to connect to "
                               "GCS. Last connection error: ray.exceptions.AuthenticationError: RPC error: "
                               "InvalidAuthToken: token is missing)")
    assert one_line(RuntimeError("")) == "RuntimeError"
    assert len(one_line(RuntimeError("x" * 5000))) == 800
