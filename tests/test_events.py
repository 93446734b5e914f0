"""The event bus (contract §1, "Events") and the supervisor's own events."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import Any

import msgpack
import pykka
import pytest
from _actors import Recorder

import supervision._events as events_module
from supervision import (
    ChildSpec,
    Event,
    Handle,
    ManualClock,
    Restart,
    Subscription,
    Supervisor,
    emit,
    kill,
    subscribe,
)
from supervision.testing import wait_until

CHILD_KINDS = {"child_started", "child_exited", "child_restarted", "intensity_exceeded"}


def recorder(name: str, **options: Any) -> ChildSpec:
    return ChildSpec(name, Recorder, args=(name, []), **options)


def next_events(subscription: Subscription, count: int) -> list[Event]:
    return [subscription.get(timeout=5) for _ in range(count)]


def summary(events: list[Event]) -> list[tuple[str, str]]:
    return [(event.kind, event.path) for event in events]


@pytest.fixture
def child_events() -> Any:
    with subscribe(kinds=CHILD_KINDS) as subscription:
        yield subscription


# -- the supervisor's events ---------------------------------------------------------------------


def test_child_started_for_each_child_with_its_tree_path(child_events: Subscription, actor_cleanup: None, manual_clock: ManualClock) -> None:
    locks = ChildSpec("locks", Supervisor, kwargs={"children": [recorder("%2Fsrv%2Fw1")]})
    Supervisor.start([recorder("names"), locks], clock=manual_clock)
    started = next_events(child_events, 3)
    # A child supervisor's own children start inside its start, before it counts as started.
    assert summary(started) == [
        ("child_started", "names"),
        ("child_started", "locks/%2Fsrv%2Fw1"),
        ("child_started", "locks"),
    ]
    assert [event.data for event in started] == [
        {"incarnation": 0, "is_supervisor": False},
        {"incarnation": 0, "is_supervisor": False},
        {"incarnation": 0, "is_supervisor": True},
    ]
    assert all(event.name is None for event in started)
    assert [event.seq for event in started] == sorted(event.seq for event in started)
    assert all(abs(event.time - time.time()) < 60 for event in started)  # the wall clock
    for event in started:
        msgpack.packb(dataclasses.asdict(event))  # data is msgpack-encodable


def test_crash_emits_exited_then_started_and_restarted(child_events: Subscription, actor_cleanup: None, manual_clock: ManualClock) -> None:
    sup = Supervisor.start([recorder("w")], clock=manual_clock)
    next_events(child_events, 1)
    with pytest.raises(RuntimeError):
        Handle(sup, "w").proxy().crash().get(timeout=5)
    exited, started, restarted = next_events(child_events, 3)
    assert (exited.kind, exited.path, exited.data["reason"]) == ("child_exited", "w", "crash")
    assert exited.data["error"] == repr(RuntimeError("w crashed on purpose"))
    assert (started.kind, started.data["incarnation"]) == ("child_started", 1)
    assert (restarted.kind, restarted.path, restarted.data) == ("child_restarted", "w", {"restarts": 1})
    msgpack.packb(dataclasses.asdict(exited))


def test_normal_exit_and_terminate_are_normal(child_events: Subscription, actor_cleanup: None, manual_clock: ManualClock) -> None:
    sup = Supervisor.start([recorder("t", restart=Restart.TRANSIENT), recorder("p")], clock=manual_clock)
    next_events(child_events, 2)
    Handle(sup, "t").proxy().quit().get(timeout=5)
    exited = child_events.get(timeout=5)
    assert (exited.kind, exited.path, exited.data) == ("child_exited", "t", {"reason": "normal", "error": None})
    sup.proxy().terminate_child("p").get(timeout=5)
    exited = child_events.get(timeout=5)
    assert (exited.kind, exited.path, exited.data["reason"]) == ("child_exited", "p", "normal")
    with pytest.raises(TimeoutError):
        child_events.get(timeout=0.05)  # a transient child that exits normally is not restarted


def test_intensity_exceeded_names_the_supervisor_that_gave_up(child_events: Subscription, actor_cleanup: None, manual_clock: ManualClock) -> None:
    inner = ChildSpec("inner", Supervisor, kwargs={"children": [recorder("w")], "max_restarts": 1, "max_seconds": 5.0})
    root = Supervisor.start([inner], clock=manual_clock, max_restarts=5)
    next_events(child_events, 2)
    w = Handle(root, "inner/w")
    kill(w.ref())
    assert summary(next_events(child_events, 3)) == [
        ("child_exited", "inner/w"), ("child_started", "inner/w"), ("child_restarted", "inner/w"),
    ]
    manual_clock.advance(6.0)  # out of the window: the next crash is allowed
    kill(w.ref())
    assert summary(next_events(child_events, 3))[-1] == ("child_restarted", "inner/w")
    kill(w.ref())  # the second within 5 s on the clock: too many
    gave_up = next_events(child_events, 2)
    assert summary(gave_up) == [("child_exited", "inner/w"), ("intensity_exceeded", "inner")]
    assert gave_up[1].data["max_restarts"] == 1 and gave_up[1].data["max_seconds"] == 5.0
    # The parent sees its child supervisor crash, and restarts it (children first).
    after = next_events(child_events, 4)
    assert summary(after) == [
        ("child_exited", "inner"), ("child_started", "inner/w"), ("child_started", "inner"), ("child_restarted", "inner"),
    ]
    assert after[0].data["reason"] == "crash" and "RestartIntensityExceeded" in after[0].data["error"]
    wait_until(lambda: w.current() is not None)


# -- the bus -------------------------------------------------------------------------------------


def test_kinds_filter(actor_cleanup: None) -> None:
    with subscribe(kinds={"b"}) as only_b, subscribe() as everything:
        emit("a", "x", n=1)
        emit("b", "y", "furiosa", n=2)
        got = only_b.get(timeout=5)
        assert (got.kind, got.path, got.name, got.data) == ("b", "y", "furiosa", {"n": 2})
        with pytest.raises(TimeoutError):
            only_b.get(timeout=0.01)
        assert [event.kind for event in everything.drain()] == ["a", "b"]


def test_a_subscriber_that_never_reads_loses_the_oldest(actor_cleanup: None) -> None:
    class Chatty(pykka.ThreadingActor):
        def chatter(self, count: int) -> int:
            for index in range(count):
                emit("chatter", "chatty", index=index)
            return count

    sup = Supervisor.start([ChildSpec("chatty", Chatty)])
    with subscribe(kinds={"chatter"}, maxlen=5) as idle, subscribe(kinds={"chatter"}, maxlen=5) as full:
        emit("chatter", index=-1)  # `full` is full from here on; nobody ever reads either
        for _ in range(4):
            emit("chatter", index=-1)
        # Never waits for a reader: 1,000 events with both buffers full; the actor answers.
        assert Handle(sup, "chatty").proxy().chatter(1_000).get(timeout=5) == 1_000
        for subscription in (idle, full):
            assert subscription.dropped == 1_000
            kept = subscription.drain()
            assert [event.data["index"] for event in kept] == [995, 996, 997, 998, 999]
            assert [event.seq for event in kept] == sorted(event.seq for event in kept)


def test_get_times_out_and_close_ends_iteration() -> None:
    subscription = subscribe()
    with pytest.raises(TimeoutError):
        subscription.get(timeout=0.01)
    emit("left", n=1)
    subscription.close()
    emit("after", n=2)  # not received: closed
    assert [event.kind for event in subscription] == ["left"]
    with pytest.raises(EOFError):
        subscription.get(timeout=0)


def test_close_wakes_a_blocked_reader() -> None:
    subscription = subscribe()
    outcome: list[str] = []

    def read() -> None:
        try:
            subscription.get()
        except EOFError:
            outcome.append("closed")

    reader = threading.Thread(target=read)
    reader.start()
    wait_until(lambda: subscription._sync_waiters == 1)
    subscription.close()
    reader.join(5)
    assert outcome == ["closed"]


def test_no_subscriber_builds_no_event(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Any] = []
    real = events_module.Event
    monkeypatch.setattr(events_module, "Event", lambda *args: built.append(args) or real(*args))
    with subscribe():
        emit("seen")
    emit("unseen")
    assert [args[2] for args in built] == ["seen"]


def test_dropped_subscription_leaves_the_bus() -> None:
    import gc

    before = len(events_module._subscribers)
    subscribe()
    gc.collect()
    assert len(events_module._subscribers) == before


def test_subscription_validates_its_arguments() -> None:
    with pytest.raises(ValueError):
        subscribe(maxlen=0)
    with pytest.raises(TypeError):
        subscribe(kinds="child_started")  # a str is not a set of kinds
    with pytest.raises(TypeError):
        subscribe(maxlen=1.5)  # type: ignore[arg-type]


def test_async_for_wakes_the_loop_once_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    wakes: list[Any] = []
    real_wake = events_module._wake
    monkeypatch.setattr(events_module, "_wake", lambda *waiter: wakes.append(waiter) or real_wake(*waiter))

    async def main() -> list[int]:
        received: list[int] = []
        with subscribe(kinds={"tick"}) as subscription:

            async def consume() -> None:
                async for event in subscription:
                    received.append(event.data["n"])
                    if event.data["n"] == 99:
                        return

            consumer = asyncio.create_task(consume())
            await asyncio.sleep(0)  # the consumer now waits on an empty buffer
            for n in range(100):  # one batch, emitted without yielding to the loop
                emit("tick", n=n)
            await asyncio.wait_for(consumer, 5)
        return received

    assert asyncio.run(main()) == list(range(100))
    assert len(wakes) == 1


def test_async_for_from_another_thread_without_blocking_the_loop(actor_cleanup: None) -> None:
    async def main() -> tuple[list[str], int]:
        ticks = 0
        with subscribe(kinds={"child_started", "child_exited"}) as subscription:
            sup = await asyncio.to_thread(Supervisor.start, [recorder("a"), recorder("b")])
            seen: list[str] = []

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.001)

            ticking = asyncio.create_task(ticker())
            async for event in subscription:
                seen.append(f"{event.kind}:{event.path}")
                if len(seen) == 2:
                    sup.stop(block=False)
                if len(seen) == 4:
                    break
            ticking.cancel()
        return seen, ticks

    seen, ticks = asyncio.run(main())
    assert seen == ["child_started:a", "child_started:b", "child_exited:b", "child_exited:a"]
    assert ticks >= 1


def test_two_async_consumers_of_one_subscription_both_wake() -> None:
    async def main() -> list[str]:
        with subscribe(kinds={"job"}) as subscription:
            async def take() -> str:
                async for event in subscription:
                    return event.data["id"]
                return "closed"

            first, second = asyncio.create_task(take()), asyncio.create_task(take())
            await asyncio.sleep(0)  # both wait on the empty buffer
            emit("job", id="a")
            emit("job", id="b")
            return sorted(await asyncio.wait_for(asyncio.gather(first, second), 5))

    assert asyncio.run(main()) == ["a", "b"]


def test_a_cancelled_async_consumer_leaves_no_waiter() -> None:
    async def main() -> int:
        with subscribe() as subscription:
            consumer = asyncio.create_task(subscription.__anext__())
            await asyncio.sleep(0)
            consumer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await consumer
            return len(subscription._async_waiters)

    assert asyncio.run(main()) == 0
