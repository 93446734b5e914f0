"""A worker whose name another host got while its own host was cut off restarts under a fresh
name (contract §7 "Host leases"): the zombie host's return is a conflict, never a shared name."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from actors import FleetUnavailable, start_tree
from tests._redis import RedisServer

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "_fleet_tree_child.py"
LEASE = 3.0


def _lines(process: subprocess.Popen[str]) -> queue.Queue[dict[str, Any]]:
    lines: queue.Queue[dict[str, Any]] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(json.loads(line))

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_a_worker_whose_name_went_to_another_host_restarts_under_a_fresh_name(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = f"{redis_server.url}?namespace=conflicts"
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(ROOT), url, str(tmp_path / "a"), "host-a"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines = _lines(child)
    other = None
    try:
        first = lines.get(timeout=30)
        taken = first["name"]
        other = start_tree(tmp_path / "b", fleet=url, host_id="host-b", host_lease=LEASE, fleet_timeout=0.5)
        names = other.names.proxy()
        os.kill(child.pid, signal.SIGSTOP)  # host-a whole: no renewal; its worker process runs on
        try:
            # host-a's lease runs out, then its names' quarantine (one more lease): host-b gets it.
            owners: dict[str, str] = {}
            deadline = time.monotonic() + 4 * LEASE + 10
            while taken not in owners.values():
                assert time.monotonic() < deadline, f"host-b never got {taken!r}: {owners}"
                owner = f"urn:b-{len(owners)}"
                try:
                    owners[owner] = names.checkout_name(owner).get(timeout=10)
                except FleetUnavailable:
                    pass
                if taken not in owners.values():
                    time.sleep(0.2)  # pacing the checkouts, not synchronisation
        finally:
            os.kill(child.pid, signal.SIGCONT)
        # host-a rejoins, learns the conflict, and restarts its worker under another name.
        second = lines.get(timeout=30)
        assert second["name"] not in (None, taken)
        assert second["pid"] != first["pid"]
        holder = next(owner for owner, name in owners.items() if name == taken)
        assert names.get_name_by_pid(holder).get(timeout=10) == taken  # host-b keeps it
    finally:
        if other is not None:
            other.stop()
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)
