"""One contender of test_lock_file's multi-process race, driven line by line on stdin.

Usage: python tests/_lock_racer.py WORKER_DIR

Builds its own `LockFile` on WORKER_DIR and answers each command on one stdout line:
`acquire` -> `won` | `locked`, `release` -> `released`, `quit` ends. Anything unexpected
is answered `error: ...`, so the parent's assertion shows it (see `_racing.serve`).
"""

from __future__ import annotations

import os
import sys

from _racing import load_actors_module, serve


def main() -> None:
    lock_file = load_actors_module("locks._lock_file")
    from loguru import logger

    logger.remove()  # breaking stale records logs; the parent checks results, not logs
    lock = lock_file.LockFile(sys.argv[1])
    pid = os.getpid()

    def acquire() -> str:
        try:
            lock.acquire(pid, f"racer-{pid}")
        except lock_file.Locked:
            return "locked"
        return "won"

    serve(acquire, lambda: lock.release(pid))


if __name__ == "__main__":
    main()
