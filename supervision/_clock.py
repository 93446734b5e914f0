"""Time as an injected dependency: clocks, one-shot and interval timers.

Everything the library schedules or measures as policy goes through a `Clock`, so a
test drives it synchronously with a `ManualClock`::

    clock = ManualClock()
    timer = send_interval(ref, "tick", 5.0, clock=clock)
    clock.advance(12.0)          # "tick" is now twice in ref's inbox
    timer.cancel()

Timer messages are plain `tell`s: a dead `ActorRef` target drops them quietly (and
an interval timer aimed at one cancels itself); a `Handle` target delivers to the
current incarnation, or drops the message while none runs.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time as _time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import pykka
from loguru import logger

__all__ = ["Clock", "ManualClock", "SystemClock", "Timer", "send_after", "send_interval"]

_log = logger.bind(component="clock")


class Timer:
    """A scheduled callback; `cancel()` stops it (idempotent, safe from any thread)."""

    __slots__ = ("_callback", "_cancelled", "due", "interval", "seq")

    def __init__(self, due: float, interval: float | None, callback: Callable[[], bool | None], seq: int):
        self.due = due
        self.interval = interval
        self.seq = seq
        self._callback = callback
        self._cancelled = False

    def cancel(self) -> None:
        """Stop the timer; a message already delivered stays delivered."""
        self._cancelled = True

    @property
    def active(self) -> bool:
        """False once cancelled (or once a one-shot timer has fired)."""
        return not self._cancelled

    def _fire(self) -> None:
        # A callback returning False means its target is gone for good.
        try:
            keep = self._callback()
        except Exception:
            _log.exception("timer callback failed; the timer stays scheduled")
            keep = True
        if keep is False or self.interval is None:
            self._cancelled = True

    def __lt__(self, other: Timer) -> bool:
        return (self.due, self.seq) < (other.due, other.seq)

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else f"due={self.due:.3f}"
        return f"<Timer {state} interval={self.interval}>"


@runtime_checkable
class Clock(Protocol):
    """Where policy time comes from: `SystemClock` in production, `ManualClock` in tests."""

    def monotonic(self) -> float:
        """Seconds on a monotonic scale (intensity windows, TTLs, intervals)."""

    def time(self) -> float:
        """Wall clock, epoch seconds."""

    def call_later(self, delay: float, callback: Callable[[], bool | None], *, interval: float | None = None) -> Timer:
        """Run `callback` after `delay` seconds (then every `interval`); it must be quick."""


_timer_seq = itertools.count()

#: Seconds the shared clock thread waits with nothing scheduled before it ends.
IDLE_EXIT = 0.5


class _SystemScheduler:
    """One daemon thread firing every `SystemClock`'s timers, started on first use."""

    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, timer: Timer) -> None:
        with self._condition:
            heapq.heappush(self._heap, timer)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="supervision-clock", daemon=True)
                self._thread.start()
            self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                while True:
                    while self._heap and not self._heap[0].active:
                        heapq.heappop(self._heap)
                    now = _time.monotonic()
                    if self._heap and self._heap[0].due <= now:
                        timer = heapq.heappop(self._heap)
                        break
                    if not self._heap:
                        # Nothing scheduled: linger a moment, then end; add() starts a new one.
                        self._condition.wait(IDLE_EXIT)
                        if not self._heap:
                            self._thread = None
                            return
                        continue
                    self._condition.wait(self._heap[0].due - now)
            timer._fire()
            if timer.active and timer.interval is not None:
                # Missed occurrences of a real clock (a suspended machine) coalesce into one.
                now = _time.monotonic()
                timer.due += timer.interval
                if timer.due <= now:
                    timer.due = now + timer.interval
                with self._condition:
                    heapq.heappush(self._heap, timer)


_system_scheduler = _SystemScheduler()


class SystemClock:
    """Real time: `time.monotonic()`, `time.time()`, and a shared scheduler thread."""

    def monotonic(self) -> float:
        return _time.monotonic()

    def time(self) -> float:
        return _time.time()

    def call_later(self, delay: float, callback: Callable[[], bool | None], *, interval: float | None = None) -> Timer:
        timer = Timer(_time.monotonic() + delay, interval, callback, next(_timer_seq))
        _system_scheduler.add(timer)
        return timer

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that stands still until `advance(seconds)`.

    `advance` delivers every due timer message in due order (ties in creation order),
    an interval timer once per occurrence passed, and returns when all of them are in
    their targets' inboxes. Timers created while `advance` runs wait for the next one.
    """

    def __init__(self, start: float = 0.0, *, wall_start: float | None = None) -> None:
        self._start = float(start)
        self._now = float(start)
        self._wall_start = _time.time() if wall_start is None else float(wall_start)
        self._heap: list[Timer] = []
        self._lock = threading.Lock()
        self._advance_lock = threading.Lock()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._wall_start + (self._now - self._start)

    def call_later(self, delay: float, callback: Callable[[], bool | None], *, interval: float | None = None) -> Timer:
        with self._lock:
            timer = Timer(self._now + delay, interval, callback, next(_timer_seq))
            heapq.heappush(self._heap, timer)
        return timer

    @property
    def pending_timers(self) -> int:
        """How many timers are scheduled and not cancelled (handy in tests)."""
        with self._lock:
            return sum(1 for timer in self._heap if timer.active)

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` (≥ 0), firing what falls due on the way."""
        _check_duration("seconds", seconds)
        with self._advance_lock:
            cutoff = next(_timer_seq)  # timers created from here on wait for the next advance
            with self._lock:
                target = self._now + seconds
            while True:
                with self._lock:
                    timer = self._pop_due(target, cutoff)
                    if timer is None:
                        self._now = target
                        return
                    self._now = max(self._now, timer.due)
                # Fire outside the lock: the target's thread may be scheduling timers.
                timer._fire()
                if timer.active and timer.interval is not None:
                    with self._lock:
                        timer.due += timer.interval
                        heapq.heappush(self._heap, timer)

    def _pop_due(self, target: float, cutoff: int) -> Timer | None:
        deferred: list[Timer] = []
        found = None
        while self._heap and self._heap[0].due <= target:
            timer = heapq.heappop(self._heap)
            if not timer.active:
                continue
            if timer.seq > cutoff:
                deferred.append(timer)
                continue
            found = timer
            break
        for timer in deferred:
            heapq.heappush(self._heap, timer)
        return found

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now})"


def _check_duration(what: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{what} must be finite, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{what} must be > 0, got {value!r}")
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value!r}")
    return float(value)


def _deliver(target: Any, message: Any) -> bool:
    """Tell `target`; False when it is an `ActorRef` that is gone for good."""
    if isinstance(target, pykka.ActorRef):
        try:
            target.tell(message)
        except pykka.ActorDeadError:
            return False
        return True
    if target.is_gone():  # a Handle whose supervisor stopped: nothing will ever answer
        return False
    target.tell(message)  # a Handle: drops quietly while no incarnation runs
    return True


def _check_target(target: Any) -> None:
    if not isinstance(target, pykka.ActorRef) and not callable(getattr(target, "tell", None)):
        raise TypeError(f"timer target must be an ActorRef or a Handle, not {type(target).__name__}")


def send_after(target: Any, message: Any, delay: float, clock: Clock | None = None) -> Timer:
    """Tell `target` (an `ActorRef` or `Handle`) `message` once, `delay` seconds from now."""
    _check_target(target)
    delay = _check_duration("delay", delay)
    return (clock or _default_clock).call_later(delay, lambda: _deliver(target, message))


def send_interval(target: Any, message: Any, interval: float, clock: Clock | None = None) -> Timer:
    """Tell `target` `message` every `interval` seconds (> 0) until the timer is cancelled."""
    _check_target(target)
    interval = _check_duration("interval", interval, positive=True)
    return (clock or _default_clock).call_later(interval, lambda: _deliver(target, message), interval=interval)


_default_clock = SystemClock()
