"""The `NamePool` actor: the wiring around `NameState` (the rules themselves: test_name_state).

Time comes from `manual_clock`; waits are bounded waits on conditions, never sleeps.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest
from _processes import end, sleeper
from pykka import messages as pykka_messages

import actors.names._pool as name_pool_module
from actors._errors import InvalidName, InvalidOwner, NameSourceError
from actors.names._journal import Journal
from actors.names._pool import HOLDERS_REQUEST, NamePool
from actors.names._state import NameState, ProcessStart
import actors.names._journal as journal_module
from actors.names._source import THEMES
from supervision import (
    ActorCrashed,
    BadCall,
    ChildSpec,
    ClientError,
    Handle,
    ManualClock,
    SnapshotStore,
    StorageError,
    SupervisedActor,
    Supervisor,
    kill,
)
from supervision.testing import wait_until

TIMEOUT = 10.0
PROMPTLY = 2.0  # an answer that does not wait for a blocked source
CHILD_SCRIPT = Path(__file__).resolve().parent / "_name_pool_child.py"
PUBLIC_METHODS = {
    "checkout_name",
    "checkin_name",
    "associate_name",
    "dissociate",
    "get_name_by_pid",
    "pool_stats",
    "reset",
    "reconcile",
    "default_name",
}


# -- helpers -----------------------------------------------------------------------------


class CountingSource:
    """Yields fresh names `<prefix>-<n>`; records every call. Optionally waits for `gate`."""

    def __init__(self, prefix: str = "n", gate: threading.Event | None = None) -> None:
        self.prefix = prefix
        self.gate = gate
        self.calls: list[tuple[int, frozenset[str]]] = []
        self._next = 0
        self._lock = threading.Lock()

    def __call__(self, count: int, used: frozenset[str]) -> list[str]:
        with self._lock:
            self.calls.append((count, used))
        if self.gate is not None:
            assert self.gate.wait(TIMEOUT), "the test never opened the source's gate"
        with self._lock:
            names = [f"{self.prefix}-{self._next + index}" for index in range(count)]
            self._next += count
        return names


class FailingSource:
    """Fails in a chosen way once `gate` opens (raise, garbage, nothing usable)."""

    def __init__(self, result: Any, gate: threading.Event) -> None:
        self.result = result
        self.gate = gate
        self.calls = 0

    def __call__(self, count: int, used: frozenset[str]) -> Any:
        self.calls += 1
        assert self.gate.wait(TIMEOUT)
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


@pytest.fixture
def start_pool(manual_clock: ManualClock) -> Callable[..., Any]:
    """Start a NamePool on the test's manual clock; returns its proxy."""

    def start(**kwargs: Any) -> Any:
        kwargs.setdefault("clock", manual_clock)
        kwargs.setdefault("source", CountingSource())
        return NamePool.start(**kwargs).proxy()

    return start


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """An event a blocking source waits for; opened at the end so no source thread lingers."""
    event = threading.Event()
    yield event
    event.set()


def stats(pool: Any) -> dict[str, Any]:
    return pool.pool_stats().get(timeout=TIMEOUT)


def messages(log_records: list[dict[str, Any]], level: str) -> list[str]:
    return [record["message"] for record in log_records if record["level"].name == level]


def durable_state(path: Path) -> NameState:
    """What a new pool on `path` would load (snapshot plus journal), read without an actor."""
    journal = Journal(path, on_failure=lambda error, epoch: None)
    try:
        return journal.load(12, "Nameless Agent")
    finally:
        journal.abandon()


def snapshot_state(path: Path) -> NameState:
    """The snapshot file alone, read with a fresh SnapshotStore."""
    data = SnapshotStore(path, version=1).load()
    assert data is not None
    return NameState.from_snapshot(data)


class OwnerGate:
    """Holds the pool's thread inside `_process_start(pid)` until opened.

    Everything sent to the pool meanwhile queues up, so the test knows exactly which
    requests the pool will then handle in one pass.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, pid: int) -> None:
        self.pid = pid
        self.entered = threading.Event()
        self.opened = threading.Event()
        real = name_pool_module._process_start

        def gated(candidate: int) -> Any:
            if candidate == self.pid and not self.opened.is_set():
                self.entered.set()
                assert self.opened.wait(TIMEOUT)
            return real(candidate)

        monkeypatch.setattr(name_pool_module, "_process_start", gated)

    def open(self) -> None:
        self.opened.set()


def hold_own_checkout(pool: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[OwnerGate, Any]:
    """A checkout for this process, held (with the pool's thread) in its owner check: the
    `OwnerGate` that holds it and the checkout's future."""
    owner_gate = OwnerGate(monkeypatch, os.getpid())
    checkout = pool.checkout_name(os.getpid())
    assert owner_gate.entered.wait(TIMEOUT)
    return owner_gate, checkout


def assert_checkin_changes_nothing(start_pool: Callable[..., Any], name: Any) -> None:
    """With one name checked out, checking `name` in answers None and leaves the stats be."""
    pool = start_pool()
    pool.checkout_name().get(timeout=TIMEOUT)
    before = stats(pool)
    assert pool.checkin_name(name).get(timeout=TIMEOUT) is None
    assert stats(pool) == before


def five_checkouts_waiting_for_the_source(
    start_pool: Callable[..., Any], gate: threading.Event, chunk_size: int
) -> tuple[CountingSource, list[str]]:
    """Five checkouts wait for a source held by `gate` (chunks of `chunk_size`), then the
    gate opens: the source and the names the checkouts got, in the order they asked."""
    source = CountingSource(gate=gate)
    pool = start_pool(source=source, chunk_size=chunk_size)
    futures = [pool.checkout_name() for _ in range(5)]
    wait_until(lambda: stats(pool)["waiting_count"] == 5)
    gate.set()
    return source, [future.get(timeout=TIMEOUT) for future in futures]


# -- starting --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"chunk_size": 0},
        {"chunk_size": -3},
        {"chunk_size": 1.5},
        {"chunk_size": True},
        {"chunk_size": "12"},
        {"reap_interval": 0},
        {"reap_interval": -1.0},
        {"reap_interval": float("nan")},
        {"reap_interval": "5"},
        {"source_timeout": -0.1},
        {"source_timeout": float("inf")},
        {"default_name": ""},
        {"default_name": "a/b"},
        {"default_name": 7},
        {"source": "not callable"},
        {"source": 42},
        {"clock": "not a clock"},
        {"state_path": 3},
    ],
)
def test_invalid_settings_raise_before_anything_starts(settings: dict[str, Any]) -> None:
    before = len(pykka.ActorRegistry.get_all())
    with pytest.raises((ValueError, TypeError)):
        NamePool.start(**settings)
    assert len(pykka.ActorRegistry.get_all()) == before


def test_is_a_supervised_actor_with_exactly_the_contract_methods() -> None:
    assert issubclass(NamePool, SupervisedActor)
    base = set(dir(SupervisedActor))
    public = {name for name in dir(NamePool) if not name.startswith("_") and name not in base}
    assert public == PUBLIC_METHODS


def test_source_is_not_called_at_start(start_pool: Callable[..., Any]) -> None:
    source = CountingSource()
    pool = start_pool(source=source)
    assert stats(pool)["all_used_count"] == 0
    assert source.calls == []


def test_default_source_gives_mad_max_names(manual_clock: ManualClock) -> None:
    pool = NamePool.start(clock=manual_clock).proxy()
    names = [pool.checkout_name().get(timeout=TIMEOUT) for _ in range(13)]
    assert names[0] == "furiosa"
    assert set(names) <= set(THEMES["mad-max"])
    assert len(set(names)) == 13
    assert stats(pool)["all_used_count"] == 24  # two chunks of 12


def test_default_name(start_pool: Callable[..., Any]) -> None:
    assert start_pool().default_name().get(timeout=TIMEOUT) == "Nameless Agent"
    assert start_pool(default_name="Anon").default_name().get(timeout=TIMEOUT) == "Anon"


# -- checkout and checkin -------------------------------------------------------------------


def test_chunk_requested_only_when_empty_and_of_chunk_size(start_pool: Callable[..., Any]) -> None:
    source = CountingSource()
    pool = start_pool(source=source, chunk_size=3)
    first = [pool.checkout_name().get(timeout=TIMEOUT) for _ in range(3)]
    assert first == ["n-0", "n-1", "n-2"]
    assert [count for count, _ in source.calls] == [3]
    assert pool.checkout_name().get(timeout=TIMEOUT) == "n-3"
    assert [count for count, _ in source.calls] == [3, 3]
    # `used` is every name the pool knows.
    assert source.calls[1][1] == frozenset(first)
    assert stats(pool) | {"owner_count": None} == {
        "available_count": 2,
        "checked_out_count": 4,
        "all_used_count": 6,
        "chunk_size": 3,
        "owner_count": None,
        "waiting_count": 0,
        "is_generating": False,
    }


def test_checked_in_names_are_reused_last_in_first_out(start_pool: Callable[..., Any]) -> None:
    pool = start_pool(chunk_size=5)
    a, b, c = (pool.checkout_name().get(timeout=TIMEOUT) for _ in range(3))
    pool.checkin_name(a).get(timeout=TIMEOUT)
    pool.checkin_name(c).get(timeout=TIMEOUT)
    assert pool.checkout_name().get(timeout=TIMEOUT) == c
    assert pool.checkout_name().get(timeout=TIMEOUT) == a
    assert pool.checkout_name().get(timeout=TIMEOUT) == "n-3"
    assert b == "n-1"


def test_checkout_is_idempotent_for_an_owner(start_pool: Callable[..., Any]) -> None:
    pool = start_pool()
    name = pool.checkout_name("urn:worker:1").get(timeout=TIMEOUT)
    assert pool.checkout_name("urn:worker:1").get(timeout=TIMEOUT) == name
    mine = pool.checkout_name(os.getpid()).get(timeout=TIMEOUT)
    assert pool.checkout_name(os.getpid()).get(timeout=TIMEOUT) == mine
    anonymous = {pool.checkout_name().get(timeout=TIMEOUT) for _ in range(3)}
    assert len(anonymous) == 3 and not anonymous & {name, mine}
    assert pool.get_name_by_pid("urn:worker:1").get(timeout=TIMEOUT) == name
    assert pool.get_name_by_pid(os.getpid()).get(timeout=TIMEOUT) == mine
    assert pool.get_name_by_pid("urn:nobody").get(timeout=TIMEOUT) is None
    assert pool.get_name_by_pid(None).get(timeout=TIMEOUT) is None


def test_checkin_ends_every_owner(start_pool: Callable[..., Any]) -> None:
    pool = start_pool()
    name = pool.checkout_name("urn:parent").get(timeout=TIMEOUT)
    pool.associate_name(name, "urn:child").get(timeout=TIMEOUT)
    pool.checkin_name(name).get(timeout=TIMEOUT)
    assert pool.get_name_by_pid("urn:parent").get(timeout=TIMEOUT) is None
    assert pool.get_name_by_pid("urn:child").get(timeout=TIMEOUT) is None
    assert stats(pool)["checked_out_count"] == 0


def test_checkin_of_a_name_not_checked_out_warns_and_changes_nothing(
    start_pool: Callable[..., Any], log_records: list[dict[str, Any]]
) -> None:
    assert_checkin_changes_nothing(start_pool, "stranger")
    assert any("stranger" in message for message in messages(log_records, "WARNING"))


def test_checkin_of_the_default_name_is_ignored(
    start_pool: Callable[..., Any], log_records: list[dict[str, Any]]
) -> None:
    assert_checkin_changes_nothing(start_pool, "Nameless Agent")
    assert messages(log_records, "WARNING") == []


@pytest.mark.parametrize("name", ["", "a/b", "..", "x" * 65, "tab\there", 7, None, b"bytes"])
def test_invalid_names_raise_invalid_name(start_pool: Callable[..., Any], name: Any) -> None:
    pool = start_pool()
    pool.checkout_name().get(timeout=TIMEOUT)
    before = stats(pool)
    with pytest.raises(InvalidName):
        pool.checkin_name(name).get(timeout=TIMEOUT)
    if name is not None:  # associate_name(None, owner) is a no-op by contract
        with pytest.raises(InvalidName):
            pool.associate_name(name, "urn:x").get(timeout=TIMEOUT)
    assert stats(pool) == before  # and the pool keeps running


@pytest.mark.parametrize("owner", [True, False, 1.5, b"x", 0, -3, [], {"pid": 1}])
def test_bad_owners_raise_invalid_owner(start_pool: Callable[..., Any], owner: Any) -> None:
    pool = start_pool()
    name = pool.checkout_name().get(timeout=TIMEOUT)
    before = stats(pool)
    calls = [
        lambda: pool.checkout_name(owner),
        lambda: pool.associate_name(name, owner),
        lambda: pool.dissociate(owner),
        lambda: pool.get_name_by_pid(owner),
    ]
    for call in calls:
        with pytest.raises(InvalidOwner) as raised:
            call().get(timeout=TIMEOUT)
        assert isinstance(raised.value, ClientError) and isinstance(raised.value, TypeError)
    assert stats(pool) == before


@pytest.mark.parametrize(
    "call",
    [
        lambda pool: pool.checkout_name(None, "extra"),
        lambda pool: pool.checkin_name(),
        lambda pool: pool.checkin_name("a", "b"),
        lambda pool: pool.associate_name("a"),
        lambda pool: pool.dissociate(),
        lambda pool: pool.get_name_by_pid(),
        lambda pool: pool.pool_stats(1),
        lambda pool: pool.reset(True),
        lambda pool: pool.reconcile(),
        lambda pool: pool.default_name("x"),
        lambda pool: pool.checkout_name(who="x"),
    ],
)
def test_wrong_arguments_are_a_bad_call(start_pool: Callable[..., Any], call: Callable[[Any], Any]) -> None:
    pool = start_pool()
    with pytest.raises(BadCall) as raised:
        call(pool).get(timeout=TIMEOUT)
    assert isinstance(raised.value, TypeError)
    assert stats(pool)["all_used_count"] == 0  # still running


def test_holders_are_there_for_the_status_report(start_pool: Callable[..., Any]) -> None:
    pool = start_pool()
    shared = pool.checkout_name("urn:parent").get(timeout=TIMEOUT)
    pool.associate_name(shared, 4242).get(timeout=TIMEOUT)
    anonymous = pool.checkout_name().get(timeout=TIMEOUT)
    held = pool.actor_ref.ask(HOLDERS_REQUEST, timeout=TIMEOUT)
    assert held == {shared: ["urn:parent", 4242], anonymous: [None]}


def test_internal_handlers_cannot_be_called_from_outside(start_pool: Callable[..., Any]) -> None:
    pool = start_pool()
    call = pykka_messages.ProxyCall(attr_path=("_on_flush",), args=(None,), kwargs={})
    with pytest.raises(BadCall):
        pool.actor_ref.ask(call, timeout=TIMEOUT)
    with pytest.raises(ClientError):  # a message it does not know
        pool.actor_ref.ask("flush", timeout=TIMEOUT)


# -- associate, dissociate, inherit -------------------------------------------------------


def test_associate_shares_a_checked_out_name(start_pool: Callable[..., Any]) -> None:
    pool = start_pool()
    name = pool.checkout_name("urn:parent").get(timeout=TIMEOUT)
    pool.associate_name(name, "urn:child").get(timeout=TIMEOUT)
    assert pool.get_name_by_pid("urn:child").get(timeout=TIMEOUT) == name
    assert pool.checkout_name("urn:parent").get(timeout=TIMEOUT) == name  # not moved
    assert stats(pool)["checked_out_count"] == 1
    pool.dissociate("urn:parent").get(timeout=TIMEOUT)
    assert stats(pool)["checked_out_count"] == 1  # the child still holds it
    pool.dissociate("urn:child").get(timeout=TIMEOUT)
    assert stats(pool)["checked_out_count"] == 0
    assert pool.checkout_name().get(timeout=TIMEOUT) == name  # back on top


def test_dissociate_is_written_too(start_pool: Callable[..., Any], tmp_path: Path) -> None:
    path = tmp_path / "names.state"
    pool = start_pool(state_path=path)
    name = pool.checkout_name("urn:parent").get(timeout=TIMEOUT)
    pool.associate_name(name, "urn:child").get(timeout=TIMEOUT)
    pool.dissociate("urn:parent").get(timeout=TIMEOUT)
    assert durable_state(path).holders() == {name: ["urn:child"]}


def test_associate_checks_out_a_name_that_is_not_checked_out(start_pool: Callable[..., Any]) -> None:
    pool = start_pool()
    pool.associate_name("quartz", "urn:restored").get(timeout=TIMEOUT)
    assert pool.get_name_by_pid("urn:restored").get(timeout=TIMEOUT) == "quartz"
    assert stats(pool)["checked_out_count"] == 1
    assert stats(pool)["all_used_count"] == 1
    # An available name is taken off the stack.
    available = pool.checkout_name().get(timeout=TIMEOUT)
    pool.checkin_name(available).get(timeout=TIMEOUT)
    pool.associate_name(available, "urn:other").get(timeout=TIMEOUT)
    assert pool.checkout_name().get(timeout=TIMEOUT) != available


def test_associate_ends_the_owners_previous_name(start_pool: Callable[..., Any]) -> None:
    pool = start_pool()
    first = pool.checkout_name("urn:w").get(timeout=TIMEOUT)
    pool.associate_name("jasper", "urn:w").get(timeout=TIMEOUT)
    assert pool.get_name_by_pid("urn:w").get(timeout=TIMEOUT) == "jasper"
    assert pool.checkout_name().get(timeout=TIMEOUT) == first  # first went back to the pool


def test_associate_with_no_name_does_nothing(start_pool: Callable[..., Any]) -> None:
    pool = start_pool()
    pool.associate_name(None, "urn:w").get(timeout=TIMEOUT)
    assert pool.get_name_by_pid("urn:w").get(timeout=TIMEOUT) is None
    assert stats(pool)["all_used_count"] == 0


def test_dissociate_of_an_unknown_owner_does_nothing(start_pool: Callable[..., Any]) -> None:
    pool = start_pool()
    pool.checkout_name("urn:w").get(timeout=TIMEOUT)
    before = stats(pool)
    pool.dissociate("urn:nobody").get(timeout=TIMEOUT)
    pool.dissociate(None).get(timeout=TIMEOUT)
    pool.dissociate(424242).get(timeout=TIMEOUT)
    assert stats(pool) == before


def test_a_worker_inherits_its_name_across_processes(start_pool: Callable[..., Any]) -> None:
    """WorkerProcess's dance: check out for its URN, associate the pid, dissociate the URN."""
    pool = start_pool()
    worker = sleeper()
    try:
        name = pool.checkout_name("urn:worker-process").get(timeout=TIMEOUT)
        pool.associate_name(name, worker.pid).get(timeout=TIMEOUT)
        pool.dissociate("urn:worker-process").get(timeout=TIMEOUT)
        assert pool.get_name_by_pid(worker.pid).get(timeout=TIMEOUT) == name
        assert stats(pool)["checked_out_count"] == 1
        pool.dissociate(worker.pid).get(timeout=TIMEOUT)
        assert stats(pool)["checked_out_count"] == 0
        # LIFO: a restarted worker usually gets its old name back.
        assert pool.checkout_name("urn:worker-process").get(timeout=TIMEOUT) == name
    finally:
        end(worker)


# -- reset and reconcile --------------------------------------------------------------------


def test_reset_forgets_everything_and_the_source_starts_over(start_pool: Callable[..., Any]) -> None:
    source = CountingSource()
    pool = start_pool(source=source, chunk_size=2)
    pool.checkout_name("urn:w").get(timeout=TIMEOUT)
    pool.reset().get(timeout=TIMEOUT)
    assert stats(pool)["all_used_count"] == 0
    assert pool.get_name_by_pid("urn:w").get(timeout=TIMEOUT) is None
    pool.checkout_name().get(timeout=TIMEOUT)
    assert len(source.calls) == 2
    assert source.calls[1][1] == frozenset()  # the pool knows no name any more


def test_reconcile_checks_out_exactly_the_listed_names(
    start_pool: Callable[..., Any], log_records: list[dict[str, Any]]
) -> None:
    pool = start_pool(chunk_size=6)
    held_by_me = pool.checkout_name(os.getpid()).get(timeout=TIMEOUT)  # a live int owner
    stale = pool.checkout_name("urn:gone").get(timeout=TIMEOUT)
    pool.reconcile(["slate", "n-5"]).get(timeout=TIMEOUT)
    assert pool.get_name_by_pid(os.getpid()).get(timeout=TIMEOUT) == held_by_me
    assert pool.get_name_by_pid("urn:gone").get(timeout=TIMEOUT) is None
    # slate and n-5 and held_by_me are checked out; stale went back.
    assert stats(pool)["checked_out_count"] == 3
    assert stats(pool)["all_used_count"] == 7
    assert pool.checkout_name().get(timeout=TIMEOUT) == stale
    assert any(held_by_me in message for message in messages(log_records, "WARNING"))


def test_reconcile_with_one_invalid_name_changes_nothing(start_pool: Callable[..., Any]) -> None:
    pool = start_pool()
    name = pool.checkout_name("urn:w").get(timeout=TIMEOUT)
    before = stats(pool)
    for bad in (["ok", "a/b"], ["ok", 7], "single-string", 42):
        with pytest.raises(InvalidName):
            pool.reconcile(bad).get(timeout=TIMEOUT)
    assert stats(pool) == before
    assert pool.get_name_by_pid("urn:w").get(timeout=TIMEOUT) == name


# -- the source --------------------------------------------------------------------------


def test_concurrent_checkouts_share_one_source_call(
    start_pool: Callable[..., Any], gate: threading.Event
) -> None:
    source, names = five_checkouts_waiting_for_the_source(start_pool, gate, chunk_size=5)
    assert names == [f"n-{index}" for index in range(5)]  # served in arrival order
    assert len(source.calls) == 1


def test_waiters_beyond_one_chunk_get_another_chunk(start_pool: Callable[..., Any], gate: threading.Event) -> None:
    source, names = five_checkouts_waiting_for_the_source(start_pool, gate, chunk_size=2)
    assert len(set(names)) == 5
    assert len(source.calls) == 3


def test_a_waiting_owner_that_got_a_name_meanwhile_gets_that_name(
    start_pool: Callable[..., Any], gate: threading.Event
) -> None:
    pool = start_pool(source=CountingSource(gate=gate))
    waiting = pool.checkout_name("urn:w")
    wait_until(lambda: stats(pool)["waiting_count"] == 1)
    pool.associate_name("restored", "urn:w").get(timeout=TIMEOUT)
    gate.set()
    assert waiting.get(timeout=TIMEOUT) == "restored"


def test_other_calls_answer_while_the_source_blocks(start_pool: Callable[..., Any], tmp_path: Path) -> None:
    gate = threading.Event()
    first_chunk = threading.Event()

    def source(count: int, used: frozenset[str]) -> list[str]:
        if first_chunk.is_set():
            assert gate.wait(TIMEOUT)
        first_chunk.set()
        return [f"s-{len(used) + index}" for index in range(count)]

    try:
        pool = start_pool(source=source, chunk_size=2, state_path=tmp_path / "names.state")
        held = [pool.checkout_name("urn:a").get(timeout=TIMEOUT), pool.checkout_name("urn:b").get(timeout=TIMEOUT)]
        blocked = pool.checkout_name()
        wait_until(lambda: stats(pool)["is_generating"])
        # While the source blocks (up to TIMEOUT), the pool answers at once.
        assert pool.get_name_by_pid("urn:a").get(timeout=PROMPTLY) == held[0]
        assert pool.pool_stats().get(timeout=PROMPTLY)["waiting_count"] == 1
        assert pool.default_name().get(timeout=PROMPTLY) == "Nameless Agent"
        pool.checkin_name(held[1]).get(timeout=PROMPTLY)
        # The name checked in went straight to the waiting checkout.
        assert blocked.get(timeout=PROMPTLY) == held[1]
        assert stats(pool)["waiting_count"] == 0
    finally:
        gate.set()


@pytest.mark.parametrize(
    "result",
    [
        RuntimeError("generator exploded"),
        42,
        "not-a-list",
        [None, "", "a/b", 7, "x" * 65],
        [],
        ["Nameless Agent"],
    ],
    ids=["raises", "not-a-list", "a-string", "all-invalid", "empty", "only-the-default-name"],
)
def test_a_failing_source_fails_every_waiter_and_changes_nothing(
    start_pool: Callable[..., Any], gate: threading.Event, result: Any, log_records: list[dict[str, Any]]
) -> None:
    source = FailingSource(result, gate)
    pool = start_pool(source=source)
    before = stats(pool)
    futures = [pool.checkout_name(), pool.checkout_name("urn:w"), pool.checkout_name()]
    wait_until(lambda: stats(pool)["waiting_count"] == 3)
    gate.set()
    for future in futures:
        with pytest.raises(NameSourceError) as raised:
            future.get(timeout=TIMEOUT)
        assert "source" in str(raised.value)
    assert stats(pool) == before
    assert source.calls == 1
    assert messages(log_records, "WARNING")
    # The next checkout asks again.
    source.result = ["fresh"]
    assert pool.checkout_name().get(timeout=TIMEOUT) == "fresh"
    assert source.calls == 2


def test_a_source_that_yields_only_used_names_fails(start_pool: Callable[..., Any]) -> None:
    pool = start_pool(source=lambda count, used: ["same", "same"])
    assert pool.checkout_name().get(timeout=TIMEOUT) == "same"
    with pytest.raises(NameSourceError, match="no usable name"):
        pool.checkout_name().get(timeout=TIMEOUT)


def test_a_source_keeps_only_new_valid_names(start_pool: Callable[..., Any]) -> None:
    pool = start_pool(source=lambda count, used: ["a", "a", "b/c", "b", 3, "c", "d"], chunk_size=2)
    names = [pool.checkout_name().get(timeout=TIMEOUT) for _ in range(4)]
    assert names == ["a", "b", "c", "d"]  # more than count is kept too


def test_a_slow_source_times_out_and_its_late_result_is_discarded(
    start_pool: Callable[..., Any], gate: threading.Event, log_records: list[dict[str, Any]]
) -> None:
    source = CountingSource(gate=gate)
    pool = start_pool(source=source, source_timeout=0.05)
    with pytest.raises(NameSourceError, match="longer than"):
        pool.checkout_name().get(timeout=TIMEOUT)
    assert stats(pool)["all_used_count"] == 0
    gate.set()  # the late result arrives ...
    wait_until(lambda: any("late" in message for message in messages(log_records, "INFO")))
    assert stats(pool)["all_used_count"] == 0  # ... and is discarded
    assert pool.checkout_name().get(timeout=TIMEOUT) == "n-12"  # the next checkout asked again
    assert len(source.calls) == 2


def test_reset_discards_the_chunk_in_flight_and_asks_again(
    start_pool: Callable[..., Any], log_records: list[dict[str, Any]]
) -> None:
    first_gate = threading.Event()
    calls: list[int] = []

    def source(count: int, used: frozenset[str]) -> list[str]:
        calls.append(len(calls))
        if len(calls) == 1:
            assert first_gate.wait(TIMEOUT)
            return ["old-1", "old-2"]
        return ["new-1", "new-2"]

    try:
        pool = start_pool(source=source)
        waiting = pool.checkout_name()
        wait_until(lambda: calls)
        pool.reset().get(timeout=TIMEOUT)
        assert waiting.get(timeout=TIMEOUT) == "new-1"
        first_gate.set()
        wait_until(lambda: any("late" in message for message in messages(log_records, "INFO")))
        assert stats(pool)["all_used_count"] == 2  # old-1 and old-2 never came in
    finally:
        first_gate.set()


def test_concurrent_checkouts_from_many_threads_never_share_a_name(start_pool: Callable[..., Any]) -> None:
    pool_ref = NamePool.start(source=CountingSource(), chunk_size=50)
    results: list[list[str]] = [[] for _ in range(16)]

    def work(index: int) -> None:
        proxy = pool_ref.proxy()
        results[index] = [proxy.checkout_name().get(timeout=TIMEOUT) for _ in range(200)]

    threads = [threading.Thread(target=work, args=(index,)) for index in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 3)
    names = [name for result in results for name in result]
    assert len(names) == 16 * 200
    assert len(set(names)) == len(names)


def test_concurrent_durable_checkouts_and_checkins_never_share_a_name(tmp_path: Path) -> None:
    pool_ref = NamePool.start(source=CountingSource(), chunk_size=8, state_path=tmp_path / "names.state")
    holders: dict[str, int] = {}
    clashes: list[str] = []
    lock = threading.Lock()

    def work(index: int) -> None:
        proxy = pool_ref.proxy()
        for round_number in range(60):
            name = proxy.checkout_name().get(timeout=TIMEOUT)
            with lock:
                if name in holders:
                    clashes.append(name)
                holders[name] = index
            if round_number % 3:
                with lock:
                    del holders[name]
                proxy.checkin_name(name).get(timeout=TIMEOUT)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 3)
    assert clashes == []
    assert set(durable_state(tmp_path / "names.state").holders()) == set(holders)


# -- owners watched --------------------------------------------------------------------------


def test_a_dead_owners_name_returns_within_reap_interval(
    start_pool: Callable[..., Any], manual_clock: ManualClock, log_records: list[dict[str, Any]], tmp_path: Path
) -> None:
    path = tmp_path / "names.state"
    pool = start_pool(reap_interval=5.0, state_path=path)
    owner = sleeper()
    try:
        name = pool.checkout_name(owner.pid).get(timeout=TIMEOUT)
        manual_clock.advance(5.0)
        assert pool.get_name_by_pid(owner.pid).get(timeout=TIMEOUT) == name  # alive: kept
    finally:
        end(owner)
    manual_clock.advance(5.0)
    assert stats(pool)["checked_out_count"] == 0
    assert stats(pool)["available_count"] == 12
    assert durable_state(path).holders() == {}  # the reap was written too
    assert pool.checkout_name().get(timeout=TIMEOUT) == name  # LIFO: the reaped name first
    assert any(name in message for message in messages(log_records, "INFO"))


def test_a_pid_not_running_at_checkout_is_accepted_and_reaped(
    start_pool: Callable[..., Any], manual_clock: ManualClock
) -> None:
    pool = start_pool(reap_interval=1.0)
    gone = sleeper()
    end(gone)
    name = pool.checkout_name(gone.pid).get(timeout=TIMEOUT)
    assert pool.get_name_by_pid(gone.pid).get(timeout=TIMEOUT) == name
    manual_clock.advance(1.0)
    assert pool.get_name_by_pid(gone.pid).get(timeout=TIMEOUT) is None
    assert stats(pool)["checked_out_count"] == 0


def test_a_reused_pid_is_not_the_old_owner(
    start_pool: Callable[..., Any], manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = start_pool(reap_interval=1.0)
    real_start = name_pool_module._process_start(os.getpid())
    assert real_start is not None
    earlier = ProcessStart(real_start.start_ticks - 100, real_start.boot_id, None)
    # Record this pid as an earlier process: the same pid with other start ticks.
    monkeypatch.setattr(name_pool_module, "_process_start", lambda pid: earlier)
    old = pool.checkout_name(os.getpid()).get(timeout=TIMEOUT)
    other = pool.checkout_name(str(os.getpid())).get(timeout=TIMEOUT)  # a str owner, never reaped
    monkeypatch.undo()
    # The process running now under this pid is not the owner ...
    assert pool.get_name_by_pid(os.getpid()).get(timeout=TIMEOUT) is None
    # ... and the reaper sees the recorded one as dead.
    manual_clock.advance(1.0)
    assert stats(pool)["checked_out_count"] == 1
    assert pool.checkout_name().get(timeout=TIMEOUT) == old
    assert pool.get_name_by_pid(str(os.getpid())).get(timeout=TIMEOUT) == other


def test_a_reused_pid_checking_out_gets_a_new_name(
    start_pool: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = start_pool()
    real_start = name_pool_module._process_start(os.getpid())
    assert real_start is not None
    earlier = ProcessStart(real_start.start_ticks - 100, real_start.boot_id, None)
    monkeypatch.setattr(name_pool_module, "_process_start", lambda pid: earlier)
    old = pool.checkout_name(os.getpid()).get(timeout=TIMEOUT)
    monkeypatch.undo()
    pool.associate_name(old, "urn:heir").get(timeout=TIMEOUT)  # so `old` stays held
    new = pool.checkout_name(os.getpid()).get(timeout=TIMEOUT)
    assert new != old
    assert pool.get_name_by_pid(os.getpid()).get(timeout=TIMEOUT) == new
    assert pool.get_name_by_pid("urn:heir").get(timeout=TIMEOUT) == old
    assert stats(pool)["owner_count"] == 2  # the old process's hold on `old` ended


def test_str_and_anonymous_owners_are_never_reaped(
    start_pool: Callable[..., Any], manual_clock: ManualClock
) -> None:
    pool = start_pool(reap_interval=1.0)
    pool.checkout_name("urn:actor").get(timeout=TIMEOUT)
    pool.checkout_name().get(timeout=TIMEOUT)
    manual_clock.advance(10.0)
    assert stats(pool)["checked_out_count"] == 2


def test_the_reap_timer_stops_with_the_pool(manual_clock: ManualClock) -> None:
    ref = NamePool.start(clock=manual_clock)
    assert manual_clock.pending_timers == 1
    ref.stop()
    assert manual_clock.pending_timers == 0
    ref = NamePool.start(clock=manual_clock)
    kill(ref)
    wait_until(lambda: not ref.is_alive())
    wait_until(lambda: manual_clock.pending_timers == 0)


# -- durability --------------------------------------------------------------------------


def test_an_answered_checkout_is_already_on_disk(start_pool: Callable[..., Any], tmp_path: Path) -> None:
    path = tmp_path / "names.state"
    pool = start_pool(state_path=path)
    name = pool.checkout_name("urn:w").get(timeout=TIMEOUT)
    assert durable_state(path).name_of("urn:w") == name
    pool.checkin_name(name).get(timeout=TIMEOUT)
    assert durable_state(path).holders() == {}
    pool.associate_name("quartz", "urn:w").get(timeout=TIMEOUT)
    assert durable_state(path).name_of("urn:w") == "quartz"
    pool.reconcile(["slate"]).get(timeout=TIMEOUT)
    assert set(durable_state(path).holders()) == {"slate"}
    pool.reset().get(timeout=TIMEOUT)
    assert durable_state(path).stats()["all_used_count"] == 0


def test_a_stopped_pool_leaves_its_state_in_the_snapshot(start_pool: Callable[..., Any], tmp_path: Path) -> None:
    path = tmp_path / "names.state"
    pool = start_pool(state_path=path)
    name = pool.checkout_name("urn:w").get(timeout=TIMEOUT)
    pool.checkout_name().get(timeout=TIMEOUT)
    pykka.ActorRegistry.stop_all()
    state = snapshot_state(path)
    assert state.name_of("urn:w") == name
    assert state.stats()["checked_out_count"] == 2
    assert not path.with_name("names.state.journal").exists()
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_new_pool_on_the_same_state_path_carries_on(start_pool: Callable[..., Any], tmp_path: Path) -> None:
    path = tmp_path / "names.state"
    source = CountingSource()
    pool = start_pool(state_path=path, source=source, chunk_size=4)
    held = [pool.checkout_name(f"urn:{index}").get(timeout=TIMEOUT) for index in range(3)]
    pool.checkin_name(held[1]).get(timeout=TIMEOUT)
    kill(pool.actor_ref)  # no graceful stop: the journal holds the newest state
    wait_until(lambda: not pool.actor_ref.is_alive())
    assert path.with_name("names.state.journal").exists()
    again = start_pool(state_path=path, source=source, chunk_size=4)
    assert again.get_name_by_pid("urn:0").get(timeout=TIMEOUT) == held[0]
    assert again.get_name_by_pid("urn:1").get(timeout=TIMEOUT) is None
    assert again.checkout_name().get(timeout=TIMEOUT) == held[1]  # LIFO order survived
    assert stats(again)["all_used_count"] == 4
    assert len(source.calls) == 1


def test_replies_wait_for_one_grouped_write(
    start_pool: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "names.state"
    pool = start_pool(state_path=path, chunk_size=30)
    pool.checkout_name().get(timeout=TIMEOUT)  # the first chunk is in
    writes: list[int] = []
    real_append = Journal._append

    def counting_append(self: Journal, data: bytes) -> None:
        writes.append(data.count(journal_module.JOURNAL_MAGIC))
        real_append(self, data)

    monkeypatch.setattr(Journal, "_append", counting_append)
    owner_gate, blocked = hold_own_checkout(pool, monkeypatch)  # holds the pool's thread
    futures = [pool.checkout_name() for _ in range(20)] + [pool.pool_stats()]
    owner_gate.open()
    names = [future.get(timeout=TIMEOUT) for future in [blocked, *futures[:-1]]]
    assert futures[-1].get(timeout=TIMEOUT)["checked_out_count"] == 22
    assert len(set(names)) == 21
    assert writes == [1]  # one frame, one write for everything handled together


def test_an_idempotent_checkout_waits_for_the_first_ones_write(
    start_pool: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "names.state"
    pool = start_pool(state_path=path)
    pool.checkout_name().get(timeout=TIMEOUT)
    owner_gate, first = hold_own_checkout(pool, monkeypatch)
    second = pool.checkout_name(os.getpid())
    owner_gate.open()
    name = second.get(timeout=TIMEOUT)
    assert first.get(timeout=TIMEOUT) == name
    assert durable_state(path).name_of(os.getpid()) == name


def test_a_graceful_stop_answers_the_replies_waiting_for_a_write(
    start_pool: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "names.state"
    pool = start_pool(state_path=path)
    pool.checkout_name().get(timeout=TIMEOUT)
    owner_gate, first = hold_own_checkout(pool, monkeypatch)
    second = pool.checkout_name()
    stopped = pool.actor_ref.stop(block=False)  # queued before the flush the checkouts ask for
    owner_gate.open()
    names = {first.get(timeout=TIMEOUT), second.get(timeout=TIMEOUT)}
    stopped.get(timeout=TIMEOUT)
    assert set(snapshot_state(path).holders()) == names | {"n-0"}


def test_a_failing_write_is_a_storage_error_and_writes_resume_by_themselves(
    start_pool: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_records: list[dict[str, Any]]
) -> None:
    path = tmp_path / "names.state"
    pool = start_pool(state_path=path)
    first = pool.checkout_name().get(timeout=TIMEOUT)

    def disk_full(self: Journal, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Journal, "_append", disk_full)
    monkeypatch.setattr(SnapshotStore, "save", lambda self, data: disk_full(None, b""))  # type: ignore[arg-type]
    for _ in range(3):
        with pytest.raises(StorageError) as raised:
            pool.checkout_name("urn:refused").get(timeout=TIMEOUT)
        assert raised.value.errno == errno.ENOSPC and "names.state" in str(raised.value)
    assert pool.actor_ref.is_alive()
    # Reads still answer, and the refused changes never happened.
    assert pool.get_name_by_pid("urn:refused").get(timeout=TIMEOUT) is None
    assert stats(pool)["checked_out_count"] == 1
    assert len(messages(log_records, "ERROR")) == 1  # one line per episode, not per call
    monkeypatch.undo()
    again = pool.checkout_name("urn:after").get(timeout=TIMEOUT)
    assert again != first
    assert set(durable_state(path).holders()) == {first, again}
    assert any("again" in message for message in messages(log_records, "INFO"))


def test_a_state_path_that_became_unusable_keeps_the_journal(
    start_pool: Callable[..., Any], tmp_path: Path, log_records: list[dict[str, Any]]
) -> None:
    path = tmp_path / "names.state"
    pool = start_pool(state_path=path)
    pool.checkout_name().get(timeout=TIMEOUT)
    path.unlink()
    path.mkdir()
    assert pool.checkout_name().get(timeout=TIMEOUT)  # the journal takes it
    pool.actor_ref.stop()
    assert path.with_name("names.state.journal").exists()  # the final snapshot could not replace it
    assert any("final snapshot" in message for message in messages(log_records, "ERROR"))


def test_a_corrupt_state_file_is_quarantined_and_the_pool_starts_empty(
    start_pool: Callable[..., Any], tmp_path: Path, log_records: list[dict[str, Any]]
) -> None:
    path = tmp_path / "names.state"
    path.write_bytes(b"\x00not msgpack at all")
    pool = start_pool(state_path=path)
    assert stats(pool)["all_used_count"] == 0
    assert len(list(tmp_path.glob("names.state.corrupt-*"))) == 1
    assert messages(log_records, "ERROR")
    assert pool.checkout_name().get(timeout=TIMEOUT) == "n-0"


def test_a_snapshot_with_invalid_names_is_quarantined(
    start_pool: Callable[..., Any], tmp_path: Path, log_records: list[dict[str, Any]]
) -> None:
    path = tmp_path / "names.state"
    SnapshotStore(path, version=1).save({"version": 1, "available": ["a/b"], "holders": []})
    pool = start_pool(state_path=path)
    assert stats(pool)["all_used_count"] == 0
    assert len(list(tmp_path.glob("names.state.corrupt-*"))) == 1
    assert any("a/b" in message for message in messages(log_records, "ERROR"))


def killed_pool_journal(pool: Any, path: Path, owners: list[str]) -> tuple[str, Path, bytearray, list[int]]:
    """Check a name out for each owner (one frame each), kill the pool: the first name, the
    journal, its bytes and where each frame starts."""
    first = pool.checkout_name(owners[0]).get(timeout=TIMEOUT)
    for owner in owners[1:]:
        pool.checkout_name(owner).get(timeout=TIMEOUT)
    kill(pool.actor_ref)
    wait_until(lambda: not pool.actor_ref.is_alive())
    journal = path.with_name("names.state.journal")
    content = bytearray(journal.read_bytes())
    frames = [index for index in range(len(content)) if content.startswith(b"NPJ3", index)]
    assert len(frames) == len(owners)
    return first, journal, content, frames


def test_a_damaged_journal_frame_falls_back_to_the_frame_before(
    start_pool: Callable[..., Any], tmp_path: Path, log_records: list[dict[str, Any]]
) -> None:
    path = tmp_path / "names.state"
    pool = start_pool(state_path=path)
    first, journal, content, frames = killed_pool_journal(pool, path, ["urn:a", "urn:b"])
    content[frames[1] + 30] ^= 0xFF  # a write cut short: the second frame is damaged
    journal.write_bytes(bytes(content))
    again = start_pool(state_path=path)
    assert again.get_name_by_pid("urn:a").get(timeout=TIMEOUT) == first
    assert again.get_name_by_pid("urn:b").get(timeout=TIMEOUT) is None
    assert any("damaged" in message for message in messages(log_records, "WARNING"))


def test_a_damaged_frame_in_the_middle_of_the_journal_is_quarantined(
    start_pool: Callable[..., Any], tmp_path: Path, log_records: list[dict[str, Any]]
) -> None:
    """Not a torn tail: intact frames follow the damaged one, so the journal is corrupt."""
    path = tmp_path / "names.state"
    pool = start_pool(state_path=path)
    first, journal, content, frames = killed_pool_journal(pool, path, ["urn:a", "urn:b", "urn:c"])
    content[frames[1] + 30] ^= 0xFF
    journal.write_bytes(bytes(content))
    again = start_pool(state_path=path)
    assert again.get_name_by_pid("urn:a").get(timeout=TIMEOUT) == first
    assert again.get_name_by_pid("urn:b").get(timeout=TIMEOUT) is None
    assert again.get_name_by_pid("urn:c").get(timeout=TIMEOUT) is None  # its frame needs the one before
    assert len(list(tmp_path.glob("names.state.journal.corrupt-*"))) == 1
    assert any("corrupt name pool journal" in message for message in messages(log_records, "ERROR"))


def test_a_missing_frame_is_corruption_not_a_gap_to_skip(
    start_pool: Callable[..., Any], tmp_path: Path, log_records: list[dict[str, Any]]
) -> None:
    """Frames are changes: one lost means the later ones cannot be applied."""
    path = tmp_path / "names.state"
    pool = start_pool(state_path=path)
    first, journal, content, frames = killed_pool_journal(pool, path, ["urn:a", "urn:b", "urn:c"])
    journal.write_bytes(content[: frames[1]] + content[frames[2] :])  # frame 2 is gone
    again = start_pool(state_path=path)
    assert again.get_name_by_pid("urn:a").get(timeout=TIMEOUT) == first
    assert again.get_name_by_pid("urn:c").get(timeout=TIMEOUT) is None
    assert len(list(tmp_path.glob("names.state.journal.corrupt-*"))) == 1
    assert any("missing" in message for message in messages(log_records, "ERROR"))


def test_a_journal_of_the_previous_version_still_loads(start_pool: Callable[..., Any], tmp_path: Path) -> None:
    """v2 wrote whole states as "NPJ2" frames; a crash left them for the next start."""
    import struct
    import zlib

    import msgpack

    path = tmp_path / "names.state"
    older, newer = NameState(), NameState()
    older.associate("old", "urn:w")
    newer.associate("new", "urn:w")
    SnapshotStore(path, version=1).save({**older.to_snapshot(), "version": 1, "journal_sequence": 3})
    frames = b""
    for sequence, state in ((4, older), (5, newer)):
        payload = msgpack.packb({**state.to_snapshot(), "version": 1})
        frames += struct.pack("<4sQII", b"NPJ2", sequence, len(payload), zlib.crc32(payload)) + payload
    path.with_name("names.state.journal").write_bytes(frames + bytes(4096))
    pool = start_pool(state_path=path)
    assert pool.get_name_by_pid("urn:w").get(timeout=TIMEOUT) == "new"


def test_a_long_journal_is_folded_into_the_snapshot_in_the_background(
    start_pool: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "SNAPSHOT_AFTER_BYTES", 512)  # a few frames only
    monkeypatch.setattr(journal_module, "_JOURNAL_CHUNK", 256)  # and the journal grows too
    path = tmp_path / "names.state"
    pool = start_pool(state_path=path, chunk_size=40)
    held = [pool.checkout_name(f"urn:{index}").get(timeout=TIMEOUT) for index in range(40)]
    wait_until(lambda: snapshot_state(path).stats()["checked_out_count"] > 0)  # folded in at least once
    kill(pool.actor_ref)
    wait_until(lambda: not pool.actor_ref.is_alive())
    again = start_pool(state_path=path, chunk_size=40)
    assert [again.get_name_by_pid(f"urn:{index}").get(timeout=TIMEOUT) for index in range(40)] == held


def test_journal_frames_older_than_the_snapshot_are_ignored(
    start_pool: Callable[..., Any], tmp_path: Path
) -> None:
    """A zeroing cut short after the snapshot was saved leaves older frames behind."""
    path = tmp_path / "names.state"
    pool = start_pool(state_path=path)
    pool.checkout_name("urn:old").get(timeout=TIMEOUT)
    kill(pool.actor_ref)
    wait_until(lambda: not pool.actor_ref.is_alive())
    newer = NameState()
    newer.associate("fresh", "urn:new")
    SnapshotStore(path, version=1).save({**newer.to_snapshot(), "journal_sequence": 99})
    again = start_pool(state_path=path)
    assert again.get_name_by_pid("urn:new").get(timeout=TIMEOUT) == "fresh"
    assert again.get_name_by_pid("urn:old").get(timeout=TIMEOUT) is None


def test_a_symlinked_journal_is_refused(tmp_path: Path, manual_clock: ManualClock) -> None:
    path = tmp_path / "names.state"
    (tmp_path / "elsewhere").write_bytes(b"")
    path.with_name("names.state.journal").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(Exception, match="symlink"):
        NamePool.start(state_path=path, clock=manual_clock)
    assert (tmp_path / "elsewhere").read_bytes() == b""


# -- crashes ----------------------------------------------------------------------------


def test_a_crash_cuts_off_waiting_checkouts_and_the_next_incarnation_serves(
    manual_clock: ManualClock, gate: threading.Event
) -> None:
    source = CountingSource(gate=gate)
    root = Supervisor.start(
        [ChildSpec("names", NamePool, kwargs={"source": source, "clock": manual_clock})], clock=manual_clock
    )
    names = Handle(root, "names")
    waiting = names.proxy().checkout_name()
    wait_until(lambda: len(source.calls) == 1)
    first = names.ref()
    kill(first)
    with pytest.raises(ActorCrashed):
        waiting.get(timeout=TIMEOUT)
    gate.set()
    # The new incarnation asks the source again (the old one's chunk went nowhere).
    assert names.proxy().checkout_name().get(timeout=TIMEOUT).startswith("n-")
    assert len(source.calls) == 2
    assert names.proxy().pool_stats().get(timeout=TIMEOUT)["all_used_count"] == 12


def test_a_graceful_stop_tells_waiting_checkouts_the_pool_is_gone(
    start_pool: Callable[..., Any], gate: threading.Event
) -> None:
    pool = start_pool(source=CountingSource(gate=gate))
    waiting = pool.checkout_name()
    wait_until(lambda: stats(pool)["waiting_count"] == 1)
    pool.actor_ref.stop()
    with pytest.raises(pykka.ActorDeadError):
        waiting.get(timeout=TIMEOUT)


def test_crashes_mid_stream_lose_and_duplicate_nothing(tmp_path: Path, manual_clock: ManualClock) -> None:
    path = tmp_path / "names.state"
    spec = ChildSpec(
        "names",
        NamePool,
        kwargs={"source": CountingSource(), "chunk_size": 4, "state_path": path, "clock": manual_clock},
    )
    root = Supervisor.start([spec], max_restarts=1000, clock=manual_clock)
    names = Handle(root, "names")
    lock = threading.Lock()
    holding: dict[str, int] = {}  # name -> the thread that was answered its checkout
    kept: set[str] = set()  # names never checked in: must still be held at the end
    clashes: list[tuple[str, int, int]] = []
    answered = [0]
    stop = threading.Event()

    def work(index: int) -> None:
        proxy = names.proxy()
        rng = random.Random(index)
        while not stop.is_set():
            try:
                name = proxy.checkout_name().get(timeout=TIMEOUT)
            except ActorCrashed:
                continue  # never written, so it never happened
            with lock:
                answered[0] += 1
                if name in holding:
                    clashes.append((name, holding[name], index))
                holding[name] = index
                if rng.random() < 0.1:
                    kept.add(name)
                    continue
            with lock:
                del holding[name]  # no longer ours once we ask to give it back
            # ActorCrashed: unknown outcome; the name may stay held, but reaches nobody else.
            with contextlib.suppress(ActorCrashed):
                proxy.checkin_name(name).get(timeout=TIMEOUT)

    threads = [threading.Thread(target=work, args=(index,), daemon=True) for index in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(8):
            with lock:
                progress = answered[0]
            wait_until(lambda progress=progress: answered[0] >= progress + 15, timeout=TIMEOUT)
            incarnation = names.ref()
            kill(incarnation)
            wait_until(lambda incarnation=incarnation: names.current() not in (None, incarnation))
    finally:
        stop.set()
        for thread in threads:
            thread.join(TIMEOUT)
    assert clashes == []
    assert root.proxy().which_children().get(timeout=TIMEOUT)[0].restarts == 8
    root.stop()
    state = snapshot_state(path)
    held = state.holders()
    assert kept <= set(held)
    assert set(holding) <= set(held)


def test_names_answered_before_sigkill_are_never_handed_out_again(tmp_path: Path) -> None:
    path = tmp_path / "names.state"
    owner = sleeper()
    printed: list[str] = []
    owner_names: set[str] = set()
    try:
        for _ in range(5):
            child = subprocess.Popen(
                [sys.executable, str(CHILD_SCRIPT), str(path), str(owner.pid)],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert child.stdout is not None
                for _ in range(25):
                    line = child.stdout.readline()
                    assert line, "the child ended early"
                    kind, name = line.split()
                    (owner_names.add if kind == "owner" else printed.append)(name)
                child.send_signal(signal.SIGKILL)
                child.wait(timeout=TIMEOUT)
                for line in child.stdout:  # printed before the kill: answered too
                    kind, name = line.split()
                    (owner_names.add if kind == "owner" else printed.append)(name)
            finally:
                end(child)
        assert len(owner_names) == 1  # the live owner kept its name across the kills
        assert len(set(printed)) == len(printed)
        assert not owner_names & set(printed)
        ref = NamePool.start(state_path=path)
        pool = ref.proxy()
        assert pool.get_name_by_pid(owner.pid).get(timeout=TIMEOUT) in owner_names
        fresh = [pool.checkout_name().get(timeout=TIMEOUT) for _ in range(100)]
        assert not set(fresh) & (set(printed) | owner_names)
    finally:
        end(owner)


@pytest.mark.parametrize("moment", ["snapshot", "rotation"])
def test_a_sigkill_in_the_middle_of_a_snapshot_rewrite_loses_and_duplicates_nothing(
    tmp_path: Path, moment: str
) -> None:
    """Killed while the background snapshot is being written (its temporary file fsynced,
    not yet renamed), or after it while the journal starts over: the names answered are
    all still held, and none is handed out again."""
    path = tmp_path / "names.state"
    owner = sleeper()
    printed: list[str] = []
    owner_names: set[str] = set()

    def record(line: str) -> None:
        kind, name = line.split()
        (owner_names.add if kind == "owner" else printed.append)(name)

    try:
        child = subprocess.Popen(
            [sys.executable, str(CHILD_SCRIPT), str(path), str(owner.pid), moment], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None
            after = 0
            is_blocked = False
            while after < 20:
                line = child.stdout.readline()
                assert line, "the child ended early"
                if line.strip() == "blocked":
                    is_blocked = True
                    if moment == "rotation":
                        break  # the writer hangs: no more answers
                    continue
                record(line)
                after += is_blocked
                assert len(printed) < 5000, "the snapshot rewrite never started"
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=TIMEOUT)
            for line in child.stdout:  # printed before the kill: answered too
                if line.strip() != "blocked":
                    record(line)
        finally:
            end(child)
        assert len(printed) > 20 and len(owner_names) == 1
        assert not list(tmp_path.glob("names.state.corrupt-*"))
        ref = NamePool.start(state_path=path, source=CountingSource("fresh"))
        pool = ref.proxy()
        assert pool.get_name_by_pid(owner.pid).get(timeout=TIMEOUT) in owner_names
        holders = set(ref.ask(HOLDERS_REQUEST))
        assert set(printed) <= holders  # every answered checkout is still held
        fresh = [pool.checkout_name().get(timeout=TIMEOUT) for _ in range(stats(pool)["available_count"] + 5)]
        assert not set(fresh) & (set(printed) | owner_names)
        assert not list(tmp_path.glob("names.state.journal.new"))  # a rotation cut short is cleaned up
    finally:
        end(owner)


def test_a_change_writes_the_same_bytes_whatever_the_names_held(tmp_path: Path) -> None:
    """The journal cost is flat: a frame carries what changed, never the whole state.

    Old code: every frame held the whole state, ~25 bytes per name held, so a change with
    10,000 names held wrote ~250 KB instead of ~100 bytes.
    """

    def bytes_per_change(held: int) -> float:
        ref = NamePool.start(
            state_path=tmp_path / f"held-{held}" / "names.state", source=CountingSource(), chunk_size=held + 50
        )
        try:
            pool = ref.proxy()
            for index in range(held):
                pool.checkout_name(f"urn:held-{index:05}").get(timeout=TIMEOUT)
            journal = ref._actor_weakref()._journal  # type: ignore[attr-defined]
            before = (journal.frame_bytes_written, journal.frames_written)
            for index in range(50):
                name = pool.checkout_name(f"urn:probe-{index:02}").get(timeout=TIMEOUT)
                pool.checkin_name(name).get(timeout=TIMEOUT)
            written = journal.frame_bytes_written - before[0]
            assert journal.frames_written - before[1] == 100  # one frame per change, sequentially
            return written / 100
        finally:
            ref.stop()

    small, large = bytes_per_change(10), bytes_per_change(10_000)
    assert small < 200
    assert large <= small + 8  # the names differ by a few digits, nothing else
