#!/usr/bin/env bash
# A single-node Ray head on this machine, as the tests start it: token auth on, dashboard (and
# the Jobs API) on 127.0.0.1 only. GCS and raylet still listen on all interfaces (Ray rewrites
# 127.0.0.1 to the host address), so the token is the real guard: keep it secret.
#
#   cluster/local.sh start    # prints the Jobs API address and the token file
#   python launch.py submit jobs/quickstart.yaml --address http://127.0.0.1:8265
#   cluster/local.sh stop     # stops only this head (not every Ray on the machine, unlike `ray stop`)
set -euo pipefail
DIR="${DIST_CORE_RAY_DIR:-/tmp/dist-core-ray}"
TOKEN="$DIR/auth_token"
case "${1:-}" in
  start)
    mkdir -p "$DIR"
    [ -f "$TOKEN" ] || { python -c "import secrets; print(secrets.token_hex(32))" > "$TOKEN"; chmod 600 "$TOKEN"; }
    RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$TOKEN" ray start --head --node-ip-address 127.0.0.1 \
      --port 6379 --dashboard-host 127.0.0.1 --dashboard-port 8265 --temp-dir "$DIR" \
      --num-cpus "${NUM_CPUS:-$(nproc)}" --disable-usage-stats
    echo "Jobs API: http://127.0.0.1:8265   clients need: export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$TOKEN"
    ;;
  stop)
    python - "$DIR" <<'PY'
import sys
from pathlib import Path
from dist_core.localcluster import LocalHead
print("killed", LocalHead(temp_dir=Path(sys.argv[1])).stop(), "processes")
PY
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
