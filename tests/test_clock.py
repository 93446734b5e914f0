"""Clocks and timers: `ManualClock` drives time by hand, `SystemClock` by the real one.

Timer messages are plain tells; a test reads them back with an ask queued behind them,
so "advance returns once every due message is in its target's inbox" is what makes the
ManualClock tests deterministic.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from supervision import (
    ChildSpec,
    Clock,
    Handle,
    ManualClock,
    SupervisedActor,
    Supervisor,
    SystemClock,
    kill,
    send_after,
    send_interval,
)
from supervision.testing import wait_until


class Recorder(SupervisedActor):
    """Keeps every message told to it; `ask("received")` returns them in arrival order."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        if message == "received":
            return list(self.received)
        self.received.append(message)
        return None


class Echo(Recorder):
    """On "tick", schedules "echo" to itself with no delay on the given clock."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self.clock = clock

    def on_receive(self, message: Any) -> Any:
        if message == "tick":
            send_after(self.actor_ref, "echo", 0, clock=self.clock)
        return super().on_receive(message)


def received(target: Any) -> list[Any]:
    return target.ask("received", timeout=5)


@pytest.fixture
def recorder() -> Any:
    return Recorder.start()


def problems(log_records: list[dict[str, Any]]) -> list[str]:
    return [record["message"] for record in log_records if record["level"].no >= 30]


# -- ManualClock: reading time --------------------------------------------------------------


def test_manual_clock_starts_at_start() -> None:
    assert ManualClock().monotonic() == 0.0
    assert ManualClock(start=42.5).monotonic() == 42.5


def test_manual_clock_stands_still_without_advance() -> None:
    clock = ManualClock(start=3.0)
    wall = clock.time()
    assert clock.monotonic() == 3.0
    assert clock.time() == wall


def test_manual_clock_monotonic_and_time_advance_together() -> None:
    clock = ManualClock(start=10.0)
    monotonic_before, wall_before = clock.monotonic(), clock.time()
    clock.advance(7.25)
    clock.advance(0.5)
    assert clock.monotonic() - monotonic_before == pytest.approx(7.75)
    assert clock.time() - wall_before == pytest.approx(7.75)


def test_manual_clock_time_is_epoch_seconds() -> None:
    # A wall clock reading, not the monotonic scale: well past 2001-09-09 (1e9 s).
    assert ManualClock().time() > 1e9


def test_manual_clock_advance_negative_raises_value_error() -> None:
    clock = ManualClock()
    with pytest.raises(ValueError):
        clock.advance(-0.001)
    assert clock.monotonic() == 0.0


def test_manual_clock_advance_non_number_raises_type_error() -> None:
    clock = ManualClock()
    with pytest.raises(TypeError):
        clock.advance("1")  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds", [math.nan, math.inf])
def test_manual_clock_advance_rejects_non_finite_seconds(seconds: float) -> None:
    clock = ManualClock()
    with pytest.raises(ValueError):
        clock.advance(seconds)
    assert clock.monotonic() == 0.0


def test_manual_clock_advance_zero_keeps_time() -> None:
    clock = ManualClock(start=1.0)
    clock.advance(0)
    assert clock.monotonic() == 1.0


def test_clocks_satisfy_the_clock_protocol() -> None:
    assert isinstance(ManualClock(), Clock)
    assert isinstance(SystemClock(), Clock)


# -- ManualClock: one-shot timers -------------------------------------------------------


def test_send_after_delivers_nothing_before_advance(manual_clock: ManualClock, recorder: Any) -> None:
    send_after(recorder, "ping", 0, clock=manual_clock)
    assert received(recorder) == []


def test_send_after_delay_zero_fires_on_next_advance(manual_clock: ManualClock, recorder: Any) -> None:
    send_after(recorder, "ping", 0, clock=manual_clock)
    manual_clock.advance(0)
    assert received(recorder) == ["ping"]


def test_send_after_does_not_fire_before_its_due_time(manual_clock: ManualClock, recorder: Any) -> None:
    send_after(recorder, "ping", 5.0, clock=manual_clock)
    manual_clock.advance(5.0 - 1e-9)
    assert received(recorder) == []


def test_send_after_fires_exactly_at_its_due_time(manual_clock: ManualClock, recorder: Any) -> None:
    send_after(recorder, "ping", 5.0, clock=manual_clock)
    manual_clock.advance(4.0)
    manual_clock.advance(1.0)
    assert received(recorder) == ["ping"]


def test_send_after_fires_only_once(manual_clock: ManualClock, recorder: Any) -> None:
    send_after(recorder, "ping", 1.0, clock=manual_clock)
    manual_clock.advance(1.0)
    manual_clock.advance(100.0)
    assert received(recorder) == ["ping"]
    assert manual_clock.pending_timers == 0


def test_send_after_delay_counts_from_when_it_was_created(manual_clock: ManualClock, recorder: Any) -> None:
    manual_clock.advance(10.0)
    send_after(recorder, "ping", 3.0, clock=manual_clock)
    manual_clock.advance(2.0)
    assert received(recorder) == []
    manual_clock.advance(1.0)
    assert received(recorder) == ["ping"]


def test_timer_cancel_stops_delivery(manual_clock: ManualClock, recorder: Any) -> None:
    timer = send_after(recorder, "ping", 1.0, clock=manual_clock)
    assert manual_clock.pending_timers == 1
    timer.cancel()
    assert manual_clock.pending_timers == 0
    manual_clock.advance(2.0)
    assert received(recorder) == []


def test_timer_cancel_is_idempotent_and_fine_after_firing(manual_clock: ManualClock, recorder: Any) -> None:
    timer = send_after(recorder, "ping", 1.0, clock=manual_clock)
    manual_clock.advance(1.0)
    timer.cancel()
    timer.cancel()
    assert received(recorder) == ["ping"]


# -- ManualClock: interval timers -------------------------------------------------------


def test_interval_fires_once_per_occurrence_in_one_advance(manual_clock: ManualClock, recorder: Any) -> None:
    send_interval(recorder, "tick", 3.0, clock=manual_clock)
    manual_clock.advance(10.0)
    assert received(recorder) == ["tick"] * 3


def test_interval_keeps_its_phase_across_advances(manual_clock: ManualClock, recorder: Any) -> None:
    send_interval(recorder, "tick", 3.0, clock=manual_clock)
    manual_clock.advance(10.0)  # 3, 6, 9
    manual_clock.advance(1.9)  # next is due at 12
    assert len(received(recorder)) == 3
    manual_clock.advance(0.1)
    assert len(received(recorder)) == 4


def test_interval_does_not_fire_before_first_interval(manual_clock: ManualClock, recorder: Any) -> None:
    send_interval(recorder, "tick", 2.0, clock=manual_clock)
    manual_clock.advance(1.5)
    assert received(recorder) == []


def test_interval_cancel_stops_further_ticks(manual_clock: ManualClock, recorder: Any) -> None:
    timer = send_interval(recorder, "tick", 1.0, clock=manual_clock)
    manual_clock.advance(2.0)
    timer.cancel()
    manual_clock.advance(5.0)
    assert received(recorder) == ["tick", "tick"]
    assert manual_clock.pending_timers == 0


def test_interval_stays_pending_while_it_runs(manual_clock: ManualClock, recorder: Any) -> None:
    send_interval(recorder, "tick", 1.0, clock=manual_clock)
    manual_clock.advance(5.0)
    assert manual_clock.pending_timers == 1


# -- ManualClock: order ----------------------------------------------------------------------


def test_timers_fire_in_due_order_not_creation_order(manual_clock: ManualClock, recorder: Any) -> None:
    send_after(recorder, "third", 3.0, clock=manual_clock)
    send_after(recorder, "first", 1.0, clock=manual_clock)
    send_after(recorder, "second", 2.0, clock=manual_clock)
    manual_clock.advance(5.0)
    assert received(recorder) == ["first", "second", "third"]


def test_timers_due_at_the_same_time_fire_in_creation_order(manual_clock: ManualClock, recorder: Any) -> None:
    for name in ["a", "b", "c", "d"]:
        send_after(recorder, name, 2.0, clock=manual_clock)
    manual_clock.advance(2.0)
    assert received(recorder) == ["a", "b", "c", "d"]


def test_interval_occurrences_interleave_with_one_shots_by_due_time(
    manual_clock: ManualClock, recorder: Any
) -> None:
    send_interval(recorder, "tick", 2.0, clock=manual_clock)  # 2, 4, 6
    send_after(recorder, "at-3", 3.0, clock=manual_clock)
    send_after(recorder, "at-4", 4.0, clock=manual_clock)  # ties with a tick created earlier
    manual_clock.advance(6.0)
    assert received(recorder) == ["tick", "at-3", "tick", "at-4", "tick"]


def test_timers_to_different_targets_fire_in_due_order(manual_clock: ManualClock) -> None:
    first, second = Recorder.start(), Recorder.start()
    order: list[str] = []
    # The clock tells each target in due order; recording the order of calls shows it.
    manual_clock.call_later(2.0, lambda: order.append("second"))
    send_after(first, "x", 1.0, clock=manual_clock)
    send_after(second, "y", 2.0, clock=manual_clock)
    manual_clock.call_later(1.0, lambda: order.append("first"))
    manual_clock.advance(3.0)
    assert order == ["first", "second"]
    assert received(first) == ["x"]
    assert received(second) == ["y"]


def test_clock_reads_the_due_time_while_a_timer_fires(manual_clock: ManualClock) -> None:
    seen: list[float] = []
    manual_clock.call_later(2.0, lambda: seen.append(manual_clock.monotonic()))
    manual_clock.call_later(5.0, lambda: seen.append(manual_clock.monotonic()))
    manual_clock.advance(10.0)
    assert seen == [2.0, 5.0]
    assert manual_clock.monotonic() == 10.0


# -- ManualClock: timers created while advance runs ---------------------------------------------


def test_timer_created_during_advance_waits_for_next_advance(manual_clock: ManualClock, recorder: Any) -> None:
    def schedule_more() -> None:
        send_after(recorder, "late", 0, clock=manual_clock)

    manual_clock.call_later(1.0, schedule_more)
    send_after(recorder, "on-time", 5.0, clock=manual_clock)
    manual_clock.advance(10.0)
    assert received(recorder) == ["on-time"]
    manual_clock.advance(0)
    assert received(recorder) == ["on-time", "late"]


def test_interval_created_during_advance_waits_for_next_advance(manual_clock: ManualClock, recorder: Any) -> None:
    manual_clock.call_later(1.0, lambda: send_interval(recorder, "tick", 1.0, clock=manual_clock))
    manual_clock.advance(10.0)
    assert received(recorder) == []
    assert manual_clock.pending_timers == 1


def test_timer_an_actor_creates_on_a_tick_fires_on_the_next_advance(manual_clock: ManualClock) -> None:
    echo = Echo.start(manual_clock)
    send_after(echo, "tick", 1.0, clock=manual_clock)
    manual_clock.advance(5.0)
    # The ask is queued behind "tick", so "echo" has been scheduled by now.
    assert received(echo) == ["tick"]
    manual_clock.advance(0)
    assert received(echo) == ["tick", "echo"]


# -- ManualClock: advance waits for delivery ----------------------------------------------------


def test_advance_returns_once_every_due_message_is_in_the_inbox(manual_clock: ManualClock, recorder: Any) -> None:
    send_interval(recorder, "tick", 0.5, clock=manual_clock)
    send_after(recorder, "once", 7.0, clock=manual_clock)
    manual_clock.advance(50.0)
    ticks = received(recorder)
    assert ticks.count("tick") == 100
    assert ticks.count("once") == 1


# -- dead targets ---------------------------------------------------------------------------------


def test_timer_to_a_dead_ref_is_dropped_quietly(
    manual_clock: ManualClock, recorder: Any, log_records: list[dict[str, Any]]
) -> None:
    send_after(recorder, "ping", 1.0, clock=manual_clock)
    recorder.stop()
    manual_clock.advance(1.0)
    assert manual_clock.pending_timers == 0
    assert problems(log_records) == []


def test_interval_timer_to_a_dead_ref_cancels_itself(
    manual_clock: ManualClock, recorder: Any, log_records: list[dict[str, Any]]
) -> None:
    send_interval(recorder, "tick", 1.0, clock=manual_clock)
    manual_clock.advance(1.0)
    assert received(recorder) == ["tick"]
    recorder.stop()
    manual_clock.advance(3.0)
    assert manual_clock.pending_timers == 0
    assert problems(log_records) == []


def test_dead_target_does_not_stop_other_timers(manual_clock: ManualClock) -> None:
    dead, alive = Recorder.start(), Recorder.start()
    send_after(dead, "lost", 1.0, clock=manual_clock)
    send_after(alive, "kept", 2.0, clock=manual_clock)
    dead.stop()
    manual_clock.advance(2.0)
    assert received(alive) == ["kept"]


# -- argument checks ----------------------------------------------------------------------------


@pytest.mark.parametrize("interval", [0, 0.0, -1.0])
def test_send_interval_rejects_non_positive_interval(manual_clock: ManualClock, recorder: Any, interval: float) -> None:
    with pytest.raises(ValueError):
        send_interval(recorder, "tick", interval, clock=manual_clock)
    assert manual_clock.pending_timers == 0


def test_send_after_rejects_negative_delay(manual_clock: ManualClock, recorder: Any) -> None:
    with pytest.raises(ValueError):
        send_after(recorder, "ping", -0.5, clock=manual_clock)
    assert manual_clock.pending_timers == 0


def test_send_after_rejects_nan_delay(manual_clock: ManualClock, recorder: Any) -> None:
    with pytest.raises(ValueError):
        send_after(recorder, "ping", math.nan, clock=manual_clock)


def test_send_after_accepts_delay_zero(manual_clock: ManualClock, recorder: Any) -> None:
    send_after(recorder, "ping", 0, clock=manual_clock)
    assert manual_clock.pending_timers == 1


@pytest.mark.parametrize("bad", ["1", None, [1.0]])
def test_send_after_rejects_a_non_number_delay(manual_clock: ManualClock, recorder: Any, bad: Any) -> None:
    with pytest.raises(TypeError):
        send_after(recorder, "ping", bad, clock=manual_clock)


@pytest.mark.parametrize("bad", ["1", None])
def test_send_interval_rejects_a_non_number_interval(manual_clock: ManualClock, recorder: Any, bad: Any) -> None:
    with pytest.raises(TypeError):
        send_interval(recorder, "tick", bad, clock=manual_clock)


@pytest.mark.parametrize("target", [None, 42, "actor", object()])
def test_timers_reject_a_target_that_is_not_a_ref_or_handle(manual_clock: ManualClock, target: Any) -> None:
    with pytest.raises(TypeError):
        send_after(target, "ping", 1.0, clock=manual_clock)
    with pytest.raises(TypeError):
        send_interval(target, "tick", 1.0, clock=manual_clock)
    assert manual_clock.pending_timers == 0


# -- SystemClock --------------------------------------------------------------------------------


def test_system_clock_reads_real_time() -> None:
    clock = SystemClock()
    before = time.monotonic()
    reading = clock.monotonic()
    assert before <= reading <= time.monotonic()
    assert clock.time() == pytest.approx(time.time(), abs=1.0)


def test_system_clock_send_after_delivers(recorder: Any) -> None:
    send_after(recorder, "ping", 0.02, clock=SystemClock())
    assert wait_until(lambda: received(recorder) == ["ping"], timeout=5)


def test_send_after_defaults_to_the_system_clock(recorder: Any) -> None:
    send_after(recorder, "ping", 0.01)
    assert wait_until(lambda: received(recorder) == ["ping"], timeout=5)


def test_system_clock_cancel_before_due_prevents_delivery(recorder: Any) -> None:
    timer = send_after(recorder, "never", 0.1, clock=SystemClock())
    timer.cancel()
    # One scheduler fires timers in due order, so "never" would arrive before "marker".
    send_after(recorder, "marker", 0.15, clock=SystemClock())
    wait_until(lambda: "marker" in received(recorder), timeout=5)
    assert received(recorder) == ["marker"]


def test_system_clock_interval_delivers_repeatedly(recorder: Any) -> None:
    timer = send_interval(recorder, "tick", 0.01, clock=SystemClock())
    try:
        assert wait_until(lambda: received(recorder).count("tick") >= 3, timeout=5)
    finally:
        timer.cancel()


def test_system_clock_interval_cancel_stops_further_ticks(recorder: Any) -> None:
    clock = SystemClock()
    timer = send_interval(recorder, "tick", 0.01, clock=clock)
    wait_until(lambda: received(recorder).count("tick") >= 2, timeout=5)
    timer.cancel()
    # A tick already being fired when cancel() ran lands before the first marker;
    # between the two markers a live 10 ms interval would have ticked several times.
    send_after(recorder, "marker-1", 0.02, clock=clock)
    wait_until(lambda: "marker-1" in received(recorder), timeout=5)
    send_after(recorder, "marker-2", 0.1, clock=clock)
    wait_until(lambda: "marker-2" in received(recorder), timeout=5)
    messages = received(recorder)
    assert messages[messages.index("marker-1") :] == ["marker-1", "marker-2"]


# -- timers aimed at a Handle -------------------------------------------------------------------


@pytest.fixture
def supervised(manual_clock: ManualClock) -> tuple[Any, Handle]:
    supervisor = Supervisor.start([ChildSpec("rec", Recorder)], clock=manual_clock)
    return supervisor, Handle(supervisor, "rec")


def test_timer_to_a_handle_reaches_the_running_incarnation(
    manual_clock: ManualClock, supervised: tuple[Any, Handle]
) -> None:
    _, handle = supervised
    send_after(handle, "ping", 1.0, clock=manual_clock)
    manual_clock.advance(1.0)
    assert handle.ask("received", timeout=5) == ["ping"]


def test_timer_to_a_handle_is_dropped_quietly_while_no_incarnation_runs(
    manual_clock: ManualClock, supervised: tuple[Any, Handle], log_records: list[dict[str, Any]]
) -> None:
    supervisor, handle = supervised
    supervisor.proxy().terminate_child("rec").get(timeout=5)
    send_after(handle, "lost", 1.0, clock=manual_clock)
    manual_clock.advance(1.0)
    assert problems(log_records) == []
    supervisor.proxy().restart_child("rec").get(timeout=5)
    assert handle.ask("received", timeout=5) == []


def test_interval_to_a_handle_survives_a_terminated_child(
    manual_clock: ManualClock, supervised: tuple[Any, Handle]
) -> None:
    supervisor, handle = supervised
    send_interval(handle, "tick", 1.0, clock=manual_clock)
    supervisor.proxy().terminate_child("rec").get(timeout=5)
    manual_clock.advance(2.0)
    assert manual_clock.pending_timers == 1
    supervisor.proxy().restart_child("rec").get(timeout=5)
    manual_clock.advance(1.0)
    assert handle.ask("received", timeout=5) == ["tick"]


def test_interval_to_a_handle_reaches_the_new_incarnation_after_a_restart(
    manual_clock: ManualClock, supervised: tuple[Any, Handle]
) -> None:
    supervisor, handle = supervised
    send_interval(handle, "tick", 1.0, clock=manual_clock)
    manual_clock.advance(1.0)
    old = handle.ref()
    assert received(old) == ["tick"]
    kill(old)
    wait_until(lambda: supervisor.proxy().which_children().get(timeout=5)[0].restarts == 1, timeout=5)
    manual_clock.advance(2.0)
    assert handle.ask("received", timeout=5) == ["tick", "tick"]


class SlowRestart(Recorder):
    """From its second start on, `on_start` waits for the test to open the gate."""

    def __init__(self, gate: dict[str, Any]) -> None:
        super().__init__()
        self.gate = gate

    def on_start(self) -> None:
        self.gate["starts"] += 1
        if self.gate["starts"] > 1:
            self.gate["entered"].set()
            self.gate["release"].wait(10)


@pytest.fixture
def gate() -> Iterator[dict[str, Any]]:
    gate = {"starts": 0, "entered": threading.Event(), "release": threading.Event()}
    yield gate
    gate["release"].set()


def test_timer_to_a_handle_does_not_wait_for_a_pending_restart(
    manual_clock: ManualClock, gate: dict[str, Any]
) -> None:
    supervisor = Supervisor.start([ChildSpec("rec", SlowRestart, args=(gate,))], clock=manual_clock)
    handle = Handle(supervisor, "rec")
    send_after(handle, "lost", 1.0, clock=manual_clock)
    kill(handle.ref())
    assert gate["entered"].wait(5)
    started = time.monotonic()
    manual_clock.advance(1.0)
    assert time.monotonic() - started < 1.0
    gate["release"].set()
    assert handle.ask("received", timeout=5) == []
