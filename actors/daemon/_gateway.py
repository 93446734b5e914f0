"""The daemon's socket: serves the tree to worker processes (msgpack over a Unix socket).

    gateway = Gateway(tree, state_dir / "tree.sock", on_shutdown=stop_event.set)
    gateway.start()          # socket 0600; one thread per connection
    ...
    gateway.stop()

Every request is checked before it reaches an actor; every failure is answered with an
error reply and stays inside its connection. A malformed frame (or one whose id cannot
be read) is answered with ``"id": nil`` and closes that connection only. The peer's
pid and uid come from the kernel (`SO_PEERCRED`): a peer of another uid is refused,
`names.*` calls default their owner to the peer's pid, and `locks.*` calls always act
for the peer.

No peer can exhaust the daemon: a frame is refused once more than 1 MiB of it has
arrived (nothing of it is decoded before it is whole); a partial frame held for more
than `frame_timeout` closes its connection; when every slot is taken the connection idle
the longest makes room; the accept loop backs off when out of descriptors and answers a
connection it cannot give a thread with an error. See docs/design.md, "The daemon and its socket".
"""

from __future__ import annotations

import errno
import inspect
import itertools
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pykka
from loguru import logger

from actors._errors import NotPermitted
from actors._process import spawned_name
from actors.daemon._protocol import (
    FrameError,
    FrameReader,
    ask_method,
    encode,
    error_reply,
    nesting_depth,
    ok_reply,
    set_kernel_timeouts,
)
from actors.daemon._status import collect_status
from actors.names._pool import PeerCall
from actors._tree import Tree
from supervision import BadCall, ChildNotFound, ClientError, Clock, Handle, SystemClock, UnknownMessage, subscribe
from supervision._errors import describe

__all__ = ["CALL_TIMEOUT", "Gateway", "Peer"]

CALL_TIMEOUT = 30.0
MAX_NESTING = 32  # deeper arguments are refused before any actor sees them
SEND_TIMEOUT = 10.0
MAX_CONNECTIONS = 256
FRAME_TIMEOUT = 10.0  # seconds a connection may hold a partial frame
BACKLOG = 128
ACCEPT_WAKE = 0.2  # seconds between checks for a stop while nobody connects
CONNECTION_WAKE = 0.5
ACCEPT_BACKOFF_MIN = 0.05
ACCEPT_BACKOFF_MAX = 1.0

NAME_METHODS = {
    "checkout_name": 0,  # position of the `owner` argument, or None when it has none
    "checkin_name": None,
    "associate_name": 1,
    "dissociate": 0,
    "get_name_by_pid": 0,
    "pool_stats": None,
    "reset": None,
    "reconcile": None,
    "default_name": None,
}
UNSERVED_NAME_METHODS = {"reset", "reconcile"}  # operator acts, like locks.force_release
# Position of `owner` after the worker directory has been taken off the arguments.
LOCK_METHODS = {"acquire": 1, "release": 0, "read": None, "check": 0, "status": None}
AGENT_METHODS = {"health", "sweep", "close_chat"}
TREE_METHODS = {"which_children", "status", "restart_child", "terminate_child", "shutdown"}
FOLLOW_OP = "events.follow"
FOLLOW_BUFFER = 10_000  # events a follower may lag behind before it loses the oldest
LOGGED_LOCK_METHODS = {"acquire": "acquired", "release": "released"}

_log = logger.bind(component="gateway")


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end, as the kernel says."""

    pid: int
    uid: int
    gid: int


def peer_of(connection: socket.socket) -> Peer:
    data = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return Peer(pid, uid, gid)


@dataclass(eq=False, slots=True)
class _Slot:
    """One served connection, as the accept loop sees it when it must free a slot."""

    connection: socket.socket
    last_active: float  # on the gateway's clock: when it was accepted or last answered
    partial_since: float | None = None  # when the frame it is sending began to arrive
    is_busy: bool = False  # a call is in progress (never closed to admit another)
    is_evicted: bool = False


class _Episode:
    """Logs a run of the same failure once (WARNING), and its end once (INFO)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0

    def failed(self, error: BaseException) -> None:
        self.count += 1
        if self.count == 1:
            name = errno.errorcode.get(getattr(error, "errno", None) or 0, type(error).__name__)
            _log.warning("{} ({}: {}); retrying, logged once until it works again", self.what, name, error)

    def recovered(self) -> None:
        if self.count:
            _log.info("{}: works again after {} failures", self.what, self.count)
            self.count = 0


def _shut(connection: socket.socket) -> None:
    """Wake the thread blocked on `connection` (it then sees the end and closes it)."""
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Accepted(Exception):
    """A lifecycle request that must be answered before it acts (it may end the caller)."""

    def __init__(self, action: Callable[[], Any], what: str) -> None:
        super().__init__(what)
        self.action = action
        self.what = what


class Gateway:
    """Serves `tree` on the Unix socket at `socket_path`.

    At most `max_connections` connections are served at once; when all are taken, the one
    idle the longest (no call in progress) is closed to admit a new one. A connection that
    holds a partial frame for more than `frame_timeout` seconds (on `clock`) is closed.
    """

    def __init__(
        self,
        tree: Tree,
        socket_path: str | os.PathLike[str],
        *,
        on_shutdown: Callable[[], None] | None = None,
        status: Callable[[], dict[str, Any]] | None = None,
        call_timeout: float = CALL_TIMEOUT,
        clock: Clock | None = None,
        frame_timeout: float = FRAME_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.tree = tree
        self.socket_path = Path(socket_path)
        self._on_shutdown = on_shutdown
        self._status = status
        self._call_timeout = call_timeout
        self._clock: Clock = clock or SystemClock()
        self._frame_timeout = frame_timeout
        self._max_connections = max_connections
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._slots: dict[socket.socket, _Slot] = {}
        self._lock = threading.Lock()
        self._accept_thread: threading.Thread | None = None
        self._thread_numbers = itertools.count(1)
        self._thread_failures = _Episode("cannot start a connection thread")
        # The last stats the name pool published and their plain copy (msgpack packs a dict,
        # not a read-only mapping): one tuple, replaced whole, read by every connection.
        self._stats_copy: tuple[Any, dict[str, Any]] = (None, {})

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind (replacing a stale socket file), chmod 0600, listen, accept on a thread."""
        if self.socket_path.is_symlink():
            raise ValueError(f"{self.socket_path} is a symlink; refusing to bind through it")
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            listener.bind(str(self.socket_path))
        except BaseException:
            listener.close()
            raise
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o600)
        listener.listen(BACKLOG)
        listener.settimeout(ACCEPT_WAKE)
        self._listener = listener
        self._accept_thread = threading.Thread(target=self._accept_loop, name="gateway-accept", daemon=True)
        self._accept_thread.start()
        _log.info("serving on {}", self.socket_path)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection, remove the socket file."""
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            connections = list(self._slots)
            threads = list(self._threads)
        for connection in connections:
            _shut(connection)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._listener is None:
            return  # never bound: whatever sits at the path is not ours
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass

    @property
    def connection_count(self) -> int:
        with self._lock:
            return len(self._slots)

    @property
    def has_failed(self) -> bool:
        """True when the accept loop ended without a stop (it should never; the heartbeat checks)."""
        thread = self._accept_thread
        return thread is not None and not thread.is_alive() and not self._stopping.is_set()

    # -- connections --------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        """Accept until stopped. Nothing that goes wrong with one connection ends it."""
        assert self._listener is not None
        failures = _Episode("cannot accept connections")
        backoff = ACCEPT_BACKOFF_MIN
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except Exception as error:  # out of descriptors or memory, mostly
                if self._stopping.is_set():
                    return
                failures.failed(error)
                # Waiting connections stay in the backlog (clients wait within their timeout).
                self._stopping.wait(backoff)
                backoff = min(2 * backoff, ACCEPT_BACKOFF_MAX)
                continue
            failures.recovered()
            backoff = ACCEPT_BACKOFF_MIN
            try:
                self._admit(connection)
            except Exception:
                _log.exception("could not admit a connection")
                connection.close()

    def _admit(self, connection: socket.socket) -> None:
        """Give `connection` a slot (closing the longest idle one if need be) and a thread."""
        slot = _Slot(connection, self._clock.monotonic())
        with self._lock:
            evicted = None
            if len(self._slots) >= self._max_connections:
                idle = [other for other in self._slots.values() if not other.is_busy]
                evicted = min(idle, key=lambda other: other.last_active, default=None)
                if evicted is not None:
                    evicted.is_evicted = True
                    del self._slots[evicted.connection]
            crowded = len(self._slots) >= self._max_connections
            if not crowded:
                self._slots[connection] = slot
        if evicted is not None:
            _log.info("closing the connection idle the longest to admit a new one (all {} slots taken)",
                      self._max_connections)
            _shut(evicted.connection)  # its thread wakes up, finds the end and closes it
        if crowded:
            self._refuse(connection, "TooManyConnections",
                         f"the daemon serves at most {self._max_connections} connections, all busy")
            return
        try:
            self._start_thread(self._serve, slot, name=f"gateway-conn-{next(self._thread_numbers)}")
        except Exception as error:  # RuntimeError("can't start new thread"), MemoryError
            with self._lock:
                self._slots.pop(connection, None)
            self._thread_failures.failed(error)
            self._refuse(connection, type(error).__name__, f"the daemon cannot serve a connection now: {error}")
            return
        self._thread_failures.recovered()

    def _start_thread(self, target: Callable[..., Any], *args: Any, name: str) -> threading.Thread:
        """Where the gateway starts its threads (a seam: tests make it fail)."""
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        return thread

    def _refuse(self, connection: socket.socket, error_type: str, message: str) -> None:
        """One error reply (nil id) and close; never blocks (a fresh socket's buffer is empty)."""
        try:
            connection.setblocking(False)
            connection.send(encode(error_reply(None, error_type, message)))
        except OSError:
            pass
        connection.close()

    def _serve(self, slot: _Slot) -> None:
        connection = slot.connection
        with self._lock:
            self._threads.add(threading.current_thread())  # for stop() to join
        try:
            peer = peer_of(connection)
            log = _log.bind(peer_pid=peer.pid)
            if peer.uid != os.geteuid():
                log.warning("refused a peer of uid {} (the daemon runs as {})", peer.uid, os.geteuid())
                self._refuse(connection, "PermissionError", f"peer uid {peer.uid} is not the daemon's uid")
                return
            self._serve_peer(slot, peer, log)
        except OSError:
            pass  # the peer vanished; nothing of its calls is left half done in an actor
        except Exception:
            _log.exception("connection failed")
        finally:
            connection.close()
            with self._lock:
                if self._slots.get(connection) is slot:
                    del self._slots[connection]
                self._threads.discard(threading.current_thread())

    def _serve_peer(self, slot: _Slot, peer: Peer, log: Any) -> None:
        connection = slot.connection
        reader = FrameReader()
        # Wake twice a second to notice a stop or a stalled frame; a peer that stops reading
        # our replies for SEND_TIMEOUT is treated as gone.
        set_kernel_timeouts(connection, receive=CONNECTION_WAKE, send=SEND_TIMEOUT)
        lock, monotonic, answer = self._lock, self._clock.monotonic, self._answer  # once, not per request
        while not self._stopping.is_set():
            try:
                data = connection.recv(65536)
            except (BlockingIOError, TimeoutError):
                if self._frame_is_overdue(slot, log):
                    return
                continue
            if not data:
                return
            reader.feed(data)
            served = False
            try:
                for frame in reader.frames():
                    if type(frame) is dict and frame.get("op") == FOLLOW_OP:
                        self._follow(slot, frame, log)
                        return  # the stream ends only with the connection
                    with lock:
                        if slot.is_evicted:
                            return
                        slot.is_busy = True
                    try:
                        if not answer(connection, frame, peer, log):
                            return
                    finally:
                        # In this order: whoever picks a connection to close sees it busy or
                        # just active, never idle since long ago.
                        slot.last_active = monotonic()
                        slot.is_busy = False
                    served = True
            except FrameError as error:
                log.warning("closing a connection after a bad frame: {}", error)
                connection.sendall(encode(error_reply(None, "FrameError", str(error))))
                return
            if not reader.has_partial:
                slot.partial_since = None
            elif served or slot.partial_since is None:
                slot.partial_since = monotonic()
            elif self._frame_is_overdue(slot, log):  # a byte now and then does not keep a frame alive
                return

    def _follow(self, slot: _Slot, frame: dict[str, Any], log: Any) -> None:
        """`events.follow(kinds=None)`: answer "following", then stream events until the peer closes.

        The stream reads from a bounded subscription of its own: an emitter never waits for
        this connection; a peer that reads too slowly loses the oldest events, and the next
        frame it gets says how many (`{"dropped": n}`). A follower counts as idle for the
        slot reclaiming (it never blocks the admission of new connections).
        """
        connection = slot.connection
        request_id = frame.get("id")
        if type(request_id) is not int:
            connection.sendall(encode(error_reply(None, "FrameError", "a request is a map with an int 'id'")))
            return
        try:
            kinds = _follow_kinds(frame.get("args") or [], frame.get("kwargs") or {})
        except ClientError as error:
            connection.sendall(encode(error_reply(request_id, error)))
            return
        with subscribe(kinds=kinds, maxlen=FOLLOW_BUFFER) as events:
            connection.sendall(encode(ok_reply(request_id, "following")))
            log.debug("peer follows events ({})", "all kinds" if kinds is None else ", ".join(sorted(kinds)))
            # Blocked in sendall only while the peer's socket buffer is full; stop() and
            # eviction shut the connection, which ends that wait.
            set_kernel_timeouts(connection, receive=None, send=None)
            reported = 0
            while not self._stopping.is_set() and not slot.is_evicted:
                try:
                    batch = [events.get(timeout=CONNECTION_WAKE)]
                except TimeoutError:
                    batch = []
                if _has_closed(connection):
                    return
                batch.extend(events.drain())
                frames = []
                dropped = events.dropped
                if dropped > reported:
                    frames.append(encode({"dropped": dropped - reported}))
                    reported = dropped
                frames.extend(_encode_event(event) for event in batch)
                if frames:
                    connection.sendall(b"".join(frames))
                    slot.last_active = self._clock.monotonic()

    def _frame_is_overdue(self, slot: _Slot, log: Any) -> bool:
        """True (after telling the peer) when its partial frame began more than frame_timeout ago."""
        if slot.partial_since is None or self._clock.monotonic() - slot.partial_since <= self._frame_timeout:
            return False
        log.warning("closing a connection that held a partial frame for more than {}s", self._frame_timeout)
        message = f"no whole frame within {self._frame_timeout}s"
        slot.connection.sendall(encode(error_reply(None, "FrameTimeout", message)))
        return True

    def _answer(self, connection: socket.socket, frame: Any, peer: Peer, log: Any) -> bool:
        """Dispatch one request and send its reply; False when the connection must close."""
        request_id = frame.get("id") if isinstance(frame, dict) else None
        if not isinstance(frame, dict) or type(request_id) is not int:
            connection.sendall(encode(error_reply(None, "FrameError", "a request is a map with an int 'id'")))
            return False
        accepted: _Accepted | None = None
        try:
            reply = ok_reply(request_id, self._dispatch(frame, peer))
        except _Accepted as acceptance:
            accepted = acceptance
            reply = ok_reply(request_id, "accepted")
        except ClientError as error:
            reply = error_reply(request_id, error)
        except pykka.Timeout:
            reply = error_reply(request_id, "Timeout", f"no answer within {self._call_timeout}s")
        except OSError as error:  # storage refusing, a fleet store away, out of descriptors: one line
            log.warning("request {} failed: {!r}", frame.get("op"), error)
            reply = error_reply(request_id, error)
        except Exception as error:  # out of memory or threads, a bug: an error reply, with the traceback
            log.opt(exception=error).warning("request {} failed", frame.get("op"))
            reply = error_reply(request_id, error)
        try:
            payload = encode(reply)
        except (FrameError, TypeError, ValueError) as error:
            payload = _encode_fallback(request_id, reply, error)
        connection.sendall(payload)
        if accepted is not None:
            self._run_accepted(accepted)
        return True

    def _run_accepted(self, accepted: _Accepted) -> None:
        def act() -> None:
            try:
                accepted.action()
            except Exception:
                # Already answered "accepted": a failure must not pass silently.
                _log.exception("accepted lifecycle request failed: {}", accepted.what)

        try:
            self._start_thread(act, name="gateway-lifecycle")
        except Exception as error:
            # Never dropped: act on this connection's thread instead (it may end its caller).
            _log.warning("no thread for {} ({}); acting on the connection's thread", accepted.what, error)
            act()

    # -- dispatch -----------------------------------------------------------------------------------

    def _dispatch(self, frame: dict[str, Any], peer: Peer) -> Any:
        op = frame.get("op")
        args = frame.get("args")
        kwargs = frame.get("kwargs")
        if not isinstance(op, str):
            raise BadCall("'op' must be a str")
        if args is None:
            args = []
        if kwargs is None:
            kwargs = {}
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise BadCall("'args' must be a list and 'kwargs' a map with str keys")
        if args or kwargs:  # a call without arguments needs no deeper look
            if not all(isinstance(k, str) for k in kwargs):
                raise BadCall("'args' must be a list and 'kwargs' a map with str keys")
            if nesting_depth([args, kwargs], limit=MAX_NESTING) > MAX_NESTING:
                raise BadCall(f"arguments nested deeper than {MAX_NESTING} levels")
        elif op == "names.pool_stats":
            published = self._published_name_stats()
            if published is not None:
                seen, copy = self._stats_copy
                if published is not seen:  # the pool publishes a new mapping when they change
                    copy = dict(published)
                    self._stats_copy = (published, copy)
                return copy
        service, _, method = op.partition(".")
        if service == "names" and method in NAME_METHODS:
            return self._call_names(method, args, kwargs, peer)
        if service == "locks" and method in LOCK_METHODS:
            return self._call_lock(method, args, kwargs, peer)
        if service == "agents" and method in AGENT_METHODS:
            return self._call(self.tree.agents, method, args, kwargs)
        if service == "tree" and method in TREE_METHODS:
            handler = getattr(self, f"_tree_{method}")
            try:
                inspect.signature(handler).bind(peer, *args, **kwargs)
            except TypeError as error:
                raise BadCall(f"{op}: {error}") from None
            return handler(peer, *args, **kwargs)
        raise UnknownMessage(f"unknown op {describe(op)}")

    def _published_name_stats(self) -> Any:
        """The name pool's published stats: no message hop, like a Handle resolving."""
        ref = self.tree.names.current()
        actor = ref._actor_weakref() if ref is not None else None
        return getattr(actor, "_published_stats", None)

    def _call_names(self, method: str, args: list[Any], kwargs: dict[str, Any], peer: Peer) -> Any:
        """`names.*` for the peer only: the pool checks the owner and acts in one handler."""
        if method in UNSERVED_NAME_METHODS:
            raise UnknownMessage(f"names.{method} is an operator's act and is not served on the socket")
        ancestors = _ancestors(peer.pid) if method == "associate_name" else ()
        spawned_as = spawned_name((peer.pid, *ancestors)) if method == "associate_name" else None
        call = PeerCall(peer.pid, method, tuple(args), dict(kwargs), ancestors, spawned_as)
        return self.tree.names.ask(call, timeout=self._call_timeout)

    def _call(self, target: Handle | pykka.ActorRef[Any], method: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        return ask_method(target, method, args, kwargs, timeout=self._call_timeout)

    def _call_lock(self, method: str, args: list[Any], kwargs: dict[str, Any], peer: Peer) -> Any:
        if args:
            worker_dir, args = args[0], args[1:]
        elif "worker_dir" in kwargs:
            kwargs = dict(kwargs)
            worker_dir = kwargs.pop("worker_dir")
        else:
            raise BadCall(f"locks.{method} takes the worker directory as its first argument")
        if not isinstance(worker_dir, str):
            raise BadCall(f"worker directory must be a str, not {type(worker_dir).__name__}")
        if not os.path.isabs(worker_dir):
            # Relative to what? Not the daemon's own working directory.
            raise BadCall(f"locks.{method}: the worker directory must be an absolute path, not {describe(worker_dir)}")
        position = LOCK_METHODS[method]
        if position is not None:
            explicit = args[position] if len(args) > position else kwargs.get("owner")
            if explicit is not None and explicit != peer.pid:
                raise NotPermitted(f"locks.{method}: a worker acts only for itself (pid {peer.pid}), not for {describe(explicit)}")
            args, kwargs = _default_owner(args, kwargs, position, peer.pid, force=True)
        # One entry point on the lock supervisor: it starts a lock actor only to acquire or
        # release, and answers reads of a directory without one from the files.
        result = self._call(self.tree.locks, "call_lock", [worker_dir, method, list(args), kwargs], {})
        if method in LOGGED_LOCK_METHODS:
            self._log_lock(peer, LOGGED_LOCK_METHODS[method], worker_dir)
        return result

    def _log_lock(self, peer: Peer, what: str, worker_dir: str) -> None:
        """INFO with the peer's pid and name (CONTRACT §3): which worker took or left which lock."""
        try:
            name = self.tree.names.ask(PeerCall(peer.pid, "get_name_by_pid", (), {}, ()), timeout=self._call_timeout)
        except Exception:  # the name pool restarting: the record still names the pid
            name = None
        _log.bind(agent_name=name, pid=peer.pid, worker_dir=worker_dir).info(
            "pid {} ({}) {} the lock of {} over the socket", peer.pid, name or "no name", what, worker_dir
        )

    # -- tree.* ---------------------------------------------------------------------------------------

    def _tree_which_children(self, peer: Peer) -> Any:
        return self.tree.supervisor.proxy().which_children().get(timeout=self._call_timeout)

    def _tree_status(self, peer: Peer) -> Any:
        if self._status is not None:
            return self._status()
        return collect_status(self.tree, timeout=self._call_timeout)

    def _tree_shutdown(self, peer: Peer) -> Any:
        if self._on_shutdown is None:
            raise UnknownMessage("tree.shutdown is served by the daemon")
        raise _Accepted(self._on_shutdown, "shutdown")

    def _tree_terminate_child(self, peer: Peer, path: Any = None) -> Any:
        supervisor, child_id = self._parent_of(path)
        if self._is_peer_child(supervisor, child_id, peer):
            terminate = lambda: ask_method(supervisor, "terminate_child", [child_id], timeout=None)  # noqa: E731
            raise _Accepted(terminate, f"terminate_child {path}")
        ask_method(supervisor, "terminate_child", [child_id], timeout=self._call_timeout)
        return None

    def _tree_restart_child(self, peer: Peer, path: Any = None) -> Any:
        supervisor, child_id = self._parent_of(path)

        def cycle(timeout: float | None = None) -> str:
            ask_method(supervisor, "terminate_child", [child_id], timeout=timeout)
            ref = ask_method(supervisor, "restart_child", [child_id], timeout=timeout)
            return ref.actor_urn

        if self._is_peer_child(supervisor, child_id, peer):
            raise _Accepted(cycle, f"restart_child {path}")
        return cycle(self._call_timeout)

    def _parent_of(self, path: Any) -> tuple[pykka.ActorRef[Any], str]:
        if not isinstance(path, str) or not path or path.startswith("/") or "//" in path:
            raise BadCall(f"a child path is a str like 'names' or 'locks/<id>', not {describe(path)}")
        parent_path, _, child_id = path.rpartition("/")
        if not parent_path:
            return self.tree.supervisor, child_id
        parent = Handle(self.tree.supervisor, parent_path).ref(timeout=self._call_timeout)
        if not getattr(parent.actor_class, "is_supervisor", False):
            raise ChildNotFound(f"{parent_path!r} is not a supervisor, so {path!r} does not exist")
        return parent, child_id

    def _is_peer_child(self, supervisor: pykka.ActorRef[Any], child_id: str, peer: Peer) -> bool:
        """True when the child runs the calling process (so it must be answered first)."""
        ref = ask_method(supervisor, "whereis", [child_id], timeout=self._call_timeout)
        if ref is None or not hasattr(ref.actor_class, "process_pid"):
            return False
        try:
            process_pid = ask_method(ref, "process_pid", timeout=self._call_timeout)
        except pykka.ActorDeadError:
            return False
        return process_pid is not None and _runs_under(peer.pid, process_pid)


def _follow_kinds(args: list[Any], kwargs: dict[str, Any]) -> frozenset[str] | None:
    """The `kinds` argument of `events.follow`: nil (every kind) or a list of str."""
    if not isinstance(args, list) or not isinstance(kwargs, dict) or set(kwargs) - {"kinds"} or len(args) > 1 or (
        args and "kinds" in kwargs
    ):
        raise BadCall("events.follow takes one argument, kinds (a list of event kinds, or nil for all)")
    kinds = args[0] if args else kwargs.get("kinds")
    if kinds is None:
        return None
    if not isinstance(kinds, list) or not all(isinstance(kind, str) for kind in kinds):
        raise BadCall(f"events.follow: kinds must be a list of str or nil, not {describe(kinds)}")
    return frozenset(kinds)


def _encode_event(event: Any) -> bytes:
    fields = {"seq": event.seq, "time": event.time, "kind": event.kind, "path": event.path, "name": event.name,
              "data": event.data}
    try:
        return encode({"event": fields})
    except (FrameError, TypeError, ValueError) as error:  # data that cannot cross: say so, keep the rest
        return encode({"event": {**fields, "data": {"unencodable": str(error)[:200]}}})


def _has_closed(connection: socket.socket) -> bool:
    """True when the peer closed (or reset) the connection; what it sends meanwhile is ignored."""
    try:
        return connection.recv(65536, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _encode_fallback(request_id: int, reply: dict[str, Any], error: Exception) -> bytes:
    """A reply that cannot be sent as is: keep an error's type with a shortened message."""
    failure = reply.get("error")
    if isinstance(failure, dict):
        message = str(failure.get("message", ""))
        return encode(error_reply(request_id, str(failure.get("type")), message[:1000] + " [truncated]"))
    return encode(error_reply(request_id, "EncodeError", str(error)))


def _runs_under(pid: int, ancestor: int) -> bool:
    """True when `pid` is `ancestor` or one of its descendants (e.g. a shell its agent spawned)."""
    if pid == ancestor:
        return True
    try:
        return any(parent.pid == ancestor for parent in psutil.Process(pid).parents())
    except psutil.Error:
        return False


def _ancestors(pid: int) -> tuple[int, ...]:
    """The pids of `pid`'s ancestor processes (nearest first); empty if they cannot be read."""
    try:
        return tuple(parent.pid for parent in psutil.Process(pid).parents())
    except (psutil.Error, OSError):
        return ()


def _default_owner(
    args: list[Any], kwargs: dict[str, Any], position: int | None, pid: int, *, force: bool = False
) -> tuple[list[Any], dict[str, Any]]:
    """Fill in `owner` with the peer's pid where it is omitted or nil (always, with `force`)."""
    if position is None:
        return args, kwargs
    if len(args) > position:
        if force or args[position] is None:
            args = [*args[:position], pid, *args[position + 1 :]]
        return args, kwargs
    if force or kwargs.get("owner") is None:
        kwargs = {**kwargs, "owner": pid}
    return args, kwargs

