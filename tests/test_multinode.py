"""Several real Ray nodes on one host: a head and two workers, each its own ``ray start --block``
process with 1 CPU and a custom resource named after it (``LocalCluster``), token auth on.

Checks that all three nodes register, that a task pinned by a node's custom resource runs on that
node, and that ``kill_node`` takes exactly one worker down (the others keep serving work) and
``stop`` leaves no process of the cluster behind. Drivers run in subprocesses, as in
``test_cluster_security.py``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from dist_core.localcluster import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["head", "worker1", "worker2"]

# Alive nodes with their custom resources, and where a task pinned to each given resource ran.
DRIVER = r"""
import json, sys, time
import ray

ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
names = sys.argv[2].split(",")
wait_dead = sys.argv[3] if len(sys.argv) > 3 else ""
deadline = time.monotonic() + 60
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    owned = {k for n in alive for k in n["Resources"]}
    if (not wait_dead or wait_dead not in owned) or time.monotonic() > deadline:
        break
    time.sleep(0.3)

@ray.remote(num_cpus=1)
def where():
    return ray.get_runtime_context().get_node_id()

refs = {name: where.options(resources={name: 0.5}).remote() for name in names}
print(json.dumps({
    "nodes": {n["NodeID"]: {"cpu": n["Resources"].get("CPU"), "custom": sorted(k for k in n["Resources"] if k in
              ("head", "worker1", "worker2"))} for n in alive},
    "ran_on": {name: ray.get(ref, timeout=60) for name, ref in refs.items()},
}))
"""


@pytest.fixture(scope="module")
def cluster():
    # Fast health checks: a killed node is declared dead in ~2 s instead of ~30 s. The default temp
    # dir is short on purpose: Ray's socket paths must fit in 107 bytes.
    c = LocalCluster(workers=2, cpus_per_node=1, dashboard=False,
                     system_config={"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                                    "health_check_initial_delay_ms": 500}).start()
    yield c
    assert c.stop(grace=1.0) > 0  # only this cluster's processes, never a blanket `ray stop`
    leftovers = [p.pid for p in psutil.process_iter(["cmdline"]) if any(str(c.temp_dir) in a for a in p.info["cmdline"] or [])]
    assert leftovers == []


def drive(cluster, names, wait_dead=""):
    proc = subprocess.run([sys.executable, "-c", DRIVER, cluster.gcs_address, ",".join(names), wait_dead],
                          env=cluster.env(), cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def owner(nodes, name):
    return next(node_id for node_id, n in nodes.items() if name in n["custom"])


def test_nodes_are_separate_process_groups(cluster):
    assert list(cluster.nodes) == NAMES
    groups = {n.pid for n in cluster.nodes.values()}  # each `ray start --block` leads its own group
    assert len(groups) == 3 and all(n.alive() for n in cluster.nodes.values())
    raylets = [p.pid for p in psutil.process_iter(["name", "cmdline"]) if p.info["name"] == "raylet"
               and any(str(cluster.temp_dir) in a for a in p.info["cmdline"] or [])]
    assert sorted(os.getpgid(pid) for pid in raylets) == sorted(groups)  # one raylet per node's group


def test_three_nodes_and_pinned_tasks(cluster):
    got = drive(cluster, NAMES)
    nodes = got["nodes"]
    assert len(nodes) == 3
    assert sorted(n["custom"][0] for n in nodes.values()) == NAMES and all(len(n["custom"]) == 1 for n in nodes.values())
    assert all(n["cpu"] == 1.0 for n in nodes.values())
    for name in NAMES:
        assert got["ran_on"][name] == owner(nodes, name), name


def test_kill_node_takes_down_exactly_that_worker(cluster):
    from dist_core.errors import ClusterError

    with pytest.raises(ClusterError, match="not a worker node"):
        cluster.kill_node("head")
    worker2 = cluster.nodes["worker2"]
    raylet2 = [p for p in psutil.process_iter(["name", "cmdline"]) if p.info["name"] == "raylet"
               and any(str(worker2.temp_dir) in a for a in p.info["cmdline"] or [])]
    assert len(raylet2) == 1
    assert cluster.kill_node("worker2") >= 3  # its ray start, raylet and agents at least
    assert not raylet2[0].is_running() or raylet2[0].status() == psutil.STATUS_ZOMBIE
    assert not cluster.nodes["worker2"].alive()
    got = drive(cluster, ["head", "worker1"], wait_dead="worker2")
    nodes = got["nodes"]
    assert sorted(n["custom"][0] for n in nodes.values()) == ["head", "worker1"]
    assert got["ran_on"]["worker1"] == owner(nodes, "worker1")
    assert cluster.nodes["head"].alive() and cluster.nodes["worker1"].alive()


def test_stop_sweeps_only_ray_temp_dirs(tmp_path):
    """The sweep by temp dir kills processes naming a Ray temp dir, and nothing for any other path."""
    from dist_core.localcluster import kill_session_processes

    plain = tmp_path / "plain"
    plain.mkdir()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--temp-dir={plain}"])
    try:
        assert LocalCluster.attach(plain).stop(remove=False) == 0
        assert bystander.poll() is None
        (plain / "session_latest").mkdir()  # now it looks like a Ray temp dir
        assert kill_session_processes(plain) == 1
        bystander.wait(timeout=10)  # ended (psutil reaped it, so its status reads 0 here)
    finally:
        bystander.kill()
