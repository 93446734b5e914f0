"""Races on one worker directory's lock, shared by test_lock_file and test_worker_lock
and by their contender scripts (_lock_racer.py, _worker_lock_racer.py).

For the contender scripts: `load_actors_module` and `serve` (the line protocol: `acquire`
-> `won` | `locked`, `release` -> `released`, `quit` ends; anything unexpected is
answered `error: ...`, so the parent's assertion shows it).

For the tests: `Racer` (one such script as a child process), `start_racers` (a group of them,
all ready, stopped at the end), `race_round` (one round between processes) and
`race_threads` (rounds between threads of the test process).

Only the standard library is imported at the top: eight contender scripts import this
module at once, and their start-up should not pay for pytest or the `actors` package.
"""

from __future__ import annotations

import importlib
import os
import select
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actors.locks._lock_file import LockFile
    from actors.locks._record import LockInfo

ROOT = Path(__file__).resolve().parent.parent


# -- the contender scripts' side --------------------------------------------------------------


def load_actors_module(name: str) -> types.ModuleType:
    """`actors.<name>`, imported without running `actors/__init__.py`: eight racers start
    at once, and their start-up should not pay for (or depend on) the rest of the package."""
    sys.path.insert(0, str(ROOT))
    package = types.ModuleType("actors")
    package.__path__ = [str(ROOT / "actors")]
    sys.modules["actors"] = package
    return importlib.import_module(f"actors.{name}")


def serve(acquire: Callable[[], str], release: Callable[[], object]) -> None:
    """Says `ready`, then answers each command on stdin with one stdout line until `quit`
    (or the end of stdin). `acquire` returns the reply itself (`won`, `locked`, `error: ...`)."""
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.strip()
        try:
            if command == "acquire":
                reply = acquire()
            elif command == "release":
                release()
                reply = "released"
            elif command == "quit":
                return
            else:
                reply = f"error: unknown command {command!r}"
        except Exception as error:  # reported to the parent, which fails the test
            reply = f"error: {type(error).__name__}: {error}"
        print(reply, flush=True)


# -- the tests' side ---------------------------------------------------------------------------


class Racer:
    """A contender script (`script WORKER_DIR`) as a child process, spoken to line by line."""

    def __init__(self, script: Path, worker_dir: Path, stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        with open(stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, str(script), str(worker_dir)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                bufsize=0,
            )
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{command}\n".encode())

    def reply(self, timeout: float = 30.0) -> str:
        """The next line from the child; fails the test if none comes within `timeout`."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                import pytest  # here, not at the top: the contender scripts import this module

                pytest.fail(f"racer {self.pid} said nothing: {self.stderr_path.read_text()[-2000:]}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def stop(self) -> None:
        try:
            self.send("quit")
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


@contextmanager
def start_racers(script: Path, worker_dir: Path, tmp_path: Path, count: int) -> Iterator[list[Racer]]:
    """`count` racers running `script` on `worker_dir` (stderr in `tmp_path/racer-N.err`),
    each having said `ready`; all are stopped when the block ends."""
    started = [Racer(script, worker_dir, tmp_path / f"racer-{i}.err") for i in range(count)]
    try:
        for racer in started:
            assert racer.reply() == "ready"
        yield started
    finally:
        for racer in started:
            racer.stop()


def race_round(racers: list[Racer], referee: LockFile, round_index: int) -> LockInfo:
    """One round: every racer is told `acquire` together; exactly one may answer `won` and
    every other `locked`, and `referee` must show the winner holding the lock. The winner
    then releases and the lock must be free. Returns the record the winner held."""
    for racer in racers:
        racer.send("acquire")
    replies = {racer.pid: racer.reply() for racer in racers}
    winners = [pid for pid, reply in replies.items() if reply == "won"]
    assert len(winners) == 1 and list(replies.values()).count("locked") == len(racers) - 1, (round_index, replies)
    holder = referee.read()
    assert holder is not None and holder.pid == winners[0]
    [winner] = [racer for racer in racers if racer.pid == winners[0]]
    winner.send("release")
    assert winner.reply() == "released"
    assert referee.status() == "unlocked"
    return holder


def race_threads(
    owners: list[int],
    rounds: int,
    acquire: Callable[[int], object],
    read_holder: Callable[[], LockInfo | None],
    release: Callable[[int, int], object],
) -> None:
    """One thread per owner, `rounds` rounds: every round all threads call `acquire(index)`
    together (`Locked` is a loss); exactly one may win, `read_holder()` must show that
    thread's owner, and `release(round_index, pid)` frees the lock for the next round."""
    from actors._errors import Locked  # here, not at the top: see the module's docstring

    barrier = threading.Barrier(len(owners) + 1)
    results: list[list[str]] = [[] for _ in owners]

    def contend(index: int) -> None:
        for _ in range(rounds):
            barrier.wait()
            try:
                acquire(index)
                results[index].append("won")
            except Locked:
                results[index].append("locked")
            except Exception as error:  # shown by the assertion below
                results[index].append(repr(error))
            barrier.wait()

    threads = [threading.Thread(target=contend, args=(i,), daemon=True) for i in range(len(owners))]
    for thread in threads:
        thread.start()
    for round_index in range(rounds):
        barrier.wait(timeout=30)  # go
        barrier.wait(timeout=30)  # all answered
        outcome = [results[i][round_index] for i in range(len(owners))]
        assert sorted(outcome) == ["locked"] * (len(owners) - 1) + ["won"], outcome
        holder = read_holder()
        assert holder is not None and holder.pid == owners[outcome.index("won")]
        release(round_index, holder.pid)
    for thread in threads:
        thread.join(timeout=30)
