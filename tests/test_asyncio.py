"""Awaiting supervised actors from asyncio (contract §1, "Futures in asyncio host apps").

Plain `asyncio.run(...)` inside sync tests: no async test plugin is needed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pykka
import pytest
from _actors import Gate

from supervision import (
    AwaitableFuture,
    ChildSpec,
    DeferredReply,
    Handle,
    Supervisor,
    gather,
    kill,
)
from supervision.testing import wait_until

SLOW_CALL = 0.5
GENEROUS_GAP = 0.1  # the contract's 5 ms figure belongs to scripts/bench_supervision.py


class Worker(pykka.ThreadingActor):
    def __init__(self, started: threading.Event | None = None, hold: threading.Event | None = None) -> None:
        super().__init__()
        self.started = started
        self.hold = hold
        self.calls = 0

    def on_start(self) -> None:
        # A restart that takes as long as the test wants: on_start waits while `hold` is clear.
        if self.started is not None and self.hold is not None:
            self.started.set()
            self.hold.wait(10)

    def slow(self, seconds: float) -> float:
        time.sleep(seconds)  # the work itself, not a synchronisation
        self.calls += 1
        return seconds

    def ping(self) -> str:
        return self.actor_urn

    def numbers(self) -> list[int]:
        return [1, 2, 3, 4]

    def later(self, reply: DeferredReply) -> DeferredReply:
        return reply

    def relay(self, other: pykka.ActorRef[Any]) -> pykka.Future[Any]:
        return other.proxy().wait()  # answered with another actor's future (chained)


def _executor_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith(("asyncio_", "reply-forward"))]


class Ticker:
    """A task's loop ticking every 1 ms until `done`; the largest gap between ticks it saw."""

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.largest_gap = 0.0

    async def run(self) -> None:
        while not self.done.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.001)
            self.largest_gap = max(self.largest_gap, time.monotonic() - before)


def test_ticker_runs_while_eight_tasks_await_slow_calls(actor_cleanup: None) -> None:
    sup = Supervisor.start([ChildSpec(f"w{index}", Worker) for index in range(8)])
    proxies = [Handle(sup, f"w{index}").proxy() for index in range(8)]
    helper_threads: list[list[str]] = []

    async def main() -> tuple[float, list[float]]:
        ticker = Ticker()

        async def call(proxy: Any) -> float:
            return await proxy.slow(SLOW_CALL)

        ticking = asyncio.create_task(ticker.run())
        calls = [asyncio.create_task(call(proxy)) for proxy in proxies]
        await asyncio.sleep(SLOW_CALL / 2)
        helper_threads.append(_executor_threads())
        results = await asyncio.gather(*calls)
        ticker.done.set()
        await ticking
        return ticker.largest_gap, results

    largest_gap, results = asyncio.run(main())
    assert results == [SLOW_CALL] * 8
    assert helper_threads == [[]], "no thread per call, no executor"
    assert largest_gap < GENEROUS_GAP


def test_pykka_await_would_block_the_loop(actor_cleanup: None) -> None:
    """The check above can fail: a plain pykka actor's future blocks the loop for the call."""
    plain = Worker.start()

    async def main() -> float:
        ticker = Ticker()

        ticking = asyncio.create_task(ticker.run())
        await asyncio.sleep(0.01)
        await plain.proxy().slow(0.3)
        ticker.done.set()
        await ticking
        return ticker.largest_gap

    future = plain.proxy().ping()
    assert type(future) is pykka.ThreadingFuture  # pykka is never patched
    assert asyncio.run(main()) >= 0.25


def test_supervised_actor_futures_are_awaitable_kind(actor_cleanup: None) -> None:
    sup = Supervisor.start([ChildSpec("w", Worker)])
    ref = Handle(sup, "w").ref()
    assert isinstance(ref.ask(pykka.messages.ProxyCall(attr_path=("ping",), args=(), kwargs={}), block=False), AwaitableFuture)
    assert isinstance(ref.proxy().ping(), AwaitableFuture)
    assert isinstance(Handle(sup, "w").proxy().ping(), AwaitableFuture)
    assert isinstance(sup.proxy().count_children(), AwaitableFuture)
    assert isinstance(Handle(sup, "w").ask_future(pykka.messages.ProxyGetAttr(attr_path=("calls",))), AwaitableFuture)

    async def main() -> list[Any]:
        return [
            await ref.ask(pykka.messages.ProxyGetAttr(attr_path=("calls",)), block=False),
            await Handle(sup, "w").ask_future(pykka.messages.ProxyCall(attr_path=("numbers",), args=(), kwargs={})),
            await Handle(sup, "w").proxy().calls,  # an attribute read through a Handle proxy
        ]

    assert asyncio.run(main()) == [0, [1, 2, 3, 4], 0]
    assert isinstance(Worker.start().proxy().ping(), pykka.ThreadingFuture)
    assert not isinstance(Worker.start().proxy().ping(), AwaitableFuture)


def test_cancelling_the_task_abandons_only_the_wait(actor_cleanup: None) -> None:
    entered, release = threading.Event(), threading.Event()
    sup = Supervisor.start([ChildSpec("gate", Gate, args=(entered, release))])
    gate = Handle(sup, "gate").proxy()

    async def main() -> pykka.Future[Any]:
        future = gate.wait()
        task = asyncio.create_task(_await(future))
        await asyncio.sleep(0)
        assert await asyncio.to_thread(entered.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return future

    future = asyncio.run(main())
    release.set()
    assert future.get(timeout=5) == "released"  # the call ran and its reply was kept
    assert gate.count().get(timeout=5) == 2  # handled once, then this call


def test_asyncio_timeout_abandons_only_the_wait(actor_cleanup: None) -> None:
    entered, release = threading.Event(), threading.Event()
    sup = Supervisor.start([ChildSpec("gate", Gate, args=(entered, release))])
    gate = Handle(sup, "gate").proxy()

    async def main() -> Any:
        future = gate.wait()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await future
        release.set()
        return await future  # still the same call's reply, awaited again

    assert asyncio.run(main()) == "released"
    assert gate.count().get(timeout=5) == 2


def test_reply_after_its_loop_closed_is_dropped_quietly(actor_cleanup: None, log_records: list[dict[str, Any]]) -> None:
    entered, release = threading.Event(), threading.Event()
    sup = Supervisor.start([ChildSpec("gate", Gate, args=(entered, release))])
    gate = Handle(sup, "gate").proxy()
    future = gate.wait()
    loop = asyncio.new_event_loop()
    waiting: list[asyncio.Task[Any]] = []

    async def start_waiting() -> None:
        waiting.append(asyncio.create_task(_await(future)))
        await asyncio.sleep(0)  # the task is now parked on the reply

    loop.run_until_complete(start_waiting())
    assert not waiting[0].done()
    loop.close()  # the awaiting task never finishes: its loop is gone
    release.set()  # the actor's thread sets the reply and finds the loop closed
    assert future.get(timeout=5) == "released"
    assert gate.count().get(timeout=5) == 2  # the actor did not crash
    assert [record for record in log_records if record["level"].no >= 30] == []
    waiting.clear()


async def _await(future: Any) -> Any:
    return await future


def test_handle_proxies_and_gather(actor_cleanup: None) -> None:
    sup = Supervisor.start([ChildSpec("a", Worker), ChildSpec("b", Worker)])
    a, b = Handle(sup, "a").proxy(), Handle(sup, "b").proxy()

    async def main() -> Any:
        first = await a.ping()
        both = await gather(b.ping(), a.ping(), b.slow(0.0))
        return first, both

    first, both = asyncio.run(main())
    a_urn, b_urn = Handle(sup, "a").ref().actor_urn, Handle(sup, "b").ref().actor_urn
    assert first == a_urn
    assert both == [b_urn, a_urn, 0.0]


def test_gather_timeout_leaves_calls_running(actor_cleanup: None) -> None:
    entered, release = threading.Event(), threading.Event()
    sup = Supervisor.start([ChildSpec("gate", Gate, args=(entered, release)), ChildSpec("w", Worker)])
    gate, worker = Handle(sup, "gate").proxy(), Handle(sup, "w").proxy()
    futures = [worker.ping(), gate.wait()]

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await gather(*futures, timeout=0.05)

    asyncio.run(main())
    release.set()
    assert futures[1].get(timeout=5) == "released"


def test_map_filter_join_reduce_are_awaitable(actor_cleanup: None) -> None:
    sup = Supervisor.start([ChildSpec("w", Worker)])
    worker = Handle(sup, "w").proxy()
    ref = Handle(sup, "w").ref()

    async def main() -> list[Any]:
        numbers = ref.proxy().numbers()
        return [
            await numbers.map(sum),
            await worker.numbers().filter(lambda n: n % 2 == 0),
            await numbers.join(worker.numbers(), worker.slow(0.0)),
            await worker.numbers().reduce(lambda x, y: x * y, 10),
        ]

    assert asyncio.run(main()) == [10, [2, 4], [[1, 2, 3, 4], [1, 2, 3, 4], 0.0], 240]


def test_deferred_and_chained_replies_are_awaited_without_helper_threads(actor_cleanup: None) -> None:
    entered, release = threading.Event(), threading.Event()
    sup = Supervisor.start([ChildSpec("w", Worker), ChildSpec("gate", Gate, args=(entered, release))])
    worker = Handle(sup, "w").proxy()
    gate_ref = Handle(sup, "gate").ref()
    reply = DeferredReply()

    async def main() -> list[Any]:
        deferred = worker.later(reply)
        chained = worker.relay(gate_ref)
        assert await asyncio.to_thread(entered.wait, 5)
        threads = _executor_threads()
        reply.set("later")
        release.set()
        return [await deferred, await chained, threads]

    deferred, chained, threads = asyncio.run(main())
    assert (deferred, chained) == ("later", "released")
    assert [name for name in threads if name.startswith("reply-forward")] == []


def test_handle_call_waits_across_a_restart(actor_cleanup: None) -> None:
    sup = Supervisor.start([ChildSpec("w", Worker)])
    handle = Handle(sup, "w")
    old = handle.ref()

    async def main() -> str:
        kill(old)
        return await handle.proxy().ping()  # parked or sent: reaches an incarnation

    urn = asyncio.run(main())
    assert urn == handle.ref().actor_urn


def test_handle_call_waits_for_a_nested_supervisor_restart(actor_cleanup: None) -> None:
    """A call made while a nested supervisor is being restarted is sent when it is back."""
    started, hold = threading.Event(), threading.Event()
    hold.set()
    inner = ChildSpec("inner", Supervisor, kwargs={"children": [ChildSpec("w", Worker, args=(started, hold))]})
    root = Supervisor.start([inner])
    handle = Handle(root, "inner/w")
    assert handle.ref() is not None
    started.clear()
    hold.clear()  # the next incarnation of w (started by the new inner) waits in on_start
    kill(Handle(root, "inner").ref())
    wait_until(started.is_set)

    async def main() -> str:
        future = handle.proxy().ping()
        task = asyncio.create_task(_await(future))
        await asyncio.sleep(0.01)
        assert not task.done()
        hold.set()
        return await task

    urn = asyncio.run(main())
    assert urn == handle.ref().actor_urn


def test_done_callback_runs_once(actor_cleanup: None) -> None:
    entered, release = threading.Event(), threading.Event()
    sup = Supervisor.start([ChildSpec("gate", Gate, args=(entered, release))])
    gate = Handle(sup, "gate").proxy()
    future = gate.wait()
    seen: list[tuple[Any, str]] = []
    future.add_done_callback(lambda done: seen.append((done, threading.current_thread().name)))
    assert seen == []
    release.set()
    assert future.get(timeout=5) == "released"
    wait_until(lambda: seen)
    assert len(seen) == 1 and seen[0][0] is future
    assert seen[0][1] != threading.current_thread().name  # on the thread that set the reply
    late: list[Any] = []
    future.add_done_callback(late.append)  # already set: called at once, here
    assert late == [future]
    with pytest.raises(Exception):
        future.set("again")
    assert len(seen) == 1 and late == [future]


def test_failing_done_callback_never_crashes_the_actor(actor_cleanup: None) -> None:
    entered, release = threading.Event(), threading.Event()
    sup = Supervisor.start([ChildSpec("gate", Gate, args=(entered, release))])
    gate = Handle(sup, "gate").proxy()
    future = gate.wait()
    urn = Handle(sup, "gate").ref().actor_urn

    def broken(_future: Any) -> None:
        raise RuntimeError("callback bug")

    future.add_done_callback(broken)
    release.set()
    assert future.get(timeout=5) == "released"
    assert gate.urn().get(timeout=5) == urn  # same incarnation: no crash


def test_await_errors_raise_in_the_task(actor_cleanup: None) -> None:
    sup = Supervisor.start([ChildSpec("w", Worker)])
    worker = Handle(sup, "w").proxy()

    async def main() -> None:
        with pytest.raises(TypeError):
            await worker.slow()  # a BadCall: also a TypeError, not a crash

    asyncio.run(main())
    assert worker.numbers().get(timeout=5) == [1, 2, 3, 4]
