"""Checks out names from a durable `NamePool` until it is killed (test_name_pool's SIGKILL test).

Usage: python tests/_name_pool_child.py STATE_PATH OWNER_PID

Prints `owner NAME` for a checkout on behalf of OWNER_PID, then `name NAME` for each
anonymous checkout, one line per answered call, flushed at once. The test kills it with
SIGKILL right after reading a line: every name printed must then be durable.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loguru import logger

from actors.names._pool import NamePool


def main(state_path: str, owner_pid: int) -> None:
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    pool = NamePool.start(state_path=state_path).proxy()
    print("owner", pool.checkout_name(owner_pid).get(timeout=10), flush=True)
    while True:
        print("name", pool.checkout_name().get(timeout=10), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
