"""Worker identity locks: one lock actor per worker directory, stale locks recovered safely.

    from actors.locks import LockSupervisor

    locks = LockSupervisor.start()
    lock = locks.proxy().lock_for("/srv/workers/w1").get(timeout=5)
    lock.proxy().acquire("session-1").get(timeout=5)          # LockInfo, with its .fence

    # In a fleet (contract §7): the lock is also a lease in the store, renewed by the actor.
    locks = LockSupervisor.start(fleet=FleetSettings.parse("unix:///run/redis.sock", host_id="a"))

Modules: `_lock_file` (the flock-guarded record), `_worker_lock` (the actors and their
fleet leases); the store's scripts are in `actors.fleet._leases`.
"""

from actors.locks._record import LockInfo
from actors.locks._worker_lock import LockSupervisor, WorkerLock

__all__ = ["LockInfo", "LockSupervisor", "WorkerLock"]
