"""A demo worker process: inherits its name, takes its worker lock, works, maybe crashes.

Run by the daemon demo as `python -m actors.demo._worker WORKER_DIR [--flaky]`.
"""

from __future__ import annotations

import os
import random
import sys
import time

from actors.daemon._client import Client
from actors.workers._worker_process import inherit_identity


def main(argv: list[str]) -> int:
    worker_dir = argv[0]
    flaky = "--flaky" in argv
    name = inherit_identity()
    socket_path = os.environ["ACTORS_SOCKET"]
    with Client(socket_path) as client:
        client.call("locks.acquire", worker_dir, session_id=f"demo-{os.getpid()}")
        sys.stderr.write(f"[worker {name} pid {os.getpid()}] took my lock on {worker_dir}\n")
        lifetime = random.uniform(3.0, 6.0) if flaky else float("inf")
        started = time.monotonic()
        while time.monotonic() - started < lifetime:
            time.sleep(0.5)
            client.call("locks.check", worker_dir)
    sys.stderr.write(f"[worker {name} pid {os.getpid()}] crashing on purpose\n")
    return 1  # the lock and the name come back to the pools once this process is gone


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
