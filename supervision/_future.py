"""Futures that an asyncio task can await without blocking its event loop.

Every future a supervised actor answers with is an `AwaitableFuture`: a
`pykka.ThreadingFuture` (so `get(timeout)` works as ever) that also runs done-callbacks
and, when awaited, wakes the awaiting loop from the thread that sets the reply::

    async def main() -> None:
        counter = Handle(root, "counter").proxy()
        total = await counter.add(2)                       # the loop keeps running meanwhile
        both = await gather(counter.add(1), counter.add(1))  # results in order

    asyncio.run(main())

No helper thread per call and no executor: `await fut` parks the task on an asyncio
future of its own loop and registers a callback; the actor's thread, once it sets the
reply, schedules that waiter with `loop.call_soon_threadsafe`. Cancelling the task (or
`asyncio.timeout`) abandons the wait only: the call still runs and its reply is kept in
`fut`. A reply that arrives after its loop closed is dropped quietly.

The class replaces pykka's future only where `SupervisedActor._create_future` and the
library's own futures (`Handle` calls, `DeferredReply`) create it; pykka is never patched,
so plain pykka actors keep pykka's futures.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import sys
import threading
from collections.abc import Callable, Generator, Iterable
from typing import Any, TypeVar, cast

import pykka
from loguru import logger
from pykka._threading import ThreadingFutureResult

__all__ = ["AwaitableFuture", "gather"]

T = TypeVar("T")
DoneCallback = Callable[["AwaitableFuture[Any]"], None]


class AwaitableFuture(pykka.ThreadingFuture[T]):
    """A pykka future that can be awaited without blocking the loop and has done-callbacks.

    `add_done_callback(fn)` calls `fn(future)` once the reply is set: at once if it already
    is, otherwise on the thread that sets it (keep `fn` short; an exception in it is logged,
    never raised into the setter). `map`, `filter`, `join` and `reduce` give futures of this
    kind that remember what they are computed from, so they are awaitable too.
    """

    # Class-level defaults keep creating a future as cheap as pykka's (no extra __init__).
    _callbacks: list[DoneCallback] | None = None
    # What a get-hook future (map/filter/join/reduce) is computed from; None for a plain reply.
    _sources: tuple[pykka.Future[Any], ...] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {'done' if self.done else 'pending'}>"

    @property
    def done(self) -> bool:
        """True once the reply is set (for a derived future: once every source is)."""
        if self._sources is not None:
            return all(_is_done(source) for source in self._sources)
        return self._result is not None

    # -- setting ------------------------------------------------------------------------------

    def set(self, value: Any | None = None) -> None:
        with self._condition:
            if self._result is not None or self._get_hook is not None:
                raise queue.Full
            self._result = ThreadingFutureResult(value=value)
            self._condition.notify_all()
            callbacks, self._callbacks = self._callbacks, None
        if callbacks:
            self._run(callbacks)

    def set_exception(self, exc_info: Any = None) -> None:
        if exc_info is None:
            exc_info = sys.exc_info()
        with self._condition:
            if self._result is not None or self._get_hook is not None:
                raise queue.Full
            self._result = ThreadingFutureResult(exc_info=exc_info)
            self._condition.notify_all()
            callbacks, self._callbacks = self._callbacks, None
        if callbacks:
            self._run(callbacks)

    def _run(self, callbacks: list[DoneCallback]) -> None:
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                # Runs on whichever thread set the reply (often an actor's): never raise into it.
                logger.exception("a future's done-callback {!r} failed", callback)

    # -- callbacks ----------------------------------------------------------------------------

    def add_done_callback(self, callback: DoneCallback) -> None:
        """Call `callback(self)` once the reply is set (at once if it already is)."""
        sources = self._sources
        if sources is not None:
            _when_all_done(sources, lambda: callback(self))
            return
        if self._get_hook is not None:
            # A get-hook future we did not build (pykka's `stop(block=False)`): we cannot
            # see when it completes, so one thread waits on it. Never on a call's path.
            threading.Thread(target=_wait_then, args=(self, callback), daemon=True, name="future-callback").start()
            return
        with self._condition:
            if self._result is None:
                if self._callbacks is None:
                    self._callbacks = [callback]
                else:
                    self._callbacks.append(callback)
                return
        callback(self)

    # -- awaiting -----------------------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, T]:
        yield from self._wait_async()
        return cast(T, self._outcome())

    def _outcome(self) -> Any:
        """The value (or raise the exception) of a future that is done; `get(timeout=0)` sped up."""
        result = self._result
        if result is None:  # a get-hook future: computed by get()
            return self.get(timeout=0)
        if result.exc_info is None:
            return result.value
        return pykka.ThreadingFuture.get(self, timeout=0)  # raises it, as get() does

    __iter__ = __await__  # as pykka's, so `yield from future` keeps working

    def _wait_async(self) -> Generator[Any, None, None]:
        """Suspend the running task until the reply is set; never blocks the loop."""
        if self._result is not None or (self._sources is not None and self.done):
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        wake = functools.partial(_wake, loop, waiter)
        if self._get_hook is None:
            with self._condition:  # add_done_callback, inlined: this is every awaited call
                if self._result is None:
                    if self._callbacks is None:
                        self._callbacks = [wake]
                    else:
                        self._callbacks.append(wake)
                    wake = None  # type: ignore[assignment]
            if wake is not None:
                return  # set meanwhile
        else:
            self.add_done_callback(wake)
        # Cancelling the task cancels only `waiter`: the call and its reply are untouched.
        yield from waiter

    # -- derived futures (their values come from get hooks over `_sources`) -------------------

    def _derived(self, sources: tuple[pykka.Future[Any], ...], hook: Callable[[float | None], Any]) -> AwaitableFuture[Any]:
        future: AwaitableFuture[Any] = AwaitableFuture()
        future._sources = sources
        future.set_get_hook(hook)
        return future

    def map(self, func: Callable[[T], Any]) -> AwaitableFuture[Any]:
        return self._derived((self,), lambda timeout: func(self.get(timeout=timeout)))

    def filter(self, func: Callable[[Any], bool]) -> AwaitableFuture[Any]:  # type: ignore[override]
        return self._derived((self,), lambda timeout: list(filter(func, self.get(timeout=timeout))))  # type: ignore[arg-type]

    def join(self, *futures: pykka.Future[Any]) -> AwaitableFuture[Any]:  # type: ignore[override]
        every = (self, *futures)
        return self._derived(every, lambda timeout: [future.get(timeout=timeout) for future in every])

    def reduce(self, func: Callable[[Any, Any], Any], *args: Any) -> AwaitableFuture[Any]:  # type: ignore[override]
        return self._derived((self,), lambda timeout: functools.reduce(func, self.get(timeout=timeout), *args))  # type: ignore[arg-type]


def _is_done(future: pykka.Future[Any]) -> bool:
    if isinstance(future, AwaitableFuture):
        return future.done
    return getattr(future, "_result", None) is not None


def _when_all_done(sources: Iterable[pykka.Future[Any]], then: Callable[[], None]) -> None:
    """Run `then()` once every source is done (on the thread that completes the last one)."""
    pending = list(sources)
    remaining = [len(pending)]
    lock = threading.Lock()

    def one_done(_future: Any) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            then()

    for source in pending:
        if isinstance(source, AwaitableFuture):
            source.add_done_callback(one_done)
        else:  # a plain pykka future: only a waiting thread can tell when it is done
            threading.Thread(target=_wait_then, args=(source, one_done), daemon=True, name="future-callback").start()


def _wait_then(future: pykka.Future[Any], callback: Callable[[Any], None]) -> None:
    try:
        future.get()
    except BaseException:
        pass  # the callback reads the outcome itself
    try:
        callback(future)
    except Exception:
        logger.exception("a future's done-callback {!r} failed", callback)


def _wake(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[Any], _future: Any) -> None:
    """Runs on the thread that set the reply: schedule the awaiting task on its own loop."""
    if waiter.done():  # its task was cancelled meanwhile: nobody waits any more
        return
    try:
        loop.call_soon_threadsafe(_resolve, waiter)
    except RuntimeError:
        pass  # the loop closed before the reply came: the reply stays in the future, unread


def _resolve(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def gather(*futures: Any, timeout: float | None = None) -> list[Any]:
    """Await several futures at once; their results in order. `TimeoutError` after `timeout` s.

    The calls already run concurrently in their actors, so awaiting them in turn costs
    nothing extra; a timeout abandons the wait only (the calls still complete).
    """
    async with asyncio.timeout(timeout):
        return [await future for future in futures]
