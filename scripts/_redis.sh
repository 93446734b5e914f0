# Sourced by test.sh and run.sh: make sure a redis-server is there for the fleet.
# Installed with apt when missing and we run as root; anyone else installs it first
# (`sudo apt install redis-server`) or sets ACTORS_TEST_REDIS_SERVER to a binary.
if ! command -v redis-server >/dev/null 2>&1 && ! command -v valkey-server >/dev/null 2>&1 \
        && [ -z "${ACTORS_TEST_REDIS_SERVER:-}" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing redis-server (apt) for the fleet" >&2
        (apt-get install -y -q redis-server >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q redis-server >/dev/null 2>&1; }) \
            || echo "could not install redis-server: the fleet will not run" >&2
        # Debian may start a system service on port 6379: we never use it.
        (command -v systemctl >/dev/null 2>&1 && systemctl stop redis-server >/dev/null 2>&1) || true
    else
        echo "redis-server not found: install it (sudo apt install redis-server) or set ACTORS_TEST_REDIS_SERVER" >&2
    fi
fi
