"""One contender of test_lock_file's multi-process race, driven line by line on stdin.

Usage: python tests/_lock_racer.py WORKER_DIR

Builds its own `LockFile` on WORKER_DIR and answers each command on one stdout line:
`acquire` -> `won` | `locked`, `release` -> `released`, `quit` ends. Anything unexpected
is answered `error: ...`, so the parent's assertion shows it.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_lock_file_module() -> types.ModuleType:
    # Import the lock core without running `actors/__init__.py`: eight racers start at
    # once, and their start-up should not pay for (or depend on) the rest of the package.
    sys.path.insert(0, str(ROOT))
    package = types.ModuleType("actors")
    package.__path__ = [str(ROOT / "actors")]
    sys.modules["actors"] = package
    import actors._lock_file

    return actors._lock_file


def main() -> None:
    lock_file = load_lock_file_module()
    from loguru import logger

    logger.remove()  # breaking stale records logs; the parent checks results, not logs
    lock = lock_file.LockFile(sys.argv[1])
    pid = os.getpid()
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.strip()
        try:
            if command == "acquire":
                try:
                    lock.acquire(pid, f"racer-{pid}")
                    reply = "won"
                except lock_file.Locked:
                    reply = "locked"
            elif command == "release":
                lock.release(pid)
                reply = "released"
            elif command == "quit":
                return
            else:
                reply = f"error: unknown command {command!r}"
        except Exception as error:  # reported to the parent, which fails the test
            reply = f"error: {type(error).__name__}: {error}"
        print(reply, flush=True)


if __name__ == "__main__":
    main()
