"""A demo worker process: inherits its name, works in turns holding its worker lock, maybe crashes.

Run by the daemon demo as `python -m actors.demo._worker WORKER_DIR [--flaky] [--pace F]`
(`--pace` scales every duration; tests run it faster). It
alternates a few seconds of work (its worker lock held, progress on stdout) with a few
seconds of rest (lock released), so its agent-pool session goes warm and cold. On SIGTERM
it finishes the current step, releases its lock and exits 0 (a normal stop); a closed
socket ends it quietly with status 0 too. `--flaky` crashes it (status 1) after a while.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time

from actors.daemon._client import Client
from actors.workers._worker_process import inherit_identity

WORK_SECONDS = (4.0, 7.0)
REST_SECONDS = (6.0, 9.0)
FLAKY_LIFETIME = (12.0, 20.0)


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    worker_dir = argv[0]
    flaky = "--flaky" in argv
    pace = float(argv[argv.index("--pace") + 1]) if "--pace" in argv else 1.0
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        name = inherit_identity()
        with Client(os.environ["ACTORS_SOCKET"]) as client:
            return _work(client, name, worker_dir, flaky, stopping, pace)
    except (ConnectionError, EOFError) as error:
        # The daemon went away: nothing left to report to, and nothing to crash about.
        _say(f"the daemon closed the connection ({type(error).__name__}); stopping")
        return 0


def _work(
    client: Client, name: str | None, worker_dir: str, flaky: bool, stopping: threading.Event, pace: float
) -> int:
    lifetime = pace * random.uniform(*FLAKY_LIFETIME) if flaky else float("inf")
    started = time.monotonic()
    task = 0
    while not stopping.is_set():
        task += 1
        client.call("locks.acquire", worker_dir, session_id=f"demo-{os.getpid()}")
        _say(f"task {task}: working in {worker_dir} as {name}")
        deadline = time.monotonic() + pace * random.uniform(*WORK_SECONDS)
        while time.monotonic() < deadline and not stopping.wait(0.5 * pace):
            client.call("locks.check", worker_dir)
            if time.monotonic() - started >= lifetime:
                sys.stderr.write(f"{name} crashing on purpose\n")
                return 1  # the lock and the name come back to the pools once this process is gone
        client.call("locks.release", worker_dir)
        _say(f"task {task} done; resting")
        stopping.wait(pace * random.uniform(*REST_SECONDS))
    _say("SIGTERM: stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
