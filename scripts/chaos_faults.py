"""Fault mode of the chaos run (`scripts/chaos.py --faults`): what production does to a daemon.

    .venv/bin/python scripts/chaos.py --seconds 60 --faults

On top of the kills of the plain run, while the same load runs:

- **Hostile peers**: processes that connect to the socket and send every op acting for
  someone else (checkins of names others hold, checkouts and dissociations for other
  owners, locks for other pids, operator ops), bad worker paths (`/proc/1`, relative,
  missing), oversized frames, malformed bytes, and connections that send half a frame and
  go quiet. Every request that must be refused and was served is counted (must be 0).
- **Descriptor exhaustion**: the process's `RLIMIT_NOFILE` is lowered to what it has open
  for a moment, so every `open`, `accept` and `socket` in the tree fails with EMFILE.
- **A full state filesystem** (as root): the state dir is a small tmpfs, filled to the
  last byte now and then and freed again.
- **Wall-clock steps**: `time.time` and the kernel's boot time (the clock/boot-time seam,
  never the machine's clock) jump by ±5 s, +1 day or -1 hour and back.

Errors these faults make callers see (StorageError, EMFILE, a connection closed by the
daemon) are counted apart as expected; everything else is judged by the plain run's
invariants, plus: the daemon (root supervisor and socket) is still serving at the end.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

__all__ = ["FaultInjector", "expected_under_faults", "hostile_main"]

# Error types a caller may see because of an injected fault (by class name: they also
# arrive over the socket as RemoteError type names).
_STORAGE_TYPES = frozenset({"StorageError", "FleetUnavailable"})
_CONNECTION_TYPES = frozenset({"ConnectionLost", "ConnectionResetError", "BrokenPipeError", "ConnectionRefusedError"})
_DESCRIPTOR_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EAGAIN, errno.ENOMEM})


def expected_under_faults(error: BaseException) -> str | None:
    """The label under which `error` counts as an expected effect of a fault, or None."""
    names = {cls.__name__ for cls in type(error).__mro__}
    type_name = getattr(error, "type_name", None)  # RemoteError
    if type_name is not None:
        names.add(type_name)
    if names & _STORAGE_TYPES:
        return "refused: state storage failing (expected)"
    if names & _CONNECTION_TYPES:
        return "connections closed under faults (expected)"
    text = str(error)
    if "No space left on device" in text:  # a StorageError reported inside another error
        return "refused: state storage failing (expected)"
    if (isinstance(error, OSError) and error.errno in _DESCRIPTOR_ERRNOS) or "Too many open files" in text:
        return "refused: out of descriptors (expected)"
    if "can't start new thread" in text:
        return "refused: out of threads (expected)"
    return None


class FaultInjector:
    """Starts and stops the fault threads of one chaos run; reports what it did."""

    def __init__(self, run: Any, seed: int, *, spawn_hostile: Callable[[int], subprocess.Popen[bytes]]) -> None:
        self.run = run
        self.rng = random.Random(seed)
        self.spawn_hostile = spawn_hostile
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.hostiles: list[subprocess.Popen[bytes]] = []
        self.mounted: Path | None = None
        self.injected: dict[str, int] = {}
        self._real_time = time.time
        self._real_boot_time: Callable[[], float] | None = None
        self._lock = threading.Lock()

    # -- set-up before the tree starts -----------------------------------------------------

    def prepare_state_dir(self, state_dir: Path, size: str = "4m") -> None:
        """Put the state dir on a tmpfs of its own (root only) so that it can be filled."""
        state_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0 or shutil.which("mount") is None:
            return
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(state_dir)],
                                capture_output=True)
        if result.returncode == 0:
            self.mounted = state_dir

    def start(self, hostile_count: int = 2) -> None:
        for slot in range(hostile_count):
            self.hostiles.append(self.spawn_hostile(slot))
        self._thread(self._descriptor_exhaustion, "chaos-fault-fds")
        self._thread(self._clock_steps, "chaos-fault-clock")
        if self.mounted is not None:
            self._thread(self._full_disk, "chaos-fault-disk")

    def _thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _count(self, what: str) -> None:
        with self._lock:
            self.injected[what] = self.injected.get(what, 0) + 1

    # -- the faults ----------------------------------------------------------------------

    def _descriptor_exhaustion(self) -> None:
        while not self.stop_event.wait(self.rng.uniform(1.0, 3.0)):
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            in_use = len(os.listdir("/proc/self/fd"))
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (in_use, hard))
                self._count("descriptor exhaustion")
                self.stop_event.wait(self.rng.uniform(0.2, 0.6))
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    def _clock_steps(self) -> None:
        import psutil

        real_boot_time = self._real_boot_time = psutil.boot_time
        offset = 0.0

        def stepped_time() -> float:
            return self._real_time() + offset

        def stepped_boot_time() -> float:
            return real_boot_time() + offset  # the kernel's btime moves with the wall clock

        time.time = stepped_time
        psutil.boot_time = stepped_boot_time
        steps = (5.0, -5.0, 86_400.0, -3_600.0, 0.0)
        while not self.stop_event.wait(self.rng.uniform(0.5, 2.0)):
            offset = self.rng.choice(steps)
            self._count("wall-clock steps")

    def _full_disk(self) -> None:
        assert self.mounted is not None
        filler = self.mounted / "filler"
        while not self.stop_event.wait(self.rng.uniform(1.0, 3.0)):
            try:
                fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            except OSError:
                continue  # EMFILE from the descriptor fault: no fill this round
            try:
                for size in (1 << 16, 512, 1):  # to the last byte
                    with contextlib.suppress(OSError):
                        while True:
                            os.write(fd, b"\0" * size)
            finally:
                os.close(fd)
            self._count("state filesystem full")
            self.stop_event.wait(self.rng.uniform(0.3, 1.0))
            with contextlib.suppress(OSError):
                filler.unlink()

    # -- ending -----------------------------------------------------------------------------

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(10)
        time.time = self._real_time
        if self._real_boot_time is not None:
            import psutil

            psutil.boot_time = self._real_boot_time
        for process in self.hostiles:
            if process.poll() is None and process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
        for process in self.hostiles:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()

    def unmount(self) -> None:
        if self.mounted is not None:
            subprocess.run(["umount", "-l", str(self.mounted)], capture_output=True)
            self.mounted = None

    def figures(self) -> list[tuple[str, int]]:
        return [(f"  faults: {what}", count) for what, count in sorted(self.injected.items())]


# -- the hostile peer (a child process) ------------------------------------------------------------


def _ancestors() -> set[int]:
    import psutil

    with contextlib.suppress(psutil.Error):
        return {parent.pid for parent in psutil.Process().parents()}
    return set()


def hostile_main(socket_path: str, ledger_path: str, lock_dirs: list[str], seed: int, deadline: float) -> int:
    """A peer that only ever asks for what it must be refused, plus malformed traffic."""
    from loguru import logger

    logger.remove()
    from actors import Client

    rng = random.Random(seed)
    me = os.getpid()
    ancestors = _ancestors()
    stop = threading.Event()
    counts: dict[str, int] = {}
    problems: list[str] = []
    idle: list[socket.socket] = []

    def watch_stdin() -> None:
        sys.stdin.buffer.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()

    def count(what: str) -> None:
        counts[what] = counts.get(what, 0) + 1

    def held_by_others() -> dict[str, list[Any]]:
        status = client.call("tree.status")
        held = status.get("held_names") if isinstance(status, dict) else None
        if not isinstance(held, dict):
            return {}
        # {"error": "..."} when the pool cannot answer (its state unreadable): no names.
        return {name: owners for name, owners in held.items()
                if isinstance(owners, list) and me not in owners
                and not (set(o for o in owners if isinstance(o, int)) & ancestors)}

    def must_refuse(op: str, *args: Any, **kwargs: Any) -> None:
        try:
            value = client.call(op, *args, **kwargs)
        except Exception as error:
            if expected_under_faults(error) == "connections closed under faults (expected)":
                count("hostile connections closed by the daemon")
            else:
                count("hostile requests refused")
            return
        count("hostile requests served")
        problems.append(f"hostile {op}{tuple(args)!r} {kwargs!r} was served: {value!r}")

    def raw(payload: bytes, *, wait_reply: bool = True) -> None:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(5.0)
        try:
            connection.connect(socket_path)
            connection.sendall(payload)
            if wait_reply:
                with contextlib.suppress(OSError):
                    connection.recv(65536)
            count("malformed or oversized frames sent")
        except OSError:
            count("hostile connections closed by the daemon")
        finally:
            connection.close()

    def attack() -> None:
        others = held_by_others()
        names = sorted(others)
        other_pids = sorted({o for owners in others.values() for o in owners if isinstance(o, int)} - {me})
        choice = rng.randrange(12)
        if choice == 0 and names:
            must_refuse("names.checkin_name", rng.choice(names))
        elif choice == 1:
            must_refuse("names.checkout_name", rng.choice([1, *other_pids, "someone-else"]))
        elif choice == 2 and other_pids:
            must_refuse("names.dissociate", rng.choice(other_pids))
        elif choice == 3 and names:
            must_refuse("names.associate_name", rng.choice(names), rng.choice([1, *other_pids]))
        elif choice == 4:
            must_refuse(rng.choice(["names.reset", "names.reconcile"]), *([[]] if rng.random() < 0.5 else []))
        elif choice == 5:
            must_refuse("locks.acquire", rng.choice(lock_dirs), "hostile", owner=rng.choice([1, *other_pids]))
        elif choice == 6:
            must_refuse("locks.release", rng.choice(lock_dirs), owner=rng.choice([1, *other_pids]))
        elif choice == 7:
            missing = f"/nonexistent-{os.urandom(8).hex()}/worker"  # never created by anyone
            must_refuse("locks.acquire", rng.choice(["/proc/1", "relative/dir", missing]))
        elif choice == 8:
            must_refuse("locks.force_release", rng.choice(lock_dirs))
        elif choice == 9:
            # 2 MiB in one frame: refused after at most the limit, that connection closed.
            raw(msgpack.packb({"id": 1, "op": "names.pool_stats", "args": [b"x" * (2 << 20)], "kwargs": {}}))
        elif choice == 10:
            raw(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))
        else:
            # Half a frame, then silence, on a connection kept open (slowloris).
            if len(idle) >= 16:
                idle.pop(0).close()
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                connection.connect(socket_path)
                connection.sendall(msgpack.packb({"id": 7, "op": "names.pool_stats"})[:5])
                idle.append(connection)
                count("half frames left idle")
            except OSError:
                connection.close()
                count("hostile connections closed by the daemon")

    client: Any = None
    while not stop.is_set() and time.time() < deadline:
        try:
            if client is None:
                client = Client(socket_path, timeout=10.0)
            attack()
        except Exception as error:
            label = expected_under_faults(error)
            if label is None:
                count("unexpected errors")
                problems.append(f"hostile {me}: {error!r}")
            else:
                count(label)
            with contextlib.suppress(Exception):
                if client is not None:
                    client.close()
            client = None
        stop.wait(rng.uniform(0.002, 0.02))
    for connection in idle:
        connection.close()
    if client is not None:
        with contextlib.suppress(Exception):
            client.close()
    with open(ledger_path, "a") as ledger:
        ledger.write(json.dumps({"k": "counts", "counts": counts}) + "\n")
        for text in problems[:50]:
            ledger.write(json.dumps({"k": "problem", "text": text}) + "\n")
    return 0
