"""Worker identity locks as actors: `WorkerLock` per worker directory, `LockSupervisor` over them.

Both are thin shells around the plain core `LockFile` (`actors.locks._lock_file`), which keeps
the record, the guard `flock` and the staleness verdict; the actors add the calling
process as the default owner, the periodic owner check on the injected clock, and
supervision::

    locks = LockSupervisor.start(root="/srv/workers")
    lock = locks.proxy().lock_for("rust-1").get()        # one WorkerLock per directory
    lock.proxy().acquire("%4").get()                      # Locked if another live owner holds it
    lock.proxy().status().get()                           # "locked by pid 4242 (session %4)"
    lock.proxy().release().get()
    locks.stop()

A `WorkerLock` keeps nothing in memory that matters: the record on disk decides, so a
restarted lock carries on where the old one stopped, and a lock that holds nothing keeps
no file descriptor open.
"""

from __future__ import annotations

import errno
import math
import os
from dataclasses import dataclass
from typing import Any, NoReturn

import pykka

from actors._errors import InvalidOwner, InvalidWorkerDir
from actors.locks._lock_file import LockFile, LockInfo, own_identity
from supervision import (
    BadCall,
    ChildSpec,
    ClientError,
    Clock,
    DeferredReply,
    Restart,
    Strategy,
    SupervisedActor,
    Supervisor,
    SystemClock,
    Timer,
    UnknownMessage,
    send_interval,
)
from supervision._errors import describe

__all__ = ["InvalidWorkerDir", "LockSupervisor", "WorkerLock", "lock_child_id"]


# Errors of the path the caller named, not of this process: answered, never a crash (a
# caller naming an unwritable directory must not crash-loop the lock subtree).
_PATH_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EROFS}
)


def _raise_for_path(error: OSError, worker_dir: str) -> NoReturn:
    """Re-raise `error`, as `InvalidWorkerDir` when it is the named path's fault."""
    if error.errno in _PATH_ERRNOS:
        raise InvalidWorkerDir(f"cannot use worker directory {worker_dir}: {error}") from error
    raise error  # ENOSPC, EIO, ...: the machine's trouble, a crash


@dataclass(frozen=True, slots=True)
class _Check:
    """The periodic owner check a `WorkerLock` sends itself."""


_CHECK = _Check()  # one shared instance: a thousand locks need no thousand ticks

def _owner_and_start_time(owner: object) -> tuple[Any, float | None]:
    """The owner pid to act for (default: this process) and its start time if known cheaply.

    This process's start time is cached (`own_identity`), so in-process callers (the
    default owner) cost no /proc read per call.
    """
    pid, start_time = own_identity()
    if owner is None:
        return pid, start_time
    if type(owner) is int and owner == pid:
        return pid, start_time
    if not isinstance(owner, int) or isinstance(owner, bool):
        raise InvalidOwner(f"owner must be an int pid or None, not {type(owner).__name__}")
    return owner, None  # the core looks its start time up (acquire) or needs none


def _check_interval(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"check_interval must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"check_interval must be a finite number of seconds > 0, got {value!r}")
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


class WorkerLock(SupervisedActor):
    """The identity lock of one worker directory (`<worker_dir>/.runtime/agent.lock`).

    `WorkerLock.start(worker_dir, *, clock=None, check_interval=5.0)`. Owners are pids;
    an omitted owner is the calling process. Every `check_interval` seconds on `clock` it
    removes the record of an owner that died. Errors are `ClientError`s (`Locked`,
    `NotLocked`, `InvalidLock`, `InvalidOwner`, `InvalidWorkerDir`): the caller gets them
    and the lock keeps running. `LockSupervisor.lock_for` hands out one per directory.
    """

    def __init__(
        self,
        worker_dir: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        check_interval: float = 5.0,
    ) -> None:
        path = _worker_dir_text(worker_dir)
        self._check_interval = _check_interval(check_interval)
        self._clock: Clock = clock if clock is not None else SystemClock()
        super().__init__()
        self._lock_file = LockFile(path, wall_time=self._clock.time)
        self._timer: Timer | None = None
        self._tick_problem: str | None = None

    def on_start(self) -> None:
        self._timer = send_interval(self.actor_ref, _CHECK, self._check_interval, self._clock)

    def on_stop(self) -> None:
        self._cancel_timer()
        try:
            self._lock_file.discard_spare()
        except (OSError, ClientError) as error:  # a lock left as it is; nothing to undo
            self._log.debug("kept the spare lock file of {}: {}", self._lock_file.worker_dir, error)

    def on_failure(self, *exc_info: Any) -> None:
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the proxy methods --------------------------------------------------------------

    def acquire(self, session_id: str = "", owner: int | None = None) -> LockInfo:
        """Take the lock for `owner` (default: the calling process) and return the record.

        The same owner again refreshes it; a stale record is taken over. Raises `Locked`
        (naming the holder's pid and session) while another live owner holds it.
        """
        owner_pid, start_time = _owner_and_start_time(owner)
        try:
            return self._lock_file.acquire(owner_pid, session_id, owner_start_time=start_time)
        except OSError as error:
            _raise_for_path(error, self._lock_file.worker_dir)

    def release(self, owner: int | None = None) -> None:
        """Remove the record: without `owner`, any live owner's on this host; with it, only its own.

        Raises `NotLocked` when nobody alive holds it (a stale record is removed), `Locked`
        for another owner's or another host's record, `InvalidLock` for a corrupt one.
        """
        try:
            if owner is None:
                self._lock_file.release()
            else:
                owner_pid, start_time = _owner_and_start_time(owner)
                self._lock_file.release(owner_pid, owner_start_time=start_time)
        except OSError as error:
            _raise_for_path(error, self._lock_file.worker_dir)

    def read(self) -> LockInfo | None:
        """The record on disk (held, stale or another host's), or None. `InvalidLock` if corrupt."""
        try:
            return self._lock_file.read()
        except OSError as error:
            _raise_for_path(error, self._lock_file.worker_dir)

    def check(self, owner: int | None = None) -> None:
        """Raise `Locked` if a live owner other than `owner` (default: the caller) holds the lock."""
        owner_pid, start_time = _owner_and_start_time(owner)
        try:
            self._lock_file.check(owner_pid, owner_start_time=start_time)
        except OSError as error:
            _raise_for_path(error, self._lock_file.worker_dir)

    def status(self) -> str:
        """One line, never raising: `unlocked`, `locked by pid P (session S)`, `stale (...)`,
        `held on host H` or `corrupt (PATH)`."""
        return self._lock_file.status()

    def force_release(self) -> None:
        """Remove any record, another host's or a corrupt one included (an operator's act)."""
        try:
            self._lock_file.force_release()
        except OSError as error:
            _raise_for_path(error, self._lock_file.worker_dir)

    # -- internals -----------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Check):
            self._release_if_owner_died()
            return None
        raise UnknownMessage(f"WorkerLock does not handle {message!r}")

    def _release_if_owner_died(self) -> None:
        # Decided here, in the tick's handler, so the next ask already sees the release.
        try:
            verdict = self._lock_file.release_if_stale()
        except OSError as error:
            # Crashing would not mend a filesystem fault; the core reports lock problems
            # once, and so do we, and the next tick tries again.
            self._report_tick_problem(str(error))
            return
        self._tick_problem = None
        if verdict is None:
            return
        if verdict.info is None:
            self._log.info("released the lock of {}: {}", self._lock_file.worker_dir, verdict.reason)
        else:
            self._log.info(
                "released the lock of {}: owner pid {} (session {}) is dead ({})",
                self._lock_file.worker_dir,
                verdict.info.pid,
                verdict.info.session_id,
                verdict.reason,
            )

    def _report_tick_problem(self, problem: str) -> None:
        if problem != self._tick_problem:
            self._tick_problem = problem
            self._log.warning("owner check of {} failed, will retry: {}", self._lock_file.worker_dir, problem)


class LockSupervisor(Supervisor):
    """A one_for_one supervisor of one `WorkerLock` per worker directory, started on demand.

    `LockSupervisor.start(*, root=None, clock=None, check_interval=5.0, max_restarts=3,
    max_seconds=5.0)`. Each lock's child id is `lock_child_id(resolved directory)`, so
    `Handle(locks_ref, lock_child_id(path))` reaches it across restarts. When this
    supervisor restarts, its locks are not recreated: `lock_for` starts them again on
    demand, and they re-read their records.
    """

    def __init__(
        self,
        *,
        root: str | os.PathLike[str] | None = None,
        clock: Clock | None = None,
        check_interval: float = 5.0,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
    ) -> None:
        self._check_interval = _check_interval(check_interval)
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

    def _resolve(self, worker_dir: object) -> str:
        path = _worker_dir_text(worker_dir)
        base = self._root if self._root is not None else os.getcwd()
        try:
            resolved = os.path.realpath(os.path.join(base, path))
        except OSError as error:
            _raise_for_path(error, path)
        if self._root is not None and os.path.commonpath([self._root, resolved]) != self._root:
            raise InvalidWorkerDir(f"worker directory {path!r} ({resolved}) is outside {self._root}")
        return resolved

    def _lock_for_path(self, worker_dir: str, reply: DeferredReply | None) -> Any:
        child_id = lock_child_id(worker_dir)
        record = self._records.get(child_id)
        if record is None:
            spec = ChildSpec(
                child_id,
                WorkerLock,
                args=(worker_dir,),
                kwargs={"clock": self._clock, "check_interval": self._check_interval},
                restart=Restart.PERMANENT,
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
    """`result` as the handler's return value, or settled into `reply` for a deferred call."""
    if reply is None:
        return result
    if isinstance(result, pykka.Future):
        try:
            reply.set(result.get(timeout=0))
        except Exception:
            reply.set_exception()
    else:
        reply.set(result)
    return reply
