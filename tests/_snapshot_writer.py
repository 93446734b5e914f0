"""Saves snapshots in a tight loop until it is killed (the writer of test_snapshot's SIGKILL test).

Usage: python tests/_snapshot_writer.py PATH SEED

It continues from the sequence number it loads, so the sequence in the file must never go
backwards across kills. Each snapshot carries a random payload (up to 64 KiB) and its
SHA-256, so a torn or mixed-up file shows as a mismatch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

VERSION = 7


def load_snapshot_module() -> ModuleType:
    # Load the module file alone, not the `supervision` package: the writer is restarted
    # a hundred times, and its start-up should not pay for (or depend on) the rest.
    source = Path(__file__).resolve().parent.parent / "supervision" / "_snapshot.py"
    spec = importlib.util.spec_from_file_location("_snapshot_under_test", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    path, seed = sys.argv[1], int(sys.argv[2])
    store = load_snapshot_module().SnapshotStore(path, version=VERSION)
    previous = store.load()
    sequence = previous["seq"] if previous is not None else 0
    rng = random.Random(seed)
    while True:
        sequence += 1
        payload = rng.randbytes(rng.randrange(64 * 1024))
        store.save({"seq": sequence, "payload": payload, "check": hashlib.sha256(payload).hexdigest()})


if __name__ == "__main__":
    main()
