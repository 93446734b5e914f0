"""One contender of test_worker_lock's multi-process race, driven line by line on stdin.

Usage: python tests/_worker_lock_racer.py WORKER_DIR

Starts its own `WorkerLock` actor on WORKER_DIR (a `ManualClock`, so no owner check
runs on its own) and answers each command on one stdout line: `acquire` -> `won` |
`locked`, `release` -> `released`, `quit` ends. The owner is always this process, the
default. Anything unexpected is answered `error: ...`, so the parent's assertion shows it.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_worker_lock_module() -> types.ModuleType:
    # Import the lock actor without running `actors/__init__.py`: eight racers start at
    # once, and their start-up should not pay for (or depend on) the rest of the package.
    sys.path.insert(0, str(ROOT))
    package = types.ModuleType("actors")
    package.__path__ = [str(ROOT / "actors")]
    sys.modules["actors"] = package
    import actors._worker_lock

    return actors._worker_lock


def main() -> None:
    worker_lock = load_worker_lock_module()
    from loguru import logger

    from actors._errors import Locked
    from supervision import ManualClock

    logger.remove()  # the parent checks results, not logs
    ref = worker_lock.WorkerLock.start(sys.argv[1], clock=ManualClock())
    lock = ref.proxy()
    pid = os.getpid()
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            command = line.strip()
            try:
                if command == "acquire":
                    try:
                        info = lock.acquire(f"racer-{pid}").get(timeout=10)
                    except Locked:
                        reply = "locked"
                    else:
                        holder = lock.read().get(timeout=10)
                        reply = "won" if info.pid == pid and holder == info else f"error: won as {holder}"
                elif command == "release":
                    lock.release(pid).get(timeout=10)
                    reply = "released"
                elif command == "quit":
                    return
                else:
                    reply = f"error: unknown command {command!r}"
            except Exception as error:  # reported to the parent, which fails the test
                reply = f"error: {type(error).__name__}: {error}"
            print(reply, flush=True)
    finally:
        ref.stop()


if __name__ == "__main__":
    main()
