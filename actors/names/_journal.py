"""The name pool's durable state: a snapshot plus a journal of the changes made since.

A change is made durable by appending what changed (a frame of `NameState` primitive
changes) and one `fdatasync` on a writer thread, while the pool goes on with the next
requests; a snapshot of the whole state is rewritten in the background once the journal
has grown past a size, and the journal then starts over::

    journal = Journal("/var/lib/fleet/names.state", on_failure=tell_the_pool)
    state = journal.load(chunk_size=12, default_name="Nameless Agent")  # snapshot + replay
    state.is_recording = True
    journal.checkpoint(state)        # snapshot now, empty journal (StorageError if it cannot)
    state.checkout("urn:w")
    journal.submit(state.take_changes(), [(reply, "furiosa")], stats)   # answered once durable
    journal.close()                  # graceful stop: final snapshot, journal removed

Files, beside the snapshot `<state_path>` (a `SnapshotStore` map whose data carries
`journal_sequence`, the newest frame it includes): `<state_path>.journal`, preallocated
with zeros, holding frames `magic "NPJ3", sequence, length, crc32` + msgpack list of
changes. Recovery is the snapshot plus every later frame in order. A torn last frame (a
power cut in the middle of a write: it was never answered) is dropped with a WARNING; a
damaged frame followed by good ones, or a gap in the sequence, is corruption: the journal
is moved aside (ERROR) and the frames before the damage are kept. Frames `"NPJ2"` (whole
states, written by the previous version) are read as whole states.

Storage faults: a frame that cannot be written fails its replies (and every reply queued
behind it) with `StorageError`; the writer then refuses everything until `rollback` and a
successful `checkpoint`. See `docs/design.md` ("The name pool") for why each step is safe.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import stat
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from loguru import logger

from actors.names._state import Change, NameState
from supervision import DeferredReply, SnapshotError, SnapshotStore, StorageError, quarantine_file

__all__ = ["Journal", "JOURNAL_MAGIC", "SEQUENCE_KEY"]

JOURNAL_MAGIC = b"NPJ3"  # a frame of changes
_WHOLE_STATE_MAGIC = b"NPJ2"  # a frame holding a whole state (the previous version's journal)
_ZERO_MAGIC = b"\0\0\0\0"
# magic, sequence number, payload length, crc32 of the payload
_FRAME_HEADER = struct.Struct("<4sQII")
_JOURNAL_CHUNK = 1 << 16  # the journal grows (preallocated with zeros) by this much
#: The journal bytes written since the last snapshot that start a background snapshot (at
#: least; twice the last snapshot's size when that is more, so the rewrite stays a small
#: fraction of the writes whatever the size of the state).
SNAPSHOT_AFTER_BYTES = 1 << 20
_STORE_VERSION = 1
#: Key added to `NameState.to_snapshot()` in the snapshot: the newest journal frame it includes.
SEQUENCE_KEY = "journal_sequence"
_OPEN_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK  # NONBLOCK: a FIFO must not hang us
_JOIN_SECONDS = 5.0  # real seconds a crash waits for the writer's current write

Reply = tuple[DeferredReply, Any]


@dataclass(slots=True)
class _Batch:
    """Changes handled together by the pool, and the replies that wait for them."""

    epoch: int
    changes: list[Change]
    replies: list[Reply]
    stats: Any


@dataclass(frozen=True, slots=True)
class _Rotate:
    """The snapshot of frame `sequence` is durable: start the journal over after it."""

    sequence: int


_STOP = object()


@dataclass(slots=True)
class _Frames:
    """Frames read from a journal file, and what ended the reading."""

    frames: list[tuple[bytes, int, bytes]] = field(default_factory=list)  # (magic, sequence, payload)
    damage: str | None = None  # a damaged frame followed by good ones
    torn: str | None = None  # a last frame cut short
    highest: int = 0  # the highest sequence seen in any intact frame


class Journal:
    """Snapshot + journal of one name pool, with its writer and snapshot threads."""

    def __init__(
        self,
        state_path: str | os.PathLike[str],
        *,
        on_failure: Callable[[StorageError, int], None],
        publish: Callable[[Any], None] | None = None,
    ) -> None:
        self._store = SnapshotStore(state_path, version=_STORE_VERSION)
        self.path: Path = self._store.path
        self.journal_path: Path = self.path.with_name(self.path.name + ".journal")
        self._new_journal_path = self.path.with_name(self.path.name + ".journal.new")
        self._on_failure = on_failure
        self._publish = publish
        self._log = logger.bind(state_path=str(self.path))
        self._lock = threading.Lock()  # guards the fields the pool thread also reads or sets
        self._io_lock = threading.Lock()  # one writer of the journal file at a time
        self._snapshot_lock = threading.Lock()  # one snapshot save at a time, never an older one
        self._fd: int | None = None
        self._offset = 0
        self._capacity = 0
        self._sequence = 0  # the highest frame number ever written or seen on disk
        self._base = 0  # the snapshot's frame number that the current journal file follows
        self._snapshot_sequence = 0
        self._snapshot_size = 0
        self._recent: list[tuple[int, bytes]] = []  # frames in the journal after `_base`
        self._bytes_since_snapshot = 0
        self._is_snapshotting = False
        self._mirror: NameState | None = None  # the durable state (the writer's copy)
        self._broken: StorageError | None = None
        self._broken_epoch = -1  # the epoch whose batches the failure refuses
        self._epoch = 0
        self._is_abandoned = False
        self._submitted = 0
        self._completed = 0
        #: Journal frame bytes written (headers included), for tests and benchmarks.
        self.frame_bytes_written = 0
        self.frames_written = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._snapshots: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._run_writer, name=f"names-journal-{id(self):x}", daemon=True)
        self._snapshotter = threading.Thread(
            target=self._run_snapshots, name=f"names-snapshot-{id(self):x}", daemon=True
        )
        self._writer.start()
        self._snapshotter.start()

    # -- loading ------------------------------------------------------------------------

    def load(self, chunk_size: int, default_name: str) -> NameState:
        """The durable state: the snapshot plus every later journal frame, replayed.

        A corrupt snapshot or journal is moved aside (ERROR) and what remains is used;
        `SnapshotError` for a symlink or a non-regular file; `OSError` if reading fails.
        """
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._new_journal_path)  # a rotation cut short: the old journal stands
        snapshot = self._store.load()  # quarantines and logs a corrupt snapshot
        base = 0
        if snapshot is not None:
            try:
                NameState.from_snapshot(snapshot, chunk_size, default_name)
                sequence = snapshot.get(SEQUENCE_KEY) if isinstance(snapshot, dict) else None
                base = sequence if type(sequence) is int and sequence >= 0 else 0
            except ValueError as error:
                quarantine_file(self.path, f"unusable name pool state: {error}")
                snapshot = None

        def base_state() -> NameState:
            if snapshot is None:
                return NameState(chunk_size, default_name)
            return NameState.from_snapshot(snapshot, chunk_size, default_name)

        read = self._read_journal()
        self._sequence = max(base, read.highest)
        self._snapshot_sequence = base
        if read.torn is not None:
            self._log.warning("name pool journal {}: {}; dropped (it was never answered)", self.journal_path, read.torn)
        state, applied, problem = _replay(base_state, read.frames, base, chunk_size, default_name)
        if read.damage is not None or problem is not None:
            quarantine_file(self.journal_path, f"corrupt name pool journal ({problem or read.damage})")
        if applied:
            self._log.info("name pool replayed {} journal frames after its snapshot", applied)
        return state

    def _read_journal(self) -> _Frames:
        try:
            fd = _open_regular(self.journal_path, os.O_RDONLY)
        except FileNotFoundError:
            return _Frames()
        try:
            with open(fd, "rb", closefd=False) as file:
                content = file.read()
        finally:
            os.close(fd)
        return _parse(content)

    # -- writing ------------------------------------------------------------------------

    def checkpoint(self, state: NameState) -> None:
        """Make `state` the snapshot and start an empty journal after it; the writer resumes.

        Raises `StorageError` (naming the path and the errno) when either cannot be
        written; `SnapshotError` for a symlinked or irregular file.
        """
        with self._io_lock:
            with self._snapshot_lock:
                sequence = self._sequence + 1
                try:
                    self._store.save({**state.to_snapshot(), SEQUENCE_KEY: sequence})
                except SnapshotError:
                    raise
                except OSError as error:
                    raise _storage_error(error, self.path) from error
                self._snapshot_sequence = sequence
                self._snapshot_size = _size_of(self.path)
            try:
                fd, capacity = self._fresh_journal([])
            except SnapshotError:
                raise
            except OSError as error:
                raise _storage_error(error, self.journal_path) from error
            with self._lock:
                self._swap_journal(fd, capacity, 0)
                self._sequence = self._base = sequence
                self._recent = []
                self._bytes_since_snapshot = 0
                self._mirror = state.copy()
                self._broken = None

    def submit(self, changes: list[Change], replies: list[Reply], stats: Any) -> None:
        """Write `changes` as one frame (none if empty), then answer `replies`: on the writer thread."""
        self._submitted += 1
        self._queue.put(_Batch(self._epoch, changes, replies, stats))

    def is_idle(self) -> bool:
        """True when every batch submitted has been written (or refused)."""
        return self._completed == self._submitted

    @property
    def epoch(self) -> int:
        return self._epoch

    def rollback(self) -> NameState:
        """After a failure: the durable state (a copy); batches submitted before are refused."""
        with self._lock:
            self._epoch += 1
            assert self._mirror is not None
            return self._mirror.copy()

    def close(self) -> None:
        """Graceful stop: write what is queued, save the durable state as the snapshot, drop the journal.

        Failures are logged, not raised: the journal then stays and holds the state.
        """
        self._queue.put(_STOP)
        self._writer.join()
        self._snapshots.put(_STOP)
        self._snapshotter.join()
        with self._lock:
            mirror, broken = self._mirror, self._broken
        if self._fd is None or mirror is None:
            return
        try:
            with self._snapshot_lock:
                self._store.save({**mirror.to_snapshot(), SEQUENCE_KEY: self._sequence + 1})
            self._close_fd()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.journal_path)
        except OSError as error:
            self._close_fd()
            self._log.error("name pool could not save its final snapshot ({}); the journal keeps the state", error)
        if broken is not None:
            self._log.warning("name pool stopped while its storage failed: {}", broken)

    def abandon(self) -> None:
        """A crash: what was submitted is still written and answered, then nothing more.

        Those changes were handled; once durable their callers must hear so (a checkin
        answered `ActorCrashed` but durable would leave its caller believing it still holds
        a name the next incarnation hands out). Only a write still unfinished after
        `_JOIN_SECONDS` (a hung disk) is left to the crash to answer. The files stay for
        the next incarnation.
        """
        self._queue.put(_STOP)
        self._snapshots.put(_STOP)
        if threading.current_thread() is not self._writer:
            self._writer.join(_JOIN_SECONDS)
        with self._lock:
            self._is_abandoned = True
        self._snapshotter.join(_JOIN_SECONDS)
        with self._io_lock:
            self._close_fd()

    # -- the writer thread ----------------------------------------------------------------

    def _run_writer(self) -> None:
        while True:
            items = [self._queue.get()]
            while True:  # everything queued meanwhile goes out with one sync
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            batches = [item for item in items if type(item) is _Batch]
            try:
                if batches:
                    self._write(batches)
            except BaseException as error:  # never leave a caller waiting on a dead writer
                self._log.opt(exception=error).error("name pool journal writer failed")
                failure = StorageError(errno.EIO, f"name pool journal writer failed: {error!r}", str(self.journal_path))
                with self._lock:
                    self._broken, self._broken_epoch = failure, self._epoch
                self._on_failure(failure, self._epoch)
                _fail(batches, failure)
            finally:
                self._completed += len(batches)
            for item in items:
                if type(item) is _Rotate:
                    self._rotate(item.sequence)
            if any(item is _STOP for item in items):
                return

    def _write(self, batches: list[_Batch]) -> None:
        with self._lock:
            if self._is_abandoned:
                return  # the crash answers these callers: nothing of theirs is written
            broken, epoch = self._broken, self._epoch
        refusal = broken or StorageError(
            errno.EIO, "name pool state was rolled back after a failed write", str(self.journal_path)
        )
        # Built on a state that was rolled back: refused. Reads taken from the rolled-back
        # (durable) state while writes fail have nothing to wait for: answered.
        stale = [batch for batch in batches if batch.epoch != epoch]
        if broken is not None:
            stale += [batch for batch in batches if batch.epoch == epoch and (batch.changes or epoch <= self._broken_epoch)]
            _answer([batch for batch in batches if batch not in stale])
            _fail(stale, refusal)
            return
        _fail(stale, refusal)
        live = [batch for batch in batches if batch.epoch == epoch]
        frames: list[tuple[int, bytes]] = []
        with self._io_lock:
            if self._fd is None:
                _fail(live, StorageError(errno.EBADF, "name pool journal is not open", str(self.journal_path)))
                return
            sequence = self._sequence
            for batch in live:
                if batch.changes:
                    sequence += 1
                    payload = msgpack.packb(batch.changes, use_bin_type=True)
                    header = _FRAME_HEADER.pack(JOURNAL_MAGIC, sequence, len(payload), zlib.crc32(payload))
                    frames.append((sequence, header + payload))
            if frames:
                data = b"".join(frame for _, frame in frames)
                try:
                    self._append(data)
                except OSError as error:
                    failure = _storage_error(error, self.journal_path)
                    with self._lock:
                        self._broken, self._broken_epoch = failure, epoch
                        self._sequence = sequence  # never reuse a number that may be on disk
                    # The pool hears first: its rollback is then queued ahead of anything
                    # the refused callers send next (a read must not see the lost change).
                    self._on_failure(failure, epoch)
                    _fail(live, failure)
                    return
            with self._lock:
                if self._is_abandoned:
                    return  # durable, but the crash already answered: a leak, never a duplicate
                self._sequence = sequence
                self._recent.extend(frames)
                self.frames_written += len(frames)
                for _, frame in frames:
                    self.frame_bytes_written += len(frame)
                    self._bytes_since_snapshot += len(frame)
                # The copy of the durable state moves with the sequence, before anyone is
                # answered: a rollback (a failed snapshot, on another thread) must never
                # return a state without a change whose caller was told it was made.
                assert self._mirror is not None
                for batch in live:
                    if batch.changes:
                        self._mirror.apply(batch.changes)
            for batch in live:
                if self._publish is not None and batch.stats is not None:
                    self._publish(batch.stats)
                for reply, value in batch.replies:
                    reply.set(value)
        self._maybe_snapshot()

    def _append(self, data: bytes) -> None:
        assert self._fd is not None
        end = self._offset + len(data)
        if end > self._capacity:
            capacity = max(self._capacity + _JOURNAL_CHUNK, end + _JOURNAL_CHUNK)
            _write_all(self._fd, bytes(capacity - self._capacity), self._capacity)
            os.fsync(self._fd)  # the file's new size must be durable before a frame relies on it
            self._capacity = capacity
        _write_all(self._fd, data, self._offset)
        os.fdatasync(self._fd)
        self._offset = end

    def _maybe_snapshot(self) -> None:
        with self._lock:
            threshold = max(SNAPSHOT_AFTER_BYTES, 2 * self._snapshot_size)
            if self._is_snapshotting or self._bytes_since_snapshot < threshold or self._mirror is None:
                return
            self._is_snapshotting = True
            sequence = self._sequence
            # O(state) on the writer thread, once per `threshold` bytes of frames; the
            # save (the slow, I/O part) runs on the snapshot thread.
            data = self._mirror.to_snapshot()
        self._snapshots.put((sequence, data))

    def _rotate(self, sequence: int) -> None:
        """Start the journal over after snapshot `sequence`: a new file with the later frames."""
        with self._io_lock:
            with self._lock:
                if self._broken is not None or self._is_abandoned or sequence <= self._base or self._fd is None:
                    self._is_snapshotting = False
                    return
                kept = [(number, frame) for number, frame in self._recent if number > sequence]
            try:
                fd, capacity = self._fresh_journal([frame for _, frame in kept])
            except OSError as error:
                self._log.warning("name pool journal could not start over after its snapshot: {}", error)
                with self._lock:
                    self._is_snapshotting = False
                return
            with self._lock:
                self._swap_journal(fd, capacity, sum(len(frame) for _, frame in kept))
                self._base = sequence
                self._recent = kept
                self._bytes_since_snapshot = self._offset
                self._is_snapshotting = False

    def _fresh_journal(self, frames: list[bytes]) -> tuple[int, int]:
        """A new journal holding `frames`, renamed over the old one durably: (fd, capacity)."""
        content = b"".join(frames)
        capacity = len(content) + _JOURNAL_CHUNK
        fd = _open_regular(self._new_journal_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        try:
            os.fchmod(fd, 0o600)
            _write_all(fd, content + bytes(capacity - len(content)), 0)
            os.fsync(fd)
            os.rename(self._new_journal_path, self.journal_path)
            _fsync_directory(self.path.parent)  # the new journal's name must survive a power cut
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self._new_journal_path)
            raise
        return fd, capacity

    def _swap_journal(self, fd: int, capacity: int, offset: int) -> None:
        self._close_fd()
        self._fd, self._capacity, self._offset = fd, capacity, offset

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- the snapshot thread --------------------------------------------------------------

    def _run_snapshots(self) -> None:
        while True:
            job = self._snapshots.get()
            if job is _STOP:
                return
            sequence, data = job
            try:
                with self._snapshot_lock:
                    with self._lock:
                        if self._is_abandoned or sequence <= self._snapshot_sequence:
                            self._is_snapshotting = False
                            continue
                    self._store.save({**data, SEQUENCE_KEY: sequence})
                    self._snapshot_sequence = sequence
                    self._snapshot_size = _size_of(self.path)
            except OSError as error:
                self._log.warning("name pool snapshot not rewritten ({}); the journal keeps the state", error)
                with self._lock:
                    self._is_snapshotting = False
                    self._bytes_since_snapshot = 0  # try again after as many bytes more
                continue
            self._queue.put(_Rotate(sequence))


def _replay(
    base_state: Callable[[], NameState],
    frames: list[tuple[bytes, int, bytes]],
    base: int,
    chunk_size: int,
    default_name: str,
) -> tuple[NameState, int, str | None]:
    """`base_state()` with the frames after `base` applied in order: (state, frames applied, problem).

    A frame that does not decode or fit stops the replay, and the state is rebuilt with
    the frames before it only (`apply` may have stopped half way; this rare case pays a
    second replay).
    """
    state = base_state()
    applied = 0
    last = base
    for index, (magic, sequence, payload) in enumerate(frames):
        if sequence <= base:
            continue
        try:
            if magic == _WHOLE_STATE_MAGIC:
                if applied and sequence != last + 1:
                    break  # an older frame that a zeroing cut short did not reach (previous version)
                state = NameState.from_snapshot(_unpack(payload), chunk_size, default_name)
            elif sequence != last + 1:
                return state, applied, f"frame {sequence} follows frame {last}: frames are missing"
            else:
                changes = _unpack(payload)
                if not isinstance(changes, list):
                    raise ValueError(f"a frame holds a list of changes, not {type(changes).__name__}")
                state.apply(changes)
        except ValueError as error:
            state, applied, _ = _replay(base_state, frames[:index], base, chunk_size, default_name)
            return state, applied, f"frame {sequence}: {error}"
        applied, last = applied + 1, sequence
    return state, applied, None


def _unpack(payload: bytes) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False, use_list=True)
    except Exception as error:  # msgpack raises several types; the checksum passed, though
        raise ValueError(f"undecodable frame: {error!r}") from None


def _parse(content: bytes) -> _Frames:
    """Frames from the start of `content`, up to the zeroed rest or the first bad frame."""
    read = _Frames()
    offset = 0
    size = _FRAME_HEADER.size
    while offset < len(content):
        if offset + size > len(content):
            if content[offset:].strip(b"\0"):
                read.torn = f"a frame header cut short at byte {offset}"
            return read
        magic, sequence, length, checksum = _FRAME_HEADER.unpack_from(content, offset)
        if magic == _ZERO_MAGIC:
            return read  # the zeroed rest of the journal
        end = offset + size + length
        problem = None
        if magic not in (JOURNAL_MAGIC, _WHOLE_STATE_MAGIC):
            problem = f"no frame at byte {offset}"
        elif end > len(content) or zlib.crc32(content[offset + size : end]) != checksum:
            problem = f"frame at byte {offset} is incomplete or damaged"
        if problem is not None:
            later = _later_good_frame(content, offset + 1)
            if later is not None:
                read.damage = f"{problem}, yet frame {later} follows it"
                read.highest = max(read.highest, later)
            else:
                read.torn = problem
            return read
        read.frames.append((magic, sequence, content[offset + size : end]))
        read.highest = max(read.highest, sequence)
        offset = end
    return read


def _later_good_frame(content: bytes, start: int) -> int | None:
    """The sequence number of an intact frame somewhere after `start`, or None."""
    size = _FRAME_HEADER.size
    position = content.find(JOURNAL_MAGIC, start)
    while position != -1 and position + size <= len(content):
        _, sequence, length, checksum = _FRAME_HEADER.unpack_from(content, position)
        end = position + size + length
        if end <= len(content) and zlib.crc32(content[position + size : end]) == checksum:
            return sequence
        position = content.find(JOURNAL_MAGIC, position + 1)
    return None


def _answer(batches: list[_Batch]) -> None:
    for batch in batches:
        for reply, value in batch.replies:
            reply.set(value)


def _fail(batches: list[_Batch], error: StorageError) -> None:
    for batch in batches:
        for reply, _ in batch.replies:
            reply.set_exception((StorageError, error, None))


def _storage_error(error: OSError, path: Path) -> StorageError:
    if isinstance(error, StorageError):
        return error
    code = error.errno if error.errno is not None else errno.EIO
    return StorageError(code, f"name pool state cannot be written: {os.strerror(code)}", str(path))


def _size_of(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    written = 0
    while written < len(view):
        written += os.pwrite(fd, view[written:], offset + written)


def _open_regular(path: Path, flags: int) -> int:
    """Open `path` without following a symlink; refuse anything but a regular file."""
    try:
        fd = os.open(path, flags | _OPEN_FLAGS, 0o600)
    except OSError as error:
        if error.errno == errno.ELOOP:
            refusal = "name pool journal is a symlink; refusing to follow it"
            raise SnapshotError(errno.ELOOP, refusal, str(path)) from error
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SnapshotError(errno.EINVAL, "name pool journal is not a regular file", str(path))
    return fd


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
