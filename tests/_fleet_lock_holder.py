"""A process that holds a fleet worker lock for itself (tests/test_fleet_locks.py stops it).

    python tests/_fleet_lock_holder.py URL WORKER_DIR LOCK_LEASE

Prints the fence once it holds the lock, then waits; with on_lock_lost="terminate" a lost
lease ends it by SIGTERM (its own lock actor sends it).
"""

from __future__ import annotations

import sys
import threading

from loguru import logger

from actors.fleet._connection import FleetSettings
from actors.locks._worker_lock import LockSupervisor


def main() -> None:
    url, worker_dir, lease = sys.argv[1], sys.argv[2], float(sys.argv[3])
    logger.remove()
    logger.add(sys.stderr, level="INFO")  # the test reads stderr only at the end: keep it short
    fleet = FleetSettings.parse(url, host_id="host-a", lock_lease=lease, fleet_timeout=0.3, on_lock_lost="terminate")
    locks = LockSupervisor.start(fleet=fleet)
    lock = locks.proxy().lock_for(worker_dir).get(timeout=10)
    info = lock.proxy().acquire("holder").get(timeout=10)
    print(info.fence, flush=True)
    threading.Event().wait()  # until a signal ends it


if __name__ == "__main__":
    main()
