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

In a fleet (contract §7) each lock is also a lease in the store, keyed by the resolved
directory and fenced (`LockInfo.fence`); the actor renews it every third of `lock_lease`
and, if no renewal is confirmed by `lock_lease - 2 s`, reports it lost (`lock_lost`,
ERROR, SIGTERM of the owner) before any other host can take it::

    fleet = FleetSettings.parse("unix:///run/redis.sock", host_id="host-a")
    locks = LockSupervisor.start(fleet=fleet)
    info = locks.proxy().call_lock("/srv/tree/w1", "acquire", ["%4"], {}).get()   # info.fence

Design notes: docs/design-fleet-locks.md.
"""

from __future__ import annotations

import inspect
import math
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka
from pykka import messages as pykka_messages
from pykka._envelope import Envelope

from actors._errors import FleetUnavailable, InvalidOwner, InvalidWorkerDir, Locked, LockLost, TooManyLocks
from actors._process import Liveness, ProcessIdentity
from actors.fleet._connection import SAFETY_MARGIN, FleetSettings, renew_interval
from actors.fleet._leases import RenewalJob, Renewer, WorkerLeases, list_worker_leases, owner_key
from actors.locks._lock_file import LockFile
from actors.locks._record import LockInfo, LockState, is_same_owner, own_identity, record_liveness
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
    _events,
    send_after,
    send_interval,
)
from supervision._errors import describe

__all__ = [
    "LEASE_QUERY",
    "LOCK_OPERATIONS",
    "FleetLocks",
    "InvalidWorkerDir",
    "LockSupervisor",
    "WorkerLock",
    "lock_child_id",
]


@dataclass(frozen=True, slots=True)
class _Check:
    """The periodic owner check a `WorkerLock` sends itself."""


@dataclass(frozen=True, slots=True)
class _Retire:
    """A `WorkerLock`'s look at whether it has been idle for `idle_retire` seconds."""


@dataclass(frozen=True, slots=True)
class _Renew:
    """Time to renew the fleet lease (every third of `lock_lease`)."""


@dataclass(frozen=True, slots=True)
class _LeaseDeadline:
    """A look at whether the fleet lease's deadline has passed without a confirmed renewal."""


@dataclass(frozen=True, slots=True)
class _Renewed:
    """What the renewer's thread learnt of one renewal sent at `sent_at` (the lock's clock)."""

    owner: str
    fence: int
    sent_at: float
    outcome: str  # "renewed" | "refused" | "unavailable"
    detail: str = ""


@dataclass(frozen=True, slots=True)
class _LeaseQuery:
    """`lock_ref.ask(LEASE_QUERY)`: the fleet lease a lock renews (for tests and operators)."""


@dataclass(frozen=True, slots=True)
class _AdoptLeases:
    """A `LockSupervisor` in a fleet, just started: start the locks of this host's leases."""


LEASE_QUERY = _LeaseQuery()
_ADOPT_LEASES = _AdoptLeases()
_CHECK = _Check()  # shared instances: a thousand locks need no thousand messages
_RETIRE = _Retire()
_RENEW = _Renew()
_LEASE_DEADLINE = _LeaseDeadline()

#: A holder gives up this long before its lease could end on the server (contract §7).
LEASE_MARGIN = SAFETY_MARGIN


class FleetLocks:
    """What a `LockSupervisor` in a fleet shares with its locks: settings, store, renewer."""

    def __init__(self, settings: FleetSettings) -> None:
        if not isinstance(settings, FleetSettings):
            raise TypeError(f"fleet must be a FleetSettings or None, not {type(settings).__name__}")
        self.settings = settings
        self.leases = WorkerLeases(settings)
        self.renewer = Renewer(self.leases, f"lease-renewer:{settings.host_id}")

    @property
    def renew_interval(self) -> float:
        return renew_interval(self.settings.lock_lease)

    @property
    def holding_time(self) -> float:
        """How long after a confirmed renewal was sent the holder still counts on its lease."""
        lease = self.settings.lock_lease
        return max(lease - LEASE_MARGIN, lease / 3)

    def owner(self, info: LockInfo) -> str:
        return owner_key(self.settings.host_id, info.pid, info.start_ticks, info.boot_id)

    def close(self) -> None:
        self.renewer.close()
        self.leases.close()


@dataclass(slots=True)
class _HeldLease:
    """The fleet lease this lock renews: the record it backs and its deadline (lock's clock)."""

    info: LockInfo
    owner: str
    deadline: float
    is_renewing: bool = False


@dataclass(frozen=True, slots=True)
class _LostLease:
    info: LockInfo
    reason: str


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


def _read(lock_file: LockFile, fleet: FleetLocks | None) -> LockInfo | None:
    return lock_file.read()


def _check(lock_file: LockFile, fleet: FleetLocks | None, owner: int | None = None) -> None:
    identity = _owner(owner)
    if fleet is not None and lock_file.inspect().state is LockState.FOREIGN:
        lease = fleet.leases.read(lock_file.worker_dir)  # another host's record: its lease decides
        if lease is None:
            return
        raise Locked(f"held on host {lease.host} by pid {lease.pid} (session {lease.session_id}), "
                     f"fence {lease.fence}: {lock_file.worker_dir}")
    lock_file.check(identity)


_FOREIGN_PREFIX = "held on host "


def _status(lock_file: LockFile, fleet: FleetLocks | None) -> str:
    line = lock_file.status()
    if fleet is None or not line.startswith(_FOREIGN_PREFIX):
        return line
    try:
        lease = fleet.leases.read(lock_file.worker_dir)
    except (FleetUnavailable, ClientError):
        return line  # cannot tell: counted as held, as the record says
    return line if lease is not None else f"stale (lease of host {line[len(_FOREIGN_PREFIX):]} ran out)"


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
    `NotLocked`, `InvalidLock`, `InvalidOwner`, `InvalidWorkerDir`, `LockLost`) or
    `StorageError` (`FleetUnavailable` included): the caller gets them and the lock keeps
    running. `fleet` (a `FleetSettings`, or the `FleetLocks` its supervisor shares) makes
    the lock a fleet lease as well (see the module docstring).
    """

    def __init__(
        self,
        worker_dir: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        check_interval: float = 5.0,
        idle_retire: float | None = None,
        fleet: FleetSettings | FleetLocks | None = None,
    ) -> None:
        path = _worker_dir_text(worker_dir)
        self._check_interval = _seconds("check_interval", check_interval)
        self._idle_retire = None if idle_retire is None else _seconds("idle_retire", idle_retire)
        self._clock: Clock = clock if clock is not None else SystemClock()
        # A fleet of its own (started alone) is closed with it; a supervisor's is shared.
        self._owns_fleet = isinstance(fleet, FleetSettings)
        self._fleet: FleetLocks | None = FleetLocks(fleet) if isinstance(fleet, FleetSettings) else fleet
        if self._fleet is not None and not isinstance(self._fleet, FleetLocks):
            raise TypeError(f"fleet must be a FleetSettings or None, not {type(fleet).__name__}")
        super().__init__()
        if self._fleet is None:
            self._lock_file = LockFile(path, wall_time=self._clock.time)
        else:
            # The lease is keyed by the resolved path: hosts mount a shared tree at one path.
            self._lock_file = LockFile(os.path.realpath(path), hostname=self._fleet.settings.host_id,
                                       wall_time=self._clock.time)
        self._timers: list[Timer] = []
        self._last_call = 0.0
        self._tick_problem: str | None = None
        self._held: _HeldLease | None = None
        self._lost: _LostLease | None = None
        self._lease_timers: list[Timer] = []
        self._renewal_problem: str | None = None

    def on_start(self) -> None:
        self._last_call = self._clock.monotonic()
        self._timers.append(send_interval(self.actor_ref, _CHECK, self._check_interval, self._clock))
        if self._idle_retire is not None:
            self._look_at_retiring_in(self._idle_retire)
        if self._fleet is not None:
            self._adopt_lease()

    def on_stop(self) -> None:
        self._cancel_timers()
        if self._owns_fleet and self._fleet is not None:
            self._fleet.close()

    def on_failure(self, *exc_info: Any) -> None:
        self._cancel_timers()
        if self._owns_fleet and self._fleet is not None:
            self._fleet.close()

    def _cancel_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._cancel_lease_timers()

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
        if self._fleet is None and not _events._subscribers:
            return self._lock_file.acquire(_owner(owner), session_id)
        identity = _owner(owner)
        before = None
        if _events._subscribers:
            try:
                before = self._lock_file.inspect()
            except (OSError, ClientError):
                before = None  # acquire says what is wrong
        if self._fleet is None:
            info = self._lock_file.acquire(identity, session_id)
        else:
            self._raise_if_lost(identity, clear=True)
            sent_at = self._clock.monotonic()  # the store sets the expiry after this moment
            info = self._lock_file.acquire(identity, session_id, take_lease=self._take_lease)
            self._lost = None
            self._hold(info, sent_at)
        if before is not None and (before.state is LockState.STALE or (
                before.state is LockState.FOREIGN and info.refreshed_at is None)):
            reason = before.reason if before.state is LockState.STALE else (
                f"the lease of host {before.info.hostname if before.info else '?'} ran out")
            self._emit("lock_broken", previous=_holder(before.info), reason=reason)
        if info.refreshed_at is None:  # taken now, not refreshed by its holder
            fence = {} if self._fleet is None else {"fence": info.fence}
            self._emit("lock_acquired", pid=info.pid, session_id=info.session_id, **fence)
        return info

    def release(self, owner: int | None = None) -> None:
        """Remove the record: without `owner`, any live owner's on this host; with it, only its own.

        Raises `NotLocked` when nobody alive holds it (a stale record is removed), `Locked`
        for another owner's or another host's record, `InvalidLock` for a corrupt one.
        """
        self._last_call = self._clock.monotonic()
        identity = None if owner is None else _owner(owner)
        drop_lease = None
        if self._fleet is not None:
            self._raise_if_lost(identity, clear=True)
            drop_lease = self._drop_lease
        if not _events._subscribers:
            self._lock_file.release(identity, drop_lease=drop_lease)
            return
        try:
            holder = _holder(self._lock_file.inspect().info)
        except (OSError, ClientError):
            holder = None
        self._lock_file.release(identity, drop_lease=drop_lease)
        self._emit("lock_released", **(holder or {}))

    def read(self) -> LockInfo | None:
        """The record on disk (held, stale or another host's), or None. `InvalidLock` if corrupt."""
        self._last_call = self._clock.monotonic()
        return _read(self._lock_file, self._fleet)

    def check(self, owner: int | None = None) -> None:
        """Raise `Locked` if a live owner other than `owner` (default: the caller) holds the lock."""
        self._last_call = self._clock.monotonic()
        if self._fleet is not None:
            self._raise_if_lost(_owner(owner), clear=False)
        _check(self._lock_file, self._fleet, owner)

    def status(self) -> str:
        """One line, never raising: `unlocked`, `locked by pid P (session S)`, `stale (...)`,
        `held on host H`, `corrupt (PATH)` or `unusable (REASON)`."""
        self._last_call = self._clock.monotonic()
        return _status(self._lock_file, self._fleet)

    def force_release(self) -> None:
        """Remove any record, another host's or a corrupt one included (an operator's act).

        With a fleet the store's lease goes first (`FleetUnavailable`: nothing removed).
        """
        self._last_call = self._clock.monotonic()
        if self._fleet is not None:
            removed = self._fleet.leases.force_release(self._lock_file.worker_dir)
            if removed is not None:
                self._log.warning("force-released the fleet lease of {} ({})", self._lock_file.worker_dir,
                                  removed.describe())
            self._forget_lease()
            self._lost = None
        self._lock_file.force_release()

    def _describe_lease(self) -> dict[str, Any] | None:
        """The fleet lease this lock renews (None without one): `fence`, `pid`, `session_id`,
        `deadline_in` (seconds on the lock's clock), `is_renewing`; or, after a loss,
        `lost` with the reason. Asked with `lock_ref.ask(LEASE_QUERY)`."""
        if self._held is not None:
            held = self._held
            return {"fence": held.info.fence, "pid": held.info.pid, "session_id": held.info.session_id,
                    "deadline_in": held.deadline - self._clock.monotonic(), "is_renewing": held.is_renewing}
        if self._lost is not None:
            return {"fence": self._lost.info.fence, "pid": self._lost.info.pid,
                    "session_id": self._lost.info.session_id, "lost": self._lost.reason}
        return None

    # -- internals -----------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Check):
            self._release_if_owner_died()
            return None
        if isinstance(message, _Retire):
            self._retire_if_idle()
            return None
        if isinstance(message, _LeaseQuery):
            return self._describe_lease()
        if isinstance(message, _Renew):
            self._renew()
            return None
        if isinstance(message, _Renewed):
            self._on_renewed(message)
            return None
        if isinstance(message, _LeaseDeadline):
            held = self._held
            if held is not None and self._clock.monotonic() >= held.deadline:
                self._lose(f"no renewal confirmed within {self._fleet_holding_time():g}s")
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
            if self._fleet is not None and verdict.info is not None:
                self._forget_lease()
                self._drop_lease_quietly(verdict.info)
            owner = "" if verdict.info is None else f"owner pid {verdict.info.pid} (session {verdict.info.session_id}): "
            self._log.info("released the lock of {}: {}{}", self._lock_file.worker_dir, owner, verdict.reason)
            self._emit("lock_broken", previous=_holder(verdict.info), reason=verdict.reason)

    # -- the fleet lease (contract §7) -----------------------------------------------------
    # The holder's deadline is (send time of its last confirmed renewal) + lock_lease - 2 s on
    # its own clock; the server's expiry is (its time when it applied that renewal) +
    # lock_lease, which is later. So the holder learns of a loss before anyone else can
    # acquire: see docs/design-fleet-locks.md.

    def _fleet_holding_time(self) -> float:
        assert self._fleet is not None
        return self._fleet.holding_time

    def _take_lease(self, info: LockInfo) -> int:
        """The store's lease for the record about to be written (under the guard): its fence."""
        assert self._fleet is not None
        lease = self._fleet.leases.acquire(self._lock_file.worker_dir, self._fleet.owner(info), pid=info.pid,
                                           session_id=info.session_id, acquired_at=info.acquired_at)
        return lease.fence

    def _drop_lease(self, info: LockInfo) -> None:
        """End the store's lease of the record being released (under the guard).

        `LockLost` if it had run out. A store that does not answer leaves the lease to
        expire by itself within `lock_lease` (nothing renews it any more): the release
        itself stands, so neither a failed nor an abandoned call keeps the lease forever.
        """
        assert self._fleet is not None
        self._forget_lease()
        if info.fence < 1:
            return  # a record written without a fleet: no lease to end
        try:
            self._fleet.leases.release(self._lock_file.worker_dir, self._fleet.owner(info), info.fence)
        except FleetUnavailable as error:
            self._log.warning("released {} here; its fleet lease (fence {}) expires by itself within {}s: {}",
                              self._lock_file.worker_dir, info.fence, self._fleet.settings.lock_lease, error)

    def _drop_lease_quietly(self, info: LockInfo) -> None:
        """End the lease of a dead owner's record, if the store answers (else it expires)."""
        try:
            self._drop_lease(info)
        except ClientError as refused:
            self._log.info("lease of {}'s dead owner was already gone: {}", self._lock_file.worker_dir, refused)

    def _hold(self, info: LockInfo, sent_at: float) -> None:
        """Renew the lease backing `info` from now on; `sent_at`: when its acquire was sent."""
        assert self._fleet is not None
        owner = self._fleet.owner(info)
        held = self._held
        if held is None or (held.owner, held.info.fence) != (owner, info.fence):
            self._forget_lease()
            self._held = _HeldLease(info, owner, sent_at + self._fleet.holding_time)
            self._lease_timers.append(
                send_interval(self.actor_ref, _RENEW, self._fleet.renew_interval, self._clock))
            self._arm_deadline()
        else:
            held.info = info
            self._confirm(held, sent_at)

    def _confirm(self, held: _HeldLease, sent_at: float) -> None:
        assert self._fleet is not None
        deadline = sent_at + self._fleet.holding_time
        if deadline > held.deadline:
            held.deadline = deadline
            self._arm_deadline()

    def _arm_deadline(self) -> None:
        held = self._held
        assert held is not None
        # The interval timer stays first in the list; older deadline timers are cancelled.
        for timer in self._lease_timers[1:]:
            timer.cancel()
        del self._lease_timers[1:]
        delay = max(held.deadline - self._clock.monotonic(), 0.0)
        self._lease_timers.append(send_after(self.actor_ref, _LEASE_DEADLINE, delay, self._clock))

    def _cancel_lease_timers(self) -> None:
        for timer in self._lease_timers:
            timer.cancel()
        self._lease_timers.clear()

    def _forget_lease(self) -> None:
        """Stop renewing (the lease was released, lost, or its owner died)."""
        self._held = None
        self._cancel_lease_timers()

    def _renew(self) -> None:
        held = self._held
        if held is None:
            return
        if self._clock.monotonic() >= held.deadline:
            self._lose(f"no renewal confirmed within {self._fleet_holding_time():g}s")
            return
        if held.is_renewing:
            return  # one renewal in flight per lease: a paused store gets no queue of them
        assert self._fleet is not None
        ref, owner, fence = self.actor_ref, held.owner, held.info.fence

        def done(sent_at: float, outcome: str, detail: str) -> None:  # on the renewer's thread
            try:
                ref.tell(_Renewed(owner, fence, sent_at, outcome, detail))
            except pykka.ActorDeadError:
                pass  # the lock stopped meanwhile; a restarted one adopts the lease itself

        try:
            job = RenewalJob(self._lock_file.worker_dir, owner, fence, self._clock.monotonic, done)
            self._fleet.renewer.submit(job)
        except RuntimeError as error:  # no thread: as if the store did not answer
            self._report_renewal_problem(f"cannot send the renewal: {error}")
            return
        held.is_renewing = True

    def _on_renewed(self, renewed: _Renewed) -> None:
        held = self._held
        if held is None or (held.owner, held.info.fence) != (renewed.owner, renewed.fence):
            return  # a renewal of a lease released or lost meanwhile
        held.is_renewing = False
        if self._clock.monotonic() >= held.deadline:
            self._lose(f"no renewal confirmed within {self._fleet_holding_time():g}s")
        elif renewed.outcome == "renewed":
            if self._renewal_problem is not None:
                self._log.info("renewals of {} go through again", self._lock_file.worker_dir)
                self._renewal_problem = None
            self._confirm(held, renewed.sent_at)
        elif renewed.outcome == "refused":
            self._lose(f"the store refused the renewal: {renewed.detail}")
        else:
            self._report_renewal_problem(renewed.detail)

    def _report_renewal_problem(self, problem: str) -> None:
        if self._renewal_problem is None:
            held = self._held
            left = "" if held is None else f"; lost in {held.deadline - self._clock.monotonic():.1f}s unless one works"
            self._log.warning("renewal of the fleet lease of {} failed{}: {}", self._lock_file.worker_dir, left,
                              problem)
        self._renewal_problem = problem

    def _lose(self, reason: str) -> None:
        """The lease may end on the server soon: tell everyone now, before anyone can take it."""
        held = self._held
        if held is None:
            return
        assert self._fleet is not None
        self._forget_lease()
        self._renewal_problem = None
        info = held.info
        self._lost = _LostLease(info, reason)
        action = "terminating its owner" if self._fleet.settings.on_lock_lost == "terminate" else "owner notified only"
        self._log.error("lost the fleet lock of {} (pid {}, session {}, fence {}): {}; {}", self._lock_file.worker_dir,
                        info.pid, info.session_id, info.fence, reason, action)
        self._emit("lock_lost", pid=info.pid, session_id=info.session_id, fence=info.fence,
                   host=self._fleet.settings.host_id, reason=reason)
        if self._fleet.settings.on_lock_lost == "terminate":
            self._terminate_owner(info)
        try:  # the local record goes too: this host no longer holds the worker
            self._lock_file.release(ProcessIdentity(info.pid, info.start_ticks, info.boot_id)
                                    if info.start_ticks is not None else info.pid)
        except (OSError, ClientError) as error:
            self._log.info("record of the lost lock of {} left: {}", self._lock_file.worker_dir, error)

    def _terminate_owner(self, info: LockInfo) -> None:
        """SIGTERM the owner if it is still the process the record names (never a reused pid)."""
        if record_liveness(info) is not Liveness.ALIVE:
            return
        try:
            os.kill(info.pid, signal.SIGTERM)
        except OSError as error:
            self._log.error("could not SIGTERM pid {}, owner of the lost lock of {}: {}", info.pid,
                            self._lock_file.worker_dir, error)

    def _raise_if_lost(self, owner: int | ProcessIdentity | None, *, clear: bool) -> None:
        """`LockLost` to the owner of a lease lost here (any caller when `owner` is None)."""
        lost = self._lost
        if lost is None or (owner is not None and not is_same_owner(lost.info, owner)):
            return
        if clear:
            self._lost = None  # told once; a new acquire starts afresh
        raise LockLost(f"the fleet lease of {self._lock_file.worker_dir} held by pid {lost.info.pid} "
                       f"(session {lost.info.session_id}, fence {lost.info.fence}) was lost: {lost.reason}")

    def _adopt_lease(self) -> None:
        """A (re)started lock whose record names a live owner on this host renews its lease.

        When the last confirmed renewal is unknown, a renewal must be confirmed within
        `fleet_timeout`, else the lock counts as lost.
        """
        assert self._fleet is not None
        try:
            verdict = self._lock_file.inspect()
        except (OSError, ClientError):
            return
        info = verdict.info
        if verdict.state is not LockState.HELD or info is None or info.fence < 1:
            return
        now = self._clock.monotonic()
        self._held = _HeldLease(info, self._fleet.owner(info), now + self._fleet.settings.fleet_timeout)
        self._lease_timers.append(send_interval(self.actor_ref, _RENEW, self._fleet.renew_interval, self._clock))
        self._arm_deadline()
        self._renew()

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
        if self._lost is not None and record_liveness(self._lost.info) is not Liveness.DEAD:
            # Its owner has not been told: it must hear LockLost, not a fresh lock's NotLocked.
            self._log.debug("{} idle for {}s: kept, its owner has not heard its lease was lost",
                            self._lock_file.worker_dir, idle)
            self._look_at_retiring_in(self._idle_retire)
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
    record). More than `max_locks` live locks raise `TooManyLocks`. With `fleet` (a
    `FleetSettings`) every lock is also a fleet lease; once started, the supervisor starts
    the lock of each lease its host already holds, so those are renewed.
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
        fleet: FleetSettings | None = None,
    ) -> None:
        if fleet is not None and not isinstance(fleet, FleetSettings):
            raise TypeError(f"fleet must be a FleetSettings or None, not {type(fleet).__name__}")
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
        # Shared by every lock: one client, one renewer thread (started on the first lease).
        self._fleet = None if fleet is None else FleetLocks(fleet)
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
            hostname = None if self._fleet is None else self._fleet.settings.host_id
            lock_file = LockFile(path, hostname=hostname, wall_time=self._clock.time)
            return _answer_from_files(lock_file, self._fleet, method, args, kwargs)
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
                kwargs={"clock": self._clock, "check_interval": self._check_interval, "idle_retire": self._idle_retire,
                        "fleet": self._fleet},
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

    def on_start(self) -> None:
        super().on_start()
        if self._fleet is not None:
            self.actor_ref.tell(_ADOPT_LEASES)  # after the start: the store may be slow to answer

    def _adopt_leases(self) -> None:
        """Start the lock of each lease this host holds, so it is renewed (or found lost)
        even if nobody calls for it: a daemon restarted under its workers carries on."""
        assert self._fleet is not None
        settings = self._fleet.settings
        try:
            leases = list_worker_leases(settings, self._fleet.leases.client)
        except FleetUnavailable as error:
            self._log.error("cannot look up this host's worker leases; their locks start on first use: {}", error)
            return
        for lease in leases:
            if lease["host"] != settings.host_id or lock_child_id(lease["path"]) in self._records:
                continue
            try:
                self._lock_for_path(self._resolve(lease["path"]), None)
            except ClientError as error:  # outside root, gone, too many locks: it expires
                self._log.warning("not renewing the lease of {}: {}", lease["path"], error)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _AdoptLeases):
            self._adopt_leases()
            return None
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
        if self._fleet is not None:
            self._fleet.close()  # leases are left to a restarted daemon, or to expire

    def on_failure(self, *exc_info: Any) -> None:
        # Before the base class cuts our deferred replies off with ActorCrashed: these calls
        # had no effect, so they are declared unhandled and a Handle resends them.
        self._release_waiters("failed")
        super().on_failure(*exc_info)
        if self._fleet is not None:
            self._fleet.close()

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


def _answer_from_files(lock_file: LockFile, fleet: FleetLocks | None, method: str, args: Any,
                       kwargs: dict[str, Any]) -> Any:
    operation = _READ_ONLY[method]
    try:
        inspect.signature(operation).bind(lock_file, fleet, *args, **kwargs)
    except TypeError as error:
        raise BadCall(f"{method}(): {error}") from None
    return operation(lock_file, fleet, *args, **kwargs)
