"""One contender of test_worker_lock's multi-process race, driven line by line on stdin.

Usage: python tests/_worker_lock_racer.py WORKER_DIR

Starts its own `WorkerLock` actor on WORKER_DIR (a `ManualClock`, so no owner check
runs on its own) and answers each command on one stdout line: `acquire` -> `won` |
`locked`, `release` -> `released`, `quit` ends. The owner is always this process, the
default. Anything unexpected is answered `error: ...`, so the parent's assertion shows it
(see `_racing.serve`).
"""

from __future__ import annotations

import os
import sys

from _racing import load_actors_module, serve


def main() -> None:
    worker_lock = load_actors_module("locks._worker_lock")
    from loguru import logger

    from actors._errors import Locked
    from supervision import ManualClock

    logger.remove()  # the parent checks results, not logs
    ref = worker_lock.WorkerLock.start(sys.argv[1], clock=ManualClock())
    lock = ref.proxy()
    pid = os.getpid()

    def acquire() -> str:
        try:
            info = lock.acquire(f"racer-{pid}").get(timeout=10)
        except Locked:
            return "locked"
        holder = lock.read().get(timeout=10)
        return "won" if info.pid == pid and holder == info else f"error: won as {holder}"

    try:
        serve(acquire, lambda: lock.release(pid).get(timeout=10))
    finally:
        ref.stop()


if __name__ == "__main__":
    main()
