"""The `AgentPool` actor: the wiring around the pure registry (see test_agent_registry.py).

Time is a `ManualClock`: a sweep happens when a test calls `sweep()` or advances the
clock past `sweep_interval`, and `advance` returns once the tick is in the pool's inbox,
so the next call sees its effect. Disposals and factory calls run on other threads;
tests wait for them with bounded waits on conditions (`wait_until`, `Event.wait`), and
every blocked backend or factory is released at teardown.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

import actors.agents._pool as agent_pool_module
from actors.agents._pool import AgentPool
from actors.agents._registry import AgentRegistry
from actors._errors import FactoryError
from supervision import (
    ActorCrashed,
    ChildSpec,
    ClientError,
    Handle,
    ManualClock,
    Supervisor,
    Undelivered,
    kill,
)
from supervision.testing import wait_until

T = 5.0  # real seconds any single call may take before the test fails


class FakeBackend:
    """A backend that records what the pool did to it.

    ``busy_answers`` scripts the next answers of `is_busy` (then ``busy`` rules);
    ``dispose_gate`` makes `dispose` block until it is set.
    """

    def __init__(
        self,
        name: str = "backend",
        *,
        busy: bool = False,
        dispose_gate: threading.Event | None = None,
        dispose_error: Exception | None = None,
        probe: Callable[[FakeBackend, float], None] | None = None,
    ) -> None:
        self.name = name
        self.busy = busy
        self.busy_answers: list[bool] = []
        self.dispose_gate = dispose_gate
        self.dispose_error = dispose_error
        self.probe = probe
        self.probes: list[float] = []
        self.dispose_calls: list[str] = []  # the thread of each call
        self.dispose_entered = threading.Event()
        self.disposed = threading.Event()

    def is_busy(self) -> bool:
        if self.busy_answers:
            return self.busy_answers.pop(0)
        return self.busy

    def tick_health(self, now: float) -> None:
        self.probes.append(now)
        if self.probe is not None:
            self.probe(self, now)

    def dispose(self) -> None:
        self.dispose_calls.append(threading.current_thread().name)
        self.dispose_entered.set()
        if self.dispose_gate is not None:
            self.dispose_gate.wait(10)
        self.disposed.set()
        if self.dispose_error is not None:
            raise self.dispose_error

    def __repr__(self) -> str:
        return f"FakeBackend({self.name!r})"


class NoDispose:
    """Not a backend: nothing to dispose."""

    dispose = "not callable"


@pytest.fixture
def gates() -> Iterator[Callable[[], threading.Event]]:
    """Events that block backends or factories; all set at teardown, before actors stop."""
    made: list[threading.Event] = []

    def gate() -> threading.Event:
        event = threading.Event()
        made.append(event)
        return event

    yield gate
    for event in made:
        event.set()


@pytest.fixture
def start_pool(manual_clock: ManualClock) -> Callable[..., Any]:
    """Start a pool on the manual clock; its timer fires only if a test advances 1000 s."""

    def start(**kwargs: Any) -> Any:
        kwargs.setdefault("clock", manual_clock)
        kwargs.setdefault("sweep_interval", 1000.0)
        return AgentPool.start(**kwargs).proxy()

    return start


def health(pool: Any) -> dict[str, Any]:
    return pool.health().get(timeout=T)


def warnings_mentioning(log_records: list[dict[str, Any]], text: str) -> list[str]:
    return [
        r["message"] for r in log_records if r["level"].name in ("WARNING", "ERROR") and text in r["message"]
    ]


# -- registry basics --------------------------------------------------------------------------


def test_get_peek_and_register_without_a_factory(start_pool):
    pool = start_pool()
    assert pool.get("chat-1", "coder").get(timeout=T) is None
    backend = FakeBackend()
    assert pool.register("chat-1", "coder", backend).get(timeout=T) is None
    assert pool.get("chat-1", "coder").get(timeout=T) is backend
    assert pool.peek("chat-1", "coder").get(timeout=T) is backend
    assert pool.peek("chat-1", "planner").get(timeout=T) is None
    assert pool.touch("chat-1", "coder").get(timeout=T) is True
    assert pool.touch("chat-2", "coder").get(timeout=T) is False
    assert health(pool)["size"] == 1


def test_register_replaces_and_disposes_the_previous_backend(start_pool):
    pool = start_pool()
    first, second = FakeBackend("first"), FakeBackend("second")
    pool.register("c", "a", first).get(timeout=T)
    pool.register("c", "a", second).get(timeout=T)
    assert first.disposed.wait(T)
    assert pool.peek("c", "a").get(timeout=T) is second
    # The same object again is only a bump: it must not be disposed.
    pool.register("c", "a", second).get(timeout=T)
    stats = health(pool)
    assert stats["size"] == 1
    assert stats["evictions"]["replaced"] == 1
    wait_until(lambda: health(pool)["disposing"] == 0)
    assert len(first.dispose_calls) == 1 and second.dispose_calls == []
    assert first.dispose_calls[0] != threading.current_thread().name


def test_health_reports_size_busy_and_counters(start_pool):
    pool = start_pool(idle_ttl=60.0, max_live=8, sweep_interval=30.0)
    pool.register("c", "idle", FakeBackend()).get(timeout=T)
    pool.register("c", "busy", FakeBackend(busy=True)).get(timeout=T)
    stats = health(pool)
    assert stats == {
        "size": 2,
        "busy": 1,
        "creating": 0,
        "disposing": 0,
        "disposed": 0,
        "dispose_errors": 0,
        "probe_errors": 0,
        "busy_check_errors": 0,
        "factory_errors": 0,
        "evictions": {"ttl": 0, "lru": 0, "chat": 0, "dispose": 0, "replaced": 0},
        "sweeps": 0,
        "last_sweep_ms": None,
        "is_sweeping_on_timer": True,
        "idle_ttl": 60.0,
        "max_live": 8,
        "sweep_interval": 30.0,
    }


# -- the sweep: TTL, LRU, busy ----------------------------------------------------------------


def test_idle_exactly_ttl_is_kept_and_beyond_is_evicted(start_pool, manual_clock):
    pool = start_pool(idle_ttl=10.0)
    backend = FakeBackend()
    pool.register("c", "a", backend).get(timeout=T)
    manual_clock.advance(10.0)
    assert pool.sweep().get(timeout=T) == []
    assert pool.sweep(10.0).get(timeout=T) == []
    assert pool.sweep(10.001).get(timeout=T) == ["c:a"]
    assert pool.peek("c", "a").get(timeout=T) is None
    assert backend.disposed.wait(T)
    assert health(pool)["evictions"]["ttl"] == 1


def test_get_and_touch_refresh_activity_but_peek_does_not(start_pool, manual_clock):
    pool = start_pool(idle_ttl=10.0)
    for agent in ("got", "touched", "peeked"):
        pool.register("c", agent, FakeBackend(agent)).get(timeout=T)
    manual_clock.advance(8.0)
    pool.get("c", "got").get(timeout=T)
    pool.touch("c", "touched").get(timeout=T)
    pool.peek("c", "peeked").get(timeout=T)
    manual_clock.advance(3.0)  # t = 11: 11 s since register, 3 s since get/touch
    assert pool.sweep().get(timeout=T) == ["c:peeked"]
    assert sorted(health(pool)["evictions"].items()) == sorted(
        {"ttl": 1, "lru": 0, "chat": 0, "dispose": 0, "replaced": 0}.items()
    )


def test_lru_evicts_the_least_recently_active_down_to_the_cap(start_pool, manual_clock):
    pool = start_pool(idle_ttl=math.inf, max_live=2)
    for agent in "abcd":
        pool.register("c", agent, FakeBackend(agent)).get(timeout=T)
        manual_clock.advance(1.0)
    pool.get("c", "a").get(timeout=T)  # recency now: b, c, d, a
    assert pool.sweep().get(timeout=T) == ["c:b", "c:c"]
    assert [pool.peek("c", agent).get(timeout=T) is not None for agent in "abcd"] == [True, False, False, True]
    assert health(pool)["evictions"]["lru"] == 2


def test_lru_ties_in_activity_time_break_by_order_of_activity(start_pool):
    pool = start_pool(idle_ttl=math.inf, max_live=1)
    for agent in "abc":  # all at t = 0
        pool.register("c", agent, FakeBackend(agent)).get(timeout=T)
    pool.touch("c", "a").get(timeout=T)  # still t = 0, but the latest activity
    assert pool.sweep().get(timeout=T) == ["c:b", "c:c"]
    assert pool.peek("c", "a").get(timeout=T) is not None


def test_ttl_evictions_come_first_then_lru_and_are_counted_by_reason(start_pool, manual_clock):
    pool = start_pool(idle_ttl=5.0, max_live=1)
    pool.register("old", "x", FakeBackend()).get(timeout=T)
    manual_clock.advance(10.0)
    for agent in "ab":
        pool.register("new", agent, FakeBackend()).get(timeout=T)
    assert pool.sweep().get(timeout=T) == ["old:x", "new:a"]
    assert health(pool)["evictions"] == {"ttl": 1, "lru": 1, "chat": 0, "dispose": 0, "replaced": 0}


def test_busy_entries_are_skipped_by_ttl_and_by_lru(start_pool, manual_clock):
    pool = start_pool(idle_ttl=5.0, max_live=1)
    busy = FakeBackend("busy", busy=True)
    pool.register("c", "busy", busy).get(timeout=T)
    manual_clock.advance(10.0)
    for agent in ("x", "y"):
        pool.register("c", agent, FakeBackend(agent)).get(timeout=T)
    # TTL skips the busy idle entry; the busy one counts toward the cap, so both others go.
    assert pool.sweep().get(timeout=T) == ["c:x", "c:y"]
    assert pool.peek("c", "busy").get(timeout=T) is busy
    assert busy.dispose_calls == []
    stats = health(pool)
    assert (stats["size"], stats["busy"]) == (1, 1)


def test_the_cap_is_soft_while_every_entry_is_busy(start_pool, manual_clock):
    pool = start_pool(idle_ttl=math.inf, max_live=1)
    backends = {agent: FakeBackend(agent, busy=True) for agent in "abc"}
    for agent, backend in backends.items():
        pool.register("c", agent, backend).get(timeout=T)
        manual_clock.advance(1.0)
    assert pool.sweep().get(timeout=T) == []
    assert health(pool)["size"] == 3
    backends["a"].busy = False
    assert pool.sweep().get(timeout=T) == ["c:a"]  # b and c (busy) remain: 2 > 1, still soft
    backends["b"].busy = backends["c"].busy = False
    assert pool.sweep().get(timeout=T) == ["c:b"]  # least recently active first
    assert health(pool)["size"] == 1


def test_busy_is_checked_again_right_before_removal(start_pool, manual_clock):
    pool = start_pool(idle_ttl=5.0)
    backend = FakeBackend()
    backend.busy_answers = [False, True]  # idle when the sweep decides, busy when it acts
    pool.register("c", "a", backend).get(timeout=T)
    manual_clock.advance(10.0)
    assert pool.sweep().get(timeout=T) == []
    assert pool.peek("c", "a").get(timeout=T) is backend
    assert backend.dispose_calls == []
    assert pool.sweep().get(timeout=T) == ["c:a"]  # idle at both checks now
    assert backend.disposed.wait(T)


def test_is_busy_that_raises_counts_as_busy_and_is_logged(start_pool, manual_clock, log_records):
    pool = start_pool(idle_ttl=5.0)
    backend = FakeBackend()
    backend.is_busy = lambda: 1 / 0  # type: ignore[method-assign]
    pool.register("c", "a", backend).get(timeout=T)
    manual_clock.advance(10.0)
    assert pool.sweep().get(timeout=T) == []
    assert health(pool)["busy_check_errors"] >= 1
    assert warnings_mentioning(log_records, "is_busy() of c:a raised")


class LightBackend:
    """A small backend for tests with many entries: records the thread of each dispose()."""

    __slots__ = ("busy", "disposals")

    def __init__(self, busy: bool = False) -> None:
        self.busy = busy
        self.disposals: list[int] = []

    def is_busy(self) -> bool:
        return self.busy

    def dispose(self) -> None:
        self.disposals.append(threading.get_ident())


def test_eviction_order_at_scale_is_ttl_then_least_recent_with_busy_counted(start_pool, manual_clock):
    """1,200 entries with many equal times, 5% busy, a fifth of them used again later:
    one sweep evicts exactly the idle non-busy ones, then the least recently active
    non-busy ones down to the cap (busy ones counted), in order of last activity."""
    rng = random.Random(7)
    idle_ttl, max_live = 40.0, 300
    pool = start_pool(idle_ttl=idle_ttl, max_live=max_live)
    recency: dict[tuple[str, str], float] = {}  # key -> last activity, least recent first
    backends: dict[tuple[str, str], LightBackend] = {}

    def was_active(key: tuple[str, str]) -> None:
        recency.pop(key, None)
        recency[key] = manual_clock.monotonic()

    numbers = list(range(1200))
    rng.shuffle(numbers)
    for number in numbers:
        manual_clock.advance(rng.choice([0.0, 0.0, 0.05, 0.1]))  # many ties in time
        key = (f"chat-{number % 97}", f"agent-{number}")
        backends[key] = LightBackend(busy=rng.random() < 0.05)
        pool.register(*key, backends[key]).get(timeout=T)
        was_active(key)
    for key in rng.sample(sorted(backends), 240):
        manual_clock.advance(rng.choice([0.0, 0.1]))
        (pool.get if rng.random() < 0.5 else pool.touch)(*key).get(timeout=T)
        was_active(key)

    now = manual_clock.monotonic()
    busy = {key for key, backend in backends.items() if backend.busy}
    ttl = [key for key, active in recency.items() if now - active > idle_ttl and key not in busy]
    left = [key for key in recency if key not in set(ttl)]
    lru = [key for key in left if key not in busy][: len(left) - max_live]
    assert len(ttl) > 300 and len(lru) > 100  # both rules bite
    assert pool.sweep().get(timeout=T) == [f"{primary}:{agent}" for primary, agent in ttl + lru]

    evicted = set(ttl + lru)
    wait_until(lambda: all(backends[key].disposals for key in evicted))
    wait_until(lambda: health(pool)["disposing"] == 0)
    assert all(len(backend.disposals) == (key in evicted) for key, backend in backends.items())
    assert health(pool)["size"] == max_live
    assert pool.sweep().get(timeout=T) == []  # what is idle now is busy, and the cap is met


def test_a_sweep_hands_its_evictions_to_one_disposal_thread(start_pool, manual_clock):
    pool = start_pool(idle_ttl=5.0)
    backends = [LightBackend() for _ in range(500)]
    replies = [pool.register("c", str(i), backend) for i, backend in enumerate(backends)]
    replies[-1].get(timeout=T)
    manual_clock.advance(10.0)
    assert len(pool.sweep().get(timeout=T)) == 500
    wait_until(lambda: all(backend.disposals for backend in backends))
    threads = {thread for backend in backends for thread in backend.disposals}
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert all(len(backend.disposals) == 1 for backend in backends)
    wait_until(lambda: health(pool)["disposed"] == 500)


def _refuse_thread(target: Callable[[], object], name: str) -> None:
    raise RuntimeError("can't start new thread")


def test_a_disposal_thread_that_cannot_start_loses_nothing(start_pool, manual_clock, monkeypatch, log_records):
    pool = start_pool(idle_ttl=5.0)
    backends = [LightBackend() for _ in range(3)]
    for i, backend in enumerate(backends):
        pool.register("c", str(i), backend).get(timeout=T)
    manual_clock.advance(10.0)
    monkeypatch.setattr(agent_pool_module, "_start_thread", _refuse_thread)
    assert pool.sweep().get(timeout=T) == ["c:0", "c:1", "c:2"]  # removed at once all the same
    stats = health(pool)
    assert (stats["size"], stats["disposing"], stats["disposed"]) == (0, 3, 0)
    assert any(r["level"].name == "ERROR" and "could not start a disposal thread" in r["message"] for r in log_records)
    assert all(backend.disposals == [] for backend in backends)
    monkeypatch.undo()
    assert pool.sweep().get(timeout=T) == []  # the next sweep starts the thread
    wait_until(lambda: all(backend.disposals for backend in backends))
    wait_until(lambda: health(pool)["disposing"] == 0)
    assert all(len(backend.disposals) == 1 for backend in backends)


# -- health probes and errors during sweeps -------------------------------------------------------


def test_probes_run_first_with_the_sweep_time_and_a_failing_probe_keeps_its_entry(
    start_pool, manual_clock, log_records
):
    pool = start_pool(idle_ttl=5.0)

    def fail(backend: FakeBackend, now: float) -> None:
        raise RuntimeError("probe broke")

    def wake_up(backend: FakeBackend, now: float) -> None:
        backend.busy = True  # a probe may find a turn in flight: that entry must stay

    waking = FakeBackend("waking", probe=wake_up)
    idle = FakeBackend("idle")
    pool.register("c", "waking", waking).get(timeout=T)
    pool.register("c", "idle", idle).get(timeout=T)
    manual_clock.advance(10.0)
    failing = FakeBackend("failing", probe=fail)
    pool.register("c", "failing", failing).get(timeout=T)
    assert pool.sweep(12.5).get(timeout=T) == ["c:idle"]
    assert waking.probes == idle.probes == failing.probes == [12.5]
    assert pool.peek("c", "failing").get(timeout=T) is failing
    assert health(pool)["probe_errors"] == 1
    assert warnings_mentioning(log_records, "health probe of c:failing raised")


def test_probe_and_dispose_errors_never_stop_later_timer_sweeps(start_pool, manual_clock, log_records):
    pool = start_pool(idle_ttl=5.0, sweep_interval=10.0)

    def fail(backend: FakeBackend, now: float) -> None:
        raise RuntimeError("probe broke")

    pool.register("keep", "probe", FakeBackend("probe", busy=True, probe=fail)).get(timeout=T)
    first = FakeBackend("first", dispose_error=RuntimeError("dispose broke"))
    pool.register("c", "first", first).get(timeout=T)
    manual_clock.advance(10.0)
    assert pool.peek("c", "first").get(timeout=T) is None
    wait_until(lambda: health(pool)["dispose_errors"] == 1)
    second = FakeBackend("second", dispose_error=RuntimeError("dispose broke"))
    pool.register("c", "second", second).get(timeout=T)
    manual_clock.advance(10.0)
    assert pool.peek("c", "second").get(timeout=T) is None
    wait_until(lambda: health(pool)["dispose_errors"] == 2)
    stats = health(pool)
    assert stats["sweeps"] == 2 and stats["probe_errors"] == 2 and stats["evictions"]["ttl"] == 2
    assert pool.peek("keep", "probe").get(timeout=T) is not None
    assert warnings_mentioning(log_records, "dispose() of c:first (ttl) raised")


def test_a_failing_eviction_decision_is_logged_and_later_sweeps_still_run(
    start_pool, manual_clock, monkeypatch, log_records
):
    pool = start_pool(idle_ttl=5.0)
    pool.register("c", "a", FakeBackend()).get(timeout=T)
    manual_clock.advance(10.0)
    real_plan = AgentRegistry.plan_sweep
    calls = []

    def plan_once_broken(self: AgentRegistry, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("selector bug")
        return real_plan(self, *args, **kwargs)

    monkeypatch.setattr(AgentRegistry, "plan_sweep", plan_once_broken)
    assert pool.sweep().get(timeout=T) == []
    assert any(r["level"].name == "ERROR" and "deciding what to evict failed" in r["message"] for r in log_records)
    assert pool.sweep().get(timeout=T) == ["c:a"]
    assert health(pool)["sweeps"] == 2


def test_the_timer_sweeps_every_sweep_interval(start_pool, manual_clock):
    pool = start_pool(idle_ttl=5.0, sweep_interval=30.0)
    pool.register("c", "a", FakeBackend()).get(timeout=T)
    assert manual_clock.pending_timers == 1
    manual_clock.advance(29.0)
    assert health(pool)["sweeps"] == 0
    manual_clock.advance(1.0)
    stats = health(pool)
    assert (stats["sweeps"], stats["size"], stats["evictions"]["ttl"]) == (1, 0, 1)
    assert stats["last_sweep_ms"] is not None and stats["last_sweep_ms"] >= 0
    manual_clock.advance(90.0)  # three more occurrences, one sweep each
    assert health(pool)["sweeps"] == 4


def test_sweeps_never_overlap(start_pool, manual_clock):
    pool = start_pool(idle_ttl=math.inf, sweep_interval=1.0)
    lock = threading.Lock()
    running = [0]
    most = [0]

    def probe(backend: FakeBackend, now: float) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        threading.Event().wait(0.001)  # widen the window an overlap would need
        with lock:
            running[0] -= 1

    for agent in "abc":
        pool.register("c", agent, FakeBackend(agent, probe=probe)).get(timeout=T)
    callers = [threading.Thread(target=lambda: [pool.sweep().get(timeout=T) for _ in range(5)]) for _ in range(3)]
    for caller in callers:
        caller.start()
    manual_clock.advance(10.0)
    for caller in callers:
        caller.join(T)
    assert health(pool)["sweeps"] == 25
    assert most[0] == 1


# -- close_chat ---------------------------------------------------------------------------------


def test_close_chat_disposes_the_chats_idle_entries_and_skips_busy_ones(start_pool):
    pool = start_pool()
    idle, busy, other = FakeBackend("idle"), FakeBackend("busy", busy=True), FakeBackend("other")
    pool.register("chat-1", "idle", idle).get(timeout=T)
    pool.register("chat-1", "busy", busy).get(timeout=T)
    pool.register("chat-2", "idle", other).get(timeout=T)
    assert pool.close_chat("chat-1").get(timeout=T) == ["chat-1:idle"]
    assert pool.close_chat("chat-9").get(timeout=T) == []
    assert idle.disposed.wait(T)
    assert pool.peek("chat-1", "busy").get(timeout=T) is busy
    assert pool.peek("chat-2", "idle").get(timeout=T) is other
    assert busy.dispose_calls == [] and other.dispose_calls == []
    assert health(pool)["evictions"]["chat"] == 1


# -- the factory ------------------------------------------------------------------------------


def test_concurrent_gets_of_one_key_share_one_factory_call(start_pool, gates):
    entered, release = threading.Event(), gates()
    calls: list[tuple[str, str]] = []

    def factory(primary: str, agent: str) -> FakeBackend:
        calls.append((primary, agent))
        entered.set()
        release.wait(10)
        return FakeBackend(f"{primary}:{agent}")

    pool = start_pool(factory=factory)
    futures = [pool.get("c", "a") for _ in range(5)]
    assert entered.wait(T)
    stats = health(pool)  # answered after the five gets: all of them are waiting now
    assert (stats["creating"], stats["size"]) == (1, 0)
    assert pool.peek("c", "a").get(timeout=T) is None  # peek never calls the factory
    release.set()
    results = [future.get(timeout=T) for future in futures]
    assert all(result is results[0] for result in results)
    assert calls == [("c", "a")]
    assert pool.peek("c", "a").get(timeout=T) is results[0]
    assert pool.get("c", "a").get(timeout=T) is results[0]
    assert calls == [("c", "a")]
    assert health(pool)["creating"] == 0


def test_the_factory_runs_off_the_pool_thread(start_pool, gates):
    release = gates()
    pool = start_pool(factory=lambda primary, agent: (release.wait(10), FakeBackend())[1])
    pending = pool.get("c", "slow")
    assert health(pool)["creating"] == 1  # the pool answers while the factory runs
    pool.register("c", "other", FakeBackend()).get(timeout=T)
    release.set()
    assert isinstance(pending.get(timeout=T), FakeBackend)


def test_a_factory_that_raises_fails_every_waiting_get_and_registers_nothing(start_pool, gates, log_records):
    entered, release = threading.Event(), gates()
    calls = []

    def factory(primary: str, agent: str) -> FakeBackend:
        calls.append(agent)
        if len(calls) == 1:
            entered.set()
            release.wait(10)
            raise ConnectionError("model endpoint down")
        return FakeBackend(agent)

    pool = start_pool(factory=factory)
    futures = [pool.get("c", "a") for _ in range(3)]
    assert entered.wait(T)
    health(pool)
    release.set()
    for future in futures:
        with pytest.raises(FactoryError) as raised:
            future.get(timeout=T)
        assert isinstance(raised.value, ClientError)
        assert isinstance(raised.value.__cause__, ConnectionError)
        assert "model endpoint down" in str(raised.value)
    stats = health(pool)
    assert (stats["size"], stats["creating"], stats["factory_errors"]) == (0, 0, 1)
    assert pool.peek("c", "a").get(timeout=T) is None
    assert isinstance(pool.get("c", "a").get(timeout=T), FakeBackend)  # a later get tries again
    assert calls == ["a", "a"]
    assert warnings_mentioning(log_records, "factory for c:a failed")


def test_a_factory_returning_something_without_dispose_is_a_factory_error(start_pool, log_records):
    pool = start_pool(factory=lambda primary, agent: NoDispose())
    with pytest.raises(FactoryError, match="dispose"):
        pool.get("c", "a").get(timeout=T)
    assert health(pool)["size"] == 0
    assert warnings_mentioning(log_records, "without dispose(); dropped")


def test_a_register_during_a_factory_call_wins_and_the_late_result_is_disposed(start_pool, gates):
    entered, release = threading.Event(), gates()
    made: list[FakeBackend] = []

    def factory(primary: str, agent: str) -> FakeBackend:
        entered.set()
        release.wait(10)
        made.append(FakeBackend("made"))
        return made[-1]

    pool = start_pool(factory=factory)
    waiting = pool.get("c", "a")
    assert entered.wait(T)
    registered = FakeBackend("registered")
    pool.register("c", "a", registered).get(timeout=T)
    assert waiting.get(timeout=T) is registered
    release.set()
    wait_until(lambda: made and made[0].disposed.is_set())
    assert pool.peek("c", "a").get(timeout=T) is registered
    assert registered.dispose_calls == [] and len(made[0].dispose_calls) == 1


def test_a_factory_thread_that_cannot_start_fails_that_get_only(start_pool, monkeypatch, log_records):
    pool = start_pool(factory=lambda primary, agent: FakeBackend(f"{primary}:{agent}"))
    monkeypatch.setattr(agent_pool_module, "_start_thread", _refuse_thread)
    with pytest.raises(FactoryError, match="could not start"):
        pool.get("c", "a").get(timeout=T)
    stats = health(pool)
    assert (stats["size"], stats["creating"], stats["factory_errors"]) == (0, 0, 1)
    monkeypatch.undo()
    assert pool.get("c", "a").get(timeout=T).name == "c:a"


# -- disposal off the thread ----------------------------------------------------------------------


def test_a_slow_dispose_blocks_neither_get_register_nor_health(start_pool, manual_clock, gates):
    gate = gates()
    made: list[FakeBackend] = []

    def factory(primary: str, agent: str) -> FakeBackend:
        made.append(FakeBackend(f"{primary}:{agent}#{len(made)}", dispose_gate=gate))
        return made[-1]

    pool = start_pool(factory=factory, idle_ttl=10.0)
    first = pool.get("c", "a").get(timeout=T)
    manual_clock.advance(11.0)
    assert pool.sweep().get(timeout=T) == ["c:a"]
    assert first.dispose_entered.wait(T)
    # The disposal hangs on its gate; the pool answers anyway, with a fresh backend.
    second = pool.get("c", "a").get(timeout=2.0)
    assert second is not first and second is made[1]
    pool.register("c", "b", FakeBackend()).get(timeout=2.0)
    stats = pool.health().get(timeout=2.0)
    assert (stats["size"], stats["disposing"]) == (2, 1)
    assert not first.disposed.is_set()
    gate.set()
    assert first.disposed.wait(T)
    wait_until(lambda: health(pool)["disposing"] == 0)
    assert second.dispose_calls == []


# -- dispose and stop -------------------------------------------------------------------------------


def test_dispose_disposes_everything_stops_the_timer_and_is_idempotent(start_pool, manual_clock):
    pool = start_pool(idle_ttl=5.0, sweep_interval=10.0)
    backends = [FakeBackend("idle"), FakeBackend("busy", busy=True)]
    pool.register("c", "idle", backends[0]).get(timeout=T)
    pool.register("c", "busy", backends[1]).get(timeout=T)
    assert manual_clock.pending_timers == 1
    assert pool.dispose().get(timeout=T) is None
    # dispose() answers once the disposals have run: no waiting needed here.
    assert [len(b.dispose_calls) for b in backends] == [1, 1]
    assert manual_clock.pending_timers == 0
    stats = health(pool)
    assert (stats["size"], stats["evictions"]["dispose"], stats["is_sweeping_on_timer"]) == (0, 2, False)
    assert pool.dispose().get(timeout=T) is None
    assert [len(b.dispose_calls) for b in backends] == [1, 1]
    # Still usable afterwards, but it never sweeps on its own again.
    later = FakeBackend("later")
    pool.register("c", "later", later).get(timeout=T)
    manual_clock.advance(100.0)
    assert pool.peek("c", "later").get(timeout=T) is later
    assert health(pool)["sweeps"] == 0
    assert pool.sweep().get(timeout=T) == ["c:later"]


def test_dispose_waits_for_running_disposals_within_a_bound(start_pool, gates, monkeypatch, log_records):
    monkeypatch.setattr(agent_pool_module, "DISPOSE_WAIT", 0.3)
    gate = gates()
    slow = FakeBackend("slow", dispose_gate=gate)
    pool = start_pool()
    pool.register("c", "a", slow).get(timeout=T)
    assert pool.dispose().get(timeout=T) is None  # answered after 0.3 s, the dispose still hangs
    assert slow.dispose_entered.is_set() and not slow.disposed.is_set()
    assert warnings_mentioning(log_records, "disposals still running after")
    monkeypatch.setattr(agent_pool_module, "DISPOSE_WAIT", T)
    pending = pool.dispose()  # nothing new, but one disposal is still running
    gate.set()
    assert pending.get(timeout=T) is None
    assert slow.disposed.is_set()


def test_stopping_the_pool_disposes_every_backend_before_stop_returns(manual_clock, gates):
    release = gates()
    ref = AgentPool.start(clock=manual_clock, factory=lambda p, a: (release.wait(10), FakeBackend("late"))[1])
    pool = ref.proxy()
    backends = [FakeBackend(str(i), busy=i == 0) for i in range(3)]
    for i, backend in enumerate(backends):
        pool.register("c", str(i), backend).get(timeout=T)
    waiting = pool.get("c", "pending")
    assert health(pool)["creating"] == 1
    ref.stop(timeout=T)
    assert [len(b.dispose_calls) for b in backends] == [1, 1, 1]
    assert manual_clock.pending_timers == 0
    with pytest.raises(Undelivered):  # an ActorDeadError: nothing happened, safe to retry
        waiting.get(timeout=T)


# -- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"idle_ttl": -1.0},
        {"max_live": -1},
        {"sweep_interval": 0},
        {"sweep_interval": -5.0},
        {"idle_ttl": True},
        {"max_live": False},
        {"idle_ttl": math.nan},
        {"sweep_interval": math.nan},
        {"sweep_interval": math.inf},
        {"idle_ttl": "10"},
        {"max_live": 1.5},
        {"max_live": None},
    ],
)
def test_bad_settings_raise_value_error_before_anything_starts(settings, manual_clock):
    before = len(pykka.ActorRegistry.get_all())
    with pytest.raises(ValueError):
        AgentPool.start(clock=manual_clock, **settings)
    assert len(pykka.ActorRegistry.get_all()) == before
    assert manual_clock.pending_timers == 0


def test_a_factory_or_clock_of_the_wrong_kind_raises_type_error(manual_clock):
    with pytest.raises(TypeError):
        AgentPool.start(clock=manual_clock, factory="not callable")
    with pytest.raises(TypeError):
        AgentPool.start(clock=object())


@pytest.mark.parametrize(
    "call",
    [
        lambda pool: pool.get(["not", "hashable"], "a"),
        lambda pool: pool.get("c", {"a"}),
        lambda pool: pool.peek(1, "a"),
        lambda pool: pool.touch("c", None),
        lambda pool: pool.register(("c",), "a", FakeBackend()),
        lambda pool: pool.register("c", "a", object()),
        lambda pool: pool.register("c", "a", NoDispose()),
        lambda pool: pool.close_chat(3),
        lambda pool: pool.get("c"),
        lambda pool: pool.sweep(1, 2),
    ],
)
def test_bad_keys_backends_and_calls_are_client_type_errors(start_pool, call):
    pool = start_pool(factory=lambda primary, agent: FakeBackend())
    with pytest.raises(ClientError) as raised:
        call(pool).get(timeout=T)
    assert isinstance(raised.value, TypeError)
    stats = health(pool)  # still running, nothing registered
    assert (stats["size"], stats["creating"]) == (0, 0)


@pytest.mark.parametrize("now", ["10", math.nan, math.inf, True])
def test_a_bad_sweep_time_is_a_client_value_error(start_pool, now):
    pool = start_pool()
    with pytest.raises(ClientError) as raised:
        pool.sweep(now).get(timeout=T)
    assert isinstance(raised.value, ValueError)
    assert health(pool)["sweeps"] == 0


# -- crashes under a supervisor ------------------------------------------------------------------------


def _supervised_pool(clock: ManualClock, **kwargs: Any) -> tuple[pykka.ActorRef[Any], Handle]:
    kwargs.setdefault("clock", clock)
    root = Supervisor.start([ChildSpec("agents", AgentPool, kwargs=kwargs)], clock=clock)
    return root, Handle(root, "agents")


def _restarts(root: pykka.ActorRef[Any]) -> int:
    return root.proxy().which_children().get(timeout=T)[0].restarts


def test_a_killed_pool_disposes_each_live_backend_once_and_restarts_empty(manual_clock, gates):
    factory_entered, release_factory, old_gate = threading.Event(), gates(), gates()
    made: dict[str, FakeBackend] = {}

    def factory(primary: str, agent: str) -> FakeBackend:
        if agent == "slow":
            factory_entered.set()
            release_factory.wait(10)
        backend = made[f"{agent}#{len(made)}"] = FakeBackend(f"{primary}:{agent}")
        return backend

    root, handle = _supervised_pool(manual_clock, factory=factory, idle_ttl=100.0, sweep_interval=10.0)
    pool = handle.proxy()
    created = [pool.get("chat", f"a{i}").get(timeout=T) for i in range(3)]
    busy = FakeBackend("busy", busy=True)
    pool.register("chat", "busy", busy).get(timeout=T)
    # A replaced backend whose dispose() still runs when the pool dies.
    old, new = FakeBackend("old", dispose_gate=old_gate), FakeBackend("new")
    pool.register("chat", "x", old).get(timeout=T)
    pool.register("chat", "x", new).get(timeout=T)
    assert old.dispose_entered.wait(T)
    # A get waiting for the factory.
    waiting = pool.get("chat", "slow")
    assert factory_entered.wait(T)
    first = handle.ref()

    kill(first, "test kill")
    wait_until(lambda: _restarts(root) == 1)
    with pytest.raises(ActorCrashed):  # its reply was deferred when the pool crashed
        waiting.get(timeout=T)
    live_at_crash = [*created, busy, new]
    wait_until(lambda: all(b.disposed.is_set() for b in live_at_crash))
    # The abandoned factory call's result is disposed by its own thread.
    release_factory.set()
    wait_until(lambda: any(k.startswith("slow") and b.disposed.is_set() for k, b in made.items()))
    old_gate.set()
    assert old.disposed.wait(T)

    # The successor starts empty, has its own timer and answers through the handle.
    assert handle.ref() is not first
    assert health(pool)["size"] == 0
    assert manual_clock.pending_timers == 1
    fresh = pool.get("chat", "a0").get(timeout=T)
    assert fresh is not created[0]
    pool.register("chat", "r", FakeBackend("r")).get(timeout=T)
    manual_clock.advance(10.0)
    assert health(pool)["sweeps"] == 1

    root.stop()
    # Exactly once each: the crash did not dispose what was already being disposed, the
    # successor's stop disposed only its own backends.
    everything = [*made.values(), busy, old, new]
    assert all(len(b.dispose_calls) == 1 for b in everything), {b.name: b.dispose_calls for b in everything}


def test_a_kill_during_a_sweep_lets_the_sweep_finish_then_disposes_the_rest_once(manual_clock, gates):
    in_probe, release_probe = threading.Event(), gates()

    def slow_probe(backend: FakeBackend, now: float) -> None:
        in_probe.set()
        release_probe.wait(10)

    root, handle = _supervised_pool(manual_clock, idle_ttl=5.0)
    pool = handle.proxy()
    stale = [FakeBackend(f"stale{i}") for i in range(3)]
    for i, backend in enumerate(stale):
        pool.register("old", str(i), backend).get(timeout=T)
    manual_clock.advance(10.0)
    fresh = [FakeBackend("probed", probe=slow_probe), FakeBackend("fresh")]
    pool.register("new", "probed", fresh[0]).get(timeout=T)
    pool.register("new", "fresh", fresh[1]).get(timeout=T)
    sweeping = pool.sweep()
    assert in_probe.wait(T)
    kill(handle.ref(), "mid-sweep")
    release_probe.set()
    # A handler already running completes and its reply is delivered.
    assert sweeping.get(timeout=T) == ["old:0", "old:1", "old:2"]
    wait_until(lambda: _restarts(root) == 1)
    wait_until(lambda: all(b.disposed.is_set() for b in [*stale, *fresh]))
    assert health(pool)["size"] == 0
    root.stop()
    assert all(len(b.dispose_calls) == 1 for b in [*stale, *fresh])


def test_through_a_handle_the_restarted_pool_keeps_working(manual_clock):
    root, handle = _supervised_pool(manual_clock, factory=lambda p, a: FakeBackend(f"{p}:{a}"))
    pool = handle.proxy()
    before = pool.get("c", "a").get(timeout=T)
    kill(handle.ref())
    after = pool.get("c", "a").get(timeout=T)  # waits for the restart if it is pending
    assert after is not before and after.name == "c:a"
    assert before.disposed.wait(T)
    assert _restarts(root) == 1
