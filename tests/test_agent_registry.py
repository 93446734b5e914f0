"""The agent pool's pure core: keys, settings, eviction decisions and the registry."""

from __future__ import annotations

import gc
import math
from fractions import Fraction
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.agents._registry import (
    AgentKey,
    AgentRegistry,
    EntrySnapshot,
    InvalidBackend,
    InvalidKey,
    InvalidSetting,
    Removed,
    SweepPlan,
    check_backend,
    is_busy,
    key_string,
    key_strings,
    select_idle_eviction_targets,
    select_lru_eviction_targets,
    validate_key,
    validate_now,
    validate_settings,
)
from supervision._errors import ClientError


class Backend:
    """A test backend whose busy flag the test sets."""

    def __init__(self, name: str = "", busy: bool = False) -> None:
        self.name = name
        self.busy = busy
        self.disposed = 0

    def dispose(self) -> None:
        self.disposed += 1

    def is_busy(self) -> bool:
        return self.busy

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"


def never_busy(key: AgentKey, backend: Any) -> bool:
    return False


def by_flag(key: AgentKey, backend: Any) -> bool:
    return is_busy(backend)


def snap(name: str, last_active: float, seq: int, busy: bool = False) -> EntrySnapshot:
    return EntrySnapshot((name, "agent"), last_active, seq, busy)


def keys(*names: str) -> list[AgentKey]:
    return [(name, "agent") for name in names]


def sweep(
    registry: AgentRegistry, now: float, idle_ttl: float, max_live: int, busy: Any
) -> tuple[Removed, Removed]:
    """What the pool does per sweep: plan, then evict the TTL keys and the LRU keys."""
    plan = registry.plan_sweep(now, idle_ttl, max_live, busy)
    return registry.evict(plan.ttl_keys, busy), registry.evict(plan.lru_keys, busy)


# --- keys ---------------------------------------------------------------------------


def test_validate_key_returns_plain_str_tuple() -> None:
    class Sub(str):
        pass

    key = validate_key(Sub("chat"), "coder")
    assert key == ("chat", "coder")
    assert type(key[0]) is str and type(key[1]) is str
    assert key_string(key) == "chat:coder"


@pytest.mark.parametrize(
    ("primary", "agent"),
    [(1, "a"), ("a", None), (b"a", "b"), (["a"], "b"), ("a", {"b": 1}), (("a",), "b")],
)
def test_validate_key_rejects_non_str_parts(primary: object, agent: object) -> None:
    with pytest.raises(InvalidKey) as info:
        validate_key(primary, agent)
    assert isinstance(info.value, ClientError) and isinstance(info.value, TypeError)
    assert "primary=" in str(info.value) and "agent=" in str(info.value)


def test_validate_key_truncates_huge_reprs() -> None:
    with pytest.raises(InvalidKey) as info:
        validate_key(list(range(10_000)), "a")
    assert len(str(info.value)) < 300


# --- settings -----------------------------------------------------------------------


def test_validate_settings_normalises() -> None:
    assert validate_settings(1800, 32, 60) == (1800.0, 32, 60.0)
    assert validate_settings(0, 0, 0.5) == (0.0, 0, 0.5)
    assert validate_settings(math.inf, 1, 1)[0] == math.inf  # idle eviction off
    assert validate_settings(10**400, 1, 1)[0] == math.inf
    assert validate_settings(Fraction(1, 2), 1, Fraction(1, 4)) == (0.5, 1, 0.25)


@pytest.mark.parametrize(
    ("idle_ttl", "max_live", "sweep_interval", "named"),
    [
        (-1, 32, 60, "idle_ttl"),
        (math.nan, 32, 60, "idle_ttl"),
        (True, 32, 60, "idle_ttl"),
        ("10", 32, 60, "idle_ttl"),
        (None, 32, 60, "idle_ttl"),
        (10, -1, 60, "max_live"),
        (10, True, 60, "max_live"),
        (10, 2.5, 60, "max_live"),
        (10, "3", 60, "max_live"),
        (10, None, 60, "max_live"),
        (10, 32, 0, "sweep_interval"),
        (10, 32, -5, "sweep_interval"),
        (10, 32, math.nan, "sweep_interval"),
        (10, 32, math.inf, "sweep_interval"),
        (10, 32, False, "sweep_interval"),
        (10, 32, "60", "sweep_interval"),
        pytest.param(10, 32, 10**400, "sweep_interval", id="huge-sweep_interval"),
    ],
)
def test_validate_settings_rejects(
    idle_ttl: object, max_live: object, sweep_interval: object, named: str
) -> None:
    with pytest.raises(ValueError, match=named) as info:
        validate_settings(idle_ttl, max_live, sweep_interval)
    assert isinstance(info.value, InvalidSetting) and isinstance(info.value, ClientError)


def test_validate_now() -> None:
    assert validate_now(5) == 5.0
    for bad in (math.nan, math.inf, -math.inf, "1", None, True):
        with pytest.raises(InvalidSetting, match="now"):
            validate_now(bad)


# --- backends -----------------------------------------------------------------------


def test_check_backend() -> None:
    check_backend(Backend())
    check_backend(mock.Mock())

    class NotCallable:
        dispose = 3

    for bad in (object(), NotCallable(), None, "dispose"):
        with pytest.raises(InvalidBackend) as info:
            check_backend(bad)
        assert isinstance(info.value, ClientError) and isinstance(info.value, TypeError)


def test_check_backend_with_raising_property() -> None:
    class Hostile:
        @property
        def dispose(self) -> Any:
            raise RuntimeError("boom")

    with pytest.raises(InvalidBackend, match="boom"):
        check_backend(Hostile())


def test_is_busy_answers() -> None:
    assert is_busy(Backend(busy=True)) is True
    assert is_busy(Backend(busy=False)) is False

    class NoProbe:
        def dispose(self) -> None: ...

    class NotCallable:
        is_busy = True

        def dispose(self) -> None: ...

    assert is_busy(NoProbe()) is False
    assert is_busy(NotCallable()) is False
    # A Mock's auto-created is_busy returns a Mock: no answer, treated like absent.
    assert is_busy(mock.Mock()) is False
    assert is_busy(mock.Mock(**{"is_busy.return_value": True})) is True


def test_is_busy_that_raises_counts_as_busy_and_reports() -> None:
    class Broken:
        def dispose(self) -> None: ...

        def is_busy(self) -> bool:
            raise OSError("probe failed")

    errors: list[Exception] = []
    assert is_busy(Broken(), on_error=errors.append) is True
    assert len(errors) == 1 and isinstance(errors[0], OSError)
    assert is_busy(Broken()) is True  # no callback: still busy, still no raise

    class Hostile:
        def dispose(self) -> None: ...

        @property
        def is_busy(self) -> Any:
            raise RuntimeError("no")

    assert is_busy(Hostile(), on_error=errors.append) is True
    assert isinstance(errors[-1], RuntimeError)


# --- idle selection -----------------------------------------------------------------


def test_idle_exactly_ttl_is_kept_beyond_is_evicted() -> None:
    snapshots = [snap("a", 0.0, 0), snap("b", 10.0, 1), snap("c", 10.5, 2)]
    assert select_idle_eviction_targets(snapshots, now=110.0, idle_ttl=100.0) == keys("a")
    assert select_idle_eviction_targets(snapshots, now=110.25, idle_ttl=100.0) == keys("a", "b")


def test_idle_zero_ttl_keeps_entries_active_now() -> None:
    snapshots = [snap("a", 5.0, 0), snap("b", 4.0, 1)]
    assert select_idle_eviction_targets(snapshots, now=5.0, idle_ttl=0.0) == keys("b")


def test_idle_skips_busy_and_keeps_input_order() -> None:
    snapshots = [snap("c", 3.0, 5), snap("a", 1.0, 9, busy=True), snap("b", 2.0, 1)]
    assert select_idle_eviction_targets(snapshots, now=100.0, idle_ttl=10.0) == keys("c", "b")


def test_idle_infinite_ttl_evicts_nothing() -> None:
    assert select_idle_eviction_targets([snap("a", -1e9, 0)], now=1e9, idle_ttl=math.inf) == []


# --- LRU selection ------------------------------------------------------------------


def test_lru_under_cap_evicts_nothing() -> None:
    snapshots = [snap("a", 1.0, 0), snap("b", 2.0, 1)]
    assert select_lru_eviction_targets(snapshots, max_live=2) == []
    assert select_lru_eviction_targets(snapshots, max_live=5) == []
    assert select_lru_eviction_targets([], max_live=0) == []


def test_lru_evicts_least_recently_active_oldest_first() -> None:
    snapshots = [snap("c", 3.0, 2), snap("a", 1.0, 0), snap("d", 4.0, 3), snap("b", 2.0, 1)]
    assert select_lru_eviction_targets(snapshots, max_live=2) == keys("a", "b")
    assert select_lru_eviction_targets(snapshots, max_live=0) == keys("a", "b", "c", "d")


def test_lru_ties_break_by_order_of_activity() -> None:
    snapshots = [snap("x", 5.0, 7), snap("y", 5.0, 3), snap("z", 5.0, 4)]
    assert select_lru_eviction_targets(snapshots, max_live=1) == keys("y", "z")


def test_lru_busy_count_toward_cap_but_are_never_chosen() -> None:
    snapshots = [snap("a", 1.0, 0, busy=True), snap("b", 2.0, 1), snap("c", 3.0, 2)]
    assert select_lru_eviction_targets(snapshots, max_live=2) == keys("b")
    assert select_lru_eviction_targets(snapshots, max_live=1) == keys("b", "c")


def test_lru_cap_is_soft_when_all_busy() -> None:
    snapshots = [snap(name, float(i), i, busy=True) for i, name in enumerate("abcd")]
    assert select_lru_eviction_targets(snapshots, max_live=1) == []
    snapshots.append(snap("e", 9.0, 9))
    assert select_lru_eviction_targets(snapshots, max_live=1) == keys("e")


def test_lru_respects_already_evicted() -> None:
    snapshots = [snap("a", 1.0, 0), snap("b", 2.0, 1), snap("c", 3.0, 2), snap("d", 4.0, 3)]
    for evicted in (keys("a"), set(keys("a")), tuple(keys("a"))):
        # a is gone already: three remain, one over the cap of two.
        assert select_lru_eviction_targets(snapshots, max_live=2, already_evicted=evicted) == keys("b")
    assert select_lru_eviction_targets(snapshots, 2, already_evicted=keys("a", "b")) == []


def test_lru_accepts_any_iterable() -> None:
    snapshots = (s for s in [snap("a", 1.0, 0), snap("b", 2.0, 1)])
    assert select_lru_eviction_targets(snapshots, max_live=1) == keys("a")


def reference_lru(
    snapshots: list[EntrySnapshot], max_live: int, already_evicted: set[AgentKey]
) -> list[AgentKey]:
    """The rule, spelled out naively: evict the oldest non-busy one until under the cap."""
    live = [s for s in snapshots if s.key not in already_evicted]
    chosen: list[AgentKey] = []
    while len(live) > max_live:
        candidates = [s for s in live if not s.is_busy]
        if not candidates:
            break
        oldest = min(candidates, key=lambda s: (s.last_active, s.activity_seq))
        chosen.append(oldest.key)
        live.remove(oldest)
    return chosen


@st.composite
def snapshot_lists(draw: st.DrawFn) -> list[EntrySnapshot]:
    count = draw(st.integers(0, 60))
    seqs = draw(st.permutations(range(count)))
    # Few distinct times, so ties in last_active are common.
    return [
        EntrySnapshot(
            (f"p{i % 5}", f"a{i}"),
            float(draw(st.integers(0, 6))),
            seqs[i],
            draw(st.booleans()),
        )
        for i in range(count)
    ]


@settings(max_examples=300, deadline=None)
@given(snapshot_lists(), st.integers(0, 70), st.data())
def test_lru_matches_the_naive_rule(
    snapshots: list[EntrySnapshot], max_live: int, data: st.DataObject
) -> None:
    evicted = set(data.draw(st.lists(st.sampled_from([s.key for s in snapshots]))) if snapshots else [])
    expected = reference_lru(snapshots, max_live, evicted)
    assert select_lru_eviction_targets(snapshots, max_live, evicted) == expected


# --- registry -----------------------------------------------------------------------


def order(registry: AgentRegistry) -> list[AgentKey]:
    return [key for key, _ in registry]


def test_get_and_touch_bump_peek_does_not() -> None:
    registry = AgentRegistry()
    a, b, c = Backend("a"), Backend("b"), Backend("c")
    registry.register(("p", "a"), a, now=1.0)
    registry.register(("p", "b"), b, now=2.0)
    registry.register(("p", "c"), c, now=3.0)

    assert registry.peek(("p", "a")) is a
    assert order(registry) == [("p", "a"), ("p", "b"), ("p", "c")]
    assert registry.last_active(("p", "a")) == 1.0

    assert registry.get(("p", "a"), now=4.0) is a
    assert order(registry) == [("p", "b"), ("p", "c"), ("p", "a")]
    assert registry.last_active(("p", "a")) == 4.0

    assert registry.touch(("p", "b"), now=5.0) is True
    assert order(registry) == [("p", "c"), ("p", "a"), ("p", "b")]

    assert registry.get(("p", "zz"), now=6.0) is None
    assert registry.peek(("p", "zz")) is None
    assert registry.touch(("p", "zz"), now=6.0) is False
    assert registry.last_active(("p", "zz")) is None
    assert len(registry) == 3


def test_activity_sequence_orders_equal_times() -> None:
    registry = AgentRegistry()
    for name in "abc":
        registry.register(("p", name), Backend(name), now=1.0)
    registry.touch(("p", "a"), now=1.0)
    seqs = {s.key: s.activity_seq for s in registry.snapshots(never_busy)}
    assert seqs[("p", "b")] < seqs[("p", "c")] < seqs[("p", "a")]
    # Equal times, so the cap's choice rests on the order of activity alone.
    assert registry.plan_sweep(1.0, 10.0, 1, never_busy).lru_keys == [("p", "b"), ("p", "c")]


def test_activity_time_never_goes_backwards() -> None:
    registry = AgentRegistry()
    registry.register(("p", "a"), Backend(), now=10.0)
    registry.register(("p", "b"), Backend(), now=5.0)
    assert registry.last_active(("p", "b")) == 10.0
    registry.touch(("p", "a"), now=math.nan)
    assert registry.last_active(("p", "a")) == 10.0


def test_register_replaces_and_returns_previous() -> None:
    registry = AgentRegistry()
    old, new = Backend("old"), Backend("new")
    assert registry.register(("p", "a"), old, now=1.0) is None
    registry.register(("p", "b"), Backend("b"), now=2.0)
    assert registry.register(("p", "a"), new, now=3.0) is old
    assert registry.peek(("p", "a")) is new
    assert order(registry) == [("p", "b"), ("p", "a")]  # registration is activity
    assert len(registry) == 2
    # The very same object again: a bump, nothing for the caller to dispose.
    assert registry.register(("p", "a"), new, now=4.0) is None


def test_register_rejects_invalid_backend_without_change() -> None:
    registry = AgentRegistry()
    registry.register(("p", "a"), Backend("a"), now=1.0)
    with pytest.raises(InvalidBackend):
        registry.register(("p", "a"), object(), now=2.0)
    with pytest.raises(InvalidBackend):
        registry.register(("p", "b"), None, now=2.0)
    assert len(registry) == 1
    assert registry.last_active(("p", "a")) == 1.0
    assert registry.keys_for_primary("p") == [("p", "a")]


def test_remove() -> None:
    registry = AgentRegistry()
    backend = Backend()
    registry.register(("p", "a"), backend, now=1.0)
    assert registry.remove(("p", "a")) is backend
    assert registry.remove(("p", "a")) is None
    assert len(registry) == 0 and ("p", "a") not in registry
    assert backend.disposed == 0  # disposing is the caller's job


def test_keys_for_primary() -> None:
    registry = AgentRegistry()
    registry.register(("chat-1", "a"), Backend(), now=1.0)
    registry.register(("chat-2", "a"), Backend(), now=2.0)
    registry.register(("chat-1", "b"), Backend(), now=3.0)
    registry.touch(("chat-1", "a"), now=4.0)
    assert registry.keys_for_primary("chat-1") == [("chat-1", "b"), ("chat-1", "a")]
    assert registry.keys_for_primary("chat-2") == [("chat-2", "a")]
    assert registry.keys_for_primary("nope") == []
    registry.remove(("chat-2", "a"))
    assert registry.keys_for_primary("chat-2") == []
    registry.remove(("chat-1", "a"))
    assert registry.keys_for_primary("chat-1") == [("chat-1", "b")]


def test_iteration_is_by_recency_and_tolerates_mutation() -> None:
    registry = AgentRegistry()
    backends = {name: Backend(name) for name in "abc"}
    for t, (name, backend) in enumerate(backends.items()):
        registry.register(("p", name), backend, now=float(t))
    assert list(registry) == [(("p", n), backends[n]) for n in "abc"]
    for key, _ in registry:
        registry.remove(key)
    assert len(registry) == 0


def test_clear_returns_backends() -> None:
    registry = AgentRegistry()
    a, b = Backend("a"), Backend("b")
    registry.register(("p", "a"), a, now=1.0)
    registry.register(("q", "b"), b, now=2.0)
    assert registry.clear() == Removed([("p", "a"), ("q", "b")], [a, b])
    assert len(registry) == 0 and list(registry) == []
    assert registry.keys_for_primary("p") == []
    assert registry.clear() == Removed([], [])


def test_count_busy_asks_each_entry_once() -> None:
    registry = AgentRegistry()
    for t, name in enumerate("abcde"):
        registry.register(("p", name), Backend(name, busy=name in "bd"), now=float(t))
    asked: list[AgentKey] = []

    def counting(key: AgentKey, backend: Any) -> bool:
        asked.append(key)
        return is_busy(backend)

    assert registry.count_busy(counting) == 2
    assert asked == keys_of("abcde")
    assert AgentRegistry().count_busy(counting) == 0


def test_snapshots() -> None:
    registry = AgentRegistry()
    registry.register(("p", "a"), Backend("a", busy=True), now=1.0)
    registry.register(("p", "b"), Backend("b"), now=2.0)
    snapshots = registry.snapshots(by_flag)
    assert [(s.key, s.last_active, s.is_busy) for s in snapshots] == [
        (("p", "a"), 1.0, True),
        (("p", "b"), 2.0, False),
    ]


# --- plan and evict -----------------------------------------------------------------


def test_plan_sweep_ttl_then_cap() -> None:
    registry = AgentRegistry()
    for t, name in enumerate("abcdef"):
        registry.register(("p", name), Backend(name, busy=name in "be"), now=float(t))
    # now=10, ttl=7.5: a (idle 10), b (9, busy), c (8) are idle; d, e, f are not.
    # Four remain (b and e busy): a cap of 3 evicts the oldest non-busy one, d.
    plan = registry.plan_sweep(10.0, 7.5, 3, by_flag)
    assert plan == SweepPlan(ttl_keys=[("p", "a"), ("p", "c")], lru_keys=[("p", "d")])
    assert plan.keys == [("p", "a"), ("p", "c"), ("p", "d")]
    # A cap of 1 would need three victims but only d and f are free: soft cap.
    assert registry.plan_sweep(10.0, 7.5, 1, by_flag).lru_keys == [("p", "d"), ("p", "f")]
    assert len(registry) == 6  # planning removes nothing


def test_plan_sweep_calls_is_busy_at_most_once_per_entry() -> None:
    registry = AgentRegistry()
    for t in range(20):
        registry.register(("p", str(t)), Backend(busy=t % 3 == 0), now=float(t))
    calls: list[AgentKey] = []

    def counting(key: AgentKey, backend: Any) -> bool:
        calls.append(key)
        return is_busy(backend)

    registry.plan_sweep(10.0, 4.5, 0, counting)
    assert len(calls) == len(set(calls)) == 20


def test_evict_rechecks_busy_and_skips_missing() -> None:
    registry = AgentRegistry()
    backends = {name: Backend(name) for name in "abc"}
    for t, (name, backend) in enumerate(backends.items()):
        registry.register(("p", name), backend, now=float(t))
    plan = registry.plan_sweep(100.0, 1.0, 32, by_flag)
    assert plan.ttl_keys == keys_of("abc")
    backends["b"].busy = True  # became busy between plan and act
    registry.remove(("p", "c"))  # and c went away
    removed = registry.evict(plan.keys + plan.keys, by_flag)  # a repeated key goes once
    assert removed == Removed([("p", "a")], [backends["a"]])
    assert order(registry) == [("p", "b")]
    assert backends["a"].disposed == 0  # disposing is the caller's job


def test_sweep_removes_what_the_plan_names() -> None:
    registry = AgentRegistry()
    backends = {name: Backend(name, busy=name in "be") for name in "abcdef"}
    for t, (name, backend) in enumerate(backends.items()):
        registry.register(("p", name), backend, now=float(t))
    plan = registry.plan_sweep(10.0, 7.5, 3, by_flag)
    ttl, lru = sweep(registry, 10.0, 7.5, 3, by_flag)
    assert ttl == Removed(plan.ttl_keys, [backends[n] for n in "ac"]) and plan.ttl_keys == keys_of("ac")
    assert lru == Removed(plan.lru_keys, [backends["d"]]) and plan.lru_keys == keys_of("d")
    assert order(registry) == keys_of("bef") and len(registry) == 3
    # Nothing left to do: the cap is met and b, the one idle entry, is busy.
    assert sweep(registry, 10.0, 7.5, 3, by_flag) == (Removed([], []), Removed([], []))


def test_removed_entries_are_gone_everywhere_until_registered_again() -> None:
    registry = AgentRegistry()
    for t, name in enumerate("abcd"):
        registry.register(("p", name), Backend(name), now=float(t))
    registry.register(("q", "x"), Backend("x"), now=10.0)
    sweep(registry, 10.0, 8.5, 32, never_busy)  # a and b go (idle 10 and 9)
    assert len(registry) == 3
    for key in keys_of("ab"):
        assert key not in registry
        assert registry.get(key, 11.0) is None and registry.peek(key) is None
        assert registry.touch(key, 11.0) is False and registry.last_active(key) is None
        assert registry.remove(key) is None
    assert registry.keys_for_primary("p") == keys_of("cd")
    assert [snapshot.key for snapshot in registry.snapshots(never_busy)] == keys_of("cd") + [("q", "x")]
    again = Backend("a2")
    assert registry.register(("p", "a"), again, now=12.0) is None  # nothing to dispose
    assert registry.peek(("p", "a")) is again and len(registry) == 4
    assert order(registry) == keys_of("cd") + [("q", "x"), ("p", "a")]
    assert registry.keys_for_primary("p") == keys_of("cda")
    assert [backend.name for backend in registry.clear().backends] == ["c", "d", "x", "a2"]
    assert len(registry) == 0 and list(registry) == []


def test_many_removals_keep_the_registry_consistent() -> None:
    registry = AgentRegistry()
    for round_ in range(6):
        base = round_ * 100.0
        for i in range(50):
            registry.register((f"chat-{i % 7}", f"agent-{i}"), Backend(), now=base + i)
        # Each round registers the same keys again, reviving the ones removed last
        # round; the first 25 of this round are idle.
        ttl, lru = sweep(registry, base + 50.0, 25.0, 1000, never_busy)
        assert len(registry) == 25 and len(ttl.keys) == len(ttl.backends) == 25 and lru.keys == []
        assert sorted(key for key, _ in registry) == sorted(
            (f"chat-{i % 7}", f"agent-{i}") for i in range(25, 50)
        )
        assert sum(len(registry.keys_for_primary(f"chat-{c}")) for c in range(7)) == 25


def test_removals_leave_nothing_behind_in_either_index() -> None:
    registry = AgentRegistry()
    for t in range(10):
        registry.register(("p", str(t)), Backend(), now=float(t))
    registry.register(("q", "x"), Backend(), now=10.0)
    sweep(registry, 10.0, 7.5, 32, never_busy)  # 0, 1, 2 go
    assert len(registry) == 8 and len(registry._entries) == 8
    registry.evict([("p", "3"), ("p", "4"), ("p", "5"), ("q", "x")], never_busy)
    assert len(registry) == 4 and len(registry._entries) == 4
    # A primary whose last key went is dropped from the index too.
    assert registry._by_primary == {"p": {str(t) for t in range(6, 10)}}
    assert order(registry) == [("p", str(t)) for t in range(6, 10)]
    registry.remove(("p", "6"))
    assert registry._by_primary == {"p": {str(t) for t in range(7, 10)}}
    assert registry.clear().keys == [("p", str(t)) for t in range(7, 10)]
    assert registry._by_primary == {}


def keys_of(names: str) -> list[AgentKey]:
    return [("p", name) for name in names]


class Model:
    """The registry's specification, spelled out with a plain dict and the pure selectors."""

    def __init__(self) -> None:
        self.entries: dict[AgentKey, list[Any]] = {}  # key -> [backend, last_active, seq]
        self.seq = 0
        self.latest = -math.inf

    def stamp(self, key: AgentKey, now: float) -> None:
        self.latest = max(self.latest, now)
        self.entries[key][1:] = [self.latest, self.seq]
        self.seq += 1

    def ordered(self) -> list[tuple[AgentKey, list[Any]]]:
        return sorted(self.entries.items(), key=lambda item: item[1][2])

    def snapshots(self) -> list[EntrySnapshot]:
        return [EntrySnapshot(k, e[1], e[2], is_busy(e[0])) for k, e in self.ordered()]

    def plan(self, now: float, idle_ttl: float, max_live: int) -> SweepPlan:
        snapshots = self.snapshots()
        ttl_keys = select_idle_eviction_targets(snapshots, now, idle_ttl)
        return SweepPlan(ttl_keys, select_lru_eviction_targets(snapshots, max_live, ttl_keys))


operations = st.lists(
    st.tuples(
        st.sampled_from(["register", "register", "get", "touch", "remove", "peek", "sweep", "evict"]),
        st.integers(0, 15),  # which key
        st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0, -1.0]),  # time step; -1: the clock went back
    ),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(
    operations,
    st.sets(st.integers(0, 15)),
    st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0, math.inf]),
    st.integers(0, 18),
    st.floats(-2.0, 10.0),
)
def test_registry_follows_the_model_and_plan_equals_pure_selectors(
    ops: list[tuple[str, int, float]],
    busy: set[int],
    idle_ttl: float,
    max_live: int,
    extra: float,
) -> None:
    registry, model = AgentRegistry(), Model()
    now = 0.0
    for op, index, step in ops:
        now += step
        key = (f"p{index % 3}", f"a{index}")
        live = key in model.entries
        if op == "register":
            backend = Backend(str(index), busy=index in busy)
            previous = model.entries[key][0] if live else None
            assert registry.register(key, backend, now) is previous
            model.entries.setdefault(key, [None, 0.0, 0])[0] = backend
            model.stamp(key, now)
        elif op in ("get", "touch"):
            expected = model.entries[key][0] if live else None
            if op == "get":
                assert registry.get(key, now) is expected
            else:
                assert registry.touch(key, now) is live
            if live:
                model.stamp(key, now)
        elif op == "remove":
            assert registry.remove(key) is (model.entries.pop(key)[0] if live else None)
        elif op == "peek":
            assert registry.peek(key) is (model.entries[key][0] if live else None)
        else:
            # Removed entries must be gone for every later operation.
            ttl, cap = (float(index % 4), index) if op == "sweep" else (-1.0, 0)
            plan = model.plan(now, ttl, cap)
            if op == "sweep":
                removed_ttl, removed_lru = sweep(registry, now, ttl, cap, by_flag)
                assert removed_ttl == Removed(plan.ttl_keys, [model.entries[k][0] for k in plan.ttl_keys])
                assert removed_lru == Removed(plan.lru_keys, [model.entries[k][0] for k in plan.lru_keys])
            else:
                removed = registry.evict(plan.keys[: index % 5], by_flag)
                assert removed.keys == plan.keys[: index % 5]
                assert removed.backends == [model.entries[k][0] for k in removed.keys]
                plan = SweepPlan(plan.keys[: index % 5], [])
            for k in plan.keys:
                del model.entries[k]
        expected_order = model.ordered()
        assert list(registry) == [(k, e[0]) for k, e in expected_order]
        assert len(registry) == len(model.entries)
        assert (key in registry) is (key in model.entries)
        assert registry.last_active(key) == (model.entries[key][1] if key in model.entries else None)
        assert registry.keys_for_primary(key[0]) == [k for k, _ in expected_order if k[0] == key[0]]
    sweep_now = now + extra
    assert registry.snapshots(by_flag) == model.snapshots()
    assert registry.plan_sweep(sweep_now, idle_ttl, max_live, by_flag) == model.plan(
        sweep_now, idle_ttl, max_live
    )


def test_large_sweep_does_linear_work() -> None:
    """100k entries, half idle: a sweep looks at each idle entry once and stops.

    Counts calls instead of timing (scripts/bench_agents.py times it).
    """
    registry = AgentRegistry()
    count = 100_000
    for i in range(count):
        registry.register((f"chat-{i % 1000}", f"agent-{i}"), Backend(), now=float(i))
    calls = 0

    def counting(key: AgentKey, backend: Any) -> bool:
        nonlocal calls
        calls += 1
        return False

    # Under the cap and nothing idle: no entry is even asked whether it is busy.
    assert registry.plan_sweep(float(count), float(count) + 1.0, count, counting) == SweepPlan([], [])
    assert calls == 0

    plan = registry.plan_sweep(float(count), count / 2, count, counting)
    assert len(plan.ttl_keys) == count // 2 and plan.lru_keys == []
    assert calls == count // 2  # only the idle prefix: the walk stops at the first active one

    removed = registry.evict(plan.keys, counting)
    assert removed.keys == plan.ttl_keys and len(removed.backends) == count // 2
    assert len(registry) == count // 2 and calls == count  # asked again right before removal
    # The pure route over all snapshots agrees, cap included.
    snapshots = registry.snapshots(never_busy)
    assert select_lru_eviction_targets(snapshots, 10) == registry.plan_sweep(
        float(count), math.inf, 10, never_busy
    ).lru_keys

    # The cap alone: only the entries that go are asked, once to plan and once to act.
    calls = 0
    ttl, lru = sweep(registry, float(count), math.inf, count // 4, counting)
    assert ttl == Removed([], []) and len(lru.keys) == count // 4 and calls == 2 * (count // 4)
    assert len(registry) == count // 4
    assert [key for key, _ in registry] == [
        (f"chat-{i % 1000}", f"agent-{i}") for i in range(count - count // 4, count)
    ]


# --- probes, key strings, garbage -----------------------------------------------------


class Probed(Backend):
    def __init__(self, name: str, error: Exception | None = None) -> None:
        super().__init__(name)
        self.error = error
        self.probes: list[float] = []

    def tick_health(self, now: float) -> None:
        self.probes.append(now)
        if self.error is not None:
            raise self.error


def test_probe_health_runs_every_probe_oldest_first_and_reports_failures() -> None:
    registry = AgentRegistry()
    calls: list[str] = []
    broken = RuntimeError("probe broke")

    class Ordered(Probed):
        def tick_health(self, now: float) -> None:
            calls.append(self.name)
            super().tick_health(now)

    ok, failing, last = Ordered("ok"), Ordered("failing", broken), Ordered("last")
    plain = Backend("plain")  # no tick_health: skipped
    odd = Backend("odd")
    odd.tick_health = "not callable"  # type: ignore[attr-defined]
    for t, (name, backend) in enumerate([("f", failing), ("p", plain), ("o", odd), ("k", ok), ("l", last)]):
        registry.register(("c", name), backend, now=float(t))
    registry.touch(("c", "f"), now=9.0)  # now the most recently active
    errors: list[tuple[AgentKey, Exception]] = []
    assert registry.probe_health(12.5, lambda key, error: errors.append((key, error))) == 1
    assert calls == ["ok", "last", "failing"]
    assert ok.probes == last.probes == failing.probes == [12.5]
    assert errors == [(("c", "f"), broken)]
    assert len(registry) == 5  # probing removes nothing


def test_key_strings() -> None:
    assert key_strings([("chat-1", "coder"), ("a:b", "c"), ("", "")]) == ["chat-1:coder", "a:b:c", ":"]
    assert key_strings([]) == []
    assert [key_string(k) for k in [("chat-1", "coder"), ("a", "b:c")]] == ["chat-1:coder", "a:b:c"]


def test_a_sweep_allocates_no_container_per_entry() -> None:
    """Probing, planning and evicting 5,000 of 10,000 entries creates a handful of
    garbage-collected objects, not one (or more) per entry: no pairs, no snapshots.

    Counts the collector's allocation counter (tracked objects allocated minus freed)
    with the collector paused, while the removed entries are kept alive so that their
    freeing cannot hide allocations.
    """
    registry = AgentRegistry()
    count = 10_000
    for i in range(count):
        registry.register((f"chat-{i % 2500}", f"agent-{i}"), Probed(str(i)), now=float(i))
    kept_alive = list(registry._entries.values()), list(registry._by_primary.values())
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        registry.probe_health(float(count), lambda key, error: None)
        plan = registry.plan_sweep(float(count), count / 2, count, by_flag)
        removed = registry.evict(plan.keys, by_flag)
        labels = key_strings(removed.keys)
        allocated = gc.get_count()[0] - before
    finally:
        gc.enable()
    assert len(removed.keys) == len(removed.backends) == len(labels) == count // 2
    assert allocated < 50, allocated
    assert len(kept_alive[0]) == count
