"""The worker identity lock on disk: a JSON record guarded by `flock` (the core of `WorkerLock`).

`<worker_dir>/.runtime/agent.lock` names the owner (pid, its start in clock ticks since
boot, the boot's id, host, session) and exists only while the lock is held. Every
read-check-write of it happens under `flock` on `agent.lock.flock` beside it, a guard
file that is never renamed or deleted, so the kernel arbitrates races and forgets the
guard when a process dies. A record is written to a fresh temporary file and renamed
over the old one, so readers need no lock and no retry: they see the old record or the
new one, never a torn one. Whether the lock is held is decided by the record alone, by
the pure `judge` (`actors.locks._record`, with the record's format).

    lock = LockFile("/srv/workers/rust-1")
    info = lock.acquire(os.getpid(), "%4")   # Locked if another live process holds it
    lock.status()                           # "locked by pid 4242 (session %4)"
    lock.release(os.getpid())

`LockFile` holds no file descriptor between calls and is safe to share between threads;
two `LockFile` objects on one directory exclude each other like two processes do.
Why there is no fsync, no reader lock and no rename-then-verify: docs/design.md ("Worker
identity locks").
"""

from __future__ import annotations

import errno
import fcntl
import os
import reprlib
import socket
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from loguru import logger

from actors import _process
from actors._errors import InvalidLock, InvalidOwner, InvalidWorkerDir, Locked, NotLocked
from actors._process import ProcessIdentity, identify
from actors.locks._record import (
    MAX_RECORD_BYTES,
    LockInfo,
    LockState,
    Verdict,
    check_owner,
    encode_record,
    is_same_owner,
    judge,
    own_identity,
    rfc3339,
    start_time_of,
)
from supervision import BadCall, StorageError

__all__ = ["FENCE_RESERVE", "GUARD_NAME", "RECORD_NAME", "RUNTIME_DIR_NAME", "LockFile"]

RUNTIME_DIR_NAME = ".runtime"
RECORD_NAME = "agent.lock"
GUARD_NAME = "agent.lock.flock"
#: The next record while it is written (only the guard holder writes, so one name does).
#: It exists only mid-write, or after a writer was killed there; the next writer removes it.
_TEMP_NAME = "agent.lock.next"

MAX_SESSION_ID_LENGTH = 1024

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted under our name must not hang the caller.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# The guard is opened read-write: it also keeps the worker's fence counter (see `_next_fence`).
_GUARD_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_FENCE_BYTES = 128
#: Fences reserved per fsync of the guard: a power cut can lose the count, never the reservation.
FENCE_RESERVE = 256


_PROC_DEVICE = os.stat("/proc").st_dev if os.path.isdir("/proc") else None


def _parse_counter(text: bytes) -> tuple[int, int, str | None]:
    """(count, reserved, boot id) from a guard's text; a bare count (v3.0) reserved nothing
    and names no boot. ValueError when it is not one of those."""
    fields = text.decode("ascii").split() if text.strip(b"\0 \n") else ["0"]
    if len(fields) == 1:
        return int(fields[0]), int(fields[0]), None
    if len(fields) != 3:
        raise ValueError(f"{len(fields)} fields")
    return int(fields[0]), int(fields[1]), None if fields[2] == "-" else fields[2]


def _sync_directory_if_readable(path: str) -> None:
    """fsync a directory we may only write to (a worker directory need not be readable)."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except PermissionError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Unsafe(Exception):
    """A lock path we refuse to touch (symlink, wrong file type): InvalidLock at the API."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class LockFile:
    """The plain, blocking core of one worker's identity lock (see the module docstring).

    Owners are pids, or `ProcessIdentity`s to name one lifetime of a pid (`WorkerLock`
    fills in the calling process). Each call opens the files it needs and closes them
    before returning; calls that change the record hold the guard `flock` for
    microseconds, and wait at most `guard_timeout` real seconds for it (then `Locked`),
    so a process stuck inside the guard cannot hang the caller.

    Errors: `Locked`, `NotLocked`, `InvalidLock` (corrupt record, symlinked or odd lock
    path), `InvalidOwner`, `InvalidWorkerDir` (a directory that cannot be used: any
    OSError preparing or reading it), `StorageError` (the record could not be written
    or removed). `hostname` (default `socket.gethostname()`), `boot_time` (default: the
    kernel's, read when a record needs it) and `wall_time` (for `acquired_at`; the actor
    passes its clock's `time`) are injectable.
    """

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
        self.record_path = os.path.join(self._runtime_path, RECORD_NAME)
        self.guard_path = os.path.join(self._runtime_path, GUARD_NAME)
        self._boot_time = boot_time
        self._wall_time = wall_time
        self._guard_timeout = guard_timeout
        self._reported_problem: str | None = None
        self._log = logger.bind(worker_dir=self.worker_dir)

    def __repr__(self) -> str:
        return f"LockFile({self.worker_dir!r})"

    # -- public operations -------------------------------------------------------------

    def acquire(
        self,
        owner: int | ProcessIdentity,
        session_id: str = "",
        *,
        take_lease: Callable[[LockInfo], int] | None = None,
    ) -> LockInfo:
        """Take the lock for `owner` and return the record written.

        The same owner again refreshes: the record keeps its `acquired_at`, gets a new
        `refreshed_at`, and takes `session_id` if non-empty. A stale record is replaced.
        A pid that does not run raises `InvalidOwner`.

        With `take_lease` (a fleet), the lock is then leased in the store, still under the
        guard: `take_lease(record about to be written)` returns the fleet's fence or raises
        (`Locked`, `FleetUnavailable`: nothing is written). Another host's record does not
        refuse by itself then: the store's lease decides. Without it the fence is this
        host's count of the worker's acquisitions.
        """
        owner = check_owner(owner)
        if not isinstance(session_id, str) or len(session_id) > MAX_SESSION_ID_LENGTH:
            raise BadCall(f"session_id must be a str of at most {MAX_SESSION_ID_LENGTH} characters, "
                          f"not {reprlib.repr(session_id)}")
        identity = owner if isinstance(owner, ProcessIdentity) else self._identify(owner)
        with self._refusals(), self._guarded_fds(create=True) as (dir_fd, guard_fd):
            assert dir_fd is not None
            verdict = self._judge(self._read(dir_fd))
            now = rfc3339(self._wall_time())
            is_new = verdict.state in (LockState.UNLOCKED, LockState.STALE) or (
                verdict.state is LockState.FOREIGN and take_lease is not None)
            if is_new:
                info = LockInfo(identity.pid, start_time_of(identity), now, session_id, self.hostname,
                                start_ticks=identity.start_ticks, boot_id=identity.boot_id)
            else:
                held = self._held_by(verdict, identity)
                info = replace(held, session_id=session_id or held.session_id, refreshed_at=now)
            if take_lease is not None:
                info = replace(info, fence=take_lease(info))
            elif is_new:
                assert guard_fd is not None
                info = replace(info, fence=self._next_fence(dir_fd, guard_fd))
            self._write(dir_fd, info)
            if verdict.state is LockState.STALE:
                self._log.warning("broke the stale lock record ({}): {}", verdict.describe(self.record_path),
                                  verdict.reason)
            return info

    def release(
        self,
        owner: int | ProcessIdentity | None = None,
        *,
        drop_lease: Callable[[LockInfo], None] | None = None,
    ) -> LockInfo:
        """Remove the record of a live owner on this host (with `owner`: only its own); returns it.

        Raises `NotLocked` when there is no record or only a stale one (which it removes),
        `Locked` for another owner's or another host's record, `InvalidLock` for a corrupt
        record or symlinked path (left for `force_release`). With `drop_lease` (a fleet),
        `drop_lease(record)` ends the store's lease under the guard first; whatever it
        raises, the record is removed, then its error is raised.
        """
        if owner is not None:
            owner = check_owner(owner)
        with self._refusals(), self._guarded(create=False) as dir_fd:
            verdict = self._judge(None if dir_fd is None else self._read(dir_fd))
            if verdict.state is LockState.UNLOCKED:
                raise NotLocked(f"{self.worker_dir} is not locked")
            assert dir_fd is not None
            if verdict.state is LockState.STALE:
                self._remove_record(dir_fd)
                raise NotLocked(f"{self.worker_dir} was not locked: removed a "
                                f"{verdict.describe(self.record_path)} record")
            info = self._held_here(verdict) if owner is None else self._held_by(verdict, owner)
            try:
                if drop_lease is not None:
                    drop_lease(info)
            finally:
                self._remove_record(dir_fd)
            return info

    def read(self) -> LockInfo | None:
        """The record as it is on disk (held, stale or another host's), or None if none.

        An unreadable record from before the current boot reads as None. Raises
        `InvalidLock` for a corrupt record or a symlinked path. Takes no lock.
        """
        verdict = self.inspect()
        self._raise_if_corrupt(verdict)
        return verdict.info

    def inspect(self) -> Verdict:
        """Judge the record now (no lock taken). Raises `InvalidLock` for a symlinked path."""
        with self._refusals():
            return self._look()

    def check(self, owner: int | ProcessIdentity) -> None:
        """Raise `Locked` if a live owner other than `owner` holds the lock.

        Another host's record counts as held; a corrupt record raises `InvalidLock`.
        """
        owner = check_owner(owner)
        verdict = self.inspect()
        if verdict.state not in (LockState.UNLOCKED, LockState.STALE):
            self._held_by(verdict, owner)

    def status(self) -> str:
        """One line, never raising: `unlocked`, `locked by pid P (session S)`,
        `stale (dead pid P)`, `stale (from before boot)`, `held on host H`,
        `corrupt (PATH)` or `unusable (REASON)`."""
        try:
            with self._refusals():
                verdict = self._look()
                self._refuse_unsafe_guard()
        except InvalidLock as refused:
            return f"corrupt ({getattr(refused, 'path', self.record_path)})"
        except InvalidWorkerDir as unusable:
            return f"unusable ({unusable.__cause__ or unusable})"
        except Exception:  # a bug: status is for operators and must still answer
            self._log.exception("status: unexpected failure")
            return f"corrupt ({self.record_path})"
        return verdict.describe(self.record_path)

    def force_release(self) -> None:
        """Remove any record, another host's or a corrupt one included (an operator's act).

        A symlinked record is unlinked (the link, never its target). Refuses with
        `InvalidLock` to act through a symlinked `.runtime` or guard file, or to remove
        a directory planted under the record's name. No record: nothing to do.
        """
        with self._refusals(), self._guarded(create=False) as dir_fd:
            if dir_fd is None:
                return
            try:
                record_stat = os.stat(RECORD_NAME, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return
            if stat.S_ISDIR(record_stat.st_mode):
                raise _Unsafe(self.record_path, "is a directory; remove it by hand")
            try:
                description = self._judge(self._read(dir_fd)).describe(self.record_path)
            except _Unsafe as unsafe:
                description = unsafe.reason
            self._remove_record(dir_fd)
            self._log.warning("force-released the lock record ({})", description)

    def release_if_stale(self) -> Verdict | None:
        """Remove the record if it is stale (for the actor's periodic owner check).

        Returns the verdict of the record removed (`info.pid` is the dead owner, when
        readable), or None when there was nothing stale. A corrupt, foreign or symlinked
        lock, or an owner whose liveness cannot be told, is left (logged once).
        """
        try:
            verdict = self.inspect()  # most ticks find a live owner or none: no guard
            if verdict.state is LockState.CORRUPT:
                self._report_once(f"corrupt lock record {self.record_path}: {verdict.reason}")
                return None
            if verdict.state is not LockState.STALE:
                return None
            with self._refusals(), self._guarded(create=False) as dir_fd:
                verdict = self._judge(None if dir_fd is None else self._read(dir_fd))
                if verdict.state is not LockState.STALE or dir_fd is None:
                    return None
                self._remove_record(dir_fd)
                return verdict
        except InvalidLock as refused:
            self._report_once(str(refused))
            return None

    # -- verdicts and the errors they raise --------------------------------------------

    def _raise_if_corrupt(self, verdict: Verdict) -> None:
        if verdict.state is LockState.CORRUPT:
            raise InvalidLock(f"corrupt lock record {self.record_path}: {verdict.reason}; force_release removes it")

    def _held_here(self, verdict: Verdict) -> LockInfo:
        """The info of a HELD verdict; raise for a foreign or corrupt one."""
        self._raise_if_corrupt(verdict)
        info = verdict.info
        assert info is not None
        if verdict.state is LockState.FOREIGN:
            raise Locked(f"held on host {info.hostname} by pid {info.pid} (session {info.session_id}); "
                         f"only force_release breaks another host's lock: {self.record_path}")
        return info

    def _held_by(self, verdict: Verdict, owner: int | ProcessIdentity) -> LockInfo:
        """The info of a HELD verdict naming `owner`; raise otherwise."""
        info = self._held_here(verdict)
        if not is_same_owner(info, owner):
            unknown = " (whether it lives cannot be told now)" if verdict.is_unknown else ""
            raise Locked(f"locked by pid {info.pid} (session {info.session_id}) "
                         f"since {info.acquired_at}{unknown}: {self.record_path}")
        return info

    def _judge(self, snapshot: tuple[bytes, float] | None) -> Verdict:
        data, mtime = snapshot if snapshot is not None else (None, 0.0)
        boot_time = self._boot_time if self._boot_time is not None else _process.boot_time
        verdict = judge(data, mtime=mtime, boot_time=boot_time, this_host=self.hostname)
        if verdict.is_unknown:
            self._report_once(f"{verdict.reason}; counted as held, looked at again next time")
        elif verdict.state is not LockState.CORRUPT:
            self._reported_problem = None  # the episode is over
        return verdict

    def _report_once(self, problem: str) -> None:
        """Log a problem left alone until it changes (once per episode)."""
        if self._reported_problem != problem:
            self._reported_problem = problem
            self._log.warning("lock of {}: {}", self.worker_dir, problem)

    def _identify(self, pid: int) -> ProcessIdentity:
        own = own_identity()
        if own is not None and own.pid == pid:
            return own  # this very process: no /proc read
        try:
            identity = identify(pid)
        except OSError as error:
            raise StorageError(error.errno, f"cannot tell whether owner pid {pid} runs ({error.strerror}); "
                                            f"nothing written") from error
        if identity is None:
            raise InvalidOwner(f"owner pid {pid} is not a running process")
        return identity

    # -- files -------------------------------------------------------------------------

    @contextmanager
    def _refusals(self) -> Iterator[None]:
        """The API's errors: `_Unsafe` → InvalidLock; an OSError of the directory → InvalidWorkerDir."""
        try:
            yield
        except _Unsafe as unsafe:
            refused = InvalidLock(f"refusing lock path {unsafe}")
            refused.path = unsafe.path  # type: ignore[attr-defined]
            raise refused from None
        except StorageError:
            raise
        except OSError as error:
            raise InvalidWorkerDir(f"cannot use worker directory {self.worker_dir}: {error}") from error

    def _open_runtime(self, *, create: bool) -> int | None:
        """A descriptor of `.runtime` (never through a symlink); None if absent and not `create`.

        Everything below is reached relative to it, so a `.runtime` swapped for a
        symlink after the check cannot redirect a write.
        """
        try:
            dir_fd = os.open(self._runtime_path, _DIR_FLAGS | os.O_NOFOLLOW)
        except FileNotFoundError:
            self._check_worker_dir()
            if not create:
                return None  # no .runtime: no lock
            try:
                os.mkdir(self._runtime_path, 0o700)
                _sync_directory_if_readable(self.worker_dir)  # the guard's fence counter lives in it
            except FileExistsError:
                pass  # a racing process made it first
            return self._reopen_runtime()
        except OSError as error:
            raise self._runtime_error(error) from None
        if create:
            mode = stat.S_IMODE(os.fstat(dir_fd).st_mode)
            if mode & 0o077:
                os.fchmod(dir_fd, 0o700)
                self._log.warning("tightened {} from {:o} to 700", self._runtime_path, mode)
        return dir_fd

    def _reopen_runtime(self) -> int:
        try:
            return os.open(self._runtime_path, _DIR_FLAGS | os.O_NOFOLLOW)
        except OSError as error:
            raise self._runtime_error(error) from None

    def _runtime_error(self, error: OSError) -> Exception:
        """`_Unsafe` when `.runtime` itself is a symlink or not a directory; else `error`
        (a worker directory that cannot be used: InvalidWorkerDir at the API)."""
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            try:
                mode = os.lstat(self._runtime_path).st_mode
            except OSError:
                return error  # a component above .runtime is the trouble
            return _Unsafe(self._runtime_path, "is a symlink" if stat.S_ISLNK(mode) else "is not a directory")
        return error

    def _check_worker_dir(self) -> None:
        """OSError (InvalidWorkerDir at the API) for a missing worker directory or one on /proc:
        the tree never creates a worker's directory, whose name a caller may have mistyped."""
        if os.stat(self.worker_dir).st_dev == _PROC_DEVICE:
            raise OSError(errno.EINVAL, "a directory on /proc cannot hold a lock", self.worker_dir)

    @contextmanager
    def _guarded(self, *, create: bool) -> Iterator[int | None]:
        """Hold the guard flock for the block; gives the `.runtime` descriptor (None if
        absent and not `create`). Nothing stays open after the block."""
        with self._guarded_fds(create=create) as (dir_fd, _guard_fd):
            yield dir_fd

    @contextmanager
    def _guarded_fds(self, *, create: bool) -> Iterator[tuple[int | None, int | None]]:
        """`_guarded`, also giving the guard's own descriptor (for the fence counter)."""
        dir_fd = self._open_runtime(create=create)
        if dir_fd is None:
            yield None, None
            return
        try:
            guard_fd = self._open_guard(dir_fd)
            try:
                self._lock_guard(guard_fd)
                try:
                    yield dir_fd, guard_fd
                finally:
                    # Explicitly: a child forked meanwhile shares the open file description.
                    fcntl.flock(guard_fd, fcntl.LOCK_UN)
            finally:
                os.close(guard_fd)
        finally:
            os.close(dir_fd)

    def _open_guard(self, dir_fd: int) -> int:
        """Open (create) the guard, refusing anything but a regular file; loose permissions
        are made owner-only (anyone who can open it can flock it forever and stall us)."""
        try:
            guard_fd = os.open(GUARD_NAME, _GUARD_FLAGS, 0o600, dir_fd=dir_fd)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):  # ENXIO: a socket
                raise _Unsafe(self.guard_path, os.strerror(error.errno)) from None
            raise
        try:
            guard_stat = os.fstat(guard_fd)
            if not stat.S_ISREG(guard_stat.st_mode):
                raise _Unsafe(self.guard_path, "is not a regular file")
            if guard_stat.st_mode & 0o077:
                os.fchmod(guard_fd, 0o600)
        except BaseException:
            os.close(guard_fd)
            raise
        return guard_fd

    def _next_fence(self, dir_fd: int, guard_fd: int) -> int:
        """Count one more acquisition in the guard file (call under the guard) and return it.

        The guard is never renamed or deleted, so the count outlives releases and daemon
        restarts. It holds `count reserved boot_id`: the count is written without a sync,
        but no fence above `reserved` is handed out before a new `reserved` (count + 256) is
        on disk, so a guard last written in another boot (a power cut may have lost the
        count) goes on from `reserved`: fences never go back, they may skip. Written before
        the record: a failed record write leaves a gap, never a fence handed out twice.
        Unreadable content starts the count again (logged).
        """
        text = os.pread(guard_fd, _FENCE_BYTES, 0)
        try:
            count, reserved, boot_id = _parse_counter(text)
        except ValueError:
            self._log.warning("fence counter in {} unreadable ({!r}): counting from 0", self.guard_path, text)
            count, reserved, boot_id = 0, 0, _process.BOOT_ID
        if boot_id != _process.BOOT_ID:
            count = max(count, reserved)
        fence = count + 1
        is_reserving = fence > reserved
        if is_reserving:
            reserved = count + FENCE_RESERVE
        new_text = f"{fence} {reserved} {_process.BOOT_ID or '-'}\n".encode("ascii")
        try:
            os.pwrite(guard_fd, new_text, 0)
            if len(new_text) < len(text):
                os.ftruncate(guard_fd, len(new_text))
            if is_reserving:  # the guard and its name must survive a power cut
                os.fsync(guard_fd)
                os.fsync(dir_fd)
        except OSError as error:
            raise StorageError(error.errno, f"cannot count the acquisition in {self.guard_path} (beside "
                                            f"{RECORD_NAME}): {error.strerror}") from error
        return fence

    def _refuse_unsafe_guard(self) -> None:
        try:
            mode = os.lstat(self.guard_path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return
        if not stat.S_ISREG(mode):
            raise _Unsafe(self.guard_path, "is a symlink" if stat.S_ISLNK(mode) else "is not a file")

    def _lock_guard(self, guard_fd: int) -> None:
        """flock the guard within `guard_timeout` seconds, else `Locked` (a blocking flock
        could not time out, so this polls)."""
        deadline = time.monotonic() + self._guard_timeout
        delay = 0.0001
        while True:
            try:
                fcntl.flock(guard_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Locked(f"{self.guard_path} stayed locked for {self._guard_timeout} s; "
                                 "a process is stuck inside the lock's critical section") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def _look(self) -> Verdict:
        """Judge the record without taking a lock: a rename replaces it whole."""
        dir_fd = self._open_runtime(create=False)
        if dir_fd is None:
            return Verdict(LockState.UNLOCKED)
        try:
            return self._judge(self._read(dir_fd))
        finally:
            os.close(dir_fd)

    def _read(self, dir_fd: int) -> tuple[bytes, float] | None:
        """(bytes, mtime) of the record (None if absent); refuses symlinks and non-files."""
        try:
            fd = os.open(RECORD_NAME, _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise _Unsafe(self.record_path, "is a symlink") from None
            if error.errno == errno.ENXIO:  # a socket
                raise _Unsafe(self.record_path, "is not a regular file") from None
            raise
        try:
            record_stat = os.fstat(fd)
            if not stat.S_ISREG(record_stat.st_mode):
                raise _Unsafe(self.record_path, "is not a regular file")
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_RECORD_BYTES:  # one byte more than allowed tells "too large"
                chunk = os.read(fd, MAX_RECORD_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size == record_stat.st_size:
                    break  # all fstat saw: spare the read that would only say "end of file"
        finally:
            os.close(fd)
        return b"".join(chunks), record_stat.st_mtime

    def _write(self, dir_fd: int, info: LockInfo) -> None:
        """Write the record by fresh temporary file + rename (call under the guard).

        No fsync (it would cost ~0.3-0.6 ms per acquire): a lock never outlives a reboot,
        and what a power cut leaves (an old record, or an empty one) is from another boot
        or from before this one, hence stale.
        """
        data = encode_record(info)
        try:
            try:
                fd = os.open(_TEMP_NAME, _WRITE_FLAGS, 0o600, dir_fd=dir_fd)
            except FileExistsError:
                # Left by a writer killed mid-write, or planted: removed, never written through.
                try:
                    os.unlink(_TEMP_NAME, dir_fd=dir_fd)
                except IsADirectoryError:
                    raise _Unsafe(os.path.join(self._runtime_path, _TEMP_NAME),
                                  "is a directory; remove it by hand") from None
                fd = os.open(_TEMP_NAME, _WRITE_FLAGS, 0o600, dir_fd=dir_fd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.rename(_TEMP_NAME, RECORD_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as error:
            try:
                os.unlink(_TEMP_NAME, dir_fd=dir_fd)
            except OSError:
                pass  # the error being raised says more
            if isinstance(error, IsADirectoryError):  # a directory planted as the record
                raise _Unsafe(self.record_path, "is a directory; remove it by hand") from None
            raise StorageError(error.errno, f"cannot write lock record {self.record_path}: "
                                            f"{error.strerror}") from error

    def _remove_record(self, dir_fd: int) -> None:
        """Unlink the record (call under the guard); a failure is the storage's."""
        try:
            os.unlink(RECORD_NAME, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise StorageError(error.errno, f"cannot remove lock record {self.record_path}: "
                                            f"{error.strerror}") from error
