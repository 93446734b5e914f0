"""A client of test_power_cut: checks names out and in for its owners, as fast as it can.

Usage: python tests/_chaos_power_client.py STATE_DIR LEDGER PAUSE_FILE OWNER_PIDS SEED

OWNER_PIDS is a comma-separated list of other live pids, usually empty: over the socket
a worker acts only for itself (CONTRACT §5), so others are refused; this process's own
pid is added to them. Each owner in turn is synced (`get_name_by_pid`), checked out
or checked in. Every step is one JSON line in LEDGER, appended with one write (so a
line is never lost or torn, whoever is killed):

    {"op": "out-send", "o": pid}              before a checkout is sent
    {"op": "out", "o": pid, "n": name}        the checkout was answered
    {"op": "in-send", "o": pid, "n": name}    before a checkin is sent
    {"op": "in", "o": pid, "n": name}         the checkin was answered
    {"op": "sync", "o": pid, "n": name|null}  what the daemon says the owner holds
    {"op": "lost", "o": pid}                  the call in flight failed: outcome unknown

After "lost" the owner is synced before anything else. While PAUSE_FILE exists the
client writes its content to `PAUSE_FILE.ack-<pid>` and does nothing else until the
file is gone or holds another round: the test then reads a ledger that does not move.
It stops when its stdin closes, when its parent is gone, or after 120 s.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LIFETIME = 120.0
#: Up to this many seconds between calls: a client owns one name (its own pid), so a kill
#: that lands mid-call leaves its state unknown; most kills must find it between calls.
IDLE = 0.05


def main() -> int:
    from loguru import logger

    logger.remove()
    from actors import Client
    from supervision import ActorCrashed

    state_dir, ledger_path, pause_path = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    owners = [os.getpid(), *(int(pid) for pid in sys.argv[4].split(",") if pid)]
    rng = random.Random(int(sys.argv[5]))
    parent = os.getppid()
    deadline = time.monotonic() + LIFETIME
    fd = os.open(ledger_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def log(**record: object) -> None:
        os.write(fd, (json.dumps(record) + "\n").encode())

    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.buffer.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    state: dict[int, str | None] = {}  # owner -> name held (None: free); absent: unknown
    client: Client | None = None
    socket_path = os.path.join(state_dir, "tree.sock")
    acked = None
    while not stop.is_set() and os.getppid() == parent and time.monotonic() < deadline:
        try:
            pause = pause_path.read_text()
        except FileNotFoundError:
            pause = None
        if pause:
            if pause != acked:
                if client is not None:
                    client.close()
                    client = None
                ack = f"{pause_path}.ack-{os.getpid()}"
                Path(f"{ack}.tmp").write_text(pause)
                os.replace(f"{ack}.tmp", ack)  # the test never reads half an ack
                acked = pause
            stop.wait(0.005)  # paused: poll for the end of the pause
            continue
        if client is None:
            try:
                client = Client(socket_path, timeout=5.0)
            except OSError:
                stop.wait(0.01)  # the daemon is down: poll until it is back
                continue
        owner = rng.choice(owners)
        try:
            if owner not in state:
                name = client.call("names.get_name_by_pid", owner)
                state[owner] = name
                log(op="sync", o=owner, n=name)
            elif state[owner] is None:
                log(op="out-send", o=owner)
                del state[owner]
                name = client.call("names.checkout_name", owner)
                state[owner] = name
                log(op="out", o=owner, n=name)
            else:
                name = state.pop(owner)
                log(op="in-send", o=owner, n=name)
                client.call("names.checkin_name", name)
                state[owner] = None
                log(op="in", o=owner, n=name)
        except (OSError, ActorCrashed):
            # The daemon died under the call (or cut it off): what it did is unknown.
            state.pop(owner, None)
            log(op="lost", o=owner)
            client.close()
            client = None
            continue
        stop.wait(rng.uniform(0.0, IDLE))
    if client is not None:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
