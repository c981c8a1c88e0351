#!/usr/bin/env bash
# A Ray cluster on this machine: a head plus N worker nodes, each its own `ray start --block`
# process (1 node = a single-node head). Token auth on, with a fresh private token (mode 600 in a
# 700 directory); the dashboard and Jobs API on 127.0.0.1 only. GCS and raylets still listen on all
# interfaces (Ray rewrites 127.0.0.1 to the host address), so the token is the real guard.
#
#   cluster/local.sh start [--workers N]   # prints the Jobs API address and the token file
#   python launch.py submit jobs/quickstart.yaml --address http://127.0.0.1:8265
#   cluster/local.sh kill-node worker1     # SIGKILL one worker node (node-loss drills)
#   cluster/local.sh stop                  # stops only this cluster (`ray stop` would stop every Ray)
#
# Environment: DIST_CORE_RAY_DIR (default /tmp/dist-core-ray), NUM_CPUS (per node, default all),
# RAY_PORT (6379), DASHBOARD_PORT (8265).
set -euo pipefail
umask 077  # everything this script and Ray write here (token, logs, sockets) is private
DIR="${DIST_CORE_RAY_DIR:-/tmp/dist-core-ray}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
cmd="${1:-}"; shift || true
case "$cmd" in
  start)
    cd "$HERE" && exec "$PY" -m dist_core.localcluster start --dir "$DIR" --port "${RAY_PORT:-6379}" \
      --dashboard-port "${DASHBOARD_PORT:-8265}" --cpus-per-node "${NUM_CPUS:-$(nproc)}" "$@" ;;
  stop)
    cd "$HERE" && exec "$PY" -m dist_core.localcluster stop --dir "$DIR" ;;
  kill-node)
    cd "$HERE" && exec "$PY" -m dist_core.localcluster kill-node --dir "$DIR" "$@" ;;
  *) echo "usage: $0 start [--workers N] | stop | kill-node NAME" >&2; exit 2 ;;
esac
