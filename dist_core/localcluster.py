"""Real Ray clusters on this host: a head and worker nodes as separate ``ray start`` processes.

Each node is its own ``ray start --block`` process, started in a new session: its raylet and
agents share that process group, and its workers (each in a group of its own) descend from it.
``stop`` ends exactly those processes (``ray stop`` would kill every Ray process on the machine,
other clusters and embedded sessions included), and ``kill_node`` SIGKILLs all of one worker
node's processes to simulate the loss of a machine.

Token auth is on for every node and client: they all read one token file, created private
(``O_CREAT|O_EXCL``, mode 0600, inside a 0700 directory) before anything is written to it. The
dashboard (and its Jobs API) binds 127.0.0.1; GCS and raylet listen on every interface whatever
``--node-ip-address`` says, which is why the token is the guard.

    with LocalCluster(workers=2, cpus_per_node=1) as c:   # head + 2 workers, resources head/worker1/worker2
        subprocess.run([...], env=c.env())                # clients: RAY_AUTH_MODE=token + this token
        c.kill_node("worker2")

``python -m dist_core.localcluster start|stop|kill-node`` is the same from a shell (``cluster/local.sh``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ClusterError

STATE_FILE = "cluster.json"  # pids and ports of a cluster started from the shell, for `stop`
READY_FILE = "ray_current_cluster"  # `ray start` writes it into a node's temp dir once the node is up
STOP_GRACE_S = 5.0  # SIGTERM makes a raylet drain for up to 30 s; nothing here needs draining


# ---------------------------------------------------------------------------------------------
# Private token files


def private_dir(path: Path, tighten: bool = False) -> Path:
    """``path`` as a directory only this user can enter (0700), created so if missing. One owned by
    someone else is refused; one of this user open to others is made 0700 if ``tighten``, else
    refused (it may be a directory the user shares on purpose)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ClusterError(f"{path}: must be a directory owned by this user to hold a Ray token")
    if st.st_mode & 0o077:
        if not tighten:
            raise ClusterError(f"{path}: mode {stat.S_IMODE(st.st_mode):o} lets others in; use a new directory "
                               "or `chmod 700` it")
        path.chmod(0o700)
    return path


def create_private_token(path: Path, tighten_dir: bool = False) -> Path:
    """Write a new random token to ``path``, created 0600 in a 0700 directory.

    The file is created with ``O_CREAT|O_EXCL`` and mode 0600, so it is never readable by others,
    not even for the instant a write-then-chmod would leave open, and an existing file or a planted
    symlink makes it fail instead of being written through. An existing private token of this
    user is kept (a restarted cluster keeps its clients' token). ``tighten_dir``: see ``private_dir``."""
    private_dir(path.parent, tighten=tighten_dir)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise ClusterError(f"{path}: an existing token file must be a regular file of this user with mode 600") from None
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def tighten_token(path: Path) -> None:
    """Make an existing token file of this user private (Ray writes its own with the umask's mode)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077:
        path.chmod(0o600)
    if path.parent.stat().st_uid == os.getuid():
        private_dir(path.parent, tighten=True)


# ---------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_executable() -> str:
    """The ``ray`` beside this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else "ray"


def _mentions(arg: str, directory: str) -> bool:
    """Whether a command-line argument names ``directory`` itself or a path inside it."""
    return arg == directory or arg.endswith("=" + directory) or (directory + os.sep) in arg


def kill_session_processes(temp_dir: Path, extra_args: tuple[str, ...] = ()) -> int:
    """SIGKILL every process whose command line names ``temp_dir`` (a Ray session's ``--temp-dir``),
    or has one of ``extra_args`` as an argument, with all their children; return how many were killed.

    This is how a cluster is stopped when its process groups are unknown (a node started without
    ``--block``); it never touches Ray processes of other temp dirs, and does nothing unless
    ``temp_dir`` holds Ray sessions (so ``--dir /tmp`` by mistake kills nothing)."""
    import psutil

    if not is_ray_temp_dir(temp_dir):
        return 0

    d = str(temp_dir)
    roots = []
    for p in psutil.process_iter(["cmdline"]):
        args = p.info["cmdline"] or []
        if p.pid != os.getpid() and any(_mentions(a, d) or a in extra_args for a in args):
            roots.append(p)
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
    psutil.wait_procs(list(procs.values()), timeout=STOP_GRACE_S)
    return len(procs)


def _group_members(pgid: int) -> list:
    import psutil

    members = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                members.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return members


def node_processes(leader: int) -> list:
    """A node's processes: its ``ray start`` leader's process group plus every descendant (the
    raylet puts each worker in a process group of its own)."""
    import psutil

    procs = {p.pid: p for p in _group_members(leader)}
    try:
        procs.update({c.pid: c for c in psutil.Process(leader).children(recursive=True)})
    except psutil.NoSuchProcess:
        pass
    for p in list(procs.values()):
        try:
            procs.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    return list(procs.values())


def signal_node(leader: int, sig: int) -> list:
    """Send ``sig`` to every process of the node led by ``leader``; return those processes."""
    import psutil

    procs = node_processes(leader)
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    return procs


def is_ray_temp_dir(path: Path) -> bool:
    """Whether ``path`` holds Ray sessions (its own or its nodes'), so that sweeping the processes
    that name it cannot hit unrelated ones (``--dir /tmp`` by mistake)."""
    return (path / STATE_FILE).exists() or (path / "session_latest").exists() or (path / "head" / "session_latest").exists()


def _sessions(node_temp_dir: Path) -> set[Path]:
    return set(node_temp_dir.glob("session_2*"))


def _raylet_aborted(node_temp_dir: Path, earlier: set[Path]) -> bool:
    """Whether the raylet of a session newer than ``earlier`` logged a fatal check (Ray marks
    those lines `` C ``)."""
    for session in _sessions(node_temp_dir) - earlier:
        try:
            with open(session / "logs" / "raylet.out", errors="replace") as f:
                if any(" C " in line[:40] for line in f):
                    return True
        except OSError:
            pass
    return False


# ---------------------------------------------------------------------------------------------
# Clusters


@dataclass
class Node:
    """One ``ray start --block`` process: the leader of its own process group."""

    name: str
    temp_dir: Path
    resources: dict[str, float]
    pid: int | None = None

    @property
    def ready(self) -> bool:
        return (self.temp_dir / READY_FILE).exists()

    @property
    def log(self) -> Path:
        return self.temp_dir.parent / f"{self.name}.out"

    def alive(self) -> bool:
        """Whether the node's ``ray start`` process runs (a zombie awaiting its reaper does not)."""
        import psutil

        if self.pid is None:
            return False
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False


@dataclass
class LocalCluster:
    """A head plus ``workers`` worker nodes on 127.0.0.1, each with ``cpus_per_node`` CPUs and a
    custom resource named after it (``{"head": 1}``, ``{"worker1": 1}``, …) to pin work to it.

    ``dashboard`` starts the dashboard and Jobs API on 127.0.0.1 (``dashboard_port``).
    ``system_config`` goes to the head's ``--system-config`` (e.g. faster health checks, so that a
    killed node is declared dead in seconds)."""

    workers: int = 0
    cpus_per_node: int = 1
    head_cpus: int | None = None
    dashboard: bool = True
    system_config: dict | None = None
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dc-ray-")))
    port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    # Not Ray's default 10001: a client server left behind by another head there blocks this head's job agent.
    client_port: int = field(default_factory=free_port)
    nodes: dict[str, Node] = field(default_factory=dict)
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, init=False, repr=False)
    _earlier: dict[str, set[Path]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.temp_dir = Path(self.temp_dir).absolute()
        if self.workers < 0 or self.cpus_per_node < 0:
            raise ClusterError(f"workers ({self.workers}) and cpus_per_node ({self.cpus_per_node}) must be >= 0")

    # -- addresses and client environment --------------------------------------------------

    @property
    def token_path(self) -> Path:
        return self.temp_dir / "auth_token"

    @property
    def api_address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def node_names(self) -> list[str]:
        return ["head", *(f"worker{i}" for i in range(1, self.workers + 1))]

    def env(self) -> dict[str, str]:
        """Environment for the nodes and their clients: token auth on, this cluster's token, and
        this interpreter first on PATH so that a job's ``python`` entrypoint runs in the same venv."""
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        return {**env, "PATH": path, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path),
                "RAY_USAGE_STATS_ENABLED": "0"}

    # -- start ------------------------------------------------------------------------------

    def _command(self, node: Node) -> list[str]:
        cmd = [ray_executable(), "start", "--block", "--node-ip-address", "127.0.0.1",
               "--temp-dir", str(node.temp_dir), "--resources", json.dumps(node.resources),
               # Fixed ports for the node's agents: the default agent port (52365) is one per host,
               # and with random ones the raylet waits for each agent to report its port and aborts
               # after a few seconds, which a busy machine starting several nodes overruns.
               "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
               "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]
        if node.name == "head":
            cmd += ["--head", "--port", str(self.port), "--disable-usage-stats",
                    "--num-cpus", str(self.cpus_per_node if self.head_cpus is None else self.head_cpus),
                    "--ray-client-server-port", str(self.client_port)]
            if self.dashboard:
                cmd += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port)]
            else:
                cmd += ["--include-dashboard", "false"]
            if self.system_config:
                cmd += ["--system-config", json.dumps(self.system_config)]
        else:
            cmd += ["--address", self.gcs_address, "--num-cpus", str(self.cpus_per_node)]
        return cmd

    def _launch(self, node: Node) -> None:
        node.temp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (node.temp_dir / READY_FILE).unlink(missing_ok=True)  # a previous run's; `ray start` rewrites it when up
        self._earlier[node.name] = _sessions(node.temp_dir)  # so that only this attempt's raylet log is read
        with open(node.log, "ab") as out:
            # A new session: the node's raylet and agents share its process group.
            proc = subprocess.Popen(self._command(node), env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        node.pid = proc.pid
        self._procs[node.name] = proc  # reaped in stop(), so no zombie outlives the cluster

    def _wait_ready(self, node: Node, deadline: float) -> str:
        """``"up"`` once ``node`` is up; ``"slow"`` if its raylet gave up waiting (worth a retry);
        ``"failed"`` if its ``ray start`` exited for another reason."""
        while not node.ready:
            proc = self._procs[node.name]
            if proc.poll() is not None:
                return "slow" if "timed out during startup" in self._tail(node) else "failed"
            if _raylet_aborted(node.temp_dir, self._earlier[node.name]):
                # `ray start` itself would wait another 30 s before giving up.
                signal_node(node.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_GRACE_S)
                return "slow"
            if time.monotonic() > deadline:
                raise ClusterError(f"node {node.name} not up in time: {self._tail(node)}")
            time.sleep(0.5)
        return "up"

    @staticmethod
    def _tail(node: Node) -> str:
        try:
            lines = [ln.strip() for ln in node.log.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "no output"
        return " | ".join(lines[-3:]) or "no output"

    def start(self, timeout: float = 300.0, attempts: int = 3) -> "LocalCluster":
        """Start the head, then each worker; return when every node is up.

        Nodes start one after another: each starts several Python agents, and a raylet aborts if
        its agents take more than ~15 s to come up, which nodes starting at once on a busy two-core
        machine overrun. A node whose raylet still gives up is retried ``attempts - 1`` times.
        Ray's Unix socket paths must fit in 107 bytes: keep ``temp_dir`` short (the default is)."""
        private_dir(self.temp_dir)
        running = [n.name for n in LocalCluster.attach(self.temp_dir).nodes.values() if n.alive()]
        if running:
            raise ClusterError(f"{self.temp_dir}: a cluster is already running there (nodes {', '.join(running)}); stop it first")
        create_private_token(self.token_path)
        deadline = time.monotonic() + timeout
        self.nodes = {name: Node(name, self.temp_dir / name, {name: 1.0}) for name in self.node_names()}
        try:
            for node in self.nodes.values():
                for attempt in range(1, attempts + 1):
                    self._launch(node)
                    outcome = self._wait_ready(node, deadline)
                    if outcome == "up":
                        break
                    if outcome == "failed" or attempt == attempts:
                        code = self._procs[node.name].returncode
                        raise ClusterError(f"ray start for node {node.name} exited ({code}): {self._tail(node)}")
        except BaseException:
            self.stop(remove=False)
            raise
        self._save_state()
        return self

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- node loss and stop ---------------------------------------------------------------

    def kill_node(self, name: str) -> int:
        """SIGKILL every process of worker node ``name`` (its ``ray start``, raylet, agents and
        workers), as if the machine died; return how many processes were killed."""
        if name == "head" or name not in self.nodes:
            raise ClusterError(f"kill_node: {name!r} is not a worker node of this cluster ({', '.join(self.node_names()[1:]) or 'none'})")
        import psutil

        node = self.nodes[name]
        procs = signal_node(node.pid, signal.SIGKILL) if node.pid else []
        self._reap(name, STOP_GRACE_S)
        psutil.wait_procs(procs, timeout=STOP_GRACE_S)
        return len(procs)

    def _reap(self, name: str, timeout: float) -> None:
        proc = self._procs.get(name)
        if proc is not None:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass

    def stop(self, remove: bool = True, grace: float = STOP_GRACE_S) -> int:
        """Stop this cluster's processes, workers first, then the head; return how many ended.

        SIGTERM each node's processes (Ray's own shutdown path), SIGKILL what is left after
        ``grace`` seconds, then sweep any process that still names this cluster's temp dir."""
        import psutil

        nodes = sorted((n for n in self.nodes.values() if n.pid), key=lambda n: n.name == "head")
        members = {p.pid: p for n in nodes for p in signal_node(n.pid, signal.SIGTERM)}
        _, alive = psutil.wait_procs(list(members.values()), timeout=grace)
        for n in nodes:
            members.update({p.pid: p for p in signal_node(n.pid, signal.SIGKILL)})
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(list(members.values()), timeout=STOP_GRACE_S)
        for n in nodes:
            self._reap(n.name, 1.0)
        # Ray's client server names only its port, not the temp dir.
        swept = kill_session_processes(self.temp_dir, (f"--port={self.client_port}",) if self.client_port else ())
        if remove:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return len(members) + swept

    # -- shell use: state on disk -------------------------------------------------------------

    def _save_state(self) -> None:
        state = {"port": self.port, "dashboard_port": self.dashboard_port, "client_port": self.client_port,
                 "nodes": {n.name: {"pid": n.pid, "resources": n.resources} for n in self.nodes.values()}}
        (self.temp_dir / STATE_FILE).write_text(json.dumps(state, indent=1))

    @classmethod
    def attach(cls, temp_dir: Path) -> "LocalCluster":
        """The cluster that ``start`` left in ``temp_dir`` (from another process, e.g. ``local.sh stop``)."""
        temp_dir = Path(temp_dir).absolute()
        try:
            state = json.loads((temp_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            # No state: stop can still sweep the processes that name the temp dir.
            return cls(temp_dir=temp_dir, port=0, dashboard_port=0, client_port=0)
        c = cls(workers=len(state["nodes"]) - 1, temp_dir=temp_dir, port=state["port"],
                dashboard_port=state["dashboard_port"], client_port=state["client_port"])
        c.nodes = {name: Node(name, temp_dir / name, s["resources"], s["pid"]) for name, s in state["nodes"].items()}
        return c


class LocalHead(LocalCluster):
    """A head alone (``LocalCluster(workers=0)``) with ``num_cpus`` CPUs and the dashboard on."""

    def __init__(self, num_cpus: int = 2, **kwargs):
        super().__init__(workers=0, cpus_per_node=num_cpus, **kwargs)


# ---------------------------------------------------------------------------------------------
# Command line (cluster/local.sh)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m dist_core.localcluster", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("start", help="start a head (+ worker nodes) and return; the nodes keep running")
    st.add_argument("--dir", type=Path, required=True, help="the cluster's temp dir (token, logs, node sessions)")
    st.add_argument("--workers", type=int, default=0)
    st.add_argument("--cpus-per-node", type=int, default=os.cpu_count() or 1)
    st.add_argument("--port", type=int, default=6379)
    st.add_argument("--dashboard-port", type=int, default=8265)
    sp = sub.add_parser("stop", help="stop only the cluster whose temp dir is --dir")
    sp.add_argument("--dir", type=Path, required=True)
    kn = sub.add_parser("kill-node", help="SIGKILL one worker node (node-loss drills)")
    kn.add_argument("--dir", type=Path, required=True)
    kn.add_argument("name")
    tk = sub.add_parser("token", help="create a private token file (mode 600 in a 700 directory), for ray-up.yaml")
    tk.add_argument("path", type=Path)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "token":
            path = a.path.expanduser().absolute()
            # ~/.ray is Ray's own directory (Ray creates it 0755): make it private rather than refuse.
            print(create_private_token(path, tighten_dir=path.parent == Path.home() / ".ray"))
        elif a.cmd == "start":
            c = LocalCluster(workers=a.workers, cpus_per_node=a.cpus_per_node, temp_dir=a.dir, port=a.port,
                             dashboard_port=a.dashboard_port).start()
            print(f"Ray cluster up: {len(c.nodes)} node(s) ({', '.join(c.nodes)}), GCS {c.gcs_address}")
            print(f"Jobs API: {c.api_address}   clients need: export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={c.token_path}")
        elif a.cmd == "stop":
            print("stopped", LocalCluster.attach(a.dir).stop(), "processes")
        else:
            print("killed", LocalCluster.attach(a.dir).kill_node(a.name), "processes")
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
