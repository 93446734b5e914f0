#!/usr/bin/env bash
# Create/refresh the virtualenv, then run the main job: the daemon on ./state with a demo
# (worker processes taking names and locks; one crashes now and then and is restarted).
# It stops by itself after 30 s; pass --demo-seconds 0 to run until Ctrl-C. While it runs,
# `.venv/bin/python -m actors status --state-dir state` shows the tree from another shell.
#
# `bash scripts/run.sh --fleet [--demo-seconds N]`: the fleet mode instead, a redis-server
# of its own and two daemons as two hosts sharing it (scripts/fleet_demo.py).
set -euo pipefail
source "$(dirname "$0")/_venv.sh" base ""
cd "$ROOT"
if [ "${1:-}" = "--fleet" ]; then
    shift
    source "$ROOT/scripts/_redis.sh"
    exec "$VENV/bin/python" scripts/fleet_demo.py "$@"
fi
exec "$VENV/bin/python" -m actors serve --state-dir "${STATE_DIR:-$ROOT/state}" --demo --demo-seconds 30 "$@"
