"""Fleet names (contract §7 "Names"): NamePool(fleet=...) keeps its state in a real redis-server.

Several pools with different host ids on one server stand in for several hosts. Time for
the reap comes from a ManualClock; the store's clock is the server's own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from actors._errors import FleetUnavailable, InvalidName, InvalidOwner, NotPermitted
from actors.fleet._connection import FleetSettings
from actors.fleet._hosts import FleetHost
from actors.names._pool import FLEET_REQUEST, HOLDERS_REQUEST, KeyCheckout, NamePool, PeerCall
from actors.names._source import ThemedSource
from actors.names._state import ProcessStart
from supervision import ClientError, ManualClock, StorageError, _events
from supervision.testing import wait_until
from tests._redis import RedisServer

TIMEOUT = 10.0
FLEET_TIMEOUT = 0.5


@pytest.fixture
def start_pool(redis_server: RedisServer) -> Iterator[Callable[..., Any]]:
    """Start NamePools in one fleet: `start_pool("host-a", **kwargs)` -> its ActorRef."""
    refs: list[Any] = []

    def start(host_id: str, **kwargs: Any) -> Any:
        settings = FleetSettings.parse(
            redis_server.url, host_id=host_id, host_lease=kwargs.pop("host_lease", 6.0), fleet_timeout=FLEET_TIMEOUT
        )
        kwargs.setdefault("clock", ManualClock())
        ref = NamePool.start(fleet=settings, **kwargs)
        refs.append(ref)
        return ref

    yield start
    for ref in refs:
        if ref.is_alive():
            ref.stop()


def test_names_are_unique_across_hosts_and_reused_last_in_first_out(start_pool: Callable[..., Any]) -> None:
    a = start_pool("host-a").proxy()
    b = start_pool("host-b").proxy()
    first = a.checkout_name().get(timeout=TIMEOUT)
    second = b.checkout_name().get(timeout=TIMEOUT)
    assert first != second
    assert [first, second] == ["furiosa", "nux"]  # one chunk, fleet-wide, in source order
    a.checkin_name(first).get(timeout=TIMEOUT)
    assert b.checkout_name().get(timeout=TIMEOUT) == first  # the checked-in name, on top of the stack
    stats = a.pool_stats().get(timeout=TIMEOUT)
    assert stats["checked_out_count"] == 2 and stats["all_used_count"] == 12 and stats["chunk_size"] == 12


def test_an_owner_gets_its_name_back_and_str_owners_are_fleet_wide(start_pool: Callable[..., Any]) -> None:
    a = start_pool("host-a").proxy()
    b = start_pool("host-b").proxy()
    name = a.checkout_name("urn:agent:1").get(timeout=TIMEOUT)
    assert a.checkout_name("urn:agent:1").get(timeout=TIMEOUT) == name
    assert b.checkout_name("urn:agent:1").get(timeout=TIMEOUT) == name  # the same owner, wherever it asks
    assert b.get_name_by_pid("urn:agent:1").get(timeout=TIMEOUT) == name
    b.dissociate("urn:agent:1").get(timeout=TIMEOUT)
    assert a.get_name_by_pid("urn:agent:1").get(timeout=TIMEOUT) is None


def test_int_owners_are_pids_of_their_own_host(start_pool: Callable[..., Any], spawn_sleeper: Any) -> None:
    a = start_pool("host-a").proxy()
    b = start_pool("host-b").proxy()
    pid = spawn_sleeper().pid
    on_a = a.checkout_name(pid).get(timeout=TIMEOUT)
    on_b = b.checkout_name(pid).get(timeout=TIMEOUT)  # the same number on another host: another process
    assert on_a != on_b
    assert a.get_name_by_pid(pid).get(timeout=TIMEOUT) == on_a
    assert b.get_name_by_pid(pid).get(timeout=TIMEOUT) == on_b


def test_associate_across_hosts_is_refused_and_within_a_host_shares(
    start_pool: Callable[..., Any], spawn_sleeper: Any
) -> None:
    a_ref = start_pool("host-a")
    a = a_ref.proxy()
    b = start_pool("host-b").proxy()
    parent, child = spawn_sleeper().pid, spawn_sleeper().pid
    name = a.checkout_name(parent).get(timeout=TIMEOUT)
    with pytest.raises(NotPermitted, match="host-a"):
        b.associate_name(name, child).get(timeout=TIMEOUT)
    assert b.get_name_by_pid(child).get(timeout=TIMEOUT) is None
    a.associate_name(name, child).get(timeout=TIMEOUT)  # a worker inheriting its parent's identity
    assert a.get_name_by_pid(child).get(timeout=TIMEOUT) == name
    a.dissociate(parent).get(timeout=TIMEOUT)
    assert a_ref.ask(HOLDERS_REQUEST, timeout=TIMEOUT) == {name: [child]}  # shared, not returned
    a.dissociate(child).get(timeout=TIMEOUT)
    assert a_ref.ask(HOLDERS_REQUEST, timeout=TIMEOUT) == {}
    # restoring an identity: a name not checked out is checked out for the owner
    b.associate_name(name, "urn:restored").get(timeout=TIMEOUT)
    assert a.get_name_by_pid("urn:restored").get(timeout=TIMEOUT) == name


def test_bad_input_is_a_client_error_and_the_pool_keeps_running(start_pool: Callable[..., Any]) -> None:
    ref = start_pool("host-a")
    pool = ref.proxy()
    for call in (
        lambda: pool.checkout_name(True),
        lambda: pool.checkout_name(-3),
        lambda: pool.checkout_name(1.5),
        lambda: pool.checkin_name("../etc"),
        lambda: pool.checkin_name(None),
        lambda: pool.associate_name("a/b", "urn:x"),
        lambda: pool.dissociate(["x"]),
        lambda: pool.reconcile(["ok", ""]),
        lambda: pool.reconcile("furiosa"),
    ):
        with pytest.raises(ClientError):
            call().get(timeout=TIMEOUT)
    with pytest.raises(InvalidOwner):
        pool.get_name_by_pid(object()).get(timeout=TIMEOUT)
    with pytest.raises(InvalidName):
        pool.associate_name("", 5).get(timeout=TIMEOUT)
    with pytest.raises(ClientError):
        ref.ask(KeyCheckout("", "urn:w"), timeout=TIMEOUT)
    assert ref.is_alive()
    assert pool.checkout_name().get(timeout=TIMEOUT) == "furiosa"
    pool.checkin_name("never-checked-out").get(timeout=TIMEOUT)  # a warning, nothing else
    assert pool.checkin_name(pool.default_name().get(timeout=TIMEOUT)).get(timeout=TIMEOUT) is None


def test_many_hosts_allocating_chunks_and_overflow_names_at_once_never_duplicate(
    start_pool: Callable[..., Any],
) -> None:
    # A short list, so that most names are overflow names numbered fleet-wide.
    source = ThemedSource("wasteland", names=["rust", "dust", "ash"])
    pools = [start_pool(f"host-{index}", source=source, chunk_size=4).proxy() for index in range(3)]
    got: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def hammer(index: int) -> None:
        pool = pools[index % 3]
        try:
            for round_ in range(15):
                name = pool.checkout_name(f"urn:{index}:{round_}").get(timeout=TIMEOUT)
                with lock:
                    got.append((index, name))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=hammer, args=(index,)) for index in range(9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    names = [name for _, name in got]
    assert len(names) == 9 * 15
    assert len(set(names)) == len(names), "a name was handed to two holders"
    assert {"rust", "dust", "ash"} <= set(names)
    overflow = sorted(int(name.split("-")[1]) for name in names if name.startswith("wasteland-"))
    assert len(overflow) == len(set(overflow)) == len(names) - 3
    stats = pools[0].pool_stats().get(timeout=TIMEOUT)
    assert stats["checked_out_count"] == len(names)


def test_a_paused_server_answers_fleet_unavailable_within_the_timeout_and_recovers(
    start_pool: Callable[..., Any], redis_server: RedisServer
) -> None:
    ref = start_pool("host-a")
    pool = ref.proxy()
    held = pool.checkout_name("urn:before").get(timeout=TIMEOUT)
    with _events.subscribe(kinds={"storage_failed", "storage_recovered"}) as events:
        redis_server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(FleetUnavailable) as raised:
                pool.checkout_name("urn:during").get(timeout=TIMEOUT)
            assert time.monotonic() - started < FLEET_TIMEOUT + 1.0  # never a 10 s retry loop
            assert isinstance(raised.value, StorageError) and "0.5s" in str(raised.value)
            started = time.monotonic()
            with pytest.raises(FleetUnavailable):
                pool.checkin_name(held).get(timeout=TIMEOUT)  # refused at once: the store is known down
            assert time.monotonic() - started < FLEET_TIMEOUT
            assert ref.is_alive()
            failed = events.get(timeout=TIMEOUT)
            assert failed.kind == "storage_failed" and failed.path == "names"
        finally:
            redis_server.resume()
        recovered = events.get(timeout=TIMEOUT)
        assert recovered.kind == "storage_recovered"
    after = wait_until(lambda: _succeeds(lambda: pool.checkout_name("urn:after").get(timeout=TIMEOUT)), timeout=TIMEOUT)
    assert pool.get_name_by_pid("urn:before").get(timeout=TIMEOUT) == held
    # The refused checkout may still have run once the server woke (its effect is unknown,
    # like any call whose answer was lost): asking again gets that same name, never a second.
    during = pool.get_name_by_pid("urn:during").get(timeout=TIMEOUT)
    again = pool.checkout_name("urn:during").get(timeout=TIMEOUT)
    assert during in (None, again)
    assert len({held, after, again}) == 3


def test_a_killed_and_restarted_server_keeps_the_names_and_reloads_the_scripts(
    start_pool: Callable[..., Any], redis_server: RedisServer
) -> None:
    a = start_pool("host-a").proxy()
    b = start_pool("host-b").proxy()
    held = {a.checkout_name(f"urn:{index}").get(timeout=TIMEOUT) for index in range(5)}
    redis_server.kill()
    with pytest.raises(FleetUnavailable):
        a.checkout_name("urn:down").get(timeout=TIMEOUT)
    redis_server.restart()  # appendfsync always: everything answered is there; no script cached
    later = wait_until(lambda: _succeeds(lambda: b.checkout_name("urn:later").get(timeout=TIMEOUT)), timeout=TIMEOUT)
    assert later not in held
    wait_until(lambda: _succeeds(lambda: a.pool_stats().get(timeout=TIMEOUT)), timeout=TIMEOUT)
    assert {a.get_name_by_pid(f"urn:{index}").get(timeout=TIMEOUT) for index in range(5)} == held
    assert a.pool_stats().get(timeout=TIMEOUT)["checked_out_count"] == 6


def test_a_reused_pid_is_another_process_and_each_host_reaps_only_its_own_pids(
    start_pool: Callable[..., Any], spawn_sleeper: Any, redis_server: RedisServer
) -> None:
    clock = ManualClock()
    a_ref = start_pool("host-a", clock=clock, reap_interval=1.0)
    a = a_ref.proxy()
    b_host = FleetHost(FleetSettings.parse(redis_server.url, host_id="host-b", host_lease=6.0))
    b_host.start()
    try:
        pid = spawn_sleeper().pid
        a.checkout_name().get(timeout=TIMEOUT)  # the first chunk
        # An earlier process with this pid (other start ticks) held a name on host-a ...
        stale = ProcessStart(1, "another-boot")
        b_epoch = b_host.current_epoch()
        _old_name, _ = b_host.names.checkout("host-a", _epoch_of(a_ref), pid, stale)
        # ... and host-b holds a name for a pid that is dead here (it lives on host-b).
        dead = spawn_sleeper()
        dead.kill()
        dead.wait()
        b_name, _ = b_host.names.checkout("host-b", b_epoch, dead.pid, ProcessStart(7, "boot-b"))
        assert a.get_name_by_pid(pid).get(timeout=TIMEOUT) is None  # not this process's name
        new_name = a.checkout_name(pid).get(timeout=TIMEOUT)  # the old record ends first
        assert new_name != b_name
        assert a_ref.ask(HOLDERS_REQUEST, timeout=TIMEOUT)[new_name] == [pid]
        assert len(a_ref.ask(HOLDERS_REQUEST, timeout=TIMEOUT)) == 2  # the first chunk's and this one
        clock.advance(1.0)  # a reap tick on host-a
        assert a.get_name_by_pid(pid).get(timeout=TIMEOUT) == new_name  # alive: kept
        assert b_host.names.name_of("host-b", dead.pid, ProcessStart(7, "boot-b")) == b_name  # not host-a's
    finally:
        b_host.stop()


def test_a_dead_owner_is_reaped_and_its_name_reused(start_pool: Callable[..., Any], spawn_sleeper: Any) -> None:
    clock = ManualClock()
    pool = start_pool("host-a", clock=clock, reap_interval=1.0).proxy()
    child = spawn_sleeper()
    name = pool.checkout_name(child.pid).get(timeout=TIMEOUT)
    child.kill()
    child.wait()
    with _events.subscribe(kinds={"name_reaped"}) as events:
        clock.advance(1.0)
        event = events.get(timeout=TIMEOUT)
    assert event.name == name and event.data["owners"] == [child.pid]
    assert pool.checkout_name().get(timeout=TIMEOUT) == name


def test_a_worker_key_gets_its_last_name_back(start_pool: Callable[..., Any], spawn_sleeper: Any) -> None:
    ref = start_pool("host-a")
    other = start_pool("host-b")
    first = ref.ask(KeyCheckout("workers/w1", "urn:w1:1"), timeout=TIMEOUT)
    process = spawn_sleeper()
    ref.proxy().associate_name(first, process.pid).get(timeout=TIMEOUT)
    ref.proxy().dissociate("urn:w1:1").get(timeout=TIMEOUT)
    # the same key on another host is another worker
    assert other.ask(KeyCheckout("workers/w1", "urn:b:w1"), timeout=TIMEOUT) != first
    # a live process of the key holds the name: never joined, a fresh one
    assert ref.ask(KeyCheckout("workers/w1", "urn:w1:2"), timeout=TIMEOUT) != first
    process.kill()
    process.wait()
    ref.proxy().dissociate("urn:w1:2").get(timeout=TIMEOUT)
    assert ref.ask(KeyCheckout("workers/w1", "urn:w1:3"), timeout=TIMEOUT) != first  # the key moved on
    third = ref.ask(KeyCheckout("workers/w2", "urn:w2:1"), timeout=TIMEOUT)
    ref.proxy().dissociate("urn:w2:1").get(timeout=TIMEOUT)  # back to the pool, remembered for w2
    assert ref.ask(KeyCheckout("workers/w2", "urn:w2:2"), timeout=TIMEOUT) == third


def test_peer_calls_act_only_for_the_caller(start_pool: Callable[..., Any], spawn_sleeper: Any) -> None:
    ref = start_pool("host-a")
    peer, other = spawn_sleeper().pid, spawn_sleeper().pid
    mine = ref.ask(PeerCall(peer, "checkout_name"), timeout=TIMEOUT)
    theirs = ref.ask(PeerCall(other, "checkout_name"), timeout=TIMEOUT)
    with pytest.raises(NotPermitted):
        ref.ask(PeerCall(peer, "checkin_name", (theirs,)), timeout=TIMEOUT)
    with pytest.raises(NotPermitted):
        ref.ask(PeerCall(peer, "associate_name", (theirs,)), timeout=TIMEOUT)
    ref.ask(PeerCall(peer, "checkin_name", (mine,)), timeout=TIMEOUT)
    assert ref.proxy().get_name_by_pid(peer).get(timeout=TIMEOUT) is None


def test_reconcile_and_reset_act_on_the_store(start_pool: Callable[..., Any], spawn_sleeper: Any) -> None:
    a_ref = start_pool("host-a")
    a = a_ref.proxy()
    b = start_pool("host-b").proxy()
    live = spawn_sleeper().pid
    kept = a.checkout_name(live).get(timeout=TIMEOUT)
    dropped = a.checkout_name("urn:gone").get(timeout=TIMEOUT)
    on_b = b.checkout_name("urn:b").get(timeout=TIMEOUT)
    a.reconcile(["restored", on_b]).get(timeout=TIMEOUT)
    assert set(a_ref.ask(HOLDERS_REQUEST, timeout=TIMEOUT)) == {kept, "restored"}  # on_b is host-b's
    assert dropped not in a_ref.ask(HOLDERS_REQUEST, timeout=TIMEOUT)
    assert b.get_name_by_pid("urn:b").get(timeout=TIMEOUT) == on_b
    fleet = a_ref.ask(FLEET_REQUEST, timeout=TIMEOUT)
    assert {host["host"] for host in fleet["hosts"]} == {"host-a", "host-b"}
    assert fleet["names_by_host"]["host-b"] == {on_b: ["urn:b"]}
    a.reset().get(timeout=TIMEOUT)
    assert a.pool_stats().get(timeout=TIMEOUT)["all_used_count"] == 0


def _epoch_of(ref: Any) -> int:
    actor = ref._actor_weakref()
    return actor._fleet_host.current_epoch()


def _succeeds(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except FleetUnavailable:
        return None


def test_a_cut_off_host_refuses_name_changes_at_once_and_rejoins_with_a_new_epoch(
    redis_server: RedisServer,
) -> None:
    now = [1000.0]
    settings = FleetSettings.parse(redis_server.url, host_id="host-a", host_lease=6.0, fleet_timeout=FLEET_TIMEOUT)
    host = FleetHost(settings, monotonic=lambda: now[0])  # the holder's own clock, advanced by hand
    host.start()
    ref = NamePool.start(fleet=host, clock=ManualClock())
    try:
        pool = ref.proxy()
        name = pool.checkout_name("urn:w").get(timeout=TIMEOUT)
        epoch = host.epoch
        with _events.subscribe(kinds={"storage_failed", "storage_recovered"}) as events:
            now[0] += 6.0 - 2.0 + 0.01  # no renewal confirmed by host_lease - 2 s on its own clock
            started = time.monotonic()
            with pytest.raises(FleetUnavailable, match="cut off"):
                pool.checkin_name(name).get(timeout=TIMEOUT)
            assert time.monotonic() - started < FLEET_TIMEOUT
            assert events.get(timeout=TIMEOUT).kind == "storage_failed"
            assert events.get(timeout=TIMEOUT).kind == "storage_recovered"  # the renewal thread rejoined
        assert host.epoch is not None and epoch is not None and host.epoch > epoch
        assert pool.get_name_by_pid("urn:w").get(timeout=TIMEOUT) == name  # no one took it meanwhile
        pool.checkin_name(name).get(timeout=TIMEOUT)
        assert ref.is_alive()
    finally:
        ref.stop()
        host.stop()


def test_a_pool_started_alone_joins_with_a_url_and_leaves_when_it_stops(redis_server: RedisServer) -> None:
    ref = NamePool.start(fleet=redis_server.url + "?namespace=alone", clock=ManualClock())
    try:
        name = ref.proxy().checkout_name("urn:alone").get(timeout=TIMEOUT)
        hosts = ref.ask(FLEET_REQUEST, timeout=TIMEOUT)["hosts"]
        assert [host["state"] for host in hosts] == ["live"]
        assert ref.ask(FLEET_REQUEST, timeout=TIMEOUT)["namespace"] == "alone"
    finally:
        ref.stop()
    with pytest.raises(TypeError, match="fleet must be"):
        NamePool(fleet=42)
    again = NamePool.start(fleet=redis_server.url + "?namespace=alone", clock=ManualClock())
    try:  # the same host (the hostname) is back within its quarantine: its name with it
        assert again.proxy().get_name_by_pid("urn:alone").get(timeout=TIMEOUT) == name
    finally:
        again.stop()


def test_a_store_paused_past_the_lease_cuts_the_host_off_and_it_rejoins_with_its_names(
    start_pool: Callable[..., Any], redis_server: RedisServer
) -> None:
    ref = start_pool("host-a", host_lease=3.0)
    pool = ref.proxy()
    name = pool.checkout_name("urn:kept").get(timeout=TIMEOUT)
    host = ref._actor_weakref()._fleet_host
    epoch = host.epoch
    redis_server.pause()
    try:
        wait_until(host.is_cut_off, timeout=TIMEOUT)  # 3 - 2 s after the last confirmed renewal
        started = time.monotonic()
        with pytest.raises(FleetUnavailable):
            pool.checkin_name(name).get(timeout=TIMEOUT)
        assert time.monotonic() - started < FLEET_TIMEOUT
        deadline = host.deadline
        # past the server's expiry too (processing time of that renewal + 3 s)
        wait_until(lambda: time.monotonic() > deadline + 2.1, timeout=TIMEOUT, interval=0.05)
    finally:
        redis_server.resume()
    wait_until(lambda: not host.is_cut_off() and not host.is_down, timeout=TIMEOUT)
    assert host.epoch > epoch
    assert pool.get_name_by_pid("urn:kept").get(timeout=TIMEOUT) == name  # quarantined, then taken back
    assert host.conflicts == []
    assert ref.is_alive()
