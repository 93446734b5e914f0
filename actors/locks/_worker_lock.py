"""Worker identity locks as actors: `WorkerLock` per worker directory, `LockSupervisor` over them.

Both are thin shells around the plain core `LockFile` (`actors.locks._lock_file`), which keeps
the record, the guard `flock` and the staleness verdict; the actors add the calling
process as the default owner, the periodic owner check on the injected clock, retirement
of idle locks, and supervision::

    locks = LockSupervisor.start(root="/srv/workers")
    lock = locks.proxy().lock_for("rust-1").get()        # one WorkerLock per directory
    lock.proxy().acquire("%4").get()                      # Locked if another live owner holds it
    lock.proxy().status().get()                           # "locked by pid 4242 (session %4)"
    lock.proxy().release().get()
    locks.proxy().call_lock("/srv/workers/rust-2", "status", [], {}).get()   # no actor started
    locks.stop()

A `WorkerLock` keeps nothing in memory that matters: the record on disk decides, so a
restarted lock carries on where the old one stopped, a retired one is simply started
again, and a lock that holds nothing keeps no file descriptor open.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka
from pykka import messages as pykka_messages
from pykka._envelope import Envelope

from actors._errors import InvalidOwner, InvalidWorkerDir, TooManyLocks
from actors._process import ProcessIdentity
from actors.locks._lock_file import LockFile, LockInfo, LockState, own_identity
from supervision import (
    BadCall,
    ChildSpec,
    ClientError,
    Clock,
    DeferredReply,
    Restart,
    StartError,
    Strategy,
    SupervisedActor,
    Supervisor,
    SystemClock,
    Timer,
    Undelivered,
    UnknownMessage,
    send_after,
    send_interval,
)
from supervision import _events
from supervision._errors import describe

__all__ = ["LOCK_OPERATIONS", "InvalidWorkerDir", "LockSupervisor", "WorkerLock", "lock_child_id"]


@dataclass(frozen=True, slots=True)
class _Check:
    """The periodic owner check a `WorkerLock` sends itself."""


@dataclass(frozen=True, slots=True)
class _Retire:
    """A `WorkerLock`'s look at whether it has been idle for `idle_retire` seconds."""


_CHECK = _Check()  # shared instances: a thousand locks need no thousand messages
_RETIRE = _Retire()


def _owner(owner: object) -> int | ProcessIdentity:
    """The owner to act for: this process (its cached identity) when None; else the pid."""
    if owner is None or (type(owner) is int and owner == os.getpid()):
        return own_identity() or os.getpid()
    if not isinstance(owner, int) or isinstance(owner, bool):
        raise InvalidOwner(f"owner must be an int pid or None, not {type(owner).__name__}")
    return owner  # the core validates the range


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def _worker_dir_text(worker_dir: object) -> str:
    """`worker_dir` as a non-empty str path; BadCall (a TypeError) / InvalidWorkerDir otherwise."""
    if not isinstance(worker_dir, str | os.PathLike):
        raise BadCall(f"worker_dir must be a str or os.PathLike, not {type(worker_dir).__name__}")
    path = os.fspath(worker_dir)
    if not isinstance(path, str):
        raise BadCall(f"worker_dir must be a str path, not {type(path).__name__}")
    if not path or "\0" in path:
        raise InvalidWorkerDir(f"invalid worker directory {describe(path)}")
    try:
        os.fsencode(path)  # a lone surrogate cannot reach the OS: refuse it here, not crash there
    except UnicodeEncodeError:
        raise InvalidWorkerDir(f"worker directory {describe(path)} cannot be encoded for the filesystem") from None
    return path


def lock_child_id(worker_dir: str) -> str:
    """The `LockSupervisor` child id of a resolved absolute directory: `%` as `%25`, `/` as `%2F`."""
    return worker_dir.replace("%", "%25").replace("/", "%2F")


# The read-only operations, shared by `WorkerLock` and `LockSupervisor.call_lock` (which
# answers them from the files when no lock actor is live).


def _holder(info: LockInfo | None) -> dict[str, Any] | None:
    """Who held a record, for an event's data."""
    if info is None:
        return None
    return {"pid": info.pid, "session_id": info.session_id, "hostname": info.hostname}


def _read(lock_file: LockFile) -> LockInfo | None:
    return lock_file.read()


def _check(lock_file: LockFile, owner: int | None = None) -> None:
    lock_file.check(_owner(owner))


def _status(lock_file: LockFile) -> str:
    return lock_file.status()


_READ_ONLY: dict[str, Callable[..., Any]] = {"read": _read, "check": _check, "status": _status}
#: What `call_lock` serves: every WorkerLock method but force_release (an operator's act).
LOCK_OPERATIONS = frozenset({"acquire", "release", *_READ_ONLY})


class WorkerLock(SupervisedActor):
    """The identity lock of one worker directory (`<worker_dir>/.runtime/agent.lock`).

    `WorkerLock.start(worker_dir, *, clock=None, check_interval=5.0, idle_retire=None)`.
    Owners are pids; an omitted owner is the calling process. Every `check_interval`
    seconds on `clock` it removes the record of an owner that died. With `idle_retire`
    (as `LockSupervisor` starts it), it stops after that many seconds without a call
    while no live owner here holds the lock. Errors are `ClientError`s (`Locked`,
    `NotLocked`, `InvalidLock`, `InvalidOwner`, `InvalidWorkerDir`) or `StorageError`:
    the caller gets them and the lock keeps running.
    """

    def __init__(
        self,
        worker_dir: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        check_interval: float = 5.0,
        idle_retire: float | None = None,
    ) -> None:
        path = _worker_dir_text(worker_dir)
        self._check_interval = _seconds("check_interval", check_interval)
        self._idle_retire = None if idle_retire is None else _seconds("idle_retire", idle_retire)
        self._clock: Clock = clock if clock is not None else SystemClock()
        super().__init__()
        self._lock_file = LockFile(path, wall_time=self._clock.time)
        self._timers: list[Timer] = []
        self._last_call = 0.0
        self._tick_problem: str | None = None

    def on_start(self) -> None:
        self._last_call = self._clock.monotonic()
        self._timers.append(send_interval(self.actor_ref, _CHECK, self._check_interval, self._clock))
        if self._idle_retire is not None:
            self._look_at_retiring_in(self._idle_retire)

    def on_stop(self) -> None:
        self._cancel_timers()

    def on_failure(self, *exc_info: Any) -> None:
        self._cancel_timers()

    def _cancel_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def _start_actor_loop(self) -> None:
        # The seam where the thread is made: out of threads is a failed start (the caller
        # gets StartError), never an exception escaping into the supervisor.
        try:
            super()._start_actor_loop()
        except RuntimeError as error:
            pykka.ActorRegistry.unregister(self.actor_ref)
            raise StartError(f"no thread for the lock of {self._lock_file.worker_dir}: {error}") from error

    # -- the proxy methods --------------------------------------------------------------

    def acquire(self, session_id: str = "", owner: int | None = None) -> LockInfo:
        """Take the lock for `owner` (default: the calling process) and return the record.

        The same owner again refreshes it; a stale record is taken over. Raises `Locked`
        (naming the holder's pid and session) while another live owner holds it.
        """
        self._last_call = self._clock.monotonic()
        if not _events._subscribers:
            return self._lock_file.acquire(_owner(owner), session_id)
        try:
            before = self._lock_file.inspect()
        except (OSError, ClientError):
            before = None  # acquire says what is wrong
        info = self._lock_file.acquire(_owner(owner), session_id)
        if before is not None and before.state is LockState.STALE:
            self._emit("lock_broken", previous=_holder(before.info), reason=before.reason)
        if info.refreshed_at is None:  # taken now, not refreshed by its holder
            self._emit("lock_acquired", pid=info.pid, session_id=info.session_id)
        return info

    def release(self, owner: int | None = None) -> None:
        """Remove the record: without `owner`, any live owner's on this host; with it, only its own.

        Raises `NotLocked` when nobody alive holds it (a stale record is removed), `Locked`
        for another owner's or another host's record, `InvalidLock` for a corrupt one.
        """
        self._last_call = self._clock.monotonic()
        if not _events._subscribers:
            self._lock_file.release(None if owner is None else _owner(owner))
            return
        try:
            holder = _holder(self._lock_file.inspect().info)
        except (OSError, ClientError):
            holder = None
        self._lock_file.release(None if owner is None else _owner(owner))
        self._emit("lock_released", **(holder or {}))

    def read(self) -> LockInfo | None:
        """The record on disk (held, stale or another host's), or None. `InvalidLock` if corrupt."""
        self._last_call = self._clock.monotonic()
        return _read(self._lock_file)

    def check(self, owner: int | None = None) -> None:
        """Raise `Locked` if a live owner other than `owner` (default: the caller) holds the lock."""
        self._last_call = self._clock.monotonic()
        _check(self._lock_file, owner)

    def status(self) -> str:
        """One line, never raising: `unlocked`, `locked by pid P (session S)`, `stale (...)`,
        `held on host H`, `corrupt (PATH)` or `unusable (REASON)`."""
        self._last_call = self._clock.monotonic()
        return _status(self._lock_file)

    def force_release(self) -> None:
        """Remove any record, another host's or a corrupt one included (an operator's act)."""
        self._last_call = self._clock.monotonic()
        self._lock_file.force_release()

    # -- internals -----------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Check):
            self._release_if_owner_died()
            return None
        if isinstance(message, _Retire):
            self._retire_if_idle()
            return None
        raise UnknownMessage(f"WorkerLock does not handle {message!r}")

    def _release_if_owner_died(self) -> None:
        # Decided here, in the tick's handler, so the next ask already sees the release.
        try:
            verdict = self._lock_file.release_if_stale()
        except (OSError, ClientError) as error:
            # Crashing would not mend a filesystem fault; reported once, tried next tick.
            if str(error) != self._tick_problem:
                self._tick_problem = str(error)
                self._log.warning("owner check of {} failed, will retry: {}", self._lock_file.worker_dir, error)
            return
        self._tick_problem = None
        if verdict is not None:
            owner = "" if verdict.info is None else f"owner pid {verdict.info.pid} (session {verdict.info.session_id}): "
            self._log.info("released the lock of {}: {}{}", self._lock_file.worker_dir, owner, verdict.reason)
            self._emit("lock_broken", previous=_holder(verdict.info), reason=verdict.reason)

    def _emit(self, kind: str, **data: Any) -> None:
        """An event about this lock, at `locks/<child id>`, with its worker directory."""
        worker_dir = self._lock_file.worker_dir
        child_id = self._supervision_.child_id or lock_child_id(worker_dir)
        _events.emit(kind, f"locks/{child_id}", worker_dir=worker_dir, **data)

    def _look_at_retiring_in(self, delay: float) -> None:
        self._timers = [timer for timer in self._timers if timer.active]
        self._timers.append(send_after(self.actor_ref, _RETIRE, delay, self._clock))

    def _retire_if_idle(self) -> None:
        assert self._idle_retire is not None
        idle = self._clock.monotonic() - self._last_call
        if idle < self._idle_retire or not self.actor_inbox.empty():  # a caller is waiting
            remaining = self._idle_retire - idle
            self._look_at_retiring_in(remaining if remaining > 0 else self._idle_retire)
            return
        try:
            is_held = self._lock_file.inspect().state is LockState.HELD
        except (OSError, ClientError):
            is_held = False  # nothing to watch: a lock nobody can take needs no owner check
        if is_held:  # its owner's death must still be noticed within check_interval
            self._look_at_retiring_in(self._idle_retire)
            return
        self._log.debug("{} idle for {}s: retiring", self._lock_file.worker_dir, idle)
        # Stopped here, in the handler: a call that arrives now stays undelivered (safe to
        # resend), never handled by a lock about to go.
        self._stop()


class LockSupervisor(Supervisor):
    """A one_for_one supervisor of one `WorkerLock` per worker directory, started on demand.

    `LockSupervisor.start(*, root=None, clock=None, check_interval=5.0, max_restarts=3,
    max_seconds=5.0, idle_retire=60.0, max_locks=10_000)`. Each lock's child id is
    `lock_child_id(resolved directory)`, so `Handle(locks_ref, lock_child_id(path))`
    reaches it across restarts. Locks are transient: a crash restarts one, an idle one
    retires and is forgotten, and `lock_for` starts it again on demand (it re-reads its
    record). More than `max_locks` live locks raise `TooManyLocks`.
    """

    def __init__(
        self,
        *,
        root: str | os.PathLike[str] | None = None,
        clock: Clock | None = None,
        check_interval: float = 5.0,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        idle_retire: float = 60.0,
        max_locks: int = 10_000,
    ) -> None:
        self._check_interval = _seconds("check_interval", check_interval)
        self._idle_retire = _seconds("idle_retire", idle_retire)
        if isinstance(max_locks, bool) or not isinstance(max_locks, int):
            raise TypeError(f"max_locks must be an int, not {type(max_locks).__name__}")
        if max_locks < 1:
            raise ValueError(f"max_locks must be >= 1, got {max_locks}")
        self._max_locks = max_locks
        if root is None:
            self._root: str | None = None
        else:
            if not isinstance(root, str | os.PathLike) or not isinstance(os.fspath(root), str):
                raise TypeError(f"root must be a str or os.PathLike, not {type(root).__name__}")
            if not os.fspath(root):
                raise ValueError("root must not be empty")
            self._root = os.path.realpath(root)
        super().__init__(
            [], strategy=Strategy.ONE_FOR_ONE, max_restarts=max_restarts, max_seconds=max_seconds, clock=clock
        )
        # lock_for calls that found their lock's incarnation ended, by child id, waiting
        # for the supervisor to handle its exit notice: (worker_dir, reply).
        self._awaiting_exit: dict[str, list[tuple[str, DeferredReply]]] = {}

    def lock_for(self, worker_dir: str | os.PathLike[str]) -> pykka.ActorRef[WorkerLock]:
        """The running `WorkerLock` of `worker_dir`, started on first use.

        `a`, `a/../a` and a symlink to `a` are one worker (the real path decides). A
        relative path resolves against `root` (else the current directory); with a
        `root`, a directory outside it raises `InvalidWorkerDir`.
        """
        return self._lock_for_path(self._resolve(worker_dir), None)

    def call_lock(self, worker_dir: str, method: str, args: list[Any] | None = None,
                  kwargs: dict[str, Any] | None = None) -> Any:
        """`method(*args, **kwargs)` of `worker_dir`'s lock (the gateway's `locks.*` ops).

        Only `acquire` and `release` start a lock actor; `read`, `status` and `check` of a
        directory with no live one are answered from its files. Answers the lock's future
        (this supervisor never waits for its child). `status` of an unusable directory
        reads `unusable (REASON)`.
        """
        if method not in LOCK_OPERATIONS:
            raise BadCall(f"call_lock: {describe(method)} is not one of {sorted(LOCK_OPERATIONS)}")
        args = [] if args is None else args
        kwargs = {} if kwargs is None else kwargs
        if not isinstance(args, list | tuple) or not isinstance(kwargs, dict) or not all(
            isinstance(key, str) for key in kwargs
        ):
            raise BadCall("call_lock takes a list of arguments and a dict of keyword arguments")
        try:
            path = self._resolve(worker_dir)
        except InvalidWorkerDir as unusable:
            if method == "status":
                return f"unusable ({unusable})"
            raise
        record = self._records.get(lock_child_id(path))
        if record is not None and record.ref is not None and record.ref.is_alive():
            return _forward(record.ref, method, args, kwargs)
        if method in _READ_ONLY:
            return _answer_from_files(LockFile(path, wall_time=self._clock.time), method, args, kwargs)
        found = self._lock_for_path(path, None)
        if isinstance(found, pykka.ActorRef):
            return _forward(found, method, args, kwargs)
        reply = DeferredReply()  # the lock's start failed or its restart is pending

        def then(started: DeferredReply) -> None:
            try:
                ref = started.get(timeout=0)
            except Exception:
                reply.set_exception()
                return
            _forward(ref, method, args, kwargs, reply)

        found.add_done_callback(then)
        return reply

    def _resolve(self, worker_dir: object) -> str:
        path = _worker_dir_text(worker_dir)
        base = self._root if self._root is not None else os.getcwd()
        try:
            resolved = os.path.realpath(os.path.join(base, path))
        except OSError as error:
            raise InvalidWorkerDir(f"cannot use worker directory {path}: {error}") from error
        if self._root is not None and os.path.commonpath([self._root, resolved]) != self._root:
            raise InvalidWorkerDir(f"worker directory {path!r} ({resolved}) is outside {self._root}")
        return resolved

    def _lock_for_path(self, worker_dir: str, reply: DeferredReply | None) -> Any:
        child_id = lock_child_id(worker_dir)
        record = self._records.get(child_id)
        if record is None:
            if len(self._records) >= self._max_locks:
                error = TooManyLocks(f"{self._max_locks} lock actors are live; retry once idle ones retire")
                if reply is None:
                    raise error
                reply.set_exception((TooManyLocks, error, None))
                return reply
            spec = ChildSpec(
                child_id,
                WorkerLock,
                args=(worker_dir,),
                kwargs={"clock": self._clock, "check_interval": self._check_interval, "idle_retire": self._idle_retire},
                restart=Restart.TRANSIENT,
            )
            # A ref, or a failed future carrying StartError (which must not crash us).
            return _answer(self.start_child(spec), reply)
        ref = record.ref  # unlike whereis(): also an ended incarnation whose notice is queued
        if ref is None:
            # Stopped by hand, or a failed restart waiting for its retry: start it now
            # (the retry then finds it running).
            return _answer(self.restart_child(child_id), reply)
        if ref.is_alive():
            return _answer(ref, reply)
        # That incarnation has ended and its exit notice is on its way to our inbox:
        # answer once the notice is handled (the restart counted), never with a dead ref.
        if reply is None:
            reply = DeferredReply()
        self._awaiting_exit.setdefault(child_id, []).append((worker_dir, reply))
        return reply

    def _on_child_exit(self, exited: Any) -> None:
        super()._on_child_exit(exited)
        record = self._records.get(exited.child_id)
        if record is not None and record.ref is None and not exited.reason.is_crash:
            self._forget(exited.child_id)  # retired (or stopped by another): started afresh on demand

    def on_receive(self, message: Any) -> Any:
        result = super().on_receive(message)
        if self._awaiting_exit:
            waiting, self._awaiting_exit = self._awaiting_exit, {}
            for waiters in waiting.values():
                for worker_dir, reply in waiters:
                    self._lock_for_path(worker_dir, reply)  # waits again if still not handled
        return result

    def on_stop(self) -> None:
        self._release_waiters("stopped")
        super().on_stop()

    def on_failure(self, *exc_info: Any) -> None:
        # Before the base class cuts our deferred replies off with ActorCrashed: these calls
        # had no effect, so they are declared unhandled and a Handle resends them.
        self._release_waiters("failed")
        super().on_failure(*exc_info)

    def _release_waiters(self, how: str) -> None:
        waiting, self._awaiting_exit = self._awaiting_exit, {}
        for waiters in waiting.values():
            for _worker_dir, reply in waiters:
                reply.set_not_handled(f"{self._label} {how} before its lock was restarted")


def _answer(result: Any, reply: DeferredReply | None) -> Any:
    """`result` as the handler's return value, or settled into `reply`.

    A future (a failed start) becomes a settled `DeferredReply`: the actor loop forwards
    any other future on a thread of its own, and there may be no thread to spare.
    """
    if not isinstance(result, pykka.Future):
        if reply is None:
            return result
        reply.set(result)
        return reply
    if reply is None:
        reply = DeferredReply()
    try:
        reply.set(result.get(timeout=0))
    except Exception:
        reply.set_exception()
    return reply


def _forward(ref: pykka.ActorRef[Any], method: str, args: Any, kwargs: dict[str, Any],
             reply: DeferredReply | None = None) -> DeferredReply:
    """Ask `ref` to run `method` and answer into `reply`, without waiting for it.

    A call the lock never handled (it retired or crashed first) is answered as not
    handled, so a `Handle` on this supervisor sends it again (to a fresh lock).
    """
    reply = DeferredReply() if reply is None else reply
    asked = DeferredReply()

    def relay(answer: DeferredReply) -> None:
        try:
            reply.set(answer.get(timeout=0))
        except Undelivered as error:
            if error.reply_to is asked:
                reply.set_not_handled(f"{method}: {error}")
            else:
                reply.set_exception()
        except Exception:
            reply.set_exception()

    asked.add_done_callback(relay)
    message = pykka_messages.ProxyCall(attr_path=(method,), args=tuple(args), kwargs=dict(kwargs))
    ref.actor_inbox.put(Envelope(message, reply_to=asked))
    return reply


def _answer_from_files(lock_file: LockFile, method: str, args: Any, kwargs: dict[str, Any]) -> Any:
    operation = _READ_ONLY[method]
    try:
        inspect.signature(operation).bind(lock_file, *args, **kwargs)
    except TypeError as error:
        raise BadCall(f"{method}(): {error}") from None
    return operation(lock_file, *args, **kwargs)
