#!/usr/bin/env bash
# Create/refresh the virtualenv with the test extra, then run the whole test suite.
# The fleet tests start their own redis-server: scripts/_redis.sh installs it with apt
# when it is missing and we run as root.
set -euo pipefail
source "$(dirname "$0")/_redis.sh"
source "$(dirname "$0")/_venv.sh" test "[test]"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
