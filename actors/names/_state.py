"""The name pool's rules over plain data: the functional core behind the `NamePool` actor.

`NameState` holds which names are available, who holds which name, and applies every
rule of the pool as a method. It does no I/O and keeps no clock: the actor asks the
source for chunks, checks processes with psutil and persists `to_snapshot()`::

    state = NameState(chunk_size=12, default_name="Nameless Agent")
    name = state.checkout("urn:worker:1")           # None: the pool is empty
    if name is None:
        batch = source(state.chunk_request(), state.used_names())   # off-thread
        state.accept_chunk(batch)                   # [] -> NameSourceError
        name = state.checkout("urn:worker:1")
    state.associate(name, 4242, start_time=1.7e9)   # a child process shares the name
    state.checkin(name)                             # back on top of the stack

Owners are `None` (anonymous), an `int` pid > 0 or a `str`. Anonymous holders and
`str` owners leave a name only by check-in (or dissociate, for `str`); `int` owners
also leave when the shell finds their process dead (`reap`, `remove_dead_owners`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from actors._errors import InvalidName, InvalidOwner
from actors.names._source import is_valid_name, validate_name
from actors._process import CREATE_TIME_TOLERANCE, Liveness
from supervision._errors import describe

__all__ = [
    "Change",
    "CheckinOutcome",
    "NameState",
    "Owner",
    "ProcessStart",
    "SNAPSHOT_VERSION",
    "Start",
    "validate_owner",
]

#: An owner: None (anonymous), an int process id > 0, or a str such as an actor URN.
Owner = int | str | None

#: The largest process id any kernel hands out (Linux caps pid_max at 2**22).
MAX_PID = 2**31 - 1

#: Format version written by `NameState.to_snapshot` (1: owners carry only `start_time`).
SNAPSHOT_VERSION = 2
_READABLE_VERSIONS = (1, 2)


@dataclass(frozen=True, slots=True)
class ProcessStart:
    """When an int owner's process started: kernel ticks since boot and the boot id.

    `start_time` (epoch seconds, moves with the wall clock) is kept beside them only for
    readers of the v2 format; it never decides anything while the ticks are known.
    """

    start_ticks: int
    boot_id: str | None
    start_time: float | None = None


#: A recorded start: a `ProcessStart`, a bare v2 epoch `start_time`, or None (unknown).
Start = ProcessStart | float | None

#: One primitive change of the state, as journal frames carry it (see `NameState.apply`).
Change = tuple[Any, ...]


def validate_owner(owner: object) -> Owner:
    """Return `owner` as None, a plain `int` > 0 or a plain `str`; else raise `InvalidOwner`."""
    if owner is None:
        return None
    if isinstance(owner, str):
        # A str the state file could not store (a lone surrogate) is refused now, not
        # when the write fails and takes the pool down.
        try:
            owner.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidOwner(f"invalid owner {describe(owner)}: not encodable as UTF-8") from None
        return str(owner)  # a plain str comes back as itself; a subclass becomes plain
    # bool is an int, but True as a pid is a bug in the caller, not pid 1.
    if isinstance(owner, int) and not isinstance(owner, bool) and 0 < owner <= MAX_PID:
        return int(owner)
    raise InvalidOwner(f"invalid owner {describe(owner)}: an owner is None, an int process id (1..2**31-1) or a str")


def validate_listed_names(names_in_use: Iterable[object], default_name: str) -> dict[str, None]:
    """`reconcile`'s list, validated whole first (one bad name: `InvalidName`, nothing
    changed), in order, without repeats or the default name (a dict used as an ordered set)."""
    if isinstance(names_in_use, (str, bytes, bytearray)):
        raise InvalidName(f"reconcile expects a list of names, not a single {type(names_in_use).__name__}")
    try:
        listed = [validate_name(name) for name in names_in_use]
    except TypeError:
        raise InvalidName(f"reconcile expects a list of names, not {describe(names_in_use)}") from None
    return dict.fromkeys(name for name in listed if name != default_name)


def _normalise_start_time(start_time: object) -> Start:
    if start_time is None or type(start_time) is ProcessStart:
        return start_time  # type: ignore[return-value]
    if isinstance(start_time, bool) or not isinstance(start_time, (int, float)):
        raise TypeError(f"start_time must be a ProcessStart, a number or None, not {type(start_time).__name__}")
    return float(start_time)


def _is_same_process(recorded: Start, given: Start) -> bool:
    """False only when both starts are known and differ: the pid was reused.

    Start ticks decide when both sides have them (never the wall clock); a v2 record
    (a bare epoch start time) is compared by start time within the v2 tolerance.
    """
    if recorded is None or given is None:
        return True
    if type(recorded) is ProcessStart and type(given) is ProcessStart:
        if recorded.boot_id is not None and given.boot_id is not None and recorded.boot_id != given.boot_id:
            return False
        return recorded.start_ticks == given.start_ticks
    recorded_time = recorded.start_time if type(recorded) is ProcessStart else recorded
    given_time = given.start_time if type(given) is ProcessStart else given
    if recorded_time is None or given_time is None:
        return True
    return abs(recorded_time - given_time) <= CREATE_TIME_TOLERANCE  # type: ignore[operator]


def _is_dead(verdict: object) -> bool:
    """A liveness verdict (bool or `Liveness`): only proof of death counts."""
    return verdict is False or verdict is Liveness.DEAD


def _is_unknown(verdict: object) -> bool:
    return verdict is Liveness.UNKNOWN


class CheckinOutcome(str, enum.Enum):
    """What `NameState.checkin` did; the shell logs a warning for `NOT_CHECKED_OUT`."""

    RETURNED = "returned"
    NOT_CHECKED_OUT = "not_checked_out"
    DEFAULT_NAME = "default_name"


class NameState:
    """The name pool's state and rules, without I/O (see the module docstring).

    Invariants:
    - a name is either available or checked out (held by one or more owners), never both;
    - a non-anonymous owner holds at most one name;
    - every name the pool knows is available or checked out: names leave only by `reset`,
      so `used_names()` ("all used") never shrinks on check-in;
    - the default name is never a pool name: never accepted, checked out or handed out.

    Every structure is an insertion-ordered dict, so behaviour and snapshots are
    deterministic, and check-out and check-in are O(1).

    Every change goes through a handful of primitive steps (`push`, `take`, `under`,
    `hold`, `drop`, `release`, `start`, `reset`). With `is_recording` set, each step is
    also appended to a list that `take_changes()` hands out: the journal writes those
    (what changed, never the whole state) and `apply()` replays them.
    """

    def __init__(self, chunk_size: int = 12, default_name: str = "Nameless Agent") -> None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, not {chunk_size!r}")
        self._chunk_size = chunk_size
        self._default_name = validate_name(default_name)
        # Stack of available names; the last key is the top. A dict, not a list, so that a
        # name can also leave from the middle in O(1) (associate, reconcile).
        self._available: dict[str, None] = {}
        # Checked-out name -> its owners (an ordered set; None is the anonymous holder).
        self._holders: dict[str, dict[Owner, None]] = {}
        # Non-anonymous owner -> the one name it holds.
        self._owner_names: dict[int | str, str] = {}
        # int owner -> when its process started (None: unknown), to tell a reused pid.
        self._start_times: dict[int, Start] = {}
        # Durable memory of the last name of each worker key (`checkout_for_key`), one
        # name per key and one key per name. A name leaves its key when anyone else takes
        # it off the stack.
        self._key_names: dict[str, str] = {}
        self._name_keys: dict[str, str] = {}
        self._revision = 0
        #: Whether primitive changes are kept for `take_changes()` (a durable pool's journal).
        self.is_recording = False
        self._changes: list[Change] = []

    # -- reading ---------------------------------------------------------------------

    @property
    def chunk_size(self) -> int:
        """How many names `chunk_request` asks the source for."""
        return self._chunk_size

    @property
    def default_name(self) -> str:
        """The name of an agent without a pool name; never handed out."""
        return self._default_name

    @property
    def revision(self) -> int:
        """Grows with every primitive change; unchanged by a call that changed nothing."""
        return self._revision

    def name_of(self, owner: object, start_time: Start = None) -> str | None:
        """The name `owner` holds or is associated with, or None (`get_name_by_pid`).

        With `start_time`, an int owner recorded with a different start is a reused pid
        and gets None. Raises `InvalidOwner`.
        """
        owner = validate_owner(owner)
        if owner is None:
            return None
        name = self._owner_names.get(owner)
        if name is not None and type(owner) is int:
            if not _is_same_process(self._start_times[owner], _normalise_start_time(start_time)):
                return None
        return name

    def holds(self, owner: object, name: str) -> bool:
        """True when `owner` (not anonymous) is one of `name`'s owners."""
        return owner is not None and self._owner_names.get(owner) == name  # type: ignore[arg-type]

    def owners_of(self, name: str) -> list[Owner]:
        """The owners of `name` (empty when it is not checked out)."""
        return list(self._holders.get(name, ()))

    def is_checked_out(self, name: str) -> bool:
        """True when `name` has at least one owner."""
        return name in self._holders

    def available_names(self) -> list[str]:
        """Available names, bottom of the stack first (the last one is handed out next)."""
        return list(self._available)

    def last_name_of_key(self, key: str) -> str | None:
        """The name `key` last got from `checkout_for_key`, while it is still that key's."""
        return self._key_names.get(key)

    def key_names(self) -> dict[str, str]:
        """Worker key -> the last name it got (and still may get back)."""
        return dict(self._key_names)

    def holders(self) -> dict[str, list[Owner]]:
        """Checked-out name -> its owners (None for an anonymous holder), in check-out order."""
        return {name: list(owners) for name, owners in self._holders.items()}

    def int_owners(self) -> dict[int, Start]:
        """Every int owner and its recorded start, for the reaper."""
        return dict(self._start_times)

    def used_names(self) -> frozenset[str]:
        """Every name the pool knows (the `used` argument of the source). O(n): per chunk only."""
        return frozenset(self._available).union(self._holders)

    def stats(self) -> dict[str, int]:
        """`available_count`, `checked_out_count`, `all_used_count`, `chunk_size`, `owner_count`."""
        available = len(self._available)
        checked_out = len(self._holders)
        return {
            "available_count": available,
            "checked_out_count": checked_out,
            # Names never leave the pool except by reset, so "all used" is their sum.
            "all_used_count": available + checked_out,
            "chunk_size": self._chunk_size,
            "owner_count": len(self._owner_names),
        }

    def needs_chunk(self) -> bool:
        """True when no name is available: an anonymous or new owner's checkout needs the source."""
        return not self._available

    def chunk_request(self) -> int:
        """The `count` to pass to the source."""
        return self._chunk_size

    def has_changes(self) -> bool:
        """True when recorded changes wait for `take_changes()`."""
        return bool(self._changes)

    def take_changes(self) -> list[Change]:
        """The primitive changes recorded since the last call, oldest first."""
        changes, self._changes = self._changes, []
        return changes

    def copy(self) -> NameState:
        """An independent copy (not recording). O(n): for a rollback or a snapshot only."""
        twin = NameState(self._chunk_size, self._default_name)
        twin._available = dict(self._available)
        twin._holders = {name: dict(owners) for name, owners in self._holders.items()}
        twin._owner_names = dict(self._owner_names)
        twin._start_times = dict(self._start_times)
        twin._key_names = dict(self._key_names)
        twin._name_keys = dict(self._name_keys)
        twin._revision = self._revision
        return twin

    def __repr__(self) -> str:
        stats = self.stats()
        return (
            f"NameState(available={stats['available_count']}, "
            f"checked_out={stats['checked_out_count']}, owners={stats['owner_count']})"
        )

    # -- changing --------------------------------------------------------------------

    def checkout(self, owner: object = None, start_time: Start = None) -> str | None:
        """Check out a name for `owner`, or return None when a chunk is needed first.

        An owner that already holds or is associated with a name gets that name again
        (unless `start_time` shows its pid was reused: the old process's names end first);
        `owner=None` always gets a new name. Names come off the top of the stack, so
        checked-in names are reused last in, first out. Raises `InvalidOwner`.
        """
        owner = validate_owner(owner)
        start = _normalise_start_time(start_time)  # may raise: before any change
        if owner is not None:
            name = self._owner_names.get(owner)
            if name is not None:
                if type(owner) is not int or self._refresh_process(owner, start):
                    return name
        name = self._pick_available()
        if name is None:
            return None
        self._take(name)
        self._hold(name, owner, start)
        return name

    def checkout_for_key(
        self,
        key: str,
        owner: object,
        start_time: Start = None,
        judge: Callable[[int, Start], object] | None = None,
    ) -> str | None:
        """Check out a name for `owner` on behalf of worker `key`: its last name if it can.

        The key's last name comes back when no process holds it any more: it is available,
        or held only by the key's earlier processes that `judge(pid, start)` proves dead at
        this moment (they leave first; only `DEAD` frees, `UNKNOWN` keeps them) and by str
        owners (an earlier incarnation's URN, shared). A live process, even one the key
        left behind, is never joined: then a fresh name, which becomes the key's. Anyone
        else taking the name off the stack makes it leave its key. None: a chunk is needed.
        Raises `InvalidOwner`, and `ValueError` for a key that is not a non-empty str.
        """
        if type(key) is not str or not key:
            raise ValueError(f"a worker key must be a non-empty str, not {describe(key)}")
        owner = validate_owner(owner)
        start = _normalise_start_time(start_time)
        name = self._key_names.get(key)
        if name is not None and name in self._holders and judge is not None:
            dead = [
                (pid, self._start_times[pid])
                for pid in self._holders[name]
                if type(pid) is int and _is_dead(judge(pid, self._start_times[pid]))
            ]
            self.remove_dead_owners(dead)
        if name is not None and any(type(holder) is not str for holder in self._holders.get(name, ())):
            name = None  # a live (or unknown) process or an anonymous holder has it: never shared
        if owner is not None and owner in self._owner_names and self._owner_names[owner] != name:
            self._drop(self._owner_names[owner], owner)
        if name is not None:
            if name in self._available:
                self._take(name)  # which makes it nobody's: remembered again below
            owners = self._holders.get(name)
            if owners is None or owner not in owners:
                self._hold(name, owner, start)
            self._remember(key, name)
            return name
        name = self.checkout(owner, start)
        if name is not None:
            self._remember(key, name)
        return name

    def accept_chunk(self, names: object) -> list[str]:
        """Add the source's new valid names; return them (in source order).

        Dropped without error: anything that is not a list/tuple-like of `str`, invalid
        names, names the pool already knows, repeats within the chunk and the default name.
        The new names go under any name checked in meanwhile (those are reused first) and
        come out in the order the source gave them. An empty result means the source
        yielded nothing usable: the shell raises `NameSourceError`.
        """
        if isinstance(names, (str, bytes, bytearray, Mapping)):
            return []  # iterating these would yield characters or keys, not names
        try:
            candidates = list(names)  # type: ignore[call-overload]
        except TypeError:
            return []
        accepted: dict[str, None] = {}
        for name in candidates:
            if (
                isinstance(name, str)
                and is_valid_name(name)
                and name != self._default_name
                and name not in self._available
                and name not in self._holders
            ):
                accepted.setdefault(str(name), None)
        if not accepted:
            return []
        self._under(list(accepted))
        return list(accepted)

    def checkin(self, name: object) -> CheckinOutcome:
        """Return `name` to the top of the stack; all its owners and associations end.

        Raises `InvalidName`. A valid name that is not checked out changes nothing
        (`NOT_CHECKED_OUT`: the shell logs a warning); the default name is ignored.
        """
        name = validate_name(name)
        if name == self._default_name:
            return CheckinOutcome.DEFAULT_NAME
        if name not in self._holders:
            return CheckinOutcome.NOT_CHECKED_OUT
        self._release(name)
        return CheckinOutcome.RETURNED

    def associate(self, name: object, owner: object, start_time: Start = None) -> None:
        """Make `owner` resolve to `name` (a worker inheriting its parent's identity).

        A checked-out name is shared: `owner` joins its owners. A name that is not checked
        out is checked out for `owner` (taken off the stack, or learned if new). The
        owner's previous association ends first. `name=None` and the default name do
        nothing. Raises `InvalidOwner`, then `InvalidName`.
        """
        owner = validate_owner(owner)
        if name is None:
            return
        name = validate_name(name)
        if name == self._default_name:
            return
        start = _normalise_start_time(start_time)
        if owner is not None:
            previous = self._owner_names.get(owner)
            if previous == name:
                if type(owner) is int and start is not None and self._start_times[owner] != start:
                    self._pin(owner, start)  # same name, now pinned to this process
                return
            if previous is not None:
                self._drop(previous, owner)
        owners = self._holders.get(name)
        if owners is None:
            if name in self._available:
                self._take(name)
        elif owner in owners:
            return  # only the anonymous holder can get here: it is there already
        self._hold(name, owner, start)

    def dissociate(self, owner: object) -> str | None:
        """End `owner`'s ownership or association; return the name if it went back to the pool.

        The name returns (on top of the stack) once no owner is left. Unknown owners and
        `None` change nothing. Raises `InvalidOwner`.
        """
        owner = validate_owner(owner)
        if owner is None or owner not in self._owner_names:
            return None
        return self._drop(self._owner_names[owner], owner)

    def pin_start(self, pid: int, start: ProcessStart) -> None:
        """Record `start` for int owner `pid` (a v2 record upgraded once judged alive)."""
        if pid in self._start_times and self._start_times[pid] != start:
            self._pin(pid, start)

    def remove_dead_owners(self, dead: Iterable[tuple[int, Start]]) -> list[str]:
        """Remove the int owners `(pid, start)` found dead; return the names that went back.

        An owner is removed only if its recorded start is still the one that was checked,
        so a pid that re-registered meanwhile (a new process) keeps its name.
        """
        returned: list[str] = []
        for pid, start_time in dead:
            if pid in self._start_times and self._start_times[pid] == start_time:
                name = self._drop(self._owner_names[pid], pid)
                if name is not None:
                    returned.append(name)
        return returned

    def reap(self, judge: Callable[[int, Start], object]) -> list[str]:
        """Remove every int owner that `judge(pid, start)` proves dead.

        `judge` answers a `Liveness` (or a bool: False is dead). Only `DEAD`/False frees
        anything; `UNKNOWN` keeps the owner. Names whose every owner is gone go back to
        the pool; they are returned. Anonymous and `str` owners are never reaped.
        """
        dead = [(pid, start) for pid, start in self._start_times.items() if _is_dead(judge(pid, start))]
        return self.remove_dead_owners(dead)

    def reset(self) -> None:
        """Forget every name and owner (the source starts over)."""
        self._clear()

    def reconcile(
        self,
        names_in_use: Iterable[object],
        is_live_int_owner: Callable[[int, Start], object],
    ) -> list[str]:
        """Make exactly `names_in_use` the checked-out names (gastown's sync with reality).

        All names are validated first: one invalid name raises `InvalidName` and changes
        nothing. Listed names become checked out (an anonymous holder is added, so they
        stay until checked in; existing owners keep them too). Other checked-out names go
        back to the pool, except one held by an int owner not proven dead: it stays held
        by those owners only, and is returned so the shell can log a WARNING. The default
        name is ignored.
        """
        listed = validate_listed_names(names_in_use, self._default_name)

        # Ask about every process before changing anything, so a failing check leaves
        # the state as it was.
        live_owners = {
            name: [
                owner
                for owner in owners
                if type(owner) is int and not _is_dead(is_live_int_owner(owner, self._start_times[owner]))
            ]
            for name, owners in self._holders.items()
            if name not in listed
        }
        kept_for_live_owner: list[str] = []
        for name, live in live_owners.items():
            if live:
                kept_for_live_owner.append(name)
                for owner in list(self._holders[name]):
                    if owner not in live:
                        self._drop(name, owner)
            else:
                self._release(name)
        for name in listed:
            owners = self._holders.get(name)
            if owners is None:
                if name in self._available:
                    self._take(name)
                self._hold(name, None, None)
            elif None not in owners:
                self._hold(name, None, None)
        return kept_for_live_owner

    # -- primitive changes: the only code that mutates, recorded for the journal ---------

    def _record(self, change: Change) -> None:
        self._revision += 1
        if self.is_recording:
            self._changes.append(change)

    def _push(self, name: str) -> None:
        """A name no one holds goes on top of the stack."""
        self._available[name] = None
        self._record(("push", name))

    def _take(self, name: str) -> None:
        """An available name leaves the stack (from wherever it is), and leaves its key."""
        del self._available[name]
        key = self._name_keys.pop(name, None)
        if key is not None:
            del self._key_names[key]
        self._record(("take", name))

    def _remember(self, key: str, name: str) -> None:
        """`name` is now `key`'s last name (each of them leaves its previous partner)."""
        if self._key_names.get(key) == name:
            return
        previous = self._key_names.pop(key, None)
        if previous is not None:
            del self._name_keys[previous]
        other = self._name_keys.pop(name, None)
        if other is not None:
            del self._key_names[other]
        self._key_names[key] = name
        self._name_keys[name] = key
        self._record(("key", key, name))

    def _pick_available(self) -> str | None:
        """The top of the stack, skipping names remembered for a worker key if it can."""
        if not self._name_keys:
            return next(reversed(self._available), None)
        for name in reversed(self._available):
            if name not in self._name_keys:
                return name
        return next(reversed(self._available), None)

    def _under(self, names: list[str]) -> None:
        """New names go under the stack, the first of them handed out first."""
        new_on_top = {name: None for name in reversed(names)}
        if self._available:
            new_on_top.update(self._available)  # keep earlier names above the new ones
        self._available = new_on_top
        self._record(("under", names))

    def _hold(self, name: str, owner: Owner, start: Start) -> None:
        """`owner` joins `name`'s owners (the name is not on the stack)."""
        owners = self._holders.get(name)
        if owners is None:
            self._holders[name] = {owner: None}
        else:
            owners[owner] = None
        if owner is not None:
            self._owner_names[owner] = name
            if type(owner) is int:
                self._start_times[owner] = start
            else:
                start = None
        self._record(("hold", name, owner, _encode_start(start)))

    def _drop(self, name: str, owner: Owner) -> str | None:
        """`owner` leaves `name`; return the name if that left it without owners (then on top)."""
        owners = self._holders[name]
        del owners[owner]
        if owner is not None:
            del self._owner_names[owner]
            if type(owner) is int:
                del self._start_times[owner]
        self._record(("drop", name, owner))
        if owners:
            return None
        del self._holders[name]
        self._available[name] = None
        return name

    def _release(self, name: str) -> None:
        """Every owner of `name` leaves; the name goes on top of the stack."""
        for owner in self._holders.pop(name):
            if owner is not None:
                del self._owner_names[owner]
                if type(owner) is int:
                    del self._start_times[owner]
        self._available[name] = None
        self._record(("release", name))

    def _pin(self, pid: int, start: Start) -> None:
        self._start_times[pid] = start
        self._record(("start", pid, _encode_start(start)))

    def _clear(self) -> None:
        self._available.clear()
        self._holders.clear()
        self._owner_names.clear()
        self._start_times.clear()
        self._key_names.clear()
        self._name_keys.clear()
        self._record(("reset",))

    def _refresh_process(self, pid: int, start: Start) -> bool:
        """Keep `pid`'s record if `start` is its process; end it if the pid was reused.

        Returns True when the record still stands (then pinned to `start` if that is
        more precise than what was recorded).
        """
        recorded = self._start_times[pid]
        if _is_same_process(recorded, start):
            if start is not None and (recorded is None or (type(start) is ProcessStart and type(recorded) is not ProcessStart)):
                self._pin(pid, start)
            return True
        # The recorded process is gone and a new one has its pid: its names end now.
        self._drop(self._owner_names[pid], pid)
        return False

    def apply(self, changes: Iterable[object]) -> None:
        """Replay primitive changes (a journal frame); ValueError if one does not fit the state."""
        for change in changes:
            try:
                kind, *fields = change  # type: ignore[misc]
                if kind == "push" and fields[0] not in self._holders and fields[0] not in self._available:
                    self._push(_checked_name(fields[0]))
                elif kind == "take":
                    self._take(fields[0])
                elif kind == "under":
                    names = [_checked_name(name) for name in fields[0]]
                    if any(name in self._available or name in self._holders for name in names):
                        raise ValueError("a new name is known already")
                    self._under(names)
                elif kind == "hold" and fields[0] not in self._available:
                    owner = fields[1]
                    if owner is not None and not isinstance(owner, int | str):
                        raise ValueError(f"bad owner {owner!r}")
                    if owner is not None and owner in self._owner_names:
                        raise ValueError(f"owner {owner!r} holds a name already")
                    self._hold(_checked_name(fields[0]), owner, _decode_start(fields[2]))
                elif kind == "drop":
                    self._drop(fields[0], fields[1])
                elif kind == "release":
                    self._release(fields[0])
                elif kind == "start" and fields[0] in self._start_times:
                    self._pin(fields[0], _decode_start(fields[1]))
                elif kind == "reset":
                    self._clear()
                elif kind == "key" and type(fields[0]) is str and fields[0]:
                    name = _checked_name(fields[1])
                    if name not in self._available and name not in self._holders:
                        raise ValueError(f"key {fields[0]!r} names an unknown name")
                    self._remember(fields[0], name)
                else:
                    raise ValueError("unknown change or one that does not fit the state")
            except (KeyError, IndexError, TypeError, ValueError) as error:
                raise ValueError(f"journal change {describe(change)} cannot be applied: {error!r}") from None

    # -- persistence -----------------------------------------------------------------

    def to_snapshot(self) -> dict[str, Any]:
        """The whole state as plain msgpack/JSON-able data (str keys, lists, ints, floats).

        `{"version": 2, "available": [name, ...] (bottom first), "holders": [[name,
        [owner, ...]], ...]}` with each owner encoded as `["anon"]`, `["str", owner]`,
        `["pid", pid, start_time]` (start unknown, or a v2 record) or `["pid", pid,
        start_time, start_ticks, boot_id]`. Order is kept, so a round trip through
        `from_snapshot` is exact.
        """
        snapshot: dict[str, Any] = {
            "version": SNAPSHOT_VERSION,
            "available": list(self._available),
            "holders": [
                [name, [self._encode_owner(owner) for owner in owners]] for name, owners in self._holders.items()
            ],
        }
        if self._key_names:
            snapshot["keys"] = [[key, name] for key, name in self._key_names.items()]
        return snapshot

    @classmethod
    def from_snapshot(
        cls, data: object, chunk_size: int = 12, default_name: str = "Nameless Agent"
    ) -> NameState:
        """Rebuild a state from `to_snapshot()` data (v1 or v2); raise ValueError if malformed.

        `chunk_size` and `default_name` come from the caller's configuration, not the file.
        If the default name was changed to a name the file knows, that name is dropped.
        """
        state = cls(chunk_size, default_name)
        if not isinstance(data, Mapping):
            raise ValueError(f"name pool snapshot must be a map, not {type(data).__name__}")
        version = data.get("version")
        if type(version) is not int or version not in _READABLE_VERSIONS:
            raise ValueError(f"unsupported name pool snapshot version {version!r}")
        available = _sequence(data.get("available"), "available")
        held = _sequence(data.get("holders"), "holders")

        for name in available:
            _check_snapshot_name(name, "available")
            if name in state._available:
                raise ValueError(f"name {name!r} is twice in 'available'")
            state._available[name] = None
        for entry in held:
            pair = _sequence(entry, "holders entry")
            if len(pair) != 2:
                raise ValueError(f"holders entry must be [name, owners], not {entry!r}")
            name, encoded_owners = pair
            _check_snapshot_name(name, "holders")
            if name in state._available or name in state._holders:
                raise ValueError(f"name {name!r} is both available and held, or held twice")
            encoded_owners = _sequence(encoded_owners, f"owners of {name!r}")
            if not encoded_owners:
                raise ValueError(f"checked-out name {name!r} has no owner")
            owners: dict[Owner, None] = {}
            for encoded in encoded_owners:
                owner, start_time = _decode_owner(encoded)
                if owner in owners:
                    raise ValueError(f"owner {owner!r} is twice among the owners of {name!r}")
                if owner is not None:
                    if owner in state._owner_names:
                        raise ValueError(f"owner {owner!r} holds two names")
                    state._owner_names[owner] = name
                    if type(owner) is int:
                        state._start_times[owner] = start_time
                owners[owner] = None
            state._holders[name] = owners

        for entry in _sequence(data.get("keys", []), "keys"):
            pair = _sequence(entry, "keys entry")
            if len(pair) != 2 or type(pair[0]) is not str or not pair[0]:
                raise ValueError(f"keys entry must be [key, name], not {entry!r}")
            key, name = pair
            _check_snapshot_name(name, "keys")
            if name not in state._available and name not in state._holders:
                raise ValueError(f"key {key!r} names {name!r}, which the pool does not know")
            if key in state._key_names or name in state._name_keys:
                raise ValueError(f"key {key!r} or name {name!r} is twice in 'keys'")
            state._key_names[key] = name
            state._name_keys[name] = key

        # A default name that the file knows (the configuration changed) must never be
        # handed out: drop it, and the associations to it.
        state._available.pop(state._default_name, None)
        key = state._name_keys.pop(state._default_name, None)
        if key is not None:
            del state._key_names[key]
        if state._default_name in state._holders:
            for owner in state._holders.pop(state._default_name):
                if owner is not None:
                    del state._owner_names[owner]
                    if type(owner) is int:
                        del state._start_times[owner]
        return state

    def _encode_owner(self, owner: Owner) -> list[Any]:
        if owner is None:
            return ["anon"]
        if type(owner) is int:
            start = self._start_times[owner]
            if type(start) is ProcessStart:
                return ["pid", owner, start.start_time, start.start_ticks, start.boot_id]
            return ["pid", owner, start]
        return ["str", owner]


def _encode_start(start: Start) -> Any:
    if type(start) is ProcessStart:
        return [start.start_ticks, start.boot_id, start.start_time]
    return start


def _decode_start(encoded: object) -> Start:
    if encoded is None:
        return None
    if type(encoded) in (int, float):
        return float(encoded)  # type: ignore[arg-type]
    fields = _sequence(encoded, "start")
    if len(fields) == 3:
        ticks, boot_id, start_time = fields
        if (
            type(ticks) is int
            and ticks >= 0
            and (boot_id is None or type(boot_id) is str)
            and (start_time is None or type(start_time) in (int, float))
        ):
            return ProcessStart(ticks, boot_id, None if start_time is None else float(start_time))
    raise ValueError(f"malformed process start {encoded!r}")


def _checked_name(name: object) -> str:
    if type(name) is not str or not is_valid_name(name):
        raise ValueError(f"invalid name {name!r}")
    return name


def _sequence(value: object, what: str) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{what} must be a list, not {type(value).__name__}")
    return value


def _check_snapshot_name(name: object, where: str) -> None:
    if type(name) is not str or not is_valid_name(name):
        raise ValueError(f"invalid name {name!r} in {where!r}")


def _decode_owner(encoded: object) -> tuple[Owner, Start]:
    """`(owner, start)` from `["anon"]`, `["str", owner]`, `["pid", pid, start_time]` or
    `["pid", pid, start_time, start_ticks, boot_id]`."""
    fields = _sequence(encoded, "owner")
    kind = fields[0] if fields else None
    if kind == "anon" and len(fields) == 1:
        return None, None
    if kind == "str" and len(fields) == 2 and type(fields[1]) is str:
        return fields[1], None
    if kind == "pid" and len(fields) == 3:
        pid, start_time = fields[1], fields[2]
        if type(pid) is int and pid > 0 and (start_time is None or type(start_time) in (int, float)):
            return pid, None if start_time is None else float(start_time)
    if kind == "pid" and len(fields) == 5:
        pid, start_time, ticks, boot_id = fields[1:]
        if type(pid) is int and pid > 0:
            return pid, _decode_start([ticks, boot_id, start_time])
    raise ValueError(f"malformed owner {encoded!r}")
