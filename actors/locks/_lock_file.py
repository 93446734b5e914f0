"""The worker identity lock on disk: a JSON record guarded by `flock` (the core of `WorkerLock`).

`<worker_dir>/.runtime/agent.lock` names the owner (pid + process start time + host +
session) and exists only while the lock is held. Every read-check-write of it happens
under `flock` on `agent.lock.flock` beside it, a guard file that is never renamed or
deleted, so the kernel arbitrates races and forgets the guard when a process dies.
Whether the lock is held is decided by the record alone, by the pure `judge`.

    lock = LockFile("/srv/workers/rust-1")
    info = lock.acquire(os.getpid(), "%4")   # Locked if another live process holds it
    lock.status()                           # "locked by pid 4242 (session %4)"
    lock.release(os.getpid())

`LockFile` holds no file descriptor between calls and is safe to share between threads;
two `LockFile` objects on one directory exclude each other like two processes do.

One acquire+release (the floor of `WorkerLock`'s cycle) is ~25 system calls and no new
inode: a release renames the record to `agent.lock.next`, and the next acquire rewrites
that file and renames it back (temp file + rename, with the temp file recycled). On ext4
without a journal, allocating an inode scans past every inode freed in the last seconds,
which made a fresh file per record cost ~15 to ~170 µs; recycling costs a few. A reader
that opened the record just before a release could see the recycled inode rewritten;
such a rewrite happens only while that inode is not the record, and each write's bytes
are unique (a `write_id` field), so readers read twice, through two opens, until both
agree (`_read_settled`), and never wait for a lock: no number of readers can hold a
writer up, nor a writer a reader. A release renames only a record with no other name (a
rename between two names of one inode does nothing). An idle worker's spare goes at the
next owner check, and when its lock actor stops.
Descriptors are not kept while the lock is held: re-checking them (`.runtime` may since
be a symlink, the guard another file) costs nearly the opens saved, a thousand held locks
would need thousands of descriptors, and a guard descriptor kept across a fork would be
shared with the child, whose flock would then not exclude ours. What needs no system call
is cached: this process's own start time (a record naming this very process is alive
without a /proc read), the formatted second of `acquired_at`, a new record's encoding
but for its time and write id, and the bytes of the last record written for this
process (released without being parsed or judged when unchanged).
"""

from __future__ import annotations

import enum
import errno
import fcntl
import json
import math
import os
import random
import reprlib
import secrets
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import TypeGuard

import psutil
from loguru import logger

from actors._errors import InvalidLock, InvalidOwner, Locked, NotLocked
from actors._process import (
    CREATE_TIME_TOLERANCE,
    is_same_process_alive,
    process_start_time,
)
from supervision import BadCall, make_private_directory

__all__ = [
    "GUARD_NAME",
    "RECORD_NAME",
    "RUNTIME_DIR_NAME",
    "LockFile",
    "LockInfo",
    "LockState",
    "Verdict",
    "encode_record",
    "judge",
    "new_write_id",
    "own_identity",
    "parse_record",
]

RUNTIME_DIR_NAME = ".runtime"
RECORD_NAME = "agent.lock"
GUARD_NAME = "agent.lock.flock"
#: Only the guard holder writes, so one fixed temporary name suffices, and a copy left by
#: a writer killed mid-write is known garbage to the next one. A release renames the
#: record back to this name, and the next acquire rewrites that file: one inode serves
#: every record of a worker (see `LockFile._write_record`).
_TEMP_NAME = "agent.lock.next"
#: Temporary names to sweep: ours, and the fresh temporary file of earlier versions.
_TEMP_NAMES = frozenset({_TEMP_NAME, "agent.lock.tmp"})
#: Prefix of the unique names a stale record is renamed to before it is deleted.
_ASIDE_PREFIX = "agent.lock.stale-"

#: A real record is ~200 bytes; anything larger than this is not one of ours.
MAX_RECORD_BYTES = 64 * 1024
MAX_SESSION_ID_LENGTH = 1024
_MAX_PID = 2**31 - 1  # pid_t

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted under our name must not hang the caller.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_GUARD_FLAGS = _READ_FLAGS | os.O_CREAT
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_REWRITE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

#: Give up on a breaking-and-rewriting race after this many rounds (only a writer that
#: ignores the guard can make us lose one).
_MAX_ATTEMPTS = 3
#: Reads of a record that keeps changing before a reader waits for the guard instead.
_SETTLING_READS = 8


@dataclass(frozen=True, slots=True)
class LockInfo:
    """The identity record of a held worker lock (the JSON fields of `agent.lock`).

    `start_time` is the owner's process creation time (epoch seconds), so a recycled pid
    is not mistaken for the owner; `acquired_at` and `refreshed_at` are RFC 3339 UTC.
    """

    pid: int
    start_time: float
    acquired_at: str
    session_id: str
    hostname: str
    refreshed_at: str | None = None


class LockState(enum.Enum):
    """What a record means: see `judge`."""

    UNLOCKED = "unlocked"  # no record
    HELD = "held"  # a live owner on this host
    STALE = "stale"  # owner dead, pid reused, or written before the current boot
    FOREIGN = "foreign"  # another host's record: held, and never broken automatically
    CORRUPT = "corrupt"  # unreadable record from this boot: refused until force_release


@dataclass(frozen=True, slots=True)
class Verdict:
    """The judgement of one record: its state, the parsed record if readable, and why."""

    state: LockState
    info: LockInfo | None = None
    reason: str = ""

    @property
    def is_held(self) -> bool:
        """True when nobody but the owner (or `force_release`) may take the lock."""
        return self.state in (LockState.HELD, LockState.FOREIGN)

    def describe(self, record_path: str) -> str:
        """The `status()` line for this verdict (`record_path` is named when corrupt)."""
        info = self.info
        if self.state is LockState.UNLOCKED:
            return "unlocked"
        if self.state is LockState.STALE:
            return "stale (from before boot)" if info is None else f"stale (dead pid {info.pid})"
        if self.state is LockState.CORRUPT or info is None:
            return f"corrupt ({record_path})"
        if self.state is LockState.FOREIGN:
            return f"held on host {info.hostname}"
        return f"locked by pid {info.pid} (session {info.session_id})"


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_pid(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_PID


def _text_field(obj: dict[str, object], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key} is {reprlib.repr(value)}, not a string")
    return value


def parse_record(data: bytes) -> LockInfo:
    """Parse the bytes of `agent.lock`; ValueError (naming the fault) unless well formed.

    Unknown keys are ignored, so a newer writer's extra fields do not corrupt the record.
    """
    if len(data) > MAX_RECORD_BYTES:
        raise ValueError(f"larger than {MAX_RECORD_BYTES} bytes")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"not JSON ({error})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"not a JSON object but {type(obj).__name__}")
    pid, start_time = obj.get("pid"), obj.get("start_time")
    if not _is_pid(pid):
        raise ValueError(f"pid is {reprlib.repr(pid)}, not a positive int")
    if not _is_number(start_time):
        raise ValueError(f"start_time is {reprlib.repr(start_time)}, not a number")
    hostname = _text_field(obj, "hostname")
    if not hostname:
        raise ValueError("hostname is empty")
    refreshed_at = obj.get("refreshed_at")
    if refreshed_at is not None and not isinstance(refreshed_at, str):
        raise ValueError(f"refreshed_at is {reprlib.repr(refreshed_at)}, not a string")
    return LockInfo(
        pid=pid,
        start_time=float(start_time),
        acquired_at=_text_field(obj, "acquired_at"),
        session_id=_text_field(obj, "session_id"),
        hostname=hostname,
        refreshed_at=refreshed_at,
    )


# Built once: `json.dumps` with non-default options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False)


def encode_record(info: LockInfo, write_id: str | None = None) -> bytes:
    """The bytes of `agent.lock` for `info` (one line of ASCII JSON).

    A `write_id` (`new_write_id`) makes the bytes of each write unique, even of two
    records with the same fields, so that a reader can tell two versions apart (see
    `LockFile._read_settled`); `parse_record` ignores it.
    """
    fields: dict[str, object] = {
        "pid": info.pid,
        "start_time": info.start_time,
        "acquired_at": info.acquired_at,
        "session_id": info.session_id,
        "hostname": info.hostname,
        "refreshed_at": info.refreshed_at,
    }
    if write_id is not None:
        fields["write_id"] = write_id
    return (_ENCODER.encode(fields) + "\n").encode("ascii")


def new_write_id() -> str:
    """An id no other write of a record has (64 random bits, as 16 hex digits).

    Random rather than counted: ids of two writes then share no digits by design, so no
    mix of two of them is a third. `random` reseeds in a forked child, so parent and
    child draw apart.
    """
    return f"{random.getrandbits(64):016x}"


def _record_template(
    pid: int, start_time: float, session_id: str, hostname: str
) -> tuple[bytes, bytes, bytes]:
    """(head, middle, tail): `head + acquired_at + middle + write_id + tail` is
    `encode_record` of a new record with that `write_id`.

    Only for an `acquired_at` and a `write_id` that JSON leaves as they are (those of
    `_rfc3339` and `new_write_id`): a lock actor encodes the same owner again and again,
    and only the time and the id move.
    """
    head = f'{{"pid": {_ENCODER.encode(pid)}, "start_time": {_ENCODER.encode(start_time)}, "acquired_at": "'
    middle = (
        f'", "session_id": {_ENCODER.encode(session_id)}, "hostname": {_ENCODER.encode(hostname)}, '
        '"refreshed_at": null, "write_id": "'
    )
    return head.encode("ascii"), middle.encode("ascii"), b'"}\n'


# (pid, start time) of this process. Keyed by pid, so a forked child looks itself up afresh.
_own_identity: tuple[int, float | None] = (0, None)


def own_identity() -> tuple[int, float | None]:
    """(pid, start time) of the calling process; the start time is read from /proc once.

    Start time None only if the lookup failed (it is then retried on the next call).
    """
    global _own_identity
    pid = os.getpid()
    identity = _own_identity
    if identity[0] != pid or identity[1] is None:
        identity = _own_identity = (pid, process_start_time(pid))
    return identity


def _start_time_of(pid: int) -> float | None:
    """`process_start_time(pid)`, without the /proc read when `pid` is this process."""
    own_pid, own_start_time = own_identity()
    if pid == own_pid and own_start_time is not None:
        return own_start_time
    return process_start_time(pid)


def _is_alive(pid: int, start_time: float) -> bool:
    """`is_same_process_alive`, answered without /proc for a record naming this process.

    The process running this code is alive by definition, and its start time cannot have
    changed since `own_identity` read it: the answer is the one /proc would give.
    """
    own_pid, own_start_time = own_identity()
    if (
        pid == own_pid
        and own_start_time is not None
        and abs(start_time - own_start_time) <= CREATE_TIME_TOLERANCE
    ):
        return True
    return is_same_process_alive(pid, start_time)


def judge(
    record: bytes | None,
    *,
    mtime: float,
    boot_time: float,
    this_host: str,
    is_alive: Callable[[int, float], bool] = is_same_process_alive,
) -> Verdict:
    """Decide what the record `record` (None: no file) last modified at `mtime` means.

    - another host's record is FOREIGN, whatever its age: our boot says nothing of theirs;
    - a record modified before `boot_time` is STALE whatever its content (no lock outlives
      a reboot, so a record torn by a crash never needs a human);
    - otherwise an unreadable record is CORRUPT, and a readable one is HELD while
      `is_alive(pid, start_time)`, else STALE (the owner died or its pid was reused).
    """
    if record is None:
        return Verdict(LockState.UNLOCKED)
    is_from_before_boot = mtime < boot_time
    try:
        info = parse_record(record)
    except ValueError as error:
        if is_from_before_boot:
            return Verdict(LockState.STALE, None, f"unreadable record from before boot ({error})")
        return Verdict(LockState.CORRUPT, None, str(error))
    if info.hostname != this_host:
        return Verdict(LockState.FOREIGN, info, f"held on host {info.hostname}")
    if is_from_before_boot:
        return Verdict(LockState.STALE, info, "record from before boot")
    if not is_alive(info.pid, info.start_time):
        return Verdict(LockState.STALE, info, f"pid {info.pid} is dead or now another process")
    return Verdict(LockState.HELD, info)


# The last whole second formatted by `_rfc3339`, and its text (one tuple: read atomically).
_formatted_second: tuple[int, str] = (0, "1970-01-01T00:00:00")


def _rfc3339(epoch_seconds: float) -> str:
    """`epoch_seconds` as RFC 3339 UTC with microseconds, exactly as
    `datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")`.

    strftime costs microseconds per call; the date and time of day change once a second,
    so they are formatted once per second. The split into second and microseconds rounds
    half-even, as `datetime.fromtimestamp` does (x.9999996 is the next second).
    """
    global _formatted_second
    fraction, whole = math.modf(epoch_seconds)
    microseconds = round(fraction * 1e6)
    second = int(whole)
    if microseconds >= 1_000_000:
        second += 1
        microseconds -= 1_000_000
    elif microseconds < 0:
        second -= 1
        microseconds += 1_000_000
    cached_second, text = _formatted_second
    if cached_second != second:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _formatted_second = (second, text)
    return f"{text}.{microseconds:06d}Z"


def _same_owner(info: LockInfo, pid: int, start_time: float | None) -> bool:
    if info.pid != pid:
        return False
    return start_time is None or abs(info.start_time - start_time) <= CREATE_TIME_TOLERANCE


def _check_owner_pid(owner_pid: object) -> int:
    if not _is_pid(owner_pid):
        raise InvalidOwner(f"owner must be a positive int pid, not {reprlib.repr(owner_pid)}")
    return owner_pid


def _check_start_time(owner_start_time: object) -> float | None:
    if owner_start_time is None:
        return None
    if not _is_number(owner_start_time):
        raise InvalidOwner(
            f"owner_start_time must be a number, not {reprlib.repr(owner_start_time)}"
        )
    return float(owner_start_time)


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """The bytes of a record and which file (inode) they were read from."""

    data: bytes
    mtime: float
    device: int
    inode: int
    links: int

    def is_same_file(self, other: _Snapshot) -> bool:
        return (self.device, self.inode, self.data) == (other.device, other.inode, other.data)


class _Unsafe(Exception):
    """A lock path we refuse to touch (symlink, wrong file type): InvalidLock at the API."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class _UnsafeAsInvalidLock:
    """Context manager turning `_Unsafe` into the API's `InvalidLock`.

    A class, not a `@contextmanager` generator: it wraps every call, and costs a tenth.
    """

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(exc, _Unsafe):
            raise InvalidLock(f"refusing lock path {exc}") from None


_unsafe_as_invalid_lock = _UnsafeAsInvalidLock()


def _unlock_and_close(guard_fd: int) -> None:
    try:
        # Unlock explicitly: a child forked meanwhile shares the open file description,
        # and closing our copy alone would leave it locked.
        fcntl.flock(guard_fd, fcntl.LOCK_UN)
    finally:
        os.close(guard_fd)


class _Guarded:
    """The guard flock held around one read-check-write of a `LockFile` (its `_guarded`).

    Entering opens `.runtime` (creating it if `create`) and the guard, and flocks the
    guard; it gives the `.runtime` descriptor, or None when `.runtime` is absent and not
    `create`. Leaving unlocks and closes both: nothing stays open between calls. A class,
    not a `@contextmanager` generator, because every locking call pays for it.
    """

    __slots__ = ("_create", "_dir_fd", "_guard_fd", "_lock_file")

    def __init__(self, lock_file: LockFile, create: bool) -> None:
        self._lock_file = lock_file
        self._create = create
        self._dir_fd: int | None = None
        self._guard_fd: int | None = None

    def __enter__(self) -> int | None:
        lock_file = self._lock_file
        dir_fd = lock_file._open_runtime(create=self._create)
        if dir_fd is None:
            return None
        try:
            if self._create:
                lock_file._tighten_runtime(dir_fd)
            self._guard_fd = lock_file._open_locked_guard(dir_fd)
        except BaseException:
            os.close(dir_fd)
            raise
        self._dir_fd = dir_fd
        return dir_fd

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        guard_fd, dir_fd = self._guard_fd, self._dir_fd
        self._guard_fd = self._dir_fd = None
        try:
            if guard_fd is not None:
                _unlock_and_close(guard_fd)
        finally:
            if dir_fd is not None:
                os.close(dir_fd)


class LockFile:
    """The plain, blocking core of one worker's identity lock (see the module docstring).

    Owners are explicit pids (`WorkerLock` fills in the calling process). Each call opens
    the files it needs and closes them before returning; calls that change the record
    hold the guard `flock` for microseconds, and wait at most `guard_timeout` real seconds
    for it (then `Locked`), so a process stuck inside the guard cannot hang the caller.

    `hostname` (default `socket.gethostname()`), `boot_time` (default: the current boot,
    read afresh for every judgement, as `psutil.boot_time()` near the boundary) and
    `wall_time` (for `acquired_at`; the actor passes its clock's `time`) are injectable.
    """

    __slots__ = (
        "_boot_time",
        "_guard_path",
        "_guard_timeout",
        "_log",
        "_record_path",
        "_reported_problem",
        "_runtime_path",
        "_temp_path",
        "_template",
        "_wall_time",
        "_written",
        "hostname",
        "worker_dir",
    )

    def __init__(
        self,
        worker_dir: str | os.PathLike[str],
        *,
        hostname: str | None = None,
        boot_time: float | None = None,
        wall_time: Callable[[], float] = time.time,
        guard_timeout: float = 5.0,
    ) -> None:
        self.worker_dir = os.path.abspath(os.fspath(worker_dir))
        self.hostname = socket.gethostname() if hostname is None else hostname
        self._runtime_path = os.path.join(self.worker_dir, RUNTIME_DIR_NAME)
        self._record_path = os.path.join(self._runtime_path, RECORD_NAME)
        self._guard_path = os.path.join(self._runtime_path, GUARD_NAME)
        self._temp_path = os.path.join(self._runtime_path, _TEMP_NAME)
        self._boot_time = boot_time
        self._wall_time = wall_time
        self._guard_timeout = guard_timeout
        self._reported_problem: str | None = None
        self._log = logger.bind(worker_dir=self.worker_dir)
        # The encoding of the last new record's owner: ((pid, start, session, host), head,
        # middle, tail); see _record_template.
        self._template: tuple[tuple[int, float, str, str], bytes, bytes, bytes] | None = None
        # (our pid, bytes) of the last record we wrote naming this very process: a record
        # with exactly these bytes is held by us, with no parsing or judging (release).
        self._written: tuple[int, bytes] | None = None

    def __repr__(self) -> str:
        return f"LockFile({self.worker_dir!r})"

    @property
    def record_path(self) -> str:
        """`<worker_dir>/.runtime/agent.lock`."""
        return self._record_path

    @property
    def guard_path(self) -> str:
        """`<worker_dir>/.runtime/agent.lock.flock`."""
        return self._guard_path

    # -- public operations -------------------------------------------------------------

    def acquire(
        self, owner_pid: int, session_id: str = "", *, owner_start_time: float | None = None
    ) -> LockInfo:
        """Take the lock for `owner_pid` and return the record written.

        The same owner (pid and start time) again refreshes: the record keeps its
        `acquired_at`, gets a new `refreshed_at`, and takes `session_id` if non-empty.
        A stale record is broken and taken over. `owner_start_time` pins the owner's
        identity (default: looked up now; a pid that does not run raises `InvalidOwner`).

        Raises `Locked` (names the holder's pid and session, or its host), `InvalidLock`
        (corrupt record, symlinked path), `InvalidOwner`, `BadCall` (bad `session_id`).
        """
        owner_pid = _check_owner_pid(owner_pid)
        start_time = _check_start_time(owner_start_time)
        if not isinstance(session_id, str) or len(session_id) > MAX_SESSION_ID_LENGTH:
            raise BadCall(
                f"session_id must be a str of at most {MAX_SESSION_ID_LENGTH} characters, "
                f"not {reprlib.repr(session_id)}"
            )
        if start_time is None:
            # Looked up before taking the guard, to keep the critical section short.
            start_time = _start_time_of(owner_pid)
            if start_time is None:
                raise InvalidOwner(f"owner pid {owner_pid} is not a running process")
        with _unsafe_as_invalid_lock, self._guarded(create=True) as dir_fd:
            assert dir_fd is not None
            for _ in range(_MAX_ATTEMPTS):
                snapshot = self._read_snapshot(dir_fd, RECORD_NAME)
                if snapshot is None:
                    return self._write_new_record(dir_fd, owner_pid, start_time, session_id)
                verdict = self._judge_snapshot(snapshot)
                if verdict.state is LockState.STALE:
                    if not self._break_stale(dir_fd, snapshot, verdict):
                        continue
                    return self._write_new_record(dir_fd, owner_pid, start_time, session_id)
                held = self._raise_unless_mine(verdict, owner_pid, start_time)
                refreshed = replace(
                    held,
                    session_id=session_id or held.session_id,
                    refreshed_at=_rfc3339(self._wall_time()),
                )
                self._write_record(dir_fd, refreshed)
                return refreshed
        raise Locked(f"{self._record_path} kept changing under the guard; a writer ignores it")

    def release(self, owner_pid: int | None = None, *, owner_start_time: float | None = None) -> None:
        """Remove the record of a live owner on this host (with `owner_pid`: only its own).

        Raises `NotLocked` when there is no record or only a stale one (which it removes),
        `Locked` for another owner's or another host's record, `InvalidLock` for a corrupt
        record or symlinked path (left for `force_release`).
        """
        if owner_pid is not None:
            owner_pid = _check_owner_pid(owner_pid)
        start_time = _check_start_time(owner_start_time)
        with _unsafe_as_invalid_lock, self._guarded(create=False) as dir_fd:
            if dir_fd is None:
                raise NotLocked(f"{self.worker_dir} is not locked")
            for _ in range(_MAX_ATTEMPTS):
                snapshot = self._read_snapshot(dir_fd, RECORD_NAME)
                if snapshot is None:
                    raise NotLocked(f"{self.worker_dir} is not locked")
                if self._is_ours(snapshot, owner_pid, start_time):
                    self._retire_record(dir_fd, snapshot)
                    return
                verdict = self._judge_snapshot(snapshot)
                if verdict.state is LockState.STALE:
                    if not self._break_stale(dir_fd, snapshot, verdict):
                        continue
                    raise NotLocked(
                        f"{self.worker_dir} was not locked: removed a "
                        f"{verdict.describe(self._record_path)} record"
                    )
                if owner_pid is None:
                    self._raise_unless_held_here(verdict)
                else:
                    self._raise_unless_mine(verdict, owner_pid, start_time)
                self._retire_record(dir_fd, snapshot)
                return
        raise Locked(f"{self._record_path} kept changing under the guard; a writer ignores it")

    def read(self) -> LockInfo | None:
        """The record as it is on disk (held, stale or another host's), or None if none.

        An unreadable record from before the current boot reads as None. Raises
        `InvalidLock` for a corrupt record or a symlinked path. Takes no lock, and sees a
        whole record or none (see `_read_settled`).
        """
        with _unsafe_as_invalid_lock:
            verdict = self._look()
        self._raise_if_corrupt(verdict)
        return verdict.info

    def inspect(self) -> Verdict:
        """Judge the record now (no lock taken). Raises `InvalidLock` for a symlinked path."""
        with _unsafe_as_invalid_lock:
            return self._look()

    def check(self, owner_pid: int, *, owner_start_time: float | None = None) -> None:
        """Raise `Locked` if a live owner other than `owner_pid` holds the lock.

        Another host's record counts as held; a corrupt record raises `InvalidLock`.
        """
        owner_pid = _check_owner_pid(owner_pid)
        start_time = _check_start_time(owner_start_time)
        verdict = self.inspect()
        if verdict.state in (LockState.UNLOCKED, LockState.STALE):
            return
        self._raise_unless_mine(verdict, owner_pid, start_time)

    def status(self) -> str:
        """One line, never raising: `unlocked`, `locked by pid P (session S)`,
        `stale (dead pid P)`, `stale (from before boot)`, `held on host H` or `corrupt (PATH)`.
        """
        try:
            verdict = self._look()
            self._refuse_unsafe_guard()
        except _Unsafe as unsafe:
            return f"corrupt ({unsafe.path})"
        except OSError as error:
            self._log.warning("status: cannot read the lock record: {}", error)
            return f"corrupt ({self._record_path})"
        except Exception:  # a bug: status is for operators and must still answer
            self._log.exception("status: unexpected failure")
            return f"corrupt ({self._record_path})"
        return verdict.describe(self._record_path)

    def force_release(self) -> None:
        """Remove any record, another host's or a corrupt one included (an operator's act).

        A symlinked record is unlinked (the link, never its target). Refuses with
        `InvalidLock` to act through a symlinked `.runtime` or guard file, or to remove
        a directory planted under the record's name. No record: nothing to do.
        """
        with _unsafe_as_invalid_lock, self._guarded(create=False) as dir_fd:
            if dir_fd is None:
                return
            try:
                record_stat = os.stat(RECORD_NAME, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return
            if stat.S_ISDIR(record_stat.st_mode):
                raise _Unsafe(self._record_path, "is a directory; remove it by hand")
            try:
                description = self._judge_record(dir_fd)[1].describe(self._record_path)
            except _Unsafe as unsafe:
                description = unsafe.reason
            os.unlink(RECORD_NAME, dir_fd=dir_fd)
            self._sweep_leftovers(dir_fd)
            self._log.warning("force-released the lock record ({})", description)

    def release_if_stale(self) -> Verdict | None:
        """Remove the record if it is stale (for the actor's periodic owner check).

        Returns the verdict of the record removed (`info.pid` is the dead owner, when
        readable), or None when there was nothing stale. Never raises for a corrupt,
        foreign or symlinked lock (logged once, then left for `force_release`); only an
        unexpected filesystem failure (OSError) escapes.
        """
        try:
            # Most ticks find a live owner or no record: judge without the guard first.
            verdict = self._look()
            if verdict.state is LockState.CORRUPT:
                self._report_once(f"corrupt lock record {self._record_path}: {verdict.reason}")
                return None
            self._reported_problem = None
            if verdict.state is LockState.UNLOCKED and os.path.lexists(self._temp_path):
                self._discard_spare()  # an idle worker keeps it one check interval at most
            if verdict.state is not LockState.STALE:
                return None
            with self._guarded(create=False) as dir_fd:
                if dir_fd is None:
                    return None
                for _ in range(_MAX_ATTEMPTS):
                    snapshot, verdict = self._judge_record(dir_fd)
                    if verdict.state is not LockState.STALE:
                        return None
                    assert snapshot is not None
                    if self._break_stale(dir_fd, snapshot, verdict):
                        return verdict
                return None
        except _Unsafe as unsafe:
            self._report_once(f"refusing lock path {unsafe}")
            return None

    def discard_spare(self) -> None:
        """Delete the temporary file a release keeps for the next record, if any.

        For an idle worker (the owner check) and a lock actor that stops, so that a worker
        nobody locks is left with its guard file alone. Never waits: with the guard busy,
        whoever holds it may be about to use the file, and it is left. Raises
        `InvalidLock` for a symlinked `.runtime` or guard.
        """
        with _unsafe_as_invalid_lock:
            self._discard_spare()

    def _discard_spare(self) -> None:
        """`discard_spare`, raising `_Unsafe` for a refused path."""
        dir_fd = self._open_runtime(create=False)
        if dir_fd is None:
            return
        try:
            guard_fd = self._open_guard(dir_fd, _READ_FLAGS, tighten=False)
            if guard_fd is None:
                return
            try:
                fcntl.flock(guard_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                spare = os.stat(_TEMP_NAME, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISREG(spare.st_mode):
                    os.unlink(_TEMP_NAME, dir_fd=dir_fd)
            except (BlockingIOError, FileNotFoundError):
                pass
            finally:
                _unlock_and_close(guard_fd)
        finally:
            os.close(dir_fd)

    def _report_once(self, problem: str) -> None:
        """Log a problem the periodic check leaves alone, once until it changes."""
        if self._reported_problem != problem:
            self._reported_problem = problem
            self._log.warning("lock check skipped until fixed by hand (force_release): {}", problem)

    # -- verdicts and the errors they raise --------------------------------------------

    def _raise_if_corrupt(self, verdict: Verdict) -> None:
        if verdict.state is LockState.CORRUPT:
            raise InvalidLock(
                f"corrupt lock record {self._record_path}: {verdict.reason}; "
                "force_release removes it"
            )

    def _raise_unless_held_here(self, verdict: Verdict) -> LockInfo:
        """The info of a HELD verdict; raise for a foreign or corrupt one."""
        self._raise_if_corrupt(verdict)
        info = verdict.info
        assert info is not None
        if verdict.state is LockState.FOREIGN:
            raise Locked(
                f"held on host {info.hostname} by pid {info.pid} (session {info.session_id}); "
                f"only force_release breaks another host's lock: {self._record_path}"
            )
        return info

    def _raise_unless_mine(self, verdict: Verdict, owner_pid: int, start_time: float | None) -> LockInfo:
        """The info of a HELD verdict naming this owner; raise otherwise."""
        info = self._raise_unless_held_here(verdict)
        if not _same_owner(info, owner_pid, start_time):
            raise Locked(
                f"locked by pid {info.pid} (session {info.session_id}) "
                f"since {info.acquired_at}: {self._record_path}"
            )
        return info

    def _judge_snapshot(self, snapshot: _Snapshot | None) -> Verdict:
        if snapshot is None:
            return Verdict(LockState.UNLOCKED)
        boot_time = self._boot_time_for(snapshot.mtime)
        return judge(
            snapshot.data,
            mtime=snapshot.mtime,
            boot_time=boot_time,
            this_host=self.hostname,
            is_alive=_is_alive,
        )

    def _boot_time_for(self, mtime: float) -> float:
        """The boot time to judge a record modified at `mtime` against.

        `psutil.boot_time()` reads /proc/stat (~15 µs); the kernel's clocks give the same
        instant to well under a second for free, which settles every record written more
        than a moment after boot. Both move with wall-clock steps, like process start times.
        """
        if self._boot_time is not None:
            return self._boot_time
        approximate = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
        if mtime >= approximate + 2.0:
            return approximate
        return float(psutil.boot_time())

    def _judge_record(self, dir_fd: int) -> tuple[_Snapshot | None, Verdict]:
        snapshot = self._read_snapshot(dir_fd, RECORD_NAME)
        return snapshot, self._judge_snapshot(snapshot)

    def _look(self) -> Verdict:
        """Judge the record without taking a lock (for reads): see `_read_settled`."""
        dir_fd = self._open_runtime(create=False)
        if dir_fd is None:
            return Verdict(LockState.UNLOCKED)
        try:
            return self._judge_snapshot(self._read_settled(dir_fd))
        finally:
            os.close(dir_fd)

    def _read_settled(self, dir_fd: int) -> _Snapshot | None:
        """The record as one whole version, read without waiting for any lock.

        A release renames the record to the temporary name and the next acquire rewrites
        that inode in place, so a reader that opened the record just before a release
        could read it mid-rewrite. The rewrite happens only while the inode is not the
        record, and every write's bytes are unique (its `write_id`): a second read
        through a new open that finds the same file with the same bytes proves both
        whole, since two torn reads could match only within one rewrite, which the
        second open, finding the inode back as the record, shows was over (and two
        reads finding none prove there was none).
        Readers never hold the guard, so no number of them can hold up a writer, and a
        reader stopped half-way holds up nobody. A record that changes between every
        pair of reads is read once under the guard, shared.
        """
        is_settled, snapshot = self._settle(dir_fd)
        if is_settled:
            return snapshot
        guard_fd = self._open_guard(dir_fd, _READ_FLAGS, tighten=False)
        if guard_fd is None:  # nobody ever wrote here: another pass is all there is to do
            return self._settle(dir_fd)[1]
        try:
            try:
                self._lock_guard(guard_fd, fcntl.LOCK_SH)
            except Locked as stuck:
                self._log.warning("reading the lock record without the guard: {}", stuck)
                return self._settle(dir_fd)[1]
            return self._read_snapshot(dir_fd, RECORD_NAME)
        finally:
            _unlock_and_close(guard_fd)

    def _settle(self, dir_fd: int) -> tuple[bool, _Snapshot | None]:
        """(True, the record) once two reads in a row agree, within `_SETTLING_READS`
        reads; else (False, the last read)."""
        previous = self._read_snapshot(dir_fd, RECORD_NAME)
        for _ in range(_SETTLING_READS):
            current = self._read_snapshot(dir_fd, RECORD_NAME)
            if current is None:
                if previous is None:
                    return True, None
            elif previous is not None and current.is_same_file(previous):
                return True, current
            previous = current
        return False, previous

    # -- files -------------------------------------------------------------------------

    def _open_runtime(self, *, create: bool) -> int | None:
        """A descriptor of `.runtime` (never through a symlink); None if absent and not `create`.

        Everything below is reached relative to this descriptor, so a `.runtime` swapped
        for a symlink after the check cannot redirect a write.
        """
        try:
            return os.open(self._runtime_path, _DIR_FLAGS)
        except FileNotFoundError:
            if not create:
                return None
        except OSError as error:
            raise self._unsafe_runtime(error) from None
        make_private_directory(self.worker_dir)
        try:
            os.mkdir(self._runtime_path, 0o700)
        except FileExistsError:
            pass  # a racing process made it first
        try:
            dir_fd = os.open(self._runtime_path, _DIR_FLAGS)
        except OSError as error:
            raise self._unsafe_runtime(error) from None
        return dir_fd

    def _unsafe_runtime(self, error: OSError) -> Exception:
        if error.errno not in (errno.ELOOP, errno.ENOTDIR):
            return error
        try:
            is_link = stat.S_ISLNK(os.lstat(self._runtime_path).st_mode)
        except OSError:
            is_link = False
        return _Unsafe(self._runtime_path, "is a symlink" if is_link else "is not a directory")

    def _tighten_runtime(self, dir_fd: int) -> None:
        mode = stat.S_IMODE(os.fstat(dir_fd).st_mode)
        if mode & 0o077:
            os.fchmod(dir_fd, 0o700)
            self._log.warning("tightened {} from {:o} to 700", self._runtime_path, mode)

    def _refuse_unsafe_guard(self) -> None:
        try:
            mode = os.lstat(self._guard_path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return
        if not stat.S_ISREG(mode):
            raise _Unsafe(self._guard_path, "is a symlink" if stat.S_ISLNK(mode) else "is not a file")

    def _guarded(self, *, create: bool) -> _Guarded:
        """`with self._guarded(create=...) as dir_fd:` holds the guard flock for the block;
        `dir_fd` is the `.runtime` descriptor (None if absent and not `create`)."""
        return _Guarded(self, create)

    def _open_locked_guard(self, dir_fd: int) -> int:
        """Open (create) the guard file in `.runtime`, refusing anything but a regular file,
        and flock it exclusively."""
        guard_fd = self._open_guard(dir_fd, _GUARD_FLAGS, tighten=True)
        assert guard_fd is not None  # created if absent
        try:
            self._lock_guard(guard_fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(guard_fd)
            raise
        return guard_fd

    def _open_guard(self, dir_fd: int, flags: int, *, tighten: bool) -> int | None:
        """The guard file opened with `flags` (None if absent and not created); refuses a
        symlink or anything but a regular file, and (if `tighten`: writers) makes loose
        permissions owner-only."""
        try:
            guard_fd = os.open(GUARD_NAME, flags, 0o600, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):  # ENXIO: a socket
                raise _Unsafe(self._guard_path, os.strerror(error.errno)) from None
            raise
        try:
            guard_stat = os.fstat(guard_fd)
            if not stat.S_ISREG(guard_stat.st_mode):
                raise _Unsafe(self._guard_path, "is not a regular file")
            if tighten and guard_stat.st_mode & 0o077:
                # Anyone who can open the guard can flock it forever and stall us.
                os.fchmod(guard_fd, 0o600)
        except BaseException:
            os.close(guard_fd)
            raise
        return guard_fd

    def _lock_guard(self, guard_fd: int, mode: int) -> None:
        """flock the guard (`mode`: LOCK_EX, or LOCK_SH for a reader's last resort) within
        `guard_timeout` seconds, else `Locked`; a blocking flock could not time out, so
        this polls."""
        deadline: float | None = None
        delay = 0.0001
        while True:
            try:
                fcntl.flock(guard_fd, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if deadline is None:
                    deadline = time.monotonic() + self._guard_timeout
                elif time.monotonic() >= deadline:
                    raise Locked(
                        f"{self._guard_path} stayed locked for {self._guard_timeout} s; "
                        "a process is stuck inside the lock's critical section"
                    ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def _read_snapshot(self, dir_fd: int, name: str) -> _Snapshot | None:
        """The file `name` in `.runtime` (None if absent); refuses symlinks and non-files."""
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise _Unsafe(os.path.join(self._runtime_path, name), "is a symlink") from None
            if error.errno == errno.ENXIO:  # a socket
                raise _Unsafe(os.path.join(self._runtime_path, name), "is not a regular file") from None
            raise
        try:
            file_stat = os.fstat(fd)
            if not stat.S_ISREG(file_stat.st_mode):
                raise _Unsafe(os.path.join(self._runtime_path, name), "is not a regular file")
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_RECORD_BYTES:  # one byte more than allowed tells "too large"
                chunk = os.read(fd, MAX_RECORD_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size == file_stat.st_size:
                    break  # all fstat saw: spare the read that would only say "end of file"
        finally:
            os.close(fd)
        return _Snapshot(
            b"".join(chunks), file_stat.st_mtime, file_stat.st_dev, file_stat.st_ino, file_stat.st_nlink
        )

    def _write_new_record(self, dir_fd: int, owner_pid: int, start_time: float, session_id: str) -> LockInfo:
        """Write and return a new record for the owner (the lock is free: we hold the guard)."""
        now = _rfc3339(self._wall_time())
        info = LockInfo(owner_pid, start_time, now, session_id, self.hostname)
        key = (owner_pid, start_time, session_id, self.hostname)
        template = self._template
        if template is None or template[0] != key:
            template = self._template = (key, *_record_template(owner_pid, start_time, session_id, self.hostname))
        data = b"".join((template[1], now.encode("ascii"), template[2], new_write_id().encode("ascii"), template[3]))
        self._write_record(dir_fd, info, data)
        return info

    def _is_ours(self, snapshot: _Snapshot, owner_pid: int | None, start_time: float | None) -> bool:
        """True if `snapshot` is the record we last wrote for this very process, written in
        this boot, and `owner_pid` (None: any live owner) names this process: then `judge`
        would find it held by the caller, and is spared.

        Equal bytes mean the same pid, start time, host and session; anything else
        (another writer, a forked child, another owner, a touched mtime) is judged.
        """
        written = self._written
        if written is None or written[1] != snapshot.data:
            return False
        if snapshot.mtime < self._boot_time_for(snapshot.mtime):
            return False
        own_pid, own_start_time = own_identity()
        if written[0] != own_pid:
            return False  # a forked child: the record names its parent
        if owner_pid is None:
            return True
        return owner_pid == own_pid and (
            start_time is None
            or own_start_time is None
            or abs(start_time - own_start_time) <= CREATE_TIME_TOLERANCE
        )

    def _write_record(self, dir_fd: int, info: LockInfo, data: bytes | None = None) -> None:
        """Write the record (`data`: its encoding if known) by temporary file + rename, so
        readers see all of it or none (call under the guard).

        The temporary file is the previous record when there is one (`_retire_record`):
        rewriting an inode costs a fraction of allocating one, and freeing it again on
        release (on ext4 without a journal, allocation scans past every inode freed in the
        last seconds). Readers catch a rewrite by reading twice (`_read_settled`).
        No fsync: a lock never outlives a reboot, and a record torn by a power cut is
        from before the boot, hence stale.
        """
        if data is None:
            data = encode_record(info, new_write_id())
        self._written = None
        fd, old_size = self._open_temp(dir_fd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if old_size > len(data):
                    os.ftruncate(fd, len(data))
            finally:
                os.close(fd)
            os.rename(_TEMP_NAME, RECORD_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            own_pid, own_start_time = own_identity()
            if info.pid == own_pid and own_start_time is not None and info.start_time == own_start_time:
                self._written = (own_pid, data)
        except BaseException:
            try:
                os.unlink(_TEMP_NAME, dir_fd=dir_fd)
            except OSError:
                pass  # the error being raised says more
            raise

    def _open_temp(self, dir_fd: int) -> tuple[int, int]:
        """(descriptor, size) of the temporary file to write the record into (under the guard).

        The one a release left is reused if it is a plain file of ours with no other name;
        anything else under that name (a symlink, a hard link, a FIFO, a file left by a
        killed writer of another uid) is unlinked, never written through, and replaced by
        a new file.
        """
        try:
            fd = os.open(_TEMP_NAME, _REWRITE_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return os.open(_TEMP_NAME, _WRITE_FLAGS, 0o600, dir_fd=dir_fd), 0
        except OSError as error:
            if error.errno not in (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.EACCES, errno.EPERM):
                raise
        else:
            try:
                temp_stat = os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise
            if (
                stat.S_ISREG(temp_stat.st_mode)
                and temp_stat.st_nlink == 1
                and temp_stat.st_uid == os.geteuid()
                and not temp_stat.st_mode & 0o077
            ):
                return fd, temp_stat.st_size
            os.close(fd)
        try:
            os.unlink(_TEMP_NAME, dir_fd=dir_fd)
        except IsADirectoryError:
            raise _Unsafe(
                os.path.join(self._runtime_path, _TEMP_NAME), "is a directory; remove it by hand"
            ) from None
        except FileNotFoundError:
            pass
        return os.open(_TEMP_NAME, _WRITE_FLAGS, 0o600, dir_fd=dir_fd), 0

    def _retire_record(self, dir_fd: int, snapshot: _Snapshot) -> None:
        """Remove the record read as `snapshot` (call under the guard), keeping its inode as
        the next temporary file when it has no other name."""
        self._written = None
        if snapshot.links != 1:
            # A rename between two names of one inode does nothing (and succeeds).
            os.unlink(RECORD_NAME, dir_fd=dir_fd)
            return
        try:
            os.rename(RECORD_NAME, _TEMP_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except (IsADirectoryError, NotADirectoryError):
            os.unlink(RECORD_NAME, dir_fd=dir_fd)  # something planted as the temporary name

    def _break_stale(self, dir_fd: int, snapshot: _Snapshot, verdict: Verdict) -> bool:
        """Remove the stale record judged from `snapshot`; False if it was not that one.

        Rename-then-verify rather than a blind unlink: what we move aside is checked to be
        the very file (inode and bytes) we judged before it is deleted, and put back
        otherwise. The guard makes a mismatch impossible among well-behaved writers; this
        protects a live lock from a writer that ignores the guard.
        """
        aside = f"{_ASIDE_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
        try:
            os.rename(RECORD_NAME, aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except FileNotFoundError:
            return False  # gone meanwhile: judge again
        try:
            moved = self._read_snapshot(dir_fd, aside)
        except _Unsafe:
            moved = None
        if moved is None or not moved.is_same_file(snapshot):
            self._put_back(dir_fd, aside)
            return False
        os.unlink(aside, dir_fd=dir_fd)
        self._sweep_leftovers(dir_fd)
        self._log.warning(
            "broke the stale lock record ({}): {}",
            verdict.describe(self._record_path),
            verdict.reason,
        )
        return True

    def _put_back(self, dir_fd: int, aside: str) -> None:
        try:
            # link, not rename: never clobber a record written since.
            os.link(aside, RECORD_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            self._log.warning(
                "a writer ignoring the guard replaced the lock record twice; keeping the newest"
            )
        except FileNotFoundError:
            return
        os.unlink(aside, dir_fd=dir_fd)
        self._log.warning("the lock record changed before it could be broken; put it back")

    def _sweep_leftovers(self, dir_fd: int) -> None:
        """Delete aside copies and temporary files of killed writers (call under the guard).

        A directory under one of those names is left (and refused where it is in the
        way, see `_open_temp`): it is nothing a writer of ours leaves.
        """
        for name in os.listdir(dir_fd):
            if name.startswith(_ASIDE_PREFIX) or name in _TEMP_NAMES:
                try:
                    os.unlink(name, dir_fd=dir_fd)
                except (FileNotFoundError, IsADirectoryError):
                    pass
