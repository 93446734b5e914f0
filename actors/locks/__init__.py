"""Worker identity locks: one lock actor per worker directory, stale locks recovered safely.

    from actors.locks import LockSupervisor

    locks = LockSupervisor.start()
    lock = locks.proxy().lock_for("/srv/workers/w1").get(timeout=5)
    lock.proxy().acquire("session-1").get(timeout=5)

Modules: `_lock_file` (the flock-guarded record), `_worker_lock` (the actors).
"""

from actors.locks._lock_file import LockInfo
from actors.locks._worker_lock import LockSupervisor, WorkerLock

__all__ = ["LockInfo", "LockSupervisor", "WorkerLock"]
