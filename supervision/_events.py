"""A process-wide event bus: what the tree does, for whoever subscribes.

    with subscribe(kinds={"child_exited", "child_restarted"}) as events:
        ...                                   # the tree runs
        event = events.get(timeout=5)         # Event(seq=…, kind="child_exited", path="locks/…", …)

    async for event in subscribe():           # in an asyncio task: the loop keeps running
        print(event.kind, event.path, event.data)

Actors call `emit(kind, path, name, **data)` where a thing happens. The emitter never
blocks and never waits for a subscriber: each subscription has a bounded buffer of its
own; when it is full the oldest event is dropped and `Subscription.dropped` counts it.
With no subscriber, `emit` is one check of a module-level tuple.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

__all__ = ["Event", "Subscription", "emit", "subscribe"]


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened: `seq` increases in the process, `time` is the wall clock.

    `path` is the supervisor path and child id (`"locks/%2Fsrv%2Fw1"`) or `""`; `name` the
    worker identity concerned when known; `data` is kind-specific and msgpack-encodable.
    """

    seq: int
    time: float
    kind: str
    path: str = ""
    name: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


# Copy-on-write: emit() reads it without a lock; replaced (never mutated) under _lock.
# Weak: a subscription its reader dropped without close() leaves the bus by itself.
_subscribers: tuple[weakref.ref[Subscription], ...] = ()
# Held while an event is numbered and offered, so every buffer is in `seq` order. Each
# offer is a few O(1) deque operations: the emitter never waits for a consumer.
# Re-entrant: a collected subscription's weakref callback may run inside emit().
_lock = threading.RLock()
_seq = itertools.count(1)


def _attach(subscription: Subscription) -> None:
    global _subscribers
    with _lock:
        _subscribers = (*_subscribers, weakref.ref(subscription, _detach))


def _detach(gone: weakref.ref[Subscription] | Subscription) -> None:
    global _subscribers
    with _lock:
        _subscribers = tuple(ref for ref in _subscribers if ref is not gone and ref() is not gone)


def emit(kind: str, path: str = "", name: str | None = None, **data: Any) -> None:
    """Publish an event to every current subscriber; next to free when there is none."""
    if not _subscribers:
        return
    with _lock:
        event = Event(next(_seq), time.time(), kind, path, name, data)
        for ref in _subscribers:
            subscription = ref()
            if subscription is not None:
                subscription._offer(event)


def subscribe(*, kinds: Iterable[str] | None = None, maxlen: int = 10_000) -> Subscription:
    """Every event emitted in this process from now on (of `kinds`, if given), in `seq` order."""
    return Subscription(kinds=kinds, maxlen=maxlen)


class Subscription:
    """A bounded buffer of events: `get()`, iteration, `async for`, `close()` (or `with`).

    Read it or lose the oldest: when `maxlen` events wait unread, each new one drops the
    oldest and counts it in `dropped`. A closed subscription receives nothing more; what
    is buffered can still be read, then iteration ends.
    """

    def __init__(self, *, kinds: Iterable[str] | None = None, maxlen: int = 10_000) -> None:
        if isinstance(kinds, str):
            raise TypeError("kinds must be a set of event kinds, not a str")
        if isinstance(maxlen, bool) or not isinstance(maxlen, int):
            raise TypeError(f"maxlen must be an int, not {type(maxlen).__name__}")
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, got {maxlen}")
        self.kinds: frozenset[str] | None = None if kinds is None else frozenset(kinds)
        self.maxlen = maxlen
        self.dropped = 0
        self.closed = False
        self._buffer: deque[Event] = deque()
        self._condition = threading.Condition(threading.Lock())
        self._sync_waiters = 0
        # asyncio consumers waiting on an empty buffer: each is woken once, then forgotten
        # until it has drained the buffer and waits again (at most one wake-up per batch).
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        _attach(self)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Subscription {state} kinds={sorted(self.kinds) if self.kinds else 'all'} buffered={len(self._buffer)} dropped={self.dropped}>"

    # -- the emitter's side (called with the bus lock held; never waits) ------------------------

    def _offer(self, event: Event) -> None:
        if self.kinds is not None and event.kind not in self.kinds:
            return
        with self._condition:
            if len(self._buffer) >= self.maxlen:
                self._buffer.popleft()
                self.dropped += 1
            self._buffer.append(event)
            if self._sync_waiters:
                self._condition.notify()
            if not self._async_waiters:
                return
            waiters, self._async_waiters = self._async_waiters, []
        for waiter in waiters:
            _wake(*waiter)

    # -- the consumer's side ---------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Event:
        """The oldest buffered event; waits up to `timeout` s (`TimeoutError`).

        `EOFError` once the subscription is closed and drained.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while not self._buffer:
                if self.closed:
                    raise EOFError("subscription closed")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no event within {timeout} s")
                self._sync_waiters += 1
                try:
                    self._condition.wait(remaining)
                finally:
                    self._sync_waiters -= 1
            return self._buffer.popleft()

    def drain(self) -> list[Event]:
        """Every buffered event, at once, without waiting."""
        with self._condition:
            events = list(self._buffer)
            self._buffer.clear()
            return events

    def __iter__(self) -> Iterator[Event]:
        while True:
            try:
                yield self.get()
            except EOFError:
                return

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while True:
            with self._condition:
                if self._buffer:
                    return self._buffer.popleft()
                if self.closed:
                    raise StopAsyncIteration
                loop = asyncio.get_running_loop()
                waiter: asyncio.Future[None] = loop.create_future()
                entry = (loop, waiter)
                self._async_waiters.append(entry)
            try:
                await waiter
            finally:
                with self._condition:
                    if entry in self._async_waiters:  # cancelled before an event came
                        self._async_waiters.remove(entry)

    def close(self) -> None:
        """Stop receiving events; wakes every waiting consumer."""
        _detach(self)
        with self._condition:
            self.closed = True
            self._condition.notify_all()
            waiters, self._async_waiters = self._async_waiters, []
        for waiter in waiters:
            _wake(*waiter)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _wake(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None]) -> None:
    try:
        loop.call_soon_threadsafe(_resolve, waiter)
    except RuntimeError:
        pass  # its loop closed: nobody is left to wake


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
