"""`python -m actors serve`: the tree in the foreground, served on a Unix socket.

    python -m actors serve --state-dir /var/lib/fleet        # SIGTERM or Ctrl-C stops it
    python -m actors status --state-dir /var/lib/fleet

One daemon per state dir, enforced by a kernel lock (`flock` on ``daemon.lock``), not
by guessing from a pid file: a second `serve` exits with status 3 naming the running
one. ``daemon.state`` (one msgpack map) is rewritten atomically on every heartbeat.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
from loguru import logger

from actors.daemon._client import SOCKET_NAME
from actors.daemon._gateway import Gateway
from actors.daemon._status import collect_status
from actors._tree import Tree, prepare_state_dir, start_tree
from supervision import Clock, SnapshotStore, SystemClock

__all__ = ["ALREADY_RUNNING", "DAEMON_STATE", "LOCK_NAME", "Daemon", "DaemonStateFile", "serve"]

DAEMON_STATE = "daemon.state"
LOCK_NAME = "daemon.lock"
ALREADY_RUNNING = 3
STATE_VERSION = 1

_log = logger.bind(component="daemon")


class DaemonStateFile(SnapshotStore):
    """``daemon.state``: a single plain msgpack map, replaced atomically like a snapshot."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, version=STATE_VERSION)

    def _encode(self, obj: Any) -> bytes:
        return msgpack.packb(obj, use_bin_type=True)

    def _decode(self, content: bytes) -> Any:
        try:
            state = msgpack.unpackb(content, raw=False, strict_map_key=False)
        except Exception as error:
            raise ValueError(f"not msgpack: {error}") from error
        if not isinstance(state, dict):
            raise ValueError(f"not a msgpack map but {type(state).__name__}")
        return state


def _now_iso(clock: Clock) -> str:
    return datetime.fromtimestamp(clock.time(), UTC).isoformat().replace("+00:00", "Z")


class AlreadyRunning(Exception):
    """Another daemon holds the state dir's kernel lock."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"a daemon ({who}) is already serving {state_dir}")
        self.pid = pid


def _take_instance_lock(state_dir: Path) -> int:
    """The kernel lock that makes this the only daemon on `state_dir` (released on exit)."""
    path = state_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            os.close(fd)
            raise
        content = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        raise AlreadyRunning(state_dir, int(content) if content.isdigit() else None) from None
    # The pid is only informative (for the refusal message); the flock decides.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Daemon:
    """The tree, its gateway, the heartbeat and the instance lock, started and stopped in order."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        heartbeat: float = 5.0,
        clock: Clock | None = None,
        tree_options: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(heartbeat, bool) or not isinstance(heartbeat, int | float) or not heartbeat > 0:
            raise ValueError(f"heartbeat must be > 0 seconds, got {heartbeat!r}")
        self.state_dir = prepare_state_dir(state_dir)
        self.heartbeat = float(heartbeat)
        self.clock: Clock = clock or SystemClock()
        self.tree_options = dict(tree_options or {})
        self.stopping = threading.Event()
        self.tree: Tree | None = None
        self.gateway: Gateway | None = None
        self._lock_fd: int | None = None
        self._state_file = DaemonStateFile(self.state_dir / DAEMON_STATE)
        self._heartbeat_count = 0
        self._started_at = ""
        self._timer: Any = None
        self._state_lock = threading.Lock()
        self.on_started: list[Callable[[Daemon], None]] = []

    def start(self) -> None:
        self._lock_fd = _take_instance_lock(self.state_dir)
        self._started_at = _now_iso(self.clock)
        self.tree = start_tree(self.state_dir, clock=self.tree_options.pop("clock", None), **self.tree_options)
        self.gateway = Gateway(self.tree, self.state_dir / SOCKET_NAME, on_shutdown=self.request_stop, status=self.status)
        self.gateway.start()
        self._beat()
        self._timer = self.clock.call_later(self.heartbeat, self._beat, interval=self.heartbeat)
        for hook in self.on_started:
            hook(self)
        _log.info("daemon {} serving {}", os.getpid(), self.state_dir)

    def request_stop(self) -> None:
        self.stopping.set()

    def wait(self) -> int:
        """Block until a stop is requested (0) or the root supervisor fails (1)."""
        assert self.tree is not None
        root = self.tree.supervisor
        while not self.stopping.wait(0.1):
            if not root.is_alive():
                actor = root._actor_weakref()
                reason = getattr(actor, "exit_reason", None)
                cause = getattr(reason, "exception", None)
                sys.stderr.write(f"actors: the root supervisor failed: {cause or 'stopped'}; exiting\n")
                return 1
        return 0

    def stop(self) -> None:
        """Graceful: stop accepting, stop the tree in reverse order, record running: false."""
        if self._timer is not None:
            self._timer.cancel()
        if self.gateway is not None:
            self.gateway.stop()
        if self.tree is not None:
            self.tree.stop(timeout=60)
        self._write_state(running=False)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def status(self) -> dict[str, Any]:
        assert self.tree is not None
        extra = {"daemon": {**self._state(running=True), "state_dir": str(self.state_dir)}}
        return collect_status(self.tree, extra=extra)

    def _state(self, *, running: bool) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "running": running,
            "pid": os.getpid(),
            "started_at": self._started_at,
            "last_heartbeat": _now_iso(self.clock),
            "heartbeat_count": self._heartbeat_count,
        }

    def _beat(self) -> None:
        self._heartbeat_count += 1
        self._write_state(running=True)

    def _write_state(self, *, running: bool) -> None:
        with self._state_lock:
            try:
                self._state_file.save(self._state(running=running))
            except OSError:
                _log.exception("could not write {}", self._state_file.path)


def serve(
    state_dir: str | os.PathLike[str],
    *,
    heartbeat: float = 5.0,
    tree_options: dict[str, Any] | None = None,
    on_started: Callable[[Daemon], None] | None = None,
) -> int:
    """Run the daemon in the foreground until SIGTERM/SIGINT (exit 0) or root failure (1)."""
    daemon = Daemon(state_dir, heartbeat=heartbeat, tree_options=tree_options)
    if on_started is not None:
        daemon.on_started.append(on_started)
    previous = {sig: signal.signal(sig, lambda *_: daemon.request_stop()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            daemon.start()
        except AlreadyRunning as error:
            sys.stderr.write(f"actors: {error}\n")
            return ALREADY_RUNNING
        except Exception as error:
            sys.stderr.write(f"actors: the daemon could not start: {error}\n")
            daemon.stop()
            return 1
        status = daemon.wait()
        started = time.monotonic()
        daemon.stop()
        _log.info("daemon stopped in {:.2f}s (exit {})", time.monotonic() - started, status)
        return status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
