"""Domain events (contract §1 "Events"): names, locks, agents and storage, each where it happens.

Every test runs a real tree on a ManualClock and subscribes before acting; an event is
emitted only once its change is applied (a checkout's after its journal frame is synced).
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _processes import end, sleeper

import supervision._events as events_module
from actors import start_tree
from actors.locks._worker_lock import lock_child_id
from supervision import Event, ManualClock, StorageError, Subscription, subscribe

TIMEOUT = 10.0
DOMAIN_KINDS = {
    "name_checked_out", "name_checked_in", "name_reaped", "lock_acquired", "lock_released", "lock_broken",
    "backend_created", "backend_evicted", "storage_failed", "storage_recovered",
}


class Backend:
    def __init__(self, key: str) -> None:
        self.key = key
        self.disposed = False

    def dispose(self) -> None:
        self.disposed = True


@pytest.fixture
def events() -> Iterator[Subscription]:
    with subscribe(kinds=DOMAIN_KINDS) as subscription:
        yield subscription


@pytest.fixture
def tree(tmp_path: Path, manual_clock: ManualClock, actor_cleanup: None) -> Iterator[Any]:
    started = start_tree(tmp_path / "state", clock=manual_clock, reap_interval=5.0, check_interval=5.0,
                         sweep_interval=3600.0, idle_ttl=60.0, max_live=2,
                         agent_factory=lambda primary, agent: Backend(f"{primary}:{agent}"))
    yield started
    started.stop()


def take(subscription: Subscription, count: int) -> list[Event]:
    return [subscription.get(timeout=TIMEOUT) for _ in range(count)]


# -- names ------------------------------------------------------------------------------------------


def test_checkout_and_checkin_events_carry_the_name_and_owner(tree: Any, events: Subscription) -> None:
    names = tree.names.proxy()
    name = names.checkout_name("urn:w1").get(timeout=TIMEOUT)
    (out,) = events.drain()  # already there when the caller has its answer
    assert (out.kind, out.path, out.name, out.data) == ("name_checked_out", "names", name, {"owner": "urn:w1"})
    # The same owner again holds the same name: nothing was checked out.
    assert names.checkout_name("urn:w1").get(timeout=TIMEOUT) == name
    names.checkin_name(name).get(timeout=TIMEOUT)
    (back,) = events.drain()
    assert (back.kind, back.path, back.name) == ("name_checked_in", "names", name)
    # A checkin of a name not checked out changes nothing and emits nothing.
    names.checkin_name(name).get(timeout=TIMEOUT)
    with pytest.raises(TimeoutError):
        events.get(timeout=0.2)


def test_a_checkout_event_comes_after_its_frame_is_on_disk(tree: Any, events: Subscription) -> None:
    from actors.names._journal import Journal

    future = tree.names.proxy().checkout_name("urn:durable")
    (out,) = take(events, 1)  # read before the reply: the event alone says it is on disk
    journal = Journal(tree.state_dir / "names.state", on_failure=lambda error, epoch: None)
    try:
        state = journal.load(12, "Nameless Agent")
    finally:
        journal.abandon()
    assert state.holders()[out.name] == ["urn:durable"]
    assert future.get(timeout=TIMEOUT) == out.name


def test_dissociating_the_last_owner_emits_a_checkin(tree: Any, events: Subscription) -> None:
    names = tree.names.proxy()
    name = names.checkout_name("urn:last").get(timeout=TIMEOUT)
    take(events, 1)
    names.dissociate("urn:last").get(timeout=TIMEOUT)
    (back,) = take(events, 1)
    assert (back.kind, back.name, back.data) == ("name_checked_in", name, {"owner": "urn:last"})


def test_associating_a_free_name_checks_it_out_and_sharing_emits_nothing(tree: Any, events: Subscription) -> None:
    names = tree.names.proxy()
    name = names.checkout_name("urn:first").get(timeout=TIMEOUT)
    names.checkin_name(name).get(timeout=TIMEOUT)
    events.drain()
    names.associate_name(name, "urn:restored").get(timeout=TIMEOUT)  # a worker restoring its identity
    (out,) = events.drain()
    assert (out.kind, out.name, out.data) == ("name_checked_out", name, {"owner": "urn:restored"})
    names.associate_name(name, "urn:child").get(timeout=TIMEOUT)  # shared: nothing handed out
    assert events.drain() == []


def test_a_dead_owners_name_is_reaped_with_its_owner(tree: Any, events: Subscription, manual_clock: ManualClock) -> None:
    owner = sleeper()
    try:
        name = tree.names.proxy().checkout_name(owner.pid).get(timeout=TIMEOUT)
        take(events, 1)
    finally:
        end(owner)
    manual_clock.advance(5.0)
    (reaped,) = take(events, 1)
    assert (reaped.kind, reaped.path, reaped.name, reaped.data) == ("name_reaped", "names", name, {"owners": [owner.pid]})


def test_waiting_checkouts_emit_once_the_source_answers(tmp_path: Path, events: Subscription, manual_clock: ManualClock,
                                                        actor_cleanup: None) -> None:
    with start_tree(tmp_path / "state", clock=manual_clock, chunk_size=2,
                    name_source=lambda count, used: [f"n{len(used) + i}" for i in range(count)]) as tree:
        names = tree.names.proxy()
        got = [names.checkout_name(f"urn:{i}") for i in range(3)]  # the third waits for a chunk
        answered = [future.get(timeout=TIMEOUT) for future in got]
        seen = take(events, 3)
    assert sorted(event.name for event in seen) == sorted(answered)
    assert {event.kind for event in seen} == {"name_checked_out"}


# -- storage ----------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 512 KiB tmpfs mounted for the test (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_storage_failed_then_recovered_once_per_episode(small_disk: Path, manual_clock: ManualClock,
                                                        actor_cleanup: None) -> None:
    with subscribe(kinds={"storage_failed", "storage_recovered"}) as storage, \
            start_tree(small_disk / "state", clock=manual_clock, reap_interval=3600) as tree:
        names = tree.names.proxy()
        filler = small_disk / "filler"
        with open(filler, "wb", buffering=0) as file:
            for size in (65536, 4096, 1):
                try:
                    while True:
                        file.write(b"\xff" * size)
                except OSError as error:
                    assert error.errno == errno.ENOSPC
        for index in range(5000):
            try:
                names.checkout_name(f"urn:fill-{index}").get(timeout=TIMEOUT)
            except StorageError:
                break
        for index in range(3):
            with pytest.raises(StorageError):
                names.checkout_name(f"urn:refused-{index}").get(timeout=TIMEOUT)
        (failed,) = take(storage, 1)
        assert failed.kind == "storage_failed" and failed.path == "names"
        assert "names.state" in failed.data["file"] and failed.data["error"]
        filler.unlink()
        names.checkout_name("urn:after").get(timeout=TIMEOUT)
        (recovered,) = take(storage, 1)
        assert recovered.kind == "storage_recovered" and recovered.path == "names"
        with pytest.raises(TimeoutError):
            storage.get(timeout=0.2)


# -- locks ------------------------------------------------------------------------------------------


def test_lock_acquired_and_released_at_the_locks_path(tree: Any, events: Subscription, tmp_path: Path) -> None:
    worker = tmp_path / "w1"
    worker.mkdir()
    lock = tree.locks.proxy().lock_for(str(worker)).get(timeout=TIMEOUT).proxy()
    lock.acquire("s1").get(timeout=TIMEOUT)
    lock.acquire("s2").get(timeout=TIMEOUT)  # a refresh by its holder: no new event
    lock.release().get(timeout=TIMEOUT)
    acquired, released = take(events, 2)
    path = f"locks/{lock_child_id(str(worker.resolve()))}"
    assert (acquired.kind, acquired.path) == ("lock_acquired", path)
    assert acquired.data == {"worker_dir": str(worker.resolve()), "pid": os.getpid(), "session_id": "s1"}
    assert (released.kind, released.path) == ("lock_released", path)
    assert released.data["pid"] == os.getpid() and released.data["session_id"] == "s2"
    with pytest.raises(TimeoutError):
        events.get(timeout=0.2)


def held_by_a_process_now_dead(tree: Any, events: Subscription, worker: Path, session_id: str) -> tuple[Any, int]:
    """(the proxy of `worker`'s lock, the pid) after a process took the lock and died; its
    `lock_acquired` event is taken."""
    worker.mkdir()
    holder = sleeper()
    lock = tree.locks.proxy().lock_for(str(worker)).get(timeout=TIMEOUT).proxy()
    try:
        lock.acquire(session_id, holder.pid).get(timeout=TIMEOUT)
        take(events, 1)
    finally:
        end(holder)
    return lock, holder.pid


def test_a_dead_holders_lock_is_broken_by_the_check_naming_it(tree: Any, events: Subscription, tmp_path: Path,
                                                              manual_clock: ManualClock) -> None:
    _, holder_pid = held_by_a_process_now_dead(tree, events, tmp_path / "w2", "gone")
    manual_clock.advance(5.0)
    (broken,) = take(events, 1)
    assert broken.kind == "lock_broken" and broken.path.startswith("locks/")
    assert broken.data["previous"] == {"pid": holder_pid, "session_id": "gone", "hostname": os.uname().nodename}


def test_taking_over_a_stale_record_emits_broken_then_acquired(tree: Any, events: Subscription, tmp_path: Path,
                                                               manual_clock: ManualClock) -> None:
    lock, holder_pid = held_by_a_process_now_dead(tree, events, tmp_path / "w3", "old")
    lock.acquire("new").get(timeout=TIMEOUT)  # before any check noticed
    broken, acquired = take(events, 2)
    assert broken.kind == "lock_broken" and broken.data["previous"]["pid"] == holder_pid
    assert acquired.kind == "lock_acquired" and acquired.data["pid"] == os.getpid()


# -- agents -----------------------------------------------------------------------------------------


def test_backend_created_and_evicted_with_each_reason(tree: Any, events: Subscription, manual_clock: ManualClock) -> None:
    agents = tree.agents.proxy()
    agents.get("chat-1", "planner").get(timeout=TIMEOUT)
    (created,) = take(events, 1)
    assert (created.kind, created.path) == ("backend_created", "agents")
    assert created.data == {"primary": "chat-1", "agent": "planner", "key": "chat-1:planner", "source": "factory"}
    agents.register("chat-1", "planner", Backend("again")).get(timeout=TIMEOUT)  # replaces the factory's
    agents.register("chat-2", "coder", Backend("b")).get(timeout=TIMEOUT)
    agents.register("chat-3", "coder", Backend("c")).get(timeout=TIMEOUT)
    seen = take(events, 4)
    assert [(event.kind, event.data["key"], event.data.get("reason")) for event in seen] == [
        ("backend_evicted", "chat-1:planner", "replaced"),
        ("backend_created", "chat-1:planner", None),
        ("backend_created", "chat-2:coder", None),
        ("backend_created", "chat-3:coder", None),
    ]
    agents.sweep().get(timeout=TIMEOUT)  # three live, max_live=2: the least recent goes
    (lru,) = take(events, 1)
    assert (lru.kind, lru.data["key"], lru.data["reason"]) == ("backend_evicted", "chat-1:planner", "lru")
    agents.close_chat("chat-2").get(timeout=TIMEOUT)
    (chat,) = take(events, 1)
    assert (chat.data["key"], chat.data["reason"]) == ("chat-2:coder", "chat")
    manual_clock.advance(61.0)
    agents.sweep().get(timeout=TIMEOUT)
    (ttl,) = take(events, 1)
    assert (ttl.data["key"], ttl.data["reason"]) == ("chat-3:coder", "ttl")
    agents.register("chat-4", "x", Backend("d")).get(timeout=TIMEOUT)
    agents.dispose().get(timeout=TIMEOUT)
    _, disposed = take(events, 2)
    assert (disposed.data["key"], disposed.data["reason"]) == ("chat-4:x", "dispose")


def test_with_no_subscriber_nothing_is_built(tree: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hot paths check the bus first: no Event, no extra lock read, no holders copy."""
    assert events_module._subscribers == ()
    built: list[Any] = []
    monkeypatch.setattr(events_module, "Event", lambda *args: built.append(args))
    worker = tmp_path / "w4"
    worker.mkdir()
    name = tree.names.proxy().checkout_name("urn:quiet").get(timeout=TIMEOUT)
    tree.names.proxy().checkin_name(name).get(timeout=TIMEOUT)
    lock = tree.locks.proxy().lock_for(str(worker)).get(timeout=TIMEOUT).proxy()
    lock.acquire().get(timeout=TIMEOUT)
    lock.release().get(timeout=TIMEOUT)
    tree.agents.proxy().get("c", "a").get(timeout=TIMEOUT)
    assert built == []
