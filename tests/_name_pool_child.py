"""Checks out names from a durable `NamePool` until it is killed (test_name_pool's SIGKILL tests).

Usage: python tests/_name_pool_child.py STATE_PATH OWNER_PID [snapshot|rotation]

Prints `owner NAME` for a checkout on behalf of OWNER_PID, then `name NAME` for each
anonymous checkout, one line per answered call, flushed at once. The test kills it with
SIGKILL right after reading a line: every name printed must then be durable.

With a third argument the journal is folded into a snapshot every few frames, and the
child prints `blocked` and hangs forever at a chosen moment of that rewrite: `snapshot`
just before the snapshot's temporary file is renamed over the old one (the pool goes
on answering meanwhile), `rotation` just before the journal that follows the new
snapshot replaces the old journal (the writer hangs, so answers stop).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loguru import logger

import actors.names._journal as journal_module
from actors.names._pool import NamePool


def say(line: str) -> None:
    sys.stdout.write(line + "\n")  # one write per line: threads never interleave inside one
    sys.stdout.flush()


def hang_at(moment: str) -> None:
    """Make the chosen rename of the rewrite print `blocked` and hang."""
    journal_module.SNAPSHOT_AFTER_BYTES = 2048
    real_rename = os.rename

    def rename(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        thread = threading.current_thread().name
        if (moment == "snapshot" and thread.startswith("names-snapshot")) or (
            moment == "rotation" and thread.startswith("names-journal") and str(source).endswith(".journal.new")
        ):
            say("blocked")
            threading.Event().wait()
        real_rename(source, target, *args, **kwargs)

    os.rename = rename  # type: ignore[assignment]


def main(state_path: str, owner_pid: int, moment: str | None) -> None:
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    if moment:
        hang_at(moment)
    pool = NamePool.start(state_path=state_path).proxy()
    say(f"owner {pool.checkout_name(owner_pid).get(timeout=10)}")
    while True:
        say(f"name {pool.checkout_name().get(timeout=60)}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
