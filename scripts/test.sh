#!/usr/bin/env bash
# Create/refresh the virtualenv with the test extra, then run the whole test suite.
# The fleet tests start their own redis-server: installed here with apt when it is
# missing and we run as root (anyone else: install it, or set ACTORS_TEST_REDIS_SERVER
# to the path of a redis-server or valkey-server binary).
set -euo pipefail
if ! command -v redis-server >/dev/null 2>&1 && [ -z "${ACTORS_TEST_REDIS_SERVER:-}" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing redis-server (apt) for the fleet tests" >&2
        (apt-get install -y -q redis-server >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q redis-server >/dev/null 2>&1; }) \
            || echo "could not install redis-server: the fleet tests will fail" >&2
        # Debian starts a system service on port 6379: the tests never use it.
        (command -v systemctl >/dev/null 2>&1 && systemctl stop redis-server >/dev/null 2>&1) || true
    else
        echo "redis-server not found: install it (apt install redis-server) or set ACTORS_TEST_REDIS_SERVER" >&2
    fi
fi
source "$(dirname "$0")/_venv.sh" test "[test]"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
