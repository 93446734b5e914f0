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
  behind the requests already queued and hands what changed to the journal's writer
  thread (`actors.names._journal`), which appends one frame, syncs once for everything
  queued, and answers. The pool meanwhile handles the next requests.
- **Storage faults.** A write that fails answers its callers with `StorageError`, and
  the pool goes back to the durable state; changes are refused with `StorageError`
  (reads still answer) until a snapshot can be written again, tried at the next change
  and at every reap tick. A pool that starts while its storage fails starts anyway.
- **Crash.** A crash (or `kill`) first lets the writer finish what was handed to it
  (those callers get their real answers: their changes are durable), then answers the
  calls still waiting (for a flush or for the source) with `ActorCrashed`: nothing they
  did was written, so nothing happened.
  The next incarnation loads the newest durable state in `on_start`, like a cold start,
  so a name whose checkout was answered is never handed to a second holder.
- **Owners watched.** Every `reap_interval` on the clock, int owners proven dead (pid
  plus start ticks and boot id; zombies count as dead) lose their names. An owner whose
  liveness cannot be read (out of descriptors, ...) keeps its name until the next tick.
- **In a fleet** (`fleet=`, contract §7) there is no `NameState` and no journal: every
  change is one script in the fleet's store (`actors.fleet._names`), applied before it is
  answered, with this host's epoch; the source still runs off the thread, with the
  fleet's names as `used`. A store that fails, or a host cut off from its lease
  (`actors.fleet._hosts`), answers `FleetUnavailable` and the pool keeps running.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, TypeVar

import pykka

from actors._errors import FleetUnavailable, NameSourceError, NotPermitted
from actors._process import Liveness, identify, liveness, liveness_by_start_time
from actors.names._journal import Journal
from actors.names._source import ThemedSource, validate_name
from actors.names._state import (
    CheckinOutcome,
    NameState,
    Owner,
    ProcessStart,
    Start,
    validate_listed_names,
    validate_owner,
)
from supervision import (
    BadCall,
    Clock,
    DeferredReply,
    SnapshotError,
    StorageError,
    SupervisedActor,
    SystemClock,
    Timer,
    UnknownMessage,
    send_interval,
)
from supervision import _events
from supervision._errors import describe

__all__ = ["FLEET_REQUEST", "HOLDERS_REQUEST", "KeyCheckout", "NamePool", "NameSource", "PeerCall"]

#: `source(count, used) -> list[str]`: the "nomenclater" a pool asks for new names.
NameSource = Callable[[int, frozenset[str]], Iterable[str]]

#: `pool_ref.ask(HOLDERS_REQUEST)` answers `{name: [owner, ...]}` for every checked-out
#: name (None stands for an anonymous holder); `actors.daemon._status` uses it.
HOLDERS_REQUEST = "holders"
#: `pool_ref.ask(FLEET_REQUEST)` answers the fleet's status (hosts, leases, epochs, names by
#: host, conflicts) for a pool in a fleet, None otherwise; `actors.daemon._status` uses it.
FLEET_REQUEST = "fleet"
#: How often in a row a chunk is asked for again when other hosts' chunks took its names first.
_FLEET_CHUNK_ATTEMPTS = 20

# Socket calls logged at INFO with the peer's pid and the name (CONTRACT §3): what each did.
_LOGGED_PEER_METHODS = {
    "checkout_name": "checked out",
    "checkin_name": "checked in",
    "associate_name": "associated with",
    "dissociate": "dissociated from",
}


@dataclass(frozen=True, slots=True)
class KeyCheckout:
    """`pool_ref.ask(KeyCheckout(name_key, owner))`: a `WorkerProcess`'s checkout, answered
    with the last name of `name_key` whenever no one outside the key holds it (a str)."""

    name_key: str
    owner: Owner


@dataclass(frozen=True, slots=True)
class PeerCall:
    """`names.<method>` from a socket peer: acts only for process `pid` (the gateway's ask).

    `ancestors` are the peer's ancestor pids (for `associate_name`); `spawned_as` is the
    name this daemon gave the peer (or an ancestor) when it spawned it, if it did. The
    ownership check and the change happen in one handler of the pool, so nothing slips
    between them.
    """

    pid: int
    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    ancestors: tuple[int, ...] = ()
    spawned_as: str | None = None


# Methods a peer may call, and the position of their `owner` argument (None: no owner).
_PEER_METHODS: dict[str, int | None] = {
    "checkout_name": 0,
    "checkin_name": None,
    "associate_name": 1,
    "dissociate": 0,
    "get_name_by_pid": 0,
    "pool_stats": None,
    "default_name": None,
}
# Signatures of the bound methods by (class, method), filled on first use.
_PEER_SIGNATURES: dict[tuple[type, str], inspect.Signature] = {}


# -- messages the pool sends itself ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Flush:
    """Hand what changed to the journal, with the replies waiting for it."""


@dataclass(frozen=True, slots=True)
class _Reap:
    """Timer tick: drop int owners proven dead."""


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


@dataclass(frozen=True, slots=True)
class _StorageFailed:
    """The journal's writer could not write (told from its thread)."""

    error: StorageError
    epoch: int


_FLUSH = _Flush()
_REAP = _Reap()


@dataclass(slots=True)
class _Waiter:
    """A checkout waiting for a chunk."""

    owner: Owner
    start_time: Start
    reply: DeferredReply
    name_key: str | None = None


@dataclass(slots=True)
class _ChunkRequest:
    """The one source call in flight."""

    generation: int
    watchdog: threading.Timer


def _process_start(pid: int) -> ProcessStart | None:
    """When live process `pid` started (ticks + boot id), or None if it is gone or cannot be read."""
    try:
        identity = identify(pid)
    except OSError:
        return None  # could not look: the record stays unpinned, nothing is decided on it
    if identity is None:
        return None
    try:
        start_time: float | None = identity.start_time  # for v2 readers only
    except Exception:  # psutil's boot time unreadable: the ticks are what count
        start_time = None
    return ProcessStart(identity.start_ticks, identity.boot_id, start_time)


def _liveness(pid: int, start: Start) -> Liveness:
    """Alive, dead or unknown: by start ticks + boot id, or by the v2 start time for old records."""
    if type(start) is ProcessStart:
        return liveness(pid, start.start_ticks, start.boot_id)
    return liveness_by_start_time(pid, start)  # type: ignore[arg-type]


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
    default_name="Nameless Agent", clock=None, reap_interval=5.0, source_timeout=30.0,
    fleet=None)`; invalid settings raise `ValueError`/`TypeError` before anything starts.
    With `fleet` (a URL, a `FleetSettings` or a tree's `FleetHost`) the state lives in the
    fleet's store instead of `state_path` (contract §7; see `actors.fleet._names`). The rules
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
        fleet: Any = None,
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
        self._fleet_settings: Any = None  # FleetSettings: this pool joins the fleet itself
        self._fleet_host: Any = None  # FleetHost: the fleet's lease and epoch (actors.fleet._hosts)
        self._fleet_names: Any = None  # FleetNames: the state in the store (actors.fleet._names)
        if fleet is not None:
            from actors.fleet._connection import FleetSettings
            from actors.fleet._hosts import FleetHost

            if isinstance(fleet, str):
                fleet = FleetSettings.parse(fleet)  # a URL: this host's id is the hostname
            if isinstance(fleet, FleetSettings):
                self._fleet_settings = fleet
            elif isinstance(fleet, FleetHost):
                self._fleet_host = fleet
            else:
                raise TypeError(f"fleet must be a URL, a FleetSettings or a FleetHost, not {type(fleet).__name__}")
        super().__init__()
        self._source: NameSource = ThemedSource() if source is None else source
        self._chunk_attempts = 0  # fleet: chunks in a row that another host's chunk outran
        self._chunk_size = chunk_size
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._state_path = state_path
        self._journal: Journal | None = None
        self._state = NameState(chunk_size, self._default_name)
        self._group: _Batch = []  # replies waiting for the next flush
        self._is_flush_queued = False
        self._storage_error: StorageError | None = None  # set while writes fail
        self._is_load_pending = False  # the state could not even be read
        self._is_liveness_unknown = False  # an episode of unreadable owner liveness
        self._durable_stats: Mapping[str, Any] | None = None
        self._published_key: tuple[int, int, bool, bool] | None = None
        self._waiters: list[_Waiter] = []
        self._chunk: _ChunkRequest | None = None
        # Bumped by every chunk request and by reset: a result of another generation is late.
        self._generation = 0
        self._reap_timer: Timer | None = None
        self._handlers: dict[type, Callable[[Any], Any]] = {
            _Flush: self._on_flush,
            _Reap: self._on_reap,
            _ChunkResult: self._on_chunk_result,
            _ChunkTimeout: self._on_chunk_timeout,
            _StorageFailed: self._on_storage_failed,
            PeerCall: self._on_peer_call,
            KeyCheckout: self._checkout_for_key,
        }

    # -- lifecycle ------------------------------------------------------------------------

    def on_start(self) -> None:
        if self._fleet_settings is not None:
            from actors.fleet._hosts import FleetHost

            host = FleetHost(self._fleet_settings, event_path=self._path)
            host.start()  # StateDirInUse, FleetUnavailable: this pool cannot start
            self._fleet_host = host
        if self._fleet_host is not None:
            # The state lives in the store: no journal, nothing to load.
            self._fleet_names = self._fleet_host.names
        elif self._state_path is not None:
            # A restart and a cold start are the same code path: load what is durable.
            self._open_journal(self._state_path)
        self._reap_timer = send_interval(self.actor_ref, _REAP, self._reap_interval, self._clock)

    def on_stop(self) -> None:
        self._stop_timers()
        self._drop_waiters()
        self._leave_fleet()
        if self._journal is None:
            return
        # A graceful stop keeps its promises: what changed is written, the replies waiting
        # are answered, and the durable state becomes the snapshot.
        self._on_flush(_FLUSH)
        self._journal.close()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop_timers()
        # The journal answers what it writes; every reply still waiting after that (for a
        # flush or for the source) is left to the base class, which answers it with
        # ActorCrashed: nothing it did was written.
        self._waiters.clear()
        self._leave_fleet()
        if self._journal is not None:
            self._journal.abandon()

    def _leave_fleet(self) -> None:
        """A fleet this pool joined itself ends with it (a tree's FleetHost ends with the tree)."""
        if self._fleet_settings is not None and self._fleet_host is not None:
            self._fleet_host.stop(leave=True)
            self._fleet_host = None

    def on_receive(self, message: Any) -> Any:
        handler = self._handlers.get(message.__class__)
        if handler is not None:
            return handler(message)
        if message == HOLDERS_REQUEST:
            # For `python -m actors status`; an ask, not a public method, so that the
            # socket does not serve it as `names.holders`.
            if self._fleet_names is not None:
                return self._fleet_holders()
            self._ensure_loaded()
            return self._answer(self._state.holders())
        if message == FLEET_REQUEST:
            return self._fleet_status()
        raise UnknownMessage(f"NamePool does not handle {describe(message)}")

    # -- public API -----------------------------------------------------------------------

    def checkout_name(self, owner: Owner = None) -> str | DeferredReply:
        """A name no other holder has; an owner that holds or shares one gets that one again.

        `owner=None` always gets a new name. Waits (off the pool's thread) for the source
        when no name is available; `NameSourceError` if it fails; `StorageError` if the
        change cannot be written.
        """
        owner = validate_owner(owner)
        start_time = _process_start(owner) if type(owner) is int else None
        if self._fleet_names is not None:
            return self._fleet_checkout(owner, start_time)
        if self._storage_error is not None:
            held = self._state.name_of(owner, start_time) if owner is not None else None
            if held is not None:
                return held  # nothing to write: a read
            self._ensure_writable()
        held = self._state.name_of(owner, start_time) if _events._subscribers and owner is not None else None
        name = self._state.checkout(owner, start_time)
        if name is not None:
            self._note_change()
            if _events._subscribers and name != held:  # before the answer: see _emit_when_durable
                self._emit_when_durable("name_checked_out", name, owner=owner)
            return self._answer(name)
        # No name available: wait for the chunk in flight (one source call for everyone).
        reply = DeferredReply()
        self._waiters.append(_Waiter(owner, start_time, reply))
        if self._chunk is None:
            self._request_chunk()
        self._note_change()  # a reused pid may have lost its old name meanwhile
        return reply

    def _checkout_for_key(self, request: KeyCheckout) -> str | DeferredReply:
        """`checkout_name(owner)` for a `WorkerProcess`: the last name of its key if it can.

        The key's last name is remembered durably; it comes back unless someone outside
        the key took it. Its earlier owners' processes are checked at this moment, so a
        restarted daemon never waits for a reap tick. An ask, not a public method: the
        socket does not serve it.
        """
        name_key, owner = request.name_key, validate_owner(request.owner)
        if type(name_key) is not str or not name_key:
            raise BadCall(f"name_key must be a non-empty str, not {describe(name_key)}")
        start_time = _process_start(owner) if type(owner) is int else None
        if self._fleet_names is not None:
            return self._fleet_checkout(owner, start_time, name_key)
        self._ensure_writable()
        name = self._state.checkout_for_key(name_key, owner, start_time, _liveness)
        if name is not None:
            self._note_change()
            return self._answer(name)
        reply = DeferredReply()
        self._waiters.append(_Waiter(owner, start_time, reply, name_key))
        if self._chunk is None:
            self._request_chunk()
        self._note_change()
        return reply

    def checkin_name(self, name: str) -> DeferredReply | None:
        """Return `name` to the pool (LIFO); a name not checked out only logs a warning."""
        if self._fleet_names is not None:
            self._fleet_checkin(name)
            return None
        self._ensure_loaded()
        if self._storage_error is not None:
            name = validate_name(name)
            if self._state.is_checked_out(name):
                self._ensure_writable()
        outcome = self._state.checkin(name)
        if outcome is CheckinOutcome.NOT_CHECKED_OUT:
            self._log.warning("checkin of {!r}, which is not checked out: ignored", name)
        elif outcome is CheckinOutcome.RETURNED:
            self._serve_waiters()
            self._note_change()
        if outcome is CheckinOutcome.RETURNED and _events._subscribers:
            self._emit_when_durable("name_checked_in", name)
        return self._answer(None)

    def associate_name(self, name: str | None, owner: Owner) -> DeferredReply | None:
        """Make `owner` resolve to `name`: shared if checked out, else checked out for it."""
        owner = validate_owner(owner)
        if name is not None:
            validate_name(name)
        start_time = _process_start(owner) if type(owner) is int else None
        if self._fleet_names is not None:
            self._fleet_associate(name, owner, start_time)
            return None
        if name is not None:
            self._ensure_writable()
        is_restored = bool(_events._subscribers) and name is not None and not self._state.is_checked_out(name)
        self._state.associate(name, owner, start_time)
        self._serve_waiters()  # the owner's previous name may have come free
        self._note_change()
        if is_restored and self._state.is_checked_out(name):  # an identity restored: a checkout
            self._emit_when_durable("name_checked_out", name, owner=owner)  # type: ignore[arg-type]
        return self._answer(None)

    def dissociate(self, owner: Owner) -> DeferredReply | None:
        """End `owner`'s hold; the name returns to the pool once no owner is left."""
        owner = validate_owner(owner)
        if self._fleet_names is not None:
            self._fleet_dissociate(owner)
            return None
        self._ensure_loaded()
        if owner is not None and self._state.name_of(owner) is not None:
            self._ensure_writable()
        returned = self._state.dissociate(owner)
        if returned is not None:
            self._serve_waiters()
        self._note_change()
        if returned is not None and _events._subscribers:
            self._emit_when_durable("name_checked_in", returned, owner=owner)
        return self._answer(None)

    def get_name_by_pid(self, owner: Owner) -> str | DeferredReply | None:
        """The name `owner` holds or is associated with, or None."""
        self._ensure_loaded()
        start_time = _process_start(owner) if type(owner) is int and owner > 0 else None
        if self._fleet_names is not None:
            return self._fleet_name_of(validate_owner(owner), start_time)
        return self._answer(self._state.name_of(owner, start_time))

    def pool_stats(self) -> dict[str, Any] | DeferredReply:
        """`available_count`, `checked_out_count`, `all_used_count`, `chunk_size`, and more."""
        self._ensure_loaded()
        return self._answer(self._stats())

    def _stats(self) -> dict[str, Any]:
        if self._fleet_names is not None:
            return {
                **self._fleet_read(self._fleet_names.stats),
                "chunk_size": self._chunk_size,
                "fleet_host": self._fleet_host.id,
                "waiting_count": len(self._waiters),
                "is_generating": self._chunk is not None,
            }
        stats: dict[str, Any] = self._state.stats()
        stats["waiting_count"] = len(self._waiters)
        stats["is_generating"] = self._chunk is not None
        return stats

    # `_published_stats`: the stats as of the last durable state, readable from any thread
    # without a message. The gateway serves `names.pool_stats` from it, as a Handle
    # resolves from a supervisor's directory. In memory every change counts at once, so it
    # is read live (a few len() calls, safe from any thread). With a journal it is
    # published by the writer before the replies of each durable pass, and by the pool
    # after a message that left nothing in flight; so a caller who got an answer reads
    # stats that include it.

    @property
    def _published_stats(self) -> Mapping[str, Any] | None:
        if self._fleet_host is not None or self._fleet_settings is not None:
            return None  # in the store: read by a message to the pool, never from another thread
        if self._journal is None:
            return MappingProxyType(self._stats())
        return self._durable_stats

    def _handle_receive(self, message: Any) -> Any:
        result = super()._handle_receive(message)
        if self._journal is not None and not self._state.has_changes() and self._journal.is_idle():
            self._publish_stats()
        return result

    def _publish_stats(self, stats: Mapping[str, Any] | None = None) -> None:
        if stats is not None:
            self._durable_stats = stats
            return
        # The stats derive from the state's revision, the waiters and the chunk in flight:
        # rebuilt only when one of those moved, not after every message.
        key = (self._state.revision, len(self._waiters), self._chunk is None, self._storage_error is None)
        if key != self._published_key:
            self._published_key = key
            self._durable_stats = MappingProxyType(self._stats())

    def reset(self) -> DeferredReply | None:
        """Forget every name and owner; a chunk in flight is discarded and asked for again."""
        if self._fleet_names is not None:
            self._fleet_write(self._fleet_names.reset)
        else:
            self._ensure_writable()
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
        if self._fleet_names is not None:
            self._fleet_reconcile(names_in_use)
            return None
        self._ensure_writable()
        kept = self._state.reconcile(names_in_use, _liveness)
        for name in kept:
            self._log.warning("reconcile: {!r} is not listed but stays held by a live process", name)
        self._serve_waiters()
        self._note_change()
        return self._answer(None)

    def default_name(self) -> str:
        """The name of an agent without a pool name (never handed out)."""
        return self._default_name

    # -- calls from socket peers ------------------------------------------------------------

    def _on_peer_call(self, call: PeerCall) -> Any:
        """A `names.*` call over the socket: the peer acts only for itself (CONTRACT §5 "Owners")."""
        method = call.method
        self._ensure_loaded()  # its checks read the state
        if method not in _PEER_METHODS:
            raise UnknownMessage(f"names.{describe(method)} is not served on the socket")
        bound = getattr(self, method)
        key = (type(self), method)
        signature = _PEER_SIGNATURES.get(key)
        if signature is None:
            signature = _PEER_SIGNATURES[key] = inspect.signature(bound)
        try:
            arguments = signature.bind_partial(*call.args, **call.kwargs)
        except TypeError as error:
            raise BadCall(f"names.{method}: {error}") from None
        position = _PEER_METHODS[method]
        if position is not None:
            owner_name = list(signature.parameters)[position]
            owner = arguments.arguments.get(owner_name)
            if owner is None:
                arguments.arguments[owner_name] = owner = call.pid
            elif method != "get_name_by_pid" and validate_owner(owner) != call.pid:  # InvalidOwner first
                raise NotPermitted(
                    f"names.{method}: a worker acts only for itself (pid {call.pid}), not for {describe(owner)}"
                )
        try:
            arguments = signature.bind(*arguments.args, **arguments.kwargs)
        except TypeError as error:
            raise BadCall(f"names.{method}: {error}") from None
        if method == "checkin_name":
            self._check_peer_checkin(call.pid, arguments.arguments.get("name"))
        elif method == "associate_name":
            self._check_peer_associate(call, arguments.arguments.get("name"))
        if method in _LOGGED_PEER_METHODS:
            # Whom it concerns, read before the call: a checkin or dissociate ends the hold.
            before = self._name_of(call.pid) if method == "dissociate" else None
            result = bound(*arguments.args, **arguments.kwargs)
            self._log_peer_call(call.pid, method, arguments.arguments.get("name", before), result)
            return result
        return bound(*arguments.args, **arguments.kwargs)

    def _log_peer_call(self, pid: int, method: str, name: str | None, result: Any) -> None:
        """One INFO record per socket checkout/checkin/association, bound to the name (CONTRACT §3)."""
        what = _LOGGED_PEER_METHODS[method]

        def log(value: Any) -> None:
            agent_name = value if method == "checkout_name" else name
            self._log.bind(agent_name=agent_name, pid=pid).info("pid {} {} {!r} over the socket", pid, what, agent_name)

        if not isinstance(result, pykka.Future):
            log(result)
            return

        def log_if_answered(future: Any) -> None:
            try:
                value = future.get(timeout=0)
            except BaseException:
                return  # the caller gets the error; nothing changed
            log(value)

        result.add_done_callback(log_if_answered)

    def _holds_now(self, pid: int, name: str) -> bool:
        """True when live process `pid` (this very process, not an earlier one) owns `name`."""
        if self._fleet_names is not None:
            return self._name_of(pid) == name
        return self._state.holds(pid, name) and self._state.name_of(pid, _process_start(pid)) == name

    def _name_of(self, pid: int) -> str | None:
        """The name live process `pid` holds now (a read; in a fleet, a read of the store)."""
        if self._fleet_names is not None:
            return self._fleet_name_of(pid, _process_start(pid))
        return self._state.name_of(pid, _process_start(pid))

    def _is_checked_out(self, name: str) -> bool:
        if self._fleet_names is not None:
            return self._fleet_read(lambda: self._fleet_names.is_held(name))
        return self._state.is_checked_out(name)

    def _check_peer_checkin(self, pid: int, name: Any) -> None:
        name = validate_name(name)
        # Strict: a name nobody holds is not the caller's either (the default name, which a
        # checkin ignores, excepted), so a peer learns it never held what it checks in.
        if name != self._default_name and not self._holds_now(pid, name):
            raise NotPermitted(f"names.checkin_name: {name!r} is not held by the caller (pid {pid})")

    def _check_peer_associate(self, call: PeerCall, name: Any) -> None:
        if name is None:
            return
        name = validate_name(name)
        if not self._is_checked_out(name):
            return  # restoring an identity
        if any(self._holds_now(pid, name) for pid in (call.pid, *call.ancestors)):
            return  # its own, or inherited from an ancestor process
        if name == call.spawned_as:
            # Handed to it at spawn by its WorkerProcess, whose own association of the pid
            # may not have landed yet (the pool restarting, a full disk): still its own.
            return
        raise NotPermitted(
            f"names.associate_name: {name!r} is held by another process, not by the caller (pid {call.pid}) "
            "or one of its ancestors"
        )

    # -- durability -----------------------------------------------------------------------

    def _open_journal(self, state_path: str | os.PathLike[str]) -> None:
        journal = Journal(state_path, on_failure=self._tell_storage_failed, publish=self._publish_stats)
        self._journal = journal
        try:
            self._state = journal.load(self._chunk_size, self._default_name)
        except SnapshotError:
            journal.abandon()
            raise  # a symlink or a non-regular file where the state goes: refuse to start
        except OSError as error:
            # Unreadable (EIO...): start, but refuse every change until it can be read.
            self._is_load_pending = True
            self._storage_down(_as_storage_error(error, journal.path))
            return
        stats = self._state.stats()
        self._log.info(
            "name pool loaded {} names ({} checked out) from {}",
            stats["all_used_count"],
            stats["checked_out_count"],
            journal.path,
        )
        self._state.is_recording = True
        try:
            journal.checkpoint(self._state)
        except SnapshotError:
            journal.abandon()
            raise
        except StorageError as error:
            # A full disk must not cost the supervisor's restart budget: start, answer
            # reads, refuse changes until the storage works again.
            self._storage_down(error)

    def _tell_storage_failed(self, error: StorageError, epoch: int) -> None:
        """From the writer thread: a frame could not be written."""
        _tell_quietly(self.actor_ref, _StorageFailed(error, epoch))

    def _on_storage_failed(self, message: _StorageFailed) -> None:
        assert self._journal is not None
        if message.epoch != self._journal.epoch:
            return  # already rolled back for this failure
        # Back to what is durable: the changes since were never answered, so never happened.
        self._state = self._journal.rollback()
        self._state.is_recording = True
        replies, self._group = self._group, []
        for reply, _ in replies:
            reply.set_exception((StorageError, message.error, None))
        self._storage_down(message.error)

    def _storage_down(self, error: StorageError) -> None:
        if self._storage_error is None:
            self._log.error("name pool cannot write its state ({}): changes are refused until it can", error)
            _events.emit("storage_failed", self._path, error=str(error), file=str(getattr(self._journal, "path", "")))
        self._storage_error = error

    def _ensure_loaded(self) -> None:
        """Raise `StorageError` while the saved state cannot be read (trying once more first).

        Until it is read the pool knows nothing, so it answers nothing: an empty state's
        "nobody holds that" would be a lie about a live holder's name.
        """
        if not self._is_load_pending:
            return
        assert self._journal is not None
        try:
            state = self._journal.load(self._chunk_size, self._default_name)
        except OSError as error:
            self._storage_error = _as_storage_error(error, self._journal.path)
            raise self._storage_error from None
        state.is_recording = True
        self._state, self._is_load_pending = state, False
        self._log.info("name pool read its state: {} names checked out", state.stats()["checked_out_count"])

    def _ensure_writable(self) -> None:
        """Raise `StorageError` while the state cannot be written (trying once more first)."""
        if self._storage_error is None:
            return
        assert self._journal is not None
        self._ensure_loaded()
        try:
            self._journal.checkpoint(self._state)
        except OSError as error:  # StorageError, SnapshotError: still no way to write
            self._storage_error = _as_storage_error(error, self._journal.path)
            raise self._storage_error from None
        self._storage_error = None
        self._log.info("name pool writes its state again")
        _events.emit("storage_recovered", self._path, file=str(self._journal.path))

    @property
    def _path(self) -> str:
        """Where this pool sits in the tree, for its events (its child id; "names" in a tree)."""
        return self._supervision_.child_id or "names"

    def _emit_when_durable(self, kind: str, name: str, **data: Any) -> None:
        """Emit once the change just made is on disk (at once in memory; never if it fails).

        The event rides the same group commit as the replies, as a marker reply the writer
        answers after it synced the frame holding the change. Called before the caller's
        reply is queued: the writer answers in order, so whoever got an answer finds its
        event already in every subscriber's buffer.
        """
        path = self._path
        if self._is_durable_now():
            _events.emit(kind, path, name, **data)
            return
        marker = DeferredReply()
        self._group.append((marker, None))
        self._queue_flush()

        def emit_if_written(future: Any) -> None:
            try:
                future.get(timeout=0)
            except BaseException:
                return  # not written: it never happened
            _events.emit(kind, path, name, **data)

        marker.add_done_callback(emit_if_written)

    def _is_durable_now(self) -> bool:
        return self._journal is None or (not self._state.has_changes() and self._journal.is_idle())

    def _note_change(self) -> None:
        """Queue one flush behind the requests already queued, if the state moved."""
        if self._journal is not None and self._state.has_changes():
            self._queue_flush()

    def _queue_flush(self) -> None:
        if not self._is_flush_queued:
            self._is_flush_queued = True
            self.actor_ref.tell(_FLUSH)

    def _answer(self, value: _T) -> _T | DeferredReply:
        """`value` now, or a reply answered once the state it was read from is on disk."""
        if self._is_durable_now():
            return value
        reply = DeferredReply()
        self._group.append((reply, value))
        self._queue_flush()
        return reply

    def _resolve(self, reply: DeferredReply, value: Any) -> None:
        """Answer a reply the pool handed out earlier, after the flush if one is due."""
        if self._is_durable_now():
            reply.set(value)
        else:
            self._group.append((reply, value))
            self._queue_flush()

    def _on_flush(self, message: _Flush) -> None:
        self._is_flush_queued = False
        assert self._journal is not None
        changes = self._state.take_changes()
        replies, self._group = self._group, []
        if changes or replies:
            self._journal.submit(changes, replies, MappingProxyType(self._stats()))

    # -- the source -----------------------------------------------------------------------

    def _request_chunk(self) -> None:
        self._generation += 1
        generation = self._generation
        count = self._chunk_size
        fleet_names = self._fleet_names
        used = self._state.used_names() if fleet_names is None else frozenset()
        ref = self.actor_ref
        source = self._source

        def generate() -> None:
            try:
                # In a fleet, `used` is every name the fleet knows: read here, off the pool's thread.
                used_now = used if fleet_names is None else fleet_names.known()
                names = source(count, used_now)
                # list() here, off the pool's thread: a generator does its work now. A
                # str or a map is left whole, for the core to refuse, not split up.
                if isinstance(names, Iterable) and not isinstance(names, str | bytes | bytearray | Mapping):
                    names = list(names)
                    if fleet_names is not None:  # in a fleet: `used` is not kept for the pool
                        names = [name for name in names if not isinstance(name, str) or name not in used_now]
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
        if self._fleet_names is not None and isinstance(message.error, FleetUnavailable):
            self._fail_waiters(f"the fleet store could not be read: {message.error}", message.error)
            return
        if message.error is not None:
            self._fail_waiters(f"the name source raised {message.error!r}")
            return
        if self._fleet_names is not None:
            self._fleet_accept_chunk(message.names)
            return
        try:
            self._ensure_writable()
        except StorageError as error:
            self._fail_waiters(f"the name pool cannot write its state: {error}", error)
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
        if self._fleet_names is not None:
            self._fleet_serve_waiters()
            return
        served = 0
        for waiter in self._waiters:
            if waiter.name_key is None:
                name = self._state.checkout(waiter.owner, waiter.start_time)
            else:
                name = self._state.checkout_for_key(waiter.name_key, waiter.owner, waiter.start_time, _liveness)
            if name is None:
                break
            if _events._subscribers:
                self._emit_when_durable("name_checked_out", name, owner=waiter.owner)
            self._resolve(waiter.reply, name)
            served += 1
        del self._waiters[:served]
        if self._waiters and self._chunk is None:
            self._request_chunk()

    def _fail_waiters(self, why: str, error: Exception | None = None) -> None:
        waiters, self._waiters = self._waiters, []
        self._log.warning("{}: {} waiting checkouts fail", why, len(waiters))
        for waiter in waiters:
            failure = error if error is not None else NameSourceError(why)
            waiter.reply.set_exception((type(failure), failure, None))

    def _drop_waiters(self) -> None:
        """A graceful stop: the checkouts waiting for the source got nothing (safe to retry)."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            error = pykka.ActorDeadError("the name pool stopped while this checkout waited for the name source")
            waiter.reply.set_exception((pykka.ActorDeadError, error, None))

    # -- owners ---------------------------------------------------------------------------

    def _on_reap(self, message: _Reap) -> None:
        if self._fleet_names is not None:
            self._fleet_reap()
            return
        if self._storage_error is not None:
            try:
                self._ensure_writable()
            except StorageError:
                return  # freeing a name is a change: not before it can be written
        unknown: list[int] = []
        upgrades: dict[int, ProcessStart] = {}

        def judge(pid: int, start: Start) -> Liveness:
            verdict = _liveness(pid, start)
            if verdict is Liveness.UNKNOWN:
                unknown.append(pid)
            elif verdict is Liveness.ALIVE and type(start) is float:
                current = _process_start(pid)  # a v2 record: pin it to ticks + boot id now
                if current is not None:
                    upgrades[pid] = current
            return verdict

        holders = self._state.holders() if _events._subscribers else {}
        returned = self._state.reap(judge)
        for pid, start in upgrades.items():
            self._state.pin_start(pid, start)
        self._note_liveness_unknown(unknown)
        if returned:
            self._log.info("owners gone: {} back in the pool", ", ".join(repr(name) for name in returned))
            self._serve_waiters()
        self._note_change()
        if returned and _events._subscribers:
            for name in returned:
                self._emit_when_durable("name_reaped", name, owners=list(holders.get(name, ())))

    # -- the fleet (contract §7): the state in the store, each change one script -------------

    def _fleet_write(self, change: Callable[[str, int], _T]) -> _T:
        """Apply `change(host_id, epoch)` in the store; `FleetUnavailable` within fleet_timeout.

        Cut off (no lease renewal confirmed in time) or after a failed call, the host
        refuses at once, without a round trip, until a renewal gets through again.
        """
        host = self._fleet_host
        epoch = host.current_epoch()
        try:
            return change(host.id, epoch)
        except FleetUnavailable as error:
            host.note_failure(error)
            raise

    def _fleet_read(self, read: Callable[[], _T]) -> _T:
        """A read of the store (no epoch needed); fails at once while the store is known down."""
        host = self._fleet_host
        host.raise_if_down()
        try:
            return read()
        except FleetUnavailable as error:
            host.note_failure(error)
            raise

    def _fleet_checkout(self, owner: Owner, start_time: Start, name_key: str | None = None) -> str | DeferredReply:
        name = self._fleet_try_checkout(owner, start_time, name_key)
        if name is not None:
            return name
        reply = DeferredReply()
        self._waiters.append(_Waiter(owner, start_time, reply, name_key))
        if self._chunk is None:
            self._chunk_attempts = 0
            self._request_chunk()
        return reply

    def _fleet_try_checkout(self, owner: Owner, start_time: Start, name_key: str | None) -> str | None:
        """A name for `owner` from the store (events emitted), or None when none is free."""
        names = self._fleet_names
        if name_key is None:
            name, is_new = self._fleet_write(lambda host, epoch: names.checkout(host, epoch, owner, start_time))
        else:
            holders = self._fleet_read(lambda: names.key_holders(self._fleet_host.id, name_key))
            dead = [(pid, start) for pid, start in holders if _liveness(pid, start) is Liveness.DEAD]
            name = self._fleet_write(
                lambda host, epoch: names.key_checkout(host, epoch, name_key, owner, start_time, dead)
            )
            is_new = name is not None
        if name is not None and is_new and _events._subscribers:
            _events.emit("name_checked_out", self._path, name, owner=owner)
        return name

    def _fleet_accept_chunk(self, chunk: Any) -> None:
        """The source's names into the store (deduplicated fleet-wide), then the waiters."""
        candidates = NameState(1, self._default_name).accept_chunk(chunk)  # valid, distinct, not the default
        try:
            accepted = self._fleet_write(lambda host, epoch: self._fleet_names.accept(host, epoch, candidates))
        except FleetUnavailable as error:
            self._fail_waiters(f"the fleet store refused the chunk: {error}", error)
            return
        if accepted:
            self._chunk_attempts = 0
            self._log.debug("name source gave {} new names to the fleet", len(accepted))
        elif not candidates:
            # Nothing valid that the fleet did not know when the source was asked.
            self._fail_waiters(f"the name source yielded no usable name (it returned {_describe(chunk)})")
            return
        else:
            # Another host's chunk took these names between the source's `used` and now:
            # they may be free for us; else ask again with the fleet's new `used`.
            self._chunk_attempts += 1
        waiting = len(self._waiters)
        self._fleet_serve_waiters(request_more=False)
        if not self._waiters:
            return
        if not accepted and self._chunk_attempts >= _FLEET_CHUNK_ATTEMPTS and len(self._waiters) == waiting:
            self._fail_waiters(
                f"the name source yielded only names the fleet knows already ({_FLEET_CHUNK_ATTEMPTS} times)"
            )
            return
        if self._chunk is None:
            self._request_chunk()

    def _fleet_serve_waiters(self, *, request_more: bool = True) -> None:
        served = 0
        try:
            for waiter in self._waiters:
                name = self._fleet_try_checkout(waiter.owner, waiter.start_time, waiter.name_key)
                if name is None:
                    break
                waiter.reply.set(name)
                served += 1
        except FleetUnavailable as error:
            del self._waiters[:served]
            self._fail_waiters(f"the fleet store cannot be used: {error}", error)
            return
        del self._waiters[:served]
        if request_more and self._waiters and self._chunk is None:
            self._request_chunk()

    def _fleet_checkin(self, name: Any) -> None:
        name = validate_name(name)
        if name == self._default_name:
            return
        returned = self._fleet_write(lambda host, epoch: self._fleet_names.checkin(host, epoch, name))
        if not returned:
            self._log.warning("checkin of {!r}, which is not checked out: ignored", name)
            return
        if _events._subscribers:
            _events.emit("name_checked_in", self._path, name)
        self._fleet_serve_waiters()

    def _fleet_associate(self, name: str | None, owner: Owner, start_time: Start) -> None:
        if name is None or name == self._default_name:
            return
        restored = self._fleet_write(
            lambda host, epoch: self._fleet_names.associate(host, epoch, name, owner, start_time)
        )
        if restored and _events._subscribers:
            _events.emit("name_checked_out", self._path, name, owner=owner)
        self._fleet_serve_waiters()  # the owner's previous name may have come free

    def _fleet_dissociate(self, owner: Owner) -> None:
        if owner is None:
            return
        name, returned = self._fleet_write(lambda host, epoch: self._fleet_names.dissociate(host, epoch, owner))
        if returned:
            if _events._subscribers:
                _events.emit("name_checked_in", self._path, name, owner=owner)
            self._fleet_serve_waiters()

    def _fleet_name_of(self, owner: Owner, start_time: Start) -> str | None:
        return self._fleet_read(lambda: self._fleet_names.name_of(self._fleet_host.id, owner, start_time))

    def _fleet_holders(self) -> dict[str, list[Owner]]:
        """This host's held names and their owners (other hosts' are in FLEET_REQUEST)."""
        names = self._fleet_read(lambda: self._fleet_names.host_names(self._fleet_host.id))
        return {name: [owner for owner, _ in owners] for name, owners in names.items()}

    def _fleet_status(self) -> dict[str, Any] | None:
        if self._fleet_names is None:
            return None
        from actors.fleet._hosts import fleet_status

        return self._fleet_read(lambda: fleet_status(self._fleet_names, self._fleet_host))

    def _fleet_reconcile(self, names_in_use: list[str]) -> None:
        listed = list(validate_listed_names(names_in_use, self._default_name))
        held = self._fleet_read(lambda: self._fleet_names.host_names(self._fleet_host.id))
        live = {
            name: [
                owner for owner, start in owners if type(owner) is int and _liveness(owner, start) is not Liveness.DEAD
            ]
            for name, owners in held.items()
            if name not in listed
        }
        kept, refused = self._fleet_write(
            lambda host, epoch: self._fleet_names.reconcile(host, epoch, listed, {k: v for k, v in live.items() if v})
        )
        for name in kept:
            self._log.warning("reconcile: {!r} is not listed but stays held by a live process", name)
        for name in refused:
            self._log.warning("reconcile: {!r} is held by another host of the fleet: not checked out here", name)
        self._fleet_serve_waiters()

    def _fleet_reap(self) -> None:
        """This host's int owners proven dead lose their names (other hosts reap their own)."""
        host = self._fleet_host
        if host.is_cut_off() or host.is_down:
            return  # freeing a name is a change: not before the store takes changes again
        try:
            held = self._fleet_names.host_names(host.id)
        except FleetUnavailable as error:
            host.note_failure(error)
            return
        unknown: list[int] = []
        dead: list[tuple[int, Start]] = []
        holders: dict[str, list[Owner]] = {}
        for name, owners in held.items():
            holders[name] = [owner for owner, _ in owners]
            for owner, start in owners:
                if type(owner) is not int:
                    continue
                verdict = _liveness(owner, start)
                if verdict is Liveness.DEAD:
                    dead.append((owner, start))
                elif verdict is Liveness.UNKNOWN:
                    unknown.append(owner)
        self._note_liveness_unknown(unknown)
        if not dead:
            return
        try:
            returned = self._fleet_write(lambda host_id, epoch: self._fleet_names.drop_dead(host_id, epoch, dead))
        except FleetUnavailable:
            return
        if returned:
            self._log.info("owners gone: {} back in the pool", ", ".join(repr(name) for name in returned))
            if _events._subscribers:
                for name in returned:
                    _events.emit("name_reaped", self._path, name, owners=holders.get(name, []))
            self._fleet_serve_waiters()

    def _note_liveness_unknown(self, unknown: list[int]) -> None:
        """Log once per episode that some owners' liveness cannot be read (their names stay held)."""
        if unknown and not self._is_liveness_unknown:
            self._log.warning(
                "cannot tell whether {} owner processes are alive (e.g. pid {}): their names stay held; "
                "checked again at every tick",
                len(unknown),
                unknown[0],
            )
        elif not unknown and self._is_liveness_unknown:
            self._log.info("owner processes can be checked again")
        self._is_liveness_unknown = bool(unknown)

    def _stop_timers(self) -> None:
        if self._reap_timer is not None:
            self._reap_timer.cancel()
        if self._chunk is not None:
            self._chunk.watchdog.cancel()
            self._chunk = None


def _as_storage_error(error: OSError, path: Any) -> StorageError:
    if isinstance(error, StorageError):
        return error
    code = error.errno if error.errno is not None else 5
    return StorageError(code, f"name pool state cannot be used: {os.strerror(code)}", str(path))


def _describe(names: Any) -> str:
    if isinstance(names, list):
        return f"{len(names)} items, none new and valid"
    text = repr(names)
    return text if len(text) <= 60 else text[:57] + "..."


def _tell_quietly(ref: pykka.ActorRef[Any], message: Any) -> None:
    """Tell `ref`, unless it is gone (a late answer for a pool that stopped)."""
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)
