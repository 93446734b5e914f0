"""The `NamePool` actor: worker names handed out, watched and made durable.

A thin shell around the pure `NameState` core: it asks the name source for chunks on
a helper thread, checks int owners with psutil on a timer, and makes everything it
handled together durable with one sync before it answers::

    pool = NamePool.start(state_path="/var/lib/town/names.state").proxy()
    name = pool.checkout_name(os.getpid()).get(timeout=5)   # 'furiosa'
    pool.associate_name(name, child.pid).get()             # the child shares it
    pool.get_name_by_pid(child.pid).get()                  # 'furiosa'
    pool.checkin_name(name).get()                          # back on top of the stack

How it works:

- **Source off the thread.** A checkout that finds no name returns a `DeferredReply`
  and waits for the one chunk in flight (starting it if there is none). A daemon thread
  calls `source(chunk_size, used)` and tells the pool the result, tagged with a
  generation; a real-seconds watchdog tells it when `source_timeout` passed. A failure
  answers every waiter with `NameSourceError` and leaves the pool as it was; a result
  whose generation is stale (timed out, or `reset` meanwhile) is discarded.
- **Group commit.** With `state_path`, a call whose answer depends on a change not yet
  on disk gets a `DeferredReply`, and the pool tells itself `_Flush` once; the flush runs
  behind the requests already queued, writes the state once (a frame in the journal
  `<state_path>.journal`, one fdatasync; see `_StateFiles`) and answers them all.
  Without `state_path` answers are immediate.
- **Crash.** A crash (or `kill`) answers the calls still waiting (for a write or for
  the source) with `ActorCrashed`: nothing they did was written, so nothing happened.
  The next incarnation loads the newest durable state in `on_start`, like a cold start,
  so a name whose checkout was answered is never handed to a second holder.
- **Owners watched.** Every `reap_interval` on the clock, int owners whose process is
  gone (pid plus creation time; zombies count as dead) lose their names.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import stat
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import msgpack
import pykka

from actors._errors import NameSourceError
from actors.names._state import CheckinOutcome, NameState, Owner, validate_owner
from actors.names._source import ThemedSource, validate_name
from actors._process import is_same_process_alive, process_start_time
from supervision import (
    ActorCrashed,
    Clock,
    DeferredReply,
    SnapshotError,
    SnapshotStore,
    SupervisedActor,
    SystemClock,
    Timer,
    UnknownMessage,
    quarantine_file,
    send_interval,
)
from supervision._errors import describe

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["HOLDERS_REQUEST", "NamePool", "NameSource"]

#: `source(count, used) -> list[str]`: the "nomenclater" a pool asks for new names.
NameSource = Callable[[int, frozenset[str]], Iterable[str]]

#: `pool_ref.ask(HOLDERS_REQUEST)` answers `{name: [owner, ...]}` for every checked-out
#: name (None stands for an anonymous holder); `actors.daemon._status` uses it.
HOLDERS_REQUEST = "holders"

#: Version of the snapshot envelope (`SnapshotStore`); the data carries its own version.
_STORE_VERSION = 1


# -- messages the pool sends itself ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Flush:
    """Make the state durable and answer the replies waiting for it."""


@dataclass(frozen=True, slots=True)
class _Reap:
    """Timer tick: drop int owners whose process is gone."""


@dataclass(frozen=True, slots=True)
class _ChunkResult:
    """What the source thread got: names, or the exception the source raised."""

    generation: int
    names: Any
    error: BaseException | None


@dataclass(frozen=True, slots=True)
class _ChunkTimeout:
    """The watchdog of chunk `generation` fired."""

    generation: int


_FLUSH = _Flush()
_REAP = _Reap()


@dataclass(slots=True)
class _Waiter:
    """A checkout waiting for a chunk."""

    owner: Owner
    start_time: float | None
    reply: DeferredReply


@dataclass(slots=True)
class _ChunkRequest:
    """The one source call in flight."""

    generation: int
    watchdog: threading.Timer


# -- durable state --------------------------------------------------------------------------

_JOURNAL_MAGIC = b"NPJ2"
# magic, sequence number, payload length, crc32 of the payload
_FRAME_HEADER = struct.Struct("<4sQII")
_JOURNAL_BYTES = 1 << 20  # the journal's preallocated size; when full it is folded into the snapshot
_PATH_CHECK_SECONDS = 0.1  # real seconds between checks that the state path is still a file
_OPEN_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK  # NONBLOCK: a FIFO must not hang us
#: Key added to `NameState.to_snapshot()` in the snapshot: the journal frame it includes.
_SEQUENCE_KEY = "journal_sequence"


class _StateFiles:
    """The pool's durable state: a `SnapshotStore` snapshot at `state_path`, a journal beside it.

    Why a journal: a flush writes the whole state as one numbered, checksummed frame into
    `<state_path>.journal` with `pwrite` + `fdatasync`, about 0.1 ms on these disks,
    against about 0.5 ms for a snapshot (temporary file, fsync, rename, directory fsync);
    that one sync per group of requests is what bounds a durable pool's throughput. The
    journal is preallocated with zeros, so a frame overwrites blocks that already exist
    and the sync carries no file-size or extent change.

    When the journal is full, at start and at a graceful stop, the state is saved as a
    snapshot (with the number of the newest frame it includes) and the journal zeroed
    again; a stopped pool leaves only the snapshot. Loading takes the newest frame that
    follows an unbroken run of frames from the journal's start, if it is newer than the
    snapshot; frames at or below the snapshot's number (a zeroing cut short) are ignored.
    """

    def __init__(self, state_path: str | os.PathLike[str]) -> None:
        self.store = SnapshotStore(state_path, version=_STORE_VERSION)
        self.path: Path = self.store.path
        self.journal_path: Path = self.path.with_name(self.path.name + ".journal")
        self._fd: int | None = None
        self._sequence = 0  # number of the newest state written
        self._offset = 0  # where the next frame goes
        self._capacity = 0
        self._path_checked_at = -math.inf

    def load(self, log: Logger) -> list[tuple[str, Any]]:
        """Stored states, newest first, as `(where, data)` with where "journal" or "snapshot"."""
        snapshot = self.store.load()  # the store quarantines and logs a corrupt snapshot
        snapshot_sequence = 0
        if isinstance(snapshot, dict) and type(snapshot.get(_SEQUENCE_KEY)) is int:
            snapshot_sequence = snapshot[_SEQUENCE_KEY]
        found: list[tuple[str, Any]] = []
        newest = self._read_journal(log)
        if newest is not None and newest[0] > snapshot_sequence:
            found.append(("journal", newest[1]))
        self._sequence = max(snapshot_sequence, 0 if newest is None else newest[0])
        if snapshot is not None:
            found.append(("snapshot", snapshot))
        return found

    def quarantine(self, where: str, reason: str) -> None:
        """Move the journal or the snapshot aside, as the store does with a corrupt file."""
        quarantine_file(self.journal_path if where == "journal" else self.path, f"corrupt name pool state ({reason})")

    def open(self, data: dict[str, Any]) -> None:
        """Save `data` as the snapshot and start an empty journal."""
        self._save_snapshot(data)  # also creates the directory (0700)
        fd = _open_regular(self.journal_path, os.O_RDWR | os.O_CREAT)
        try:
            os.fchmod(fd, 0o600)
            self._fd = fd
            self._zero_journal(_JOURNAL_BYTES)
            _fsync_directory(self.path.parent)  # the journal's own name must survive a power cut
        except BaseException:
            self.abandon()
            raise

    def append(self, data: dict[str, Any]) -> None:
        """Make `data` the durable state: one frame, one fdatasync (or a snapshot if full)."""
        assert self._fd is not None
        now = time.monotonic()
        if now - self._path_checked_at >= _PATH_CHECK_SECONDS:
            self._check_path()
            self._path_checked_at = now
        self._sequence += 1
        payload = msgpack.packb(data, use_bin_type=True)
        frame = _FRAME_HEADER.pack(_JOURNAL_MAGIC, self._sequence, len(payload), zlib.crc32(payload)) + payload
        if self._offset + len(frame) > self._capacity:
            # Full: the snapshot takes this state, and the journal starts over (bigger if
            # the state has grown, so that this stays rare).
            self._save_snapshot(data)
            self._zero_journal(max(self._capacity, 8 * len(frame)))
            return
        written = os.pwrite(self._fd, frame, self._offset)
        while written < len(frame):
            written += os.pwrite(self._fd, memoryview(frame)[written:], self._offset + written)
        os.fdatasync(self._fd)
        self._offset += len(frame)

    def _check_path(self) -> None:
        """Fail when the state path became unusable (a directory or a symlink now).

        The journal's descriptor would write on regardless, and the trouble would show
        only at the next fold or stop; this makes it a crash within a fraction of a
        second instead, as a snapshot per write would. Not on every write: each system
        call lets the callers take the GIL, which costs the flush more than the call.
        """
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return  # removed: the journal holds the state and the next fold writes it anew
        if not stat.S_ISREG(mode):
            raise SnapshotError(errno.EINVAL, "name pool state path is no longer a regular file", str(self.path))

    def close(self, data: dict[str, Any]) -> None:
        """Save `data` as the snapshot and remove the journal (a graceful stop)."""
        if self._fd is None:
            return
        self._sequence += 1
        self._save_snapshot(data)
        self.abandon()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.journal_path)

    def abandon(self) -> None:
        """Close the journal as it is (a crash): the next incarnation reads it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _save_snapshot(self, data: dict[str, Any]) -> None:
        self.store.save({**data, _SEQUENCE_KEY: self._sequence})

    def _zero_journal(self, capacity: int) -> None:
        """Fill the journal with `capacity` zero bytes, durably; the next frame goes first."""
        assert self._fd is not None
        zeros = bytes(min(capacity, _JOURNAL_BYTES))
        offset = 0
        while offset < capacity:
            offset += os.pwrite(self._fd, zeros[: capacity - offset], offset)
        os.ftruncate(self._fd, capacity)
        os.fsync(self._fd)
        self._offset, self._capacity = 0, capacity

    def _read_journal(self, log: Logger) -> tuple[int, Any] | None:
        """`(sequence, data)` of the journal's newest frame, or None."""
        try:
            fd = _open_regular(self.journal_path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            with open(fd, "rb", closefd=False) as file:
                content = file.read()
        finally:
            os.close(fd)
        newest, problem = _newest_frame(content)
        if problem is not None:
            # A frame cut short by a power loss (never answered) or damage: what came
            # before it is still the newest state that was answered.
            log.warning("name pool journal {}: {}; using the frames before it", self.journal_path, problem)
        if newest is None:
            return None
        sequence, payload = newest
        try:
            return sequence, msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except Exception as error:  # msgpack raises several types; the checksum passed, though
            self.quarantine("journal", f"undecodable frame {sequence}: {error!r}")
            return None


def _newest_frame(content: bytes) -> tuple[tuple[int, bytes] | None, str | None]:
    """The last frame of the unbroken run from the start, and why the run ended (None: zeros)."""
    newest: tuple[int, bytes] | None = None
    offset = 0
    size = _FRAME_HEADER.size
    while offset + size <= len(content):
        magic, sequence, length, checksum = _FRAME_HEADER.unpack_from(content, offset)
        if magic == b"\0\0\0\0":
            return newest, None  # the zeroed rest of the journal
        if magic != _JOURNAL_MAGIC:
            return newest, f"no frame at byte {offset}"
        end = offset + size + length
        payload = content[offset + size : end]
        if end > len(content) or zlib.crc32(payload) != checksum:
            return newest, f"frame at byte {offset} is incomplete or damaged"
        if newest is not None and sequence != newest[0] + 1:
            return newest, None  # an older frame that a zeroing cut short did not reach
        newest, offset = (sequence, payload), end
    return newest, None


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


# -- the actor ------------------------------------------------------------------------------

_Batch = list[tuple[DeferredReply, Any]]  # replies waiting for a flush, with their values
_T = TypeVar("_T")


def _check_seconds(what: str, value: object, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{what} must be a finite number {bound}, not {value!r}")
    return float(value)


class NamePool(SupervisedActor):
    """Hands out unique worker names, reuses them LIFO, and keeps them across crashes.

    Start with `NamePool.start(*, source=None, chunk_size=12, state_path=None,
    default_name="Nameless Agent", clock=None, reap_interval=5.0, source_timeout=30.0)`;
    invalid settings raise `ValueError`/`TypeError` before anything starts. The rules
    live in `NameState`; names come from `source` (default `ThemedSource()`); owners
    are None, an int pid or a str (see `actors.names._state`).
    """

    def __init__(
        self,
        *,
        source: NameSource | None = None,
        chunk_size: int = 12,
        state_path: str | os.PathLike[str] | None = None,
        default_name: str = "Nameless Agent",
        clock: Clock | None = None,
        reap_interval: float = 5.0,
        source_timeout: float = 30.0,
    ) -> None:
        if source is not None and not callable(source):
            raise TypeError(f"source must be callable as source(count, used), not {type(source).__name__}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
            raise TypeError(f"chunk_size must be an int, not {type(chunk_size).__name__}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, not {chunk_size!r}")
        self._reap_interval = _check_seconds("reap_interval", reap_interval, allow_zero=False)
        self._source_timeout = _check_seconds("source_timeout", source_timeout, allow_zero=True)
        self._default_name = validate_name(default_name)  # InvalidName is a ValueError
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a supervision Clock, not {type(clock).__name__}")
        if state_path is not None and not isinstance(state_path, str | os.PathLike):
            raise TypeError(f"state_path must be a path, not {type(state_path).__name__}")
        super().__init__()
        self._source: NameSource = ThemedSource() if source is None else source
        self._chunk_size = chunk_size
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._files = None if state_path is None else _StateFiles(state_path)
        self._state = NameState(chunk_size, self._default_name)
        # The revision on disk; a reply that depends on a newer one waits for a flush.
        self._saved_revision = self._state.revision
        self._unsaved_replies: _Batch = []
        self._is_flush_queued = False
        self._published_stats: Mapping[str, Any] | None = None
        self._published_key: tuple[int, int, bool] | None = None
        self._waiters: list[_Waiter] = []
        self._chunk: _ChunkRequest | None = None
        # Bumped by every chunk request and by reset: a result of another generation is late.
        self._generation = 0
        self._reap_timer: Timer | None = None
        self._handlers: dict[type, Callable[[Any], None]] = {
            _Flush: self._on_flush,
            _Reap: self._on_reap,
            _ChunkResult: self._on_chunk_result,
            _ChunkTimeout: self._on_chunk_timeout,
        }

    # -- lifecycle ------------------------------------------------------------------------

    def on_start(self) -> None:
        # A restart and a cold start are the same code path: load what is durable.
        if self._files is not None:
            self._load()
        self._reap_timer = send_interval(self.actor_ref, _REAP, self._reap_interval, self._clock)

    def on_stop(self) -> None:
        self._stop_timers()
        self._drop_waiters()
        if self._files is None:
            return
        try:
            # A graceful stop keeps its promises: the state becomes the snapshot, then
            # the replies still waiting are answered.
            self._files.close(self._state.to_snapshot())
        except BaseException as error:
            self._cut_off_unsaved(error)
            self._files.abandon()
            raise
        self._saved_revision = self._state.revision
        replies, self._unsaved_replies = self._unsaved_replies, []
        for reply, value in replies:
            reply.set(value)

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop_timers()
        # Every reply still waiting (for a write or for the source) is left to the base
        # class, which answers it with ActorCrashed: nothing it did was written.
        self._waiters.clear()
        if self._files is not None:
            self._files.abandon()

    def on_receive(self, message: Any) -> Any:
        handler = self._handlers.get(message.__class__)
        if handler is not None:
            return handler(message)
        if message == HOLDERS_REQUEST:
            # For `python -m actors status`; an ask, not a public method, so that the
            # socket does not serve it as `names.holders`.
            return self._answer(self._state.holders())
        raise UnknownMessage(f"NamePool does not handle {describe(message)}")

    # -- public API -----------------------------------------------------------------------

    def checkout_name(self, owner: Owner = None) -> str | DeferredReply:
        """A name no other holder has; an owner that holds or shares one gets that one again.

        `owner=None` always gets a new name. Waits (off the pool's thread) for the source
        when no name is available; `NameSourceError` if it fails.
        """
        owner = validate_owner(owner)
        start_time = process_start_time(owner) if type(owner) is int else None
        name = self._state.checkout(owner, start_time)
        if name is not None:
            self._note_change()
            return self._answer(name)
        # No name available: wait for the chunk in flight (one source call for everyone).
        reply = DeferredReply()
        self._waiters.append(_Waiter(owner, start_time, reply))
        if self._chunk is None:
            self._request_chunk()
        self._note_change()  # a reused pid may have lost its old name meanwhile
        return reply

    def checkin_name(self, name: str) -> DeferredReply | None:
        """Return `name` to the pool (LIFO); a name not checked out only logs a warning."""
        outcome = self._state.checkin(name)
        if outcome is CheckinOutcome.NOT_CHECKED_OUT:
            self._log.warning("checkin of {!r}, which is not checked out: ignored", name)
        elif outcome is CheckinOutcome.RETURNED:
            self._serve_waiters()
            self._note_change()
        return self._answer(None)

    def associate_name(self, name: str | None, owner: Owner) -> DeferredReply | None:
        """Make `owner` resolve to `name`: shared if checked out, else checked out for it."""
        owner = validate_owner(owner)
        start_time = process_start_time(owner) if type(owner) is int else None
        self._state.associate(name, owner, start_time)
        self._serve_waiters()  # the owner's previous name may have come free
        self._note_change()
        return self._answer(None)

    def dissociate(self, owner: Owner) -> DeferredReply | None:
        """End `owner`'s hold; the name returns to the pool once no owner is left."""
        if self._state.dissociate(owner) is not None:
            self._serve_waiters()
        self._note_change()
        return self._answer(None)

    def get_name_by_pid(self, owner: Owner) -> str | DeferredReply | None:
        """The name `owner` holds or is associated with, or None."""
        start_time = process_start_time(owner) if type(owner) is int and owner > 0 else None
        return self._answer(self._state.name_of(owner, start_time))

    def pool_stats(self) -> dict[str, Any] | DeferredReply:
        """`available_count`, `checked_out_count`, `all_used_count`, `chunk_size`, and more."""
        return self._answer(self._stats())

    def _stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self._state.stats()
        stats["waiting_count"] = len(self._waiters)
        stats["is_generating"] = self._chunk is not None
        return stats

    # `_published_stats`: the stats as of the last durable state, readable from any thread
    # without a message. Published before any reply that depends on that state, so a
    # caller who got an answer reads stats that include it. The gateway serves
    # `names.pool_stats` from it, as a Handle resolves from a supervisor's directory.

    def _handle_receive(self, message: Any) -> Any:
        result = super()._handle_receive(message)
        if self._files is None or self._state.revision == self._saved_revision:
            self._publish_stats()
        return result

    def _publish_stats(self) -> None:
        # The stats derive from the state's revision, the waiters and the chunk in flight:
        # rebuilt only when one of those moved, not after every message.
        key = (self._state.revision, len(self._waiters), self._chunk is None)
        if key != self._published_key:
            self._published_key = key
            self._published_stats = MappingProxyType(self._stats())

    def reset(self) -> DeferredReply | None:
        """Forget every name and owner; a chunk in flight is discarded and asked for again."""
        self._state.reset()
        self._generation += 1  # whatever the source returns now belongs to the old pool
        if self._chunk is not None:
            self._chunk.watchdog.cancel()
            self._chunk = None
        if self._waiters:
            self._request_chunk()
        self._log.info("name pool reset")
        self._note_change()
        return self._answer(None)

    def reconcile(self, names_in_use: list[str]) -> DeferredReply | None:
        """Make exactly `names_in_use` checked out (names held by live pids stay held)."""
        kept = self._state.reconcile(names_in_use, is_same_process_alive)
        for name in kept:
            self._log.warning("reconcile: {!r} is not listed but stays held by a live process", name)
        self._serve_waiters()
        self._note_change()
        return self._answer(None)

    def default_name(self) -> str:
        """The name of an agent without a pool name (never handed out)."""
        return self._default_name

    # -- durability -----------------------------------------------------------------------

    def _load(self) -> None:
        assert self._files is not None
        for what, data in self._files.load(self._log):
            try:
                self._state = NameState.from_snapshot(data, self._chunk_size, self._default_name)
            except ValueError as error:
                # The file was intact but the names inside are not: keep the evidence.
                self._files.quarantine(what, f"unusable name pool state: {error}")
                continue
            stats = self._state.stats()
            self._log.info(
                "name pool loaded {} names ({} checked out) from its {}",
                stats["all_used_count"],
                stats["checked_out_count"],
                what,
            )
            break
        else:
            self._log.info("name pool starts empty: no usable state at {}", self._files.path)
        # The loaded state becomes the snapshot and the journal starts empty.
        self._files.open(self._state.to_snapshot())
        self._saved_revision = self._state.revision

    def _note_change(self) -> None:
        """Queue one flush behind the requests already queued, if the state moved."""
        if self._files is not None and self._state.revision != self._saved_revision:
            self._queue_flush()

    def _queue_flush(self) -> None:
        if not self._is_flush_queued:
            self._is_flush_queued = True
            self.actor_ref.tell(_FLUSH)

    def _answer(self, value: _T) -> _T | DeferredReply:
        """`value` now, or a reply answered once the state it was read from is on disk."""
        if self._files is None or self._state.revision == self._saved_revision:
            return value
        reply = DeferredReply()
        self._unsaved_replies.append((reply, value))
        self._queue_flush()
        return reply

    def _resolve(self, reply: DeferredReply, value: Any) -> None:
        """Answer a reply the pool handed out earlier, after the flush if one is due."""
        if self._files is None or self._state.revision == self._saved_revision:
            reply.set(value)
        else:
            self._unsaved_replies.append((reply, value))
            self._queue_flush()

    def _on_flush(self, message: _Flush) -> None:
        self._is_flush_queued = False
        assert self._files is not None
        revision = self._state.revision
        if revision != self._saved_revision:
            # A write that raises (disk full) is a crash: the replies waiting get
            # ActorCrashed, and the next incarnation starts from what is on disk.
            self._files.append(self._state.to_snapshot())
            self._saved_revision = revision
        self._publish_stats()  # before the replies go out
        replies, self._unsaved_replies = self._unsaved_replies, []
        for reply, value in replies:
            reply.set(value)

    def _cut_off_unsaved(self, error: BaseException) -> None:
        replies, self._unsaved_replies = self._unsaved_replies, []
        for reply, _ in replies:
            cut_off = ActorCrashed(f"the name pool could not save its state: {error!r}")
            cut_off.__cause__ = error
            reply.set_exception((ActorCrashed, cut_off, None))

    # -- the source -----------------------------------------------------------------------

    def _request_chunk(self) -> None:
        self._generation += 1
        generation = self._generation
        count = self._state.chunk_request()
        used = self._state.used_names()
        ref = self.actor_ref
        source = self._source

        def generate() -> None:
            try:
                names = source(count, used)
                # list() here, off the pool's thread: a generator does its work now. A
                # str or a map is left whole, for the core to refuse, not split up.
                if isinstance(names, Iterable) and not isinstance(names, str | bytes | bytearray | Mapping):
                    names = list(names)
                error: BaseException | None = None
            except BaseException as raised:  # whatever it is, the waiters must hear of it
                names, error = None, raised
            _tell_quietly(ref, _ChunkResult(generation, names, error))

        watchdog = threading.Timer(self._source_timeout, _tell_quietly, (ref, _ChunkTimeout(generation)))
        watchdog.daemon = True
        self._chunk = _ChunkRequest(generation, watchdog)
        threading.Thread(target=generate, name=f"name-source-{generation}", daemon=True).start()
        watchdog.start()

    def _on_chunk_result(self, message: _ChunkResult) -> None:
        chunk = self._chunk
        if chunk is None or chunk.generation != message.generation:
            self._log.info("discarded a late result of the name source (request {})", message.generation)
            return
        chunk.watchdog.cancel()
        self._chunk = None
        if message.error is not None:
            self._fail_waiters(f"the name source raised {message.error!r}")
            return
        accepted = self._state.accept_chunk(message.names)
        if not accepted:
            self._fail_waiters(f"the name source yielded no usable name (it returned {_describe(message.names)})")
            return
        self._log.debug("name source gave {} new names", len(accepted))
        self._serve_waiters()
        self._note_change()

    def _on_chunk_timeout(self, message: _ChunkTimeout) -> None:
        if self._chunk is not None and self._chunk.generation == message.generation:
            self._chunk = None
            self._fail_waiters(f"the name source took longer than {self._source_timeout:g}s")

    def _serve_waiters(self) -> None:
        """Give waiting checkouts names, in arrival order; ask for another chunk if needed."""
        if not self._waiters:
            return
        served = 0
        for waiter in self._waiters:
            name = self._state.checkout(waiter.owner, waiter.start_time)
            if name is None:
                break
            self._resolve(waiter.reply, name)
            served += 1
        del self._waiters[:served]
        if self._waiters and self._chunk is None:
            self._request_chunk()

    def _fail_waiters(self, why: str) -> None:
        waiters, self._waiters = self._waiters, []
        self._log.warning("{}: {} waiting checkouts fail", why, len(waiters))
        for waiter in waiters:
            error = NameSourceError(why)
            waiter.reply.set_exception((NameSourceError, error, None))

    def _drop_waiters(self) -> None:
        """A graceful stop: the checkouts waiting for the source got nothing (safe to retry)."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            error = pykka.ActorDeadError("the name pool stopped while this checkout waited for the name source")
            waiter.reply.set_exception((pykka.ActorDeadError, error, None))

    # -- owners ---------------------------------------------------------------------------

    def _on_reap(self, message: _Reap) -> None:
        returned = self._state.reap(is_same_process_alive)
        if returned:
            self._log.info("owners gone: {} back in the pool", ", ".join(repr(name) for name in returned))
            self._serve_waiters()
        self._note_change()

    def _stop_timers(self) -> None:
        if self._reap_timer is not None:
            self._reap_timer.cancel()
        if self._chunk is not None:
            self._chunk.watchdog.cancel()
            self._chunk = None


def _describe(names: Any) -> str:
    if isinstance(names, list):
        return f"{len(names)} items, none new and valid"
    text = repr(names)
    return text if len(text) <= 60 else text[:57] + "..."


def _tell_quietly(ref: pykka.ActorRef[Any], message: Any) -> None:
    """Tell `ref`, unless it is gone (a late answer for a pool that stopped)."""
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)
