"""Host leases (contract §7 "Host leases"): join, renew, cut off, quarantine, rejoin, conflicts.

A real redis-server; the holder's own clock is a fake monotonic where the code takes one.
The server's clock cannot be advanced, so the one test of a lease running out waits for
it (host_lease 3 s: 3 s to expire, 3 s of quarantine), with bounded waits on conditions.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from actors._errors import FleetUnavailable, StateDirInUse
from actors.fleet._connection import FleetSettings
from actors.fleet._hosts import CONFLICT_EVENT, SAFETY_MARGIN, FleetHost, fleet_status, load_token, renew_interval
from actors.fleet._names import StaleEpoch
from actors.names._state import ProcessStart
from supervision import _events
from supervision.testing import wait_until
from tests._redis import RedisServer

LEASE = 3.0


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_host(redis_server: RedisServer) -> Iterator[Callable[..., FleetHost]]:
    hosts: list[FleetHost] = []

    def make(host_id: str, **kwargs: Any) -> FleetHost:
        settings = FleetSettings.parse(redis_server.url, host_id=host_id, host_lease=LEASE, fleet_timeout=0.5)
        host = FleetHost(settings, **kwargs)
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        host.stop(leave=False)


def test_a_second_live_daemon_with_the_same_host_id_is_refused(make_host: Callable[..., FleetHost]) -> None:
    first = make_host("host-a", token="state-dir-1")
    first.join()
    with pytest.raises(StateDirInUse, match="host-a"):
        make_host("host-a", token="state-dir-2").join()
    restarted = make_host("host-a", token="state-dir-1")  # the same state dir: the same daemon again
    restarted.join()
    assert restarted.epoch is not None and first.epoch is not None and restarted.epoch > first.epoch
    restarted.stop(leave=True)
    other = make_host("host-a", token="state-dir-2")  # a left host is not live: its id is free
    other.join()
    assert other.epoch > restarted.epoch  # type: ignore[operator]


def test_the_token_of_a_state_dir_is_kept(tmp_path: Any) -> None:
    token = load_token(tmp_path)
    assert load_token(tmp_path) == token and len(token) == 32
    assert (tmp_path / "fleet.token").stat().st_mode & 0o777 == 0o600


def test_the_renewal_keeps_two_chances_before_the_holders_deadline() -> None:
    assert renew_interval(15.0) == 5.0
    assert renew_interval(3.0) == 0.5  # (3 - 2) / 2: twice before the deadline
    assert all(2 * renew_interval(lease) <= lease - SAFETY_MARGIN for lease in (3.0, 4.0, 15.0, 60.0))


def test_a_host_without_a_confirmed_renewal_is_cut_off_then_rejoins_with_a_new_epoch(
    make_host: Callable[..., FleetHost],
) -> None:
    clock = FakeMonotonic()
    host = make_host("host-a", monotonic=clock)
    host.join()
    old_epoch = host.current_epoch()
    name, _ = host.names.checkout(host.id, old_epoch, "urn:w", None)  # None: no chunk yet
    host.names.accept(host.id, old_epoch, ["furiosa"])
    name, _ = host.names.checkout(host.id, old_epoch, "urn:w", None)
    assert name == "furiosa"
    with _events.subscribe(kinds={"storage_failed", "storage_recovered"}) as events:
        clock.now += LEASE - SAFETY_MARGIN + 0.001  # no renewal confirmed by lease - 2 s
        assert host.is_cut_off()
        with pytest.raises(FleetUnavailable, match="cut off"):
            host.current_epoch()  # at once: nothing is sent
        assert events.get(timeout=5).kind == "storage_failed"
        host.tick()  # the renewal thread's step: it joins again
        assert events.get(timeout=5).kind == "storage_recovered"
    new_epoch = host.current_epoch()
    assert new_epoch > old_epoch
    with pytest.raises(StaleEpoch):  # a request of the old epoch is refused by the script
        host.names.checkin(host.id, old_epoch, "furiosa")
    assert host.names.name_of(host.id, "urn:w", None) == "furiosa"  # still this host's: no conflict
    assert host.conflicts == []


def test_a_renewal_refused_for_a_stale_epoch_makes_the_host_rejoin(make_host: Callable[..., FleetHost]) -> None:
    clock = FakeMonotonic()
    host = make_host("host-a", monotonic=clock, token="t")
    host.join()
    first = host.current_epoch()
    twin = make_host("host-a", token="t")  # the same daemon restarted meanwhile took a new epoch
    twin.join()
    host.tick()
    assert host.current_epoch() > twin.epoch > first  # type: ignore[operator]


def test_the_renewal_survives_a_server_restart_and_reloads_its_scripts(
    make_host: Callable[..., FleetHost], redis_server: RedisServer
) -> None:
    clock = FakeMonotonic()
    host = make_host("host-a", monotonic=clock)
    host.join()
    epoch = host.current_epoch()
    host.names.client.script_flush()  # NOSCRIPT on the next call: redis-py loads it again
    assert host.tick() == host.interval
    redis_server.restart()  # appendfsync always: the lease is there; no script cached
    assert wait_until(lambda: host.tick() == host.interval, timeout=5)
    assert host.current_epoch() == epoch


def test_a_failed_call_refuses_the_next_at_once_until_a_renewal_gets_through(
    make_host: Callable[..., FleetHost], redis_server: RedisServer
) -> None:
    host = make_host("host-a", monotonic=FakeMonotonic())
    host.join()
    host.note_failure(FleetUnavailable(errno.ETIMEDOUT, "the fleet store did not answer within 0.5s"))
    with pytest.raises(FleetUnavailable, match="0.5s"):
        host.current_epoch()
    host.tick()
    assert host.current_epoch() == host.epoch


def test_a_host_that_stops_renewing_loses_its_names_to_quarantine_then_to_others_and_learns_the_conflict(
    make_host: Callable[..., FleetHost], spawn_sleeper: Any, log_records: list[dict[str, Any]]
) -> None:
    zombie = make_host("host-a")  # joins, then never renews (its thread is never started)
    zombie.join()
    epoch = zombie.current_epoch()
    worker = spawn_sleeper().pid
    zombie.names.accept(zombie.id, epoch, ["kept", "taken"])
    start = ProcessStart(123, "boot")
    assert zombie.names.checkout(zombie.id, epoch, "urn:kept", None)[0] == "kept"
    assert zombie.names.checkout(zombie.id, epoch, worker, start)[0] == "taken"
    other = make_host("host-b")
    other.start()  # renews every 0.5 s; each renewal sweeps the hosts whose lease ran out
    other_epoch = other.current_epoch()
    status = wait_until(lambda: _quarantined(other), timeout=LEASE + 3)
    assert set(status["quarantined"]) == {"kept", "taken"}
    assert {host["host"]: host["state"] for host in status["hosts"]} == {"host-a": "gone", "host-b": "live"}
    # kept from everyone while quarantined
    assert other.names.checkout(other.id, other_epoch, "urn:b", None) == (None, False)
    with pytest.raises(StaleEpoch):
        zombie.names.checkin(zombie.id, epoch, "taken")  # the zombie's old epoch is refused
    # one host lease later the names return to the pool, and another host gets one
    got = wait_until(lambda: other.names.checkout(other.id, other_epoch, "urn:b", None)[0], timeout=LEASE + 3)
    assert got == "taken"  # the top of the stack
    with _events.subscribe(kinds={CONFLICT_EVENT}) as events:
        conflicts = zombie.join()  # the zombie gets through again: a new epoch
        event = events.get(timeout=5)
    assert [conflict["name"] for conflict in conflicts] == ["taken"]
    errors = [record for record in log_records if record["level"].name == "ERROR"]
    assert any("'taken'" in record["message"] and "host-b" in record["message"] for record in errors)
    assert event.name == "taken" and event.path == "names"
    assert event.data == {"host": "host-a", "held_by": "host-b", "owners": [worker], "epoch": zombie.epoch}
    assert zombie.names.name_of(zombie.id, worker, start) is None  # its worker must take another name
    assert zombie.names.name_of(zombie.id, "urn:kept", None) == "kept"  # no one took it: reclaimed
    assert other.names.name_of(other.id, "urn:b", None) == "taken"
    status = fleet_status(zombie.names, zombie)
    assert status["conflicts"][0]["name"] == "taken"
    assert status["names_by_host"] == {"host-a": {"kept": ["urn:kept"]}, "host-b": {"taken": ["urn:b"]}}


def _quarantined(host: FleetHost) -> dict[str, Any] | None:
    status = fleet_status(host.names, host)
    return status if status["quarantined"] else None
