"""`python -m actors serve`: the tree in the foreground, served on a Unix socket.

    python -m actors serve --state-dir /var/lib/fleet        # SIGTERM or Ctrl-C stops it
    python -m actors status --state-dir /var/lib/fleet

One daemon (or tree) per state dir, enforced by the kernel lock `start_tree` takes
(`flock` on ``daemon.lock``), not by guessing from a pid file: a second `serve` exits
with status 3 naming the running one. With `--fleet URL` one daemon per `--host-id` in
the fleet's namespace (a second live one exits 3 too); a store that does not answer at
start exits 2 with one line. ``daemon.state`` (one msgpack map) is rewritten
atomically on every heartbeat, the first time before the socket accepts anyone.
"""

from __future__ import annotations

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

from actors._errors import FleetUnavailable, StateDirInUse
from actors._tree import LOCK_NAME, Tree, prepare_state_dir, start_tree
from actors.daemon._client import SOCKET_NAME
from actors.daemon._gateway import Gateway
from actors.daemon._status import collect_status
from supervision import ClientError, Clock, SnapshotStore, SystemClock

__all__ = ["ALREADY_RUNNING", "DAEMON_STATE", "HEARTBEAT_RANGE", "LOCK_NAME", "USAGE", "Daemon", "DaemonStateFile",
           "serve"]

DAEMON_STATE = "daemon.state"
USAGE = 2
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


HEARTBEAT_RANGE = (0.1, 3600.0)  # seconds between daemon.state writes, inclusive


class Daemon:
    """The tree, its gateway and the heartbeat, started and stopped in order.

    `start_tree` takes the state dir's kernel lock (one tree or daemon per state dir);
    ``daemon.state`` says ``running: true`` with this pid before the socket accepts anyone.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        heartbeat: float = 5.0,
        clock: Clock | None = None,
        tree_options: dict[str, Any] | None = None,
        gateway_options: dict[str, Any] | None = None,
    ) -> None:
        low, high = HEARTBEAT_RANGE
        if isinstance(heartbeat, bool) or not isinstance(heartbeat, int | float) or not low <= heartbeat <= high:
            raise ValueError(f"heartbeat must lie within [{low:g}, {high:g}] seconds, got {heartbeat!r}")
        self.state_dir = prepare_state_dir(state_dir)
        self.heartbeat = float(heartbeat)
        self.clock: Clock = clock or SystemClock()
        self.tree_options = dict(tree_options or {})
        self.gateway_options = dict(gateway_options or {})
        self.stopping = threading.Event()
        self.tree: Tree | None = None
        self.gateway: Gateway | None = None
        self._state_file = DaemonStateFile(self.state_dir / DAEMON_STATE)
        self._heartbeat_count = 0
        self._started_at = ""
        self._timer: Any = None
        self._state_lock = threading.Lock()
        self._state_failures = 0
        self.on_started: list[Callable[[Daemon], None]] = []

    def start(self) -> None:
        """Start the tree (raises `StateDirInUse` if another holds the dir), then serve it."""
        self._started_at = _now_iso(self.clock)
        self.tree = start_tree(self.state_dir, clock=self.tree_options.pop("clock", None), **self.tree_options)
        self.gateway = Gateway(self.tree, self.state_dir / SOCKET_NAME, on_shutdown=self.request_stop,
                               status=self.status, **self.gateway_options)
        # Before the socket accepts anyone: whoever gets an answer finds this pid running.
        self._beat()
        self.gateway.start()
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
        """Graceful: the worker processes first, while the socket still answers them; then
        stop accepting, stop the rest of the tree in reverse order, record running: false.

        Each step runs whatever failed before it (and is logged if it fails itself).
        """
        self.stopping.set()  # whatever waits on it (the demo's threads) ends too
        steps: list[tuple[str, Callable[[], Any]]] = []
        if self._timer is not None:
            steps.append(("stop the heartbeat", self._timer.cancel))
        if self.tree is not None:
            steps.append(("stop the workers", self._stop_workers))
        if self.gateway is not None:
            steps.append(("close the socket", self.gateway.stop))
        if self.tree is not None:
            steps.append(("stop the tree", lambda: self.tree.stop(timeout=60)))  # type: ignore[union-attr]
            # Only the holder of the state dir may write its daemon.state.
            steps.append(("record running: false", lambda: self._write_state(running=False)))
        for what, step in steps:
            try:
                step()
            except Exception:
                _log.exception("could not {} while stopping", what)
        self.gateway = None
        self.tree = None
        self._timer = None

    def _stop_workers(self) -> None:
        """Stop the "workers" supervisor (each process gets SIGTERM, then SIGKILL), for good."""
        assert self.tree is not None
        root = self.tree.supervisor
        if root.is_alive() and "workers" in root.proxy().child_ids().get(timeout=5):
            root.proxy().terminate_child("workers").get(timeout=None)

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
        # A socket nobody can reach any more is not a running daemon.
        gateway = self.gateway
        self._write_state(running=gateway is None or not gateway.has_failed)

    def _write_state(self, *, running: bool) -> None:
        with self._state_lock:
            try:
                self._state_file.save(self._state(running=running))
            except OSError as error:
                self._state_failures += 1
                if self._state_failures == 1:  # once per episode, not at every beat
                    _log.error("could not write {}: {}; retrying at every heartbeat", self._state_file.path, error)
                return
            if self._state_failures:
                _log.info("{} written again after {} failures", self._state_file.path, self._state_failures)
                self._state_failures = 0


def serve(
    state_dir: str | os.PathLike[str],
    *,
    heartbeat: float = 5.0,
    tree_options: dict[str, Any] | None = None,
    gateway_options: dict[str, Any] | None = None,
    on_started: Callable[[Daemon], None] | None = None,
) -> int:
    """Run the daemon in the foreground until SIGTERM/SIGINT (exit 0) or root failure (1).

    An unusable `state_dir` exits 2 and one held by another tree or daemon 3, each with one
    line on stderr.
    """
    try:
        daemon = Daemon(state_dir, heartbeat=heartbeat, tree_options=tree_options, gateway_options=gateway_options)
    except (OSError, ValueError) as error:
        sys.stderr.write(f"actors: cannot use state dir {state_dir}: {_reason(error)}\n")
        return USAGE
    if on_started is not None:
        daemon.on_started.append(on_started)
    previous = {sig: signal.signal(sig, lambda *_: daemon.request_stop()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            daemon.start()
        except StateDirInUse as error:
            sys.stderr.write(f"actors: {error}\n")
            return ALREADY_RUNNING
        except FleetUnavailable as error:  # the fleet's store unreachable at start
            daemon.stop()
            url = _redacted(str(daemon.tree_options.get("fleet")))
            sys.stderr.write(f"actors: cannot join the fleet at {url}: {_reason(error)}\n")
            return USAGE
        except Exception as error:
            daemon.stop()
            if isinstance(error, OSError | ValueError):  # the socket, the lock file, ...: the dir
                sys.stderr.write(f"actors: cannot use state dir {daemon.state_dir}: {_reason(error)}\n")
                return USAGE
            sys.stderr.write(f"actors: the daemon could not start: {_reason(error)}\n")
            return 1
        status = daemon.wait()
        started = time.monotonic()
        daemon.stop()
        _log.info("daemon stopped in {:.2f}s (exit {})", time.monotonic() - started, status)
        return status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _redacted(url: str) -> str:
    """A fleet URL without its password, for messages."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


def _reason(error: BaseException) -> str:
    """An error on one line."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, ClientError | OSError | ValueError) else f"{type(error).__name__}: {text}"
