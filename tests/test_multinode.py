"""Several real Ray nodes on one host: a head and two workers, each its own ``ray start --block``
process with 1 CPU and a custom resource named after it (``LocalCluster``), token auth on.

Checks that all three nodes register, that a task pinned by a node's custom resource runs on that
node, and that ``kill_node`` takes exactly one worker down (the others keep serving work) and
``stop`` leaves no process of the cluster behind. Drivers run in subprocesses, as in
``test_cluster_security.py``.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from dist_core.localcluster import LocalCluster

from helpers import kill_tree

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


# ------------------------------------------------------------------ bilevel learners over nodes

NODE_OF = r"""
import json, sys
import ray

ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
names = ("head", "worker1", "worker2")
print(json.dumps({n["NodeID"]: next((k for k in n["Resources"] if k in names), "?") for n in ray.nodes()}))
"""
# Long enough (a few seconds of rounds) to lose a node between two checkpoints.
BILEVEL_SPREAD = ["--set", "bilevel.rounds=200", "--set", "bilevel.checkpoint_every=25", "--set", "bilevel.baseline=false",
                  "--set", "resources.placement=spread", "--no-progress"]


def node_names(cluster) -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-c", NODE_OF, cluster.gcs_address], env=cluster.env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def learner_nodes_logged(run_dir: Path) -> list[str]:
    log = run_dir / "run.log"
    for line in log.read_text().splitlines() if log.exists() else []:
        if "lower learners on nodes" in line:
            return [n.strip() for n in line.split("lower learners on nodes", 1)[1].split(",")]
    return []


# ------------------------------------------------------------------ pipeline stages and Ray Train workers over nodes
def run_on(cluster, job: str, out: Path, *overrides: str) -> dict:
    sets = [x for o in overrides for x in ("--set", o)]
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), "run", job, "--address", cluster.gcs_address,
                           "--out", str(out), *sets, "--no-progress"], env=cluster.env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(next(out.glob("*/summary.json")).read_text())


def test_pipeline_stages_run_one_per_node(cluster, tmp_path):
    summary = run_on(cluster, "jobs/aimc_pipeline.yaml", tmp_path, "analog.epochs=1", "resources.placement=strict_spread")
    names = node_names(cluster)
    assert summary["placement"] == "strict_spread"
    for schedule, nodes in summary["stage_nodes"].items():
        assert sorted(names[n] for n in nodes) == NAMES, schedule


def test_posttrain_workers_spread_over_nodes(cluster, tmp_path):
    summary = run_on(cluster, "jobs/sft_dpo_alright.yaml", tmp_path, "epochs=1", "estimate_optima=false",
                     "placement=strict_spread", "data.train_rows=128", "data.eval_rows=16")
    assert summary["status"] == "succeeded"
    workers = summary["workers"]
    names = node_names(cluster)
    assert workers["placement"] == "strict_spread" and len(workers["nodes"]) == 2
    assert len({names[n] for n in workers["nodes"]}) == 2  # two ranks, two nodes


def test_bilevel_learners_spread_and_survive_a_lost_node(cluster, tmp_path):
    """Learners spread over nodes (one per 1-CPU node); the node of one is SIGKILLed after the
    first checkpoint; the run rolls every learner back to that checkpoint on the nodes left and
    ends with the same numbers as an undisturbed in-process run, each round recorded once.
    Runs before the test that kills worker2, with all three nodes up."""
    import time

    out = tmp_path / "runs"
    # The undisturbed in-process reference needs no cluster: it runs beside the cluster's run (one thread:
    # two threads beside the cluster's processes oversubscribe 2 cores).
    ref_log = tmp_path / "ref.log"
    with open(ref_log, "w") as fh:
        reference = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "run", "jobs/quickstart.yaml",
                                      "--out", str(tmp_path / "ref"), *BILEVEL_SPREAD, "--set", "bilevel.backend=local"],
                                     cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _lose_a_node_mid_run(cluster, out)
        assert reference.wait(timeout=300) == 0, ref_log.read_text()[-3000:]
    finally:
        if reference.poll() is None:
            kill_tree(reference.pid)
    summary = json.loads(next(out.glob("quickstart-*/summary.json")).read_text())
    ref = json.loads(next((tmp_path / "ref").glob("quickstart-*/summary.json")).read_text())
    for key in ("val_loss", "test_acc", "corruption_f1"):
        assert abs(summary["metrics"][key] - ref["metrics"][key]) < 1e-5, key


def _lose_a_node_mid_run(cluster, out: Path) -> None:
    import time

    cmd = [sys.executable, str(ROOT / "launch.py"), "run", "jobs/quickstart.yaml", "--address", cluster.gcs_address,
           "--out", str(out), *BILEVEL_SPREAD]
    driver = subprocess.Popen(cmd, cwd=ROOT, env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_dir, nodes, deadline = None, [], time.time() + 240
    while time.time() < deadline and driver.poll() is None:
        run_dir = next(iter(out.glob("quickstart-*")), None)
        nodes = learner_nodes_logged(run_dir) if run_dir else []
        if nodes and list((run_dir / "checkpoints").glob("*")):
            break
        time.sleep(0.2)
    assert driver.poll() is None, "the run ended before a node could be lost: " + driver.stdout.read()[-2000:]
    assert len(set(nodes)) == 2, f"learners not spread over two nodes: {nodes}"
    names = node_names(cluster)
    victim = next(names[n] for n in nodes if names[n] != "head")
    assert cluster.kill_node(victim) > 0
    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, output[-3000:]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["metrics"]["restarts"] == 1
    assert victim not in {names.get(n) for n in summary["learner_nodes"]}  # rescheduled off the lost node
    rounds = [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds == list(range(1, 201))
    log = (run_dir / "run.log").read_text()
    assert "is gone" in log and re.search(r"restored every learner from the checkpoint of round \d+", log)


def test_kill_node_takes_down_exactly_that_worker(cluster):
    from dist_core.errors import ClusterError

    with pytest.raises(ClusterError, match="not a worker node"):
        cluster.kill_node("head")
    # The bilevel test above may already have lost one worker: take down one that is still up.
    victim = next(w for w in ("worker2", "worker1") if cluster.nodes[w].alive())
    left = [w for w in ("worker1", "worker2") if w != victim and cluster.nodes[w].alive()]
    node = cluster.nodes[victim]
    raylet = [p for p in psutil.process_iter(["name", "cmdline"]) if p.info["name"] == "raylet"
              and any(str(node.temp_dir) in a for a in p.info["cmdline"] or [])]
    assert len(raylet) == 1
    assert cluster.kill_node(victim) >= 3  # its ray start, raylet and agents at least
    assert not raylet[0].is_running() or raylet[0].status() == psutil.STATUS_ZOMBIE
    assert not cluster.nodes[victim].alive()
    got = drive(cluster, ["head", *left], wait_dead=victim)
    nodes = got["nodes"]
    assert sorted(n["custom"][0] for n in nodes.values()) == ["head", *left]
    for w in left:
        assert got["ran_on"][w] == owner(nodes, w)
    assert cluster.nodes["head"].alive() and all(cluster.nodes[w].alive() for w in left)


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
