import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# One intra-op thread for torch (and OpenBLAS) in the test process and everything it starts (CLI drivers,
# Ray workers inherit it): on 2 cores, a 2-thread OpenMP pool beside any other busy process (a Ray
# worker, a background reference run) spins and runs many times slower. Processes that pick their
# threads themselves (learners, Ray Train workers) still do.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray Train's controller polls its workers every 2 s by default: every fit() (and a lost worker's restart)
# waits up to that long after the workers are done. Drivers the tests start inherit this.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


@pytest.fixture(scope="module")
def ray_session():
    """One embedded Ray session per test module (start-up costs ~4 s)."""
    import ray

    # address="local": always a new embedded Ray, never a cluster another process left running here.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             logging_level="ERROR")
    yield ray
    ray.shutdown()
