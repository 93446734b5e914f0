"""The agent pool's functional core: keys, settings, entries and eviction decisions.

No actors, threads or clocks here: callers pass ``now`` (a ``Clock.monotonic()``
reading) and an ``is_busy(key, backend)`` predicate (usually wrapping `is_busy`).
The decisions are the pure `select_idle_eviction_targets` and
`select_lru_eviction_targets`; `AgentRegistry.plan_sweep` reaches the same answers
without sorting, by walking its entries in recency order::

    registry = AgentRegistry()
    registry.register(("chat-1", "coder"), backend, now=clock.monotonic())
    busy = lambda key, backend: is_busy(backend, on_error=log_busy_error)

    registry.probe_health(now, on_error=log_probe_error)  # tick_health(now) on each
    plan = registry.plan_sweep(now, idle_ttl=1800.0, max_live=32, is_busy=busy)
    removed = registry.evict(plan.keys, is_busy=busy)  # busy checked again: Removed(keys, backends)
    # ...then dispose removed.backends off the actor's thread, as one batch.
"""

from __future__ import annotations

import heapq
import math
import numbers
import operator
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

from supervision._errors import ClientError, describe

__all__ = [
    "AgentKey",
    "AgentRegistry",
    "Backend",
    "BusyPredicate",
    "EntrySnapshot",
    "InvalidBackend",
    "InvalidKey",
    "InvalidSetting",
    "Removed",
    "SweepPlan",
    "check_backend",
    "is_busy",
    "key_string",
    "key_strings",
    "select_idle_eviction_targets",
    "select_lru_eviction_targets",
    "validate_key",
    "validate_now",
    "validate_settings",
]

AgentKey = tuple[str, str]
"""``(primary, agent)``; ``primary`` is typically a chat id."""


class Backend(Protocol):
    """What the pool holds: anything with ``dispose()``.

    Optional: ``is_busy() -> bool`` (absent: never busy) and ``tick_health(now)``.
    """

    def dispose(self) -> object: ...


BusyPredicate = Callable[[AgentKey, Any], bool]
"""``is_busy(key, backend) -> bool`` as passed to the registry; see `is_busy`."""


class InvalidKey(ClientError, TypeError):
    """A key part (primary or agent) that is not a ``str``."""


class InvalidBackend(ClientError, TypeError):
    """A backend without a callable ``dispose``."""


class InvalidSetting(ClientError, ValueError):
    """A pool setting or a sweep time that is negative, not a number, a bool or NaN."""


# --- keys, settings, backends -------------------------------------------------------


def _describe(value: object) -> str:
    # A huge, deep or hostile repr must not flood (or crash) the client's error message.
    return f"{describe(value)} ({type(value).__name__})"


def validate_key(primary: object, agent: object) -> AgentKey:
    """Return ``(primary, agent)`` as plain ``str``s; raise `InvalidKey` otherwise.

    ``str`` subclasses are converted to exact ``str`` so that a custom ``__eq__`` or
    ``__hash__`` cannot confuse the registry.
    """
    if not isinstance(primary, str) or not isinstance(agent, str):
        raise InvalidKey(
            "agent key parts must be str: "
            f"primary={_describe(primary)}, agent={_describe(agent)}"
        )
    return str.__str__(primary), str.__str__(agent)


def key_string(key: AgentKey) -> str:
    """The key as clients see it in sweep results: ``"primary:agent"``."""
    return ":".join(key)


def key_strings(keys: Iterable[AgentKey]) -> list[str]:
    """`key_string` of each key (one C-level pass: a sweep may report 100,000)."""
    return list(map(":".join, keys))


def _is_real(value: object) -> bool:
    # bool is an int, but ``idle_ttl=True`` is a bug, not one second.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _number(name: str, value: object, requirement: str, is_ok: Callable[[float], bool]) -> float:
    if _is_real(value):
        try:
            number = float(value)  # type: ignore[arg-type]
        except OverflowError:  # an int too large for a float
            number = math.inf if value > 0 else -math.inf  # type: ignore[operator]
        if is_ok(number):  # NaN fails every comparison, so every check
            return number
    raise InvalidSetting(f"{name} must be {requirement}, got {_describe(value)}")


def validate_settings(
    idle_ttl: object, max_live: object, sweep_interval: object
) -> tuple[float, int, float]:
    """Check the pool's settings and return them normalised ``(float, int, float)``.

    ``idle_ttl`` is a number >= 0 (``inf`` disables idle eviction); ``max_live`` an
    int >= 0; ``sweep_interval`` a finite number > 0. Raises `InvalidSetting` (a
    ``ValueError``) naming the setting and the value.
    """
    ttl = _number("idle_ttl", idle_ttl, "a number >= 0 (seconds)", lambda x: x >= 0)
    cap = None
    if not isinstance(max_live, bool):
        try:
            cap = operator.index(max_live)  # type: ignore[arg-type]
        except TypeError:
            pass
    if cap is None or cap < 0:
        raise InvalidSetting(f"max_live must be an int >= 0, got {_describe(max_live)}")
    interval = _number(
        "sweep_interval", sweep_interval, "a finite number > 0 (seconds)", lambda x: 0 < x < math.inf
    )
    return ttl, cap, interval


def validate_now(now: object) -> float:
    """Check a sweep time (``sweep(now)``): a finite number; raise `InvalidSetting`."""
    return _number("now", now, "a finite number (clock.monotonic() scale)", math.isfinite)


def check_backend(backend: object) -> None:
    """Raise `InvalidBackend` unless ``backend`` has a callable ``dispose``."""
    try:
        dispose = getattr(backend, "dispose", None)
    except Exception as exc:  # a property that raises: as good as absent
        raise InvalidBackend(f"backend {_describe(backend)}: reading dispose raised {exc!r}") from exc
    if not callable(dispose):
        raise InvalidBackend(f"backend must have a callable dispose(), got {_describe(backend)}")


def is_busy(backend: object, on_error: Callable[[Exception], None] | None = None) -> bool:
    """Whether ``backend`` says it is busy; raises only what ``on_error`` raises.

    * no ``is_busy`` attribute, or not callable: not busy;
    * ``is_busy()`` returns a ``bool`` (or ``int``): its truth value;
    * any other result (e.g. the ``Mock`` an auto-created mock attribute returns)
      does not answer the question: not busy, as if the method were absent;
    * ``is_busy()`` (or reading it) raises: **busy** — never evict what we cannot
      prove idle — and ``on_error(exc)`` is called so the caller can log it once
      with the key.
    """
    try:
        method = getattr(backend, "is_busy", None)
        if not callable(method):
            return False
        answer = method()
    except Exception as exc:
        if on_error is not None:
            on_error(exc)
        return True
    return isinstance(answer, int) and bool(answer)


# --- pure decisions -----------------------------------------------------------------


class EntrySnapshot(NamedTuple):
    """One entry as the eviction decisions see it."""

    key: AgentKey
    last_active: float
    """``Clock.monotonic()`` value of the last activity (get, touch, register)."""
    activity_seq: int
    """Position in a global order of activity bumps; breaks ties in ``last_active``."""
    is_busy: bool


# EntrySnapshot's (last_active, activity_seq): oldest first, ties by the order of activity.
_recency = operator.itemgetter(1, 2)


def select_idle_eviction_targets(
    snapshots: Iterable[EntrySnapshot], now: float, idle_ttl: float
) -> list[AgentKey]:
    """Keys of non-busy entries idle for *longer* than ``idle_ttl``, in input order.

    Idle means ``now - last_active > idle_ttl``: an entry idle exactly ``idle_ttl``
    is kept.
    """
    return [s.key for s in snapshots if not s.is_busy and now - s.last_active > idle_ttl]


def select_lru_eviction_targets(
    snapshots: Iterable[EntrySnapshot],
    max_live: int,
    already_evicted: Collection[AgentKey] = (),
) -> list[AgentKey]:
    """Least recently active non-busy keys to evict so at most ``max_live`` remain.

    Entries in ``already_evicted`` (e.g. the idle targets) do not count; busy entries
    count but are never chosen, so the cap is soft while too many are busy. Order:
    oldest first by ``(last_active, activity_seq)``. Keys are assumed unique.
    """
    if already_evicted:
        excluded = (
            already_evicted
            if isinstance(already_evicted, (set, frozenset, dict))
            else set(already_evicted)
        )
        remaining: Sequence[EntrySnapshot] = [s for s in snapshots if s.key not in excluded]
    else:
        remaining = snapshots if isinstance(snapshots, Sequence) else list(snapshots)
    excess = len(remaining) - max_live
    # Under the cap (the common case): no sorting at all.
    if excess <= 0:
        return []
    candidates = [s for s in remaining if not s.is_busy]
    if excess >= len(candidates):
        chosen = sorted(candidates, key=_recency)
    elif excess * 8 < len(candidates):
        # A few victims out of many: a bounded heap beats sorting everything.
        chosen = heapq.nsmallest(excess, candidates, key=_recency)
    else:
        # Timsort is linear on input already in recency order (the registry's).
        chosen = sorted(candidates, key=_recency)[:excess]
    return [s.key for s in chosen]


# --- the registry -------------------------------------------------------------------


class SweepPlan(NamedTuple):
    """What one sweep evicts: idle entries first, then least recently active ones."""

    ttl_keys: list[AgentKey]
    lru_keys: list[AgentKey]

    @property
    def keys(self) -> list[AgentKey]:
        """All keys to evict, idle ones first."""
        return self.ttl_keys + self.lru_keys


class Removed(NamedTuple):
    """Entries taken out of the registry, oldest activity first: two parallel lists.

    The backends are not disposed: that is the caller's job (off its thread). Two lists
    rather than a list of pairs, so removing many entries allocates two objects, not one
    per entry (see docs/design.md, "The agent pool", "Garbage").
    """

    keys: list[AgentKey]
    backends: list[Any]


class _Entry:
    __slots__ = ("backend", "last_active", "activity_seq", "chat")

    def __init__(self, backend: Any, chat: set[str]) -> None:
        self.backend = backend
        self.last_active = 0.0
        self.activity_seq = 0
        # The agent names registered under this entry's primary (shared by them all, and
        # the same set as the registry's index holds), so a removal needs no index lookup.
        self.chat = chat


class AgentRegistry:
    """The pool's entries keyed by ``(primary, agent)``, kept in recency order.

    Plain and single-threaded (the `AgentPool` actor owns one). Lookups, bumps,
    registration and removal are O(1); iteration is oldest activity first. A sweep
    never sorts: it walks from the oldest entry and stops at the first one that is not
    idle (or once the cap is met), so it costs O(evicted + busy skipped), plus the
    health probes, which visit every entry. Keys are not validated here (use
    `validate_key` at the boundary); backends are checked with `check_backend` on
    `register`. Callbacks (``is_busy``, probes) must not modify the registry.

    Activity times never go backwards: a ``now`` earlier than the latest recorded
    activity is recorded as that latest time. Recency order and time order then
    agree, which lets a sweep stop at the first entry that is not idle.
    """

    __slots__ = ("_entries", "_by_primary", "_next_seq", "_latest")

    def __init__(self) -> None:
        # Least recently active first: a bump pops the key and inserts it again at the
        # end. A plain dict rather than an OrderedDict: its entries sit in one array in
        # that order, so a walk reads memory in order (an OrderedDict's iteration looks
        # every key up again).
        self._entries: dict[AgentKey, _Entry] = {}
        # primary -> its agents' names, so close_chat does not scan the whole pool. Sets of
        # names, not of keys: a str caches its hash and a small set holds its table
        # inline, so keeping this index costs a removal one object, not three.
        self._by_primary: dict[str, set[str]] = {}
        self._next_seq = 0
        self._latest = -math.inf

    def _stamp(self, entry: _Entry, now: float) -> None:
        # `not >=` also catches NaN.
        if not now >= self._latest:
            now = self._latest
        self._latest = now
        entry.last_active = now
        entry.activity_seq = self._next_seq
        self._next_seq += 1

    # -- single entries

    def _bump(self, key: AgentKey, now: float) -> _Entry | None:
        entries = self._entries
        entry = entries.pop(key, None)
        if entry is not None:
            entries[key] = entry
            self._stamp(entry, now)
        return entry

    def get(self, key: AgentKey, now: float) -> Any | None:
        """The backend of ``key`` (marked active at ``now``), or None."""
        entry = self._bump(key, now)
        return None if entry is None else entry.backend

    def peek(self, key: AgentKey) -> Any | None:
        """The backend of ``key`` or None, without marking it active."""
        entry = self._entries.get(key)
        return None if entry is None else entry.backend

    def touch(self, key: AgentKey, now: float) -> bool:
        """Mark ``key`` active at ``now``; False if it is not registered."""
        return self._bump(key, now) is not None

    def register(self, key: AgentKey, backend: Any, now: float) -> Any | None:
        """Register ``backend`` under ``key``, active at ``now``.

        Returns the backend it replaced (for the caller to dispose), or None. Re-registering
        the very same object is only a bump and returns None: it must not be disposed.
        Raises `InvalidBackend` (nothing changed) if ``backend`` has no callable ``dispose``.
        """
        check_backend(backend)
        entries = self._entries
        entry = entries.pop(key, None)
        previous = None
        if entry is None:
            chat = self._by_primary.get(key[0])
            if chat is None:
                chat = self._by_primary[key[0]] = set()
            chat.add(key[1])
            entry = _Entry(backend, chat)
        else:
            previous = None if entry.backend is backend else entry.backend
            entry.backend = backend
        entries[key] = entry
        self._stamp(entry, now)
        return previous

    def remove(self, key: AgentKey) -> Any | None:
        """Unregister ``key``; returns its backend (not disposed), or None."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        chat = entry.chat
        chat.discard(key[1])
        if not chat:
            del self._by_primary[key[0]]
        return entry.backend

    def last_active(self, key: AgentKey) -> float | None:
        """When ``key`` was last active (``now`` scale), or None if not registered."""
        entry = self._entries.get(key)
        return None if entry is None else entry.last_active

    # -- the whole pool

    def keys_for_primary(self, primary: str) -> list[AgentKey]:
        """Keys whose primary is ``primary``, least recently active first."""
        agents = self._by_primary.get(primary)
        if not agents:
            return []
        entries = self._entries
        return sorted([(primary, agent) for agent in agents], key=lambda key: entries[key].activity_seq)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[tuple[AgentKey, Any]]:
        """``(key, backend)`` pairs, least recently active first.

        Iterates over a copy, so the caller may register or remove meanwhile.
        """
        return iter([(key, entry.backend) for key, entry in self._entries.items()])

    def clear(self) -> Removed:
        """Unregister everything; returns what was removed (not disposed), oldest first."""
        removed = Removed(list(self._entries), [entry.backend for entry in self._entries.values()])
        self._entries.clear()
        self._by_primary.clear()
        return removed

    def count_busy(self, is_busy: BusyPredicate) -> int:
        """How many entries ``is_busy(key, backend)`` calls busy (asked once each, in place)."""
        return sum(1 for key, entry in self._entries.items() if is_busy(key, entry.backend))

    def snapshots(self, is_busy: BusyPredicate) -> list[EntrySnapshot]:
        """Every entry as an `EntrySnapshot`, least recently active first.

        ``is_busy(key, backend)`` is called once per entry.
        """
        return [
            EntrySnapshot(key, entry.last_active, entry.activity_seq, bool(is_busy(key, entry.backend)))
            for key, entry in self._entries.items()
        ]

    # -- sweeping

    def probe_health(self, now: float, on_error: Callable[[AgentKey, Exception], None]) -> int:
        """Call every backend's ``tick_health(now)``, if it has one, oldest first.

        A probe that raises is reported as ``on_error(key, error)`` and the walk goes on;
        returns how many raised. Allocates nothing per entry (no list of pairs).
        """
        errors = 0
        for key, entry in self._entries.items():
            try:
                probe = getattr(entry.backend, "tick_health", None)
                if callable(probe):
                    probe(now)
            except Exception as error:
                errors += 1
                on_error(key, error)
        return errors

    def plan_sweep(
        self, now: float, idle_ttl: float, max_live: int, is_busy: BusyPredicate
    ) -> SweepPlan:
        """Decide one sweep, removing nothing; act on it with `evict`.

        The same keys, in the same order, as
        ``ttl = select_idle_eviction_targets(snaps, now, idle_ttl)`` and
        ``select_lru_eviction_targets(snaps, max_live, ttl)`` over
        ``snaps = self.snapshots(is_busy)``, but without sorting: idle entries form a
        prefix of the recency order (activity times never go backwards), so the walk
        stops at the first entry that is not idle, then goes on only as far as the cap
        needs. ``is_busy`` is asked at most once per entry, and only of entries visited.
        """
        ttl_keys: list[AgentKey] = []
        lru_keys: list[AgentKey] = []
        items = iter(self._entries.items())
        for key, entry in items:
            if not now - entry.last_active > idle_ttl:
                break
            if not is_busy(key, entry.backend):
                ttl_keys.append(key)
        else:
            return SweepPlan(ttl_keys, lru_keys)  # everything was idle: nothing left for the cap
        excess = len(self._entries) - len(ttl_keys) - max_live
        if excess <= 0:
            return SweepPlan(ttl_keys, lru_keys)
        # key, entry: the first entry that is not idle. Everything before it is chosen
        # already or busy; from here on, the oldest non-busy entries go.
        if not is_busy(key, entry.backend):
            lru_keys.append(key)
        for key, entry in items:
            if len(lru_keys) >= excess:
                break
            if not is_busy(key, entry.backend):
                lru_keys.append(key)
        return SweepPlan(ttl_keys, lru_keys)

    def evict(self, keys: Iterable[AgentKey], is_busy: BusyPredicate) -> Removed:
        """Remove each key that is still registered and, checked again now, not busy.

        Busy is asked right before each removal; a key found busy stays registered and
        is left out of the result, as is one not registered (or repeated). Returns the
        removed entries in ``keys`` order; the caller disposes the backends.
        """
        entries = self._entries
        removed_keys: list[AgentKey] = []
        backends: list[Any] = []
        for key in keys:
            entry = entries.get(key)
            if entry is None or is_busy(key, entry.backend):
                continue
            del entries[key]
            chat = entry.chat
            chat.discard(key[1])
            if not chat:
                del self._by_primary[key[0]]
            removed_keys.append(key)
            backends.append(entry.backend)
        return Removed(removed_keys, backends)
