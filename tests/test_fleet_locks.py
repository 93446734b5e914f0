"""Worker locks shared fleet-wide as leases with fencing tokens (contract §7), on a real redis-server.

Two `LockSupervisor`s with different host ids in one process stand in for two hosts; a
partition of one host is a small proxy that stops forwarding, or the whole server paused.
Owners that the lock may SIGTERM are real child processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors._errors import FleetUnavailable, InvalidWorkerDir, Locked, LockLost, NotLocked
from actors.fleet._connection import FleetSettings
from actors.fleet._leases import RenewalJob, Renewer, WorkerLeases, list_worker_leases, owner_key
from actors.locks._record import LockInfo
from actors.locks._worker_lock import LEASE_QUERY, LockSupervisor, lock_child_id
from supervision import ClientError, Event, ManualClock, subscribe
from supervision.testing import wait_until
from tests._redis import RedisServer

T = 10.0
LEASE = 4.5  # renewals every 1.5 s; a holder without a confirmed renewal gives up after 2.5 s
TIMEOUT = 0.3  # fleet_timeout
HOLDER = Path(__file__).resolve().parent / "_fleet_lock_holder.py"


def settings(url: str, host_id: str, **overrides: Any) -> FleetSettings:
    values: dict[str, Any] = {"lock_lease": LEASE, "fleet_timeout": TIMEOUT, "on_lock_lost": "notify"}
    return FleetSettings.parse(url, host_id=host_id, **(values | overrides))


@pytest.fixture
def worker(tmp_path: Path) -> Path:
    path = tmp_path / "tree" / "w 1"  # a space: the key holds the path verbatim
    path.mkdir(parents=True)
    return path


@pytest.fixture
def start_host(redis_server: RedisServer) -> Callable[..., pykka.ActorRef[LockSupervisor]]:
    def start(host_id: str, *, clock: Any = None, url: str | None = None, **overrides: Any) -> Any:
        fleet = settings(url or redis_server.url, host_id, **overrides)
        return LockSupervisor.start(clock=clock, fleet=fleet)

    return start


def lock_of(host: pykka.ActorRef[LockSupervisor], worker: Path) -> pykka.ActorRef[Any]:
    return host.proxy().lock_for(str(worker)).get(timeout=T)


def lease_of(lock: pykka.ActorRef[Any]) -> Any:
    return lock.ask(LEASE_QUERY, timeout=T)


def store_lease(redis_server: RedisServer, worker: Path) -> tuple[dict[bytes, bytes], int]:
    with redis_server.client() as client:
        key = f"actors:lock:{worker.resolve()}"
        return client.hgetall(key), client.pttl(key)


def events_of(subscription: Any) -> list[Event]:
    found = []
    while True:
        try:
            found.append(subscription.get(timeout=0))
        except TimeoutError:
            return found


class Partition:
    """A Unix-socket proxy in front of the server: `cut()` stops forwarding both ways (the
    data waits, as in a partition: callers time out), `heal()` forwards it late."""

    def __init__(self, target: str, path: str) -> None:
        self.target, self.path = target, path
        self._open = threading.Event()
        self._open.set()
        self._sockets: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(path)
        self._listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def cut(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._open.set()
        for sock in [self._listener, *self._sockets]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.target)
            self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._open.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass


@pytest.fixture
def partition(redis_server: RedisServer, tmp_path: Path) -> Iterator[Partition]:
    proxy = Partition(redis_server.socket_path, str(tmp_path / "proxy.sock"))
    yield proxy
    proxy.close()


# -- the store's scripts ----------------------------------------------------------------------



def acquires(lock: Any, session: str) -> Callable[[], bool]:
    """A condition for `wait_until`: `lock` acquired for `session` (False while another holds it)."""

    def attempt() -> bool:
        try:
            lock.proxy().acquire(session).get(timeout=T)
            return True
        except Locked:
            return False

    return attempt

def test_an_acquire_whose_reply_was_lost_is_retried_and_gets_the_same_lease_and_fence(
    redis_server: RedisServer, worker: Path,
) -> None:
    leases = WorkerLeases(settings(redis_server.url, "host-a"))
    path, owner = str(worker), owner_key("host-a", 4242, 7, "boot")
    leases.acquire("/elsewhere", owner, pid=4242)  # connected, and the script loaded: one EVALSHA to go
    redis_server.pause()  # the acquire reaches the server's socket; its reply never comes back
    try:
        started = time.monotonic()
        with pytest.raises(FleetUnavailable, match="did not answer within 0.3s"):
            leases.acquire(path, owner, pid=4242, session_id="s1")
        assert time.monotonic() - started < TIMEOUT + 1.0  # never redis-py's long retry loop
    finally:
        redis_server.resume()
    wait_until(lambda: store_lease(redis_server, worker)[0] != {}, timeout=T)  # it was applied
    retried = leases.acquire(path, owner, pid=4242, session_id="s1")
    assert (retried.fence, retried.session_id) == (1, "s1")
    with redis_server.client() as client:
        assert client.get(f"actors:fence:{path}") == b"1"  # one acquisition, one fence
    with pytest.raises(Locked, match=r"held on host host-a by pid 4242 \(session s1\), fence 1"):
        leases.acquire(path, owner_key("host-b", 99, 1, "boot"), pid=99, session_id="s2")
    leases.close()


def test_a_renewal_sets_the_expiry_on_the_servers_clock_and_never_adds(redis_server: RedisServer, worker: Path) -> None:
    leases = WorkerLeases(settings(redis_server.url, "host-a"))
    path, owner = str(worker), owner_key("host-a", 1, 1, "b")
    fence = leases.acquire(path, owner, pid=1).fence
    for _ in range(5):
        assert leases.renew(path, owner, fence) == (True, "")
    _, pttl = store_lease(redis_server, worker)
    assert LEASE * 1000 - 1000 < pttl <= LEASE * 1000
    renewed, why = leases.renew(path, owner, fence + 1)
    assert not renewed and "not under fence 2" in why
    renewed, why = leases.renew(path, owner_key("host-b", 1, 1, "b"), fence)
    assert not renewed and "held on host host-a" in why
    leases.close()


def test_release_by_a_non_owner_or_after_expiry_is_refused_with_a_clear_error(
    redis_server: RedisServer, worker: Path,
) -> None:
    leases = WorkerLeases(settings(redis_server.url, "host-a"))
    path, owner, other = str(worker), owner_key("host-a", 1, 1, "b"), owner_key("host-b", 2, 1, "b")
    fence = leases.acquire(path, owner, pid=1, session_id="mine").fence
    with pytest.raises(Locked, match="held on host host-a by pid 1 .session mine. under fence 1"):
        leases.release(path, other, fence)
    assert leases.read(path) is not None  # nothing removed
    with redis_server.client() as client:
        client.pexpire(f"actors:lock:{path}", 1)  # the lease runs out on the server
    wait_until(lambda: leases.read(path) is None, timeout=T)
    with pytest.raises(LockLost, match="under fence 1 has run out"):
        leases.release(path, owner, fence)
    assert leases.renew(path, owner, fence)[0] is False
    leases_b = WorkerLeases(settings(redis_server.url, "host-b"))
    successor = leases_b.acquire(path, other, pid=2, session_id="next")
    assert successor.fence == fence + 1
    with pytest.raises(LockLost, match="held on host host-b by pid 2"):
        leases.release(path, owner, fence)  # a late release never ends the successor's lease
    assert leases.read(path).fence == successor.fence  # type: ignore[union-attr]
    assert [(lease["path"], lease["host"], lease["fence"]) for lease in list_worker_leases(leases.settings)] == [
        (path, "host-b", 2)]
    leases.close()
    leases_b.close()


def test_renewals_waiting_together_go_in_one_pipeline_and_a_paused_store_fails_them_within_one_timeout(
    redis_server: RedisServer,
) -> None:
    leases = WorkerLeases(settings(redis_server.url, "host-a"))
    owner = owner_key("host-a", 1, 1, "b")
    paths = [f"/srv/tree/w{index}" for index in range(200)]
    fences = {path: leases.acquire(path, owner, pid=1).fence for path in paths}
    outcomes = leases.renew_many([(path, owner, fences[path]) for path in paths] + [
        ("/srv/tree/w0", owner, fences["/srv/tree/w0"] + 1), ("/srv/tree/never", owner, 1)])
    assert outcomes[:200] == [("renewed", "")] * 200
    assert [outcome for outcome, _ in outcomes[200:]] == ["refused", "refused"]
    renewer = Renewer(leases)
    answers: list[tuple[str, str]] = []
    answered = threading.Event()

    def done(sent_at: float, outcome: str, detail: str) -> None:
        answers.append((outcome, detail))
        if len(answers) == len(paths):
            answered.set()

    redis_server.pause()
    try:
        started = time.monotonic()
        for path in paths:
            renewer.submit(RenewalJob(path, owner, fences[path], time.monotonic, done))
        assert answered.wait(T)
        elapsed = time.monotonic() - started
    finally:
        redis_server.resume()
        renewer.close()
    assert {outcome for outcome, _ in answers} == {"unavailable"}
    assert elapsed < 3 * TIMEOUT + 1.0  # a few batches, each one timeout: never 200 timeouts in a row
    leases.close()


def test_bad_paths_and_wrong_types_are_client_errors_and_the_lock_stays_alive(
    start_host: Callable[..., Any], redis_server: RedisServer, worker: Path,
) -> None:
    leases = WorkerLeases(settings(redis_server.url, "host-a"))
    for call in (
        lambda: leases.acquire("relative/dir", "o", pid=1),
        lambda: leases.acquire(str(worker), "", pid=1),
        lambda: leases.acquire(str(worker), "o", pid="1"),  # type: ignore[arg-type]
        lambda: leases.renew(str(worker), "o", "1"),  # type: ignore[arg-type]
        lambda: leases.release(str(worker), "o", 0),
        lambda: leases.read(b"/bytes"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ClientError):
            call()
    leases.close()
    host = start_host("host-a")
    with pytest.raises(ClientError):
        host.proxy().lock_for(123).get(timeout=T)
    missing = lock_of(host, worker / "missing")
    with pytest.raises(InvalidWorkerDir):
        missing.proxy().acquire("s").get(timeout=T)
    assert store_lease(redis_server, worker / "missing")[0] == {}  # no lease for a directory it cannot use
    lock = lock_of(host, worker)
    for args in ((5,), ("s", "not a pid"), ("s", -1), ("\udcff",)):
        with pytest.raises(ClientError):
            lock.proxy().acquire(*args).get(timeout=T)
    with pytest.raises(ClientError):
        lock.proxy().release(owner=[1]).get(timeout=T)
    assert lock.is_alive() and lock.proxy().status().get(timeout=T) == "unlocked"
    assert lock.proxy().acquire("ok").get(timeout=T).fence == 1


# -- two hosts ---------------------------------------------------------------------------------


def test_another_hosts_live_lease_is_locked_and_a_host_that_stops_renewing_lets_it_expire(
    start_host: Callable[..., Any], redis_server: RedisServer, worker: Path, spawn_sleeper: Callable[[], Any],
) -> None:
    clock_a, clock_b = ManualClock(), ManualClock()
    host_a, host_b = start_host("host-a", clock=clock_a), start_host("host-b", clock=clock_b)
    owner_a = spawn_sleeper()
    lock_a, lock_b = lock_of(host_a, worker), lock_of(host_b, worker)
    taken = lock_a.proxy().acquire("sa", owner_a.pid).get(timeout=T)
    assert (taken.hostname, taken.fence) == ("host-a", 1)
    with pytest.raises(Locked, match=rf"held on host host-a by pid {owner_a.pid} \(session sa\)"):
        lock_b.proxy().acquire("sb").get(timeout=T)
    assert lock_b.proxy().status().get(timeout=T) == "held on host host-a"
    # Host a never advances its clock: it stops renewing; its lease runs out on the server.
    with subscribe(kinds={"lock_lost", "lock_broken"}) as events:
        wait_until(acquires(lock_b, "sb"), timeout=LEASE + 5)
        successor = lock_b.proxy().read().get(timeout=T)
        assert (successor.hostname, successor.pid, successor.fence) == ("host-b", os.getpid(), 2)
        (broken,) = events_of(events)
        assert broken.kind == "lock_broken" and broken.data["previous"]["hostname"] == "host-a"
        # Host a comes back: its renewal is refused by the store, so it learns it lost the lock.
        clock_a.advance(LEASE / 3)
        lost = events.get(timeout=T)
    assert (lost.kind, lost.data["fence"], lost.data["host"]) == ("lock_lost", 1, "host-a")
    assert "refused the renewal" in lost.data["reason"] and "host-b" in lost.data["reason"]
    with pytest.raises(LockLost, match="fence 1"):
        lock_a.proxy().release(owner_a.pid).get(timeout=T)
    assert owner_a.poll() is None  # on_lock_lost="notify": reported only
    assert lock_b.proxy().status().get(timeout=T) == f"locked by pid {os.getpid()} (session sb)"
    lock_b.proxy().release().get(timeout=T)
    assert store_lease(redis_server, worker)[0] == {}


def test_a_holder_cut_off_learns_it_lost_the_lock_and_terminates_its_owner_before_the_successor_acquires(
    start_host: Callable[..., Any], redis_server: RedisServer, worker: Path, partition: Partition,
    spawn_sleeper: Callable[[], Any], log_records: list[dict[str, Any]],
) -> None:
    host_a = start_host("host-a", url=partition.url, on_lock_lost="terminate")  # the real clock
    host_b = start_host("host-b")
    owner = spawn_sleeper()
    lock_a, lock_b = lock_of(host_a, worker), lock_of(host_b, worker)
    with subscribe(kinds={"lock_acquired", "lock_lost"}) as events:
        taken = lock_a.proxy().acquire("a1", owner.pid).get(timeout=T)
        fence = taken.fence
        partition.cut()

        wait_until(acquires(lock_b, "b1"), timeout=LEASE + 5, interval=0.05)
        owner_status = owner.poll()  # at the moment the successor holds the lock
        order = [(event.kind, event.path.split("/")[0], event.data.get("fence")) for event in events_of(events)]
    assert owner_status == -signal.SIGTERM
    assert order == [("lock_acquired", "locks", fence), ("lock_lost", "locks", fence),
                     ("lock_acquired", "locks", fence + 1)]
    assert any(record["level"].name == "ERROR" and "lost the fleet lock" in record["message"]
               for record in log_records)
    partition.heal()  # the cut-off host's late renewal (if any) and its release are refused
    with pytest.raises(LockLost, match=f"fence {fence}"):
        lock_a.proxy().release(owner.pid).get(timeout=T)
    leases_a = WorkerLeases(settings(partition.url, "host-a"))
    owner_a = owner_key("host-a", taken.pid, taken.start_ticks, taken.boot_id)
    assert leases_a.renew(str(worker), owner_a, fence)[0] is False
    with pytest.raises(LockLost):
        leases_a.release(str(worker), owner_a, fence)
    leases_a.close()
    assert store_lease(redis_server, worker)[0][b"host"] == b"host-b"
    assert lock_b.proxy().read().get(timeout=T).fence == fence + 1


def test_a_sigstopped_holder_process_is_fenced_out_and_learns_it_lost_the_lock_when_it_wakes(
    start_host: Callable[..., Any], redis_server: RedisServer, worker: Path,
) -> None:
    holder = subprocess.Popen(
        [sys.executable, str(HOLDER), redis_server.url, str(worker), str(LEASE)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None
        fence = int(holder.stdout.readline())  # it holds the lock for itself now
        os.kill(holder.pid, signal.SIGSTOP)
        lock_b = lock_of(start_host("host-b"), worker)

        wait_until(acquires(lock_b, "b1"), timeout=LEASE + 5, interval=0.05)
        assert lock_b.proxy().read().get(timeout=T).fence == fence + 1
        os.kill(holder.pid, signal.SIGCONT)  # its deadline has passed: it SIGTERMs its owner, itself
        _, stderr = holder.communicate(timeout=T)
        assert holder.returncode == -signal.SIGTERM, stderr
        assert "lost the fleet lock" in stderr
        hash_, _ = store_lease(redis_server, worker)
        assert (hash_[b"host"], int(hash_[b"fence"])) == (b"host-b", fence + 1)  # untouched by the late holder
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()
            holder.wait()


# -- the clock: renewals, the deadline ---------------------------------------------------------


def test_renewals_keep_the_lease_and_without_one_the_lock_is_lost_before_the_lease_ends_on_the_server(
    start_host: Callable[..., Any], redis_server: RedisServer, worker: Path, spawn_sleeper: Callable[[], Any],
    log_records: list[dict[str, Any]],
) -> None:
    clock = ManualClock()
    lock = lock_of(start_host("host-a", clock=clock, on_lock_lost="terminate"), worker)
    owner = spawn_sleeper()
    fence = lock.proxy().acquire("s", owner.pid).get(timeout=T).fence
    assert lease_of(lock)["deadline_in"] == pytest.approx(LEASE - 2.0)
    for _ in range(3):  # each confirmed renewal moves the deadline to its send time + lease - 2 s
        clock.advance(LEASE / 3)
        wait_until(lambda: lease_of(lock)["deadline_in"] == pytest.approx(LEASE - 2.0), timeout=T)
    redis_server.pause()
    try:
        with subscribe(kinds={"lock_lost"}) as events:
            clock.advance(LEASE / 3)  # this renewal times out: the lock still counts on its lease
            wait_until(lambda: not lease_of(lock)["is_renewing"], timeout=T)
            assert lease_of(lock)["deadline_in"] == pytest.approx(LEASE - 2.0 - LEASE / 3)
            assert owner.poll() is None
            clock.advance(LEASE - 2.0 - LEASE / 3)  # the deadline
            lost = events.get(timeout=T)
            assert (lost.kind, lost.path) == ("lock_lost", f"locks/{lock_child_id(str(worker.resolve()))}")
            assert lost.data["fence"] == fence and "no renewal confirmed within 2.5s" in lost.data["reason"]
            owner.wait(timeout=T)
            assert owner.returncode == -signal.SIGTERM
            assert any(record["level"].name == "ERROR" for record in log_records)
    finally:
        redis_server.resume()
    assert store_lease(redis_server, worker)[1] > 0  # the server has not ended it yet: we knew first
    with pytest.raises(LockLost):
        lock.proxy().check(owner.pid).get(timeout=T)
    assert lock.proxy().status().get(timeout=T) == "unlocked"  # the local record went with the lease


def retire_decisions(records: list[dict[str, Any]]) -> list[str]:
    """What each idle lock decided, from its DEBUG lines: "kept" or "retiring"."""
    return [("kept" if ": kept," in record["message"] else "retiring") for record in records
            if " idle for " in record["message"] and record["level"].name == "DEBUG"]


def test_a_lost_lock_stays_to_tell_its_living_owner_past_idle_retire_and_retires_once_it_is_dead(
    redis_server: RedisServer, worker: Path, spawn_sleeper: Callable[[], Any], log_records: list[dict[str, Any]]
) -> None:
    """The lock actor is where a lost lease is remembered: retiring it when idle would turn
    the owner's next call into a fresh lock's `NotLocked`, as if nothing had happened."""
    clock = ManualClock()
    # No owner-check ticks: the retire decision alone is watched (a tick queued counts as a caller).
    host = LockSupervisor.start(clock=clock, idle_retire=30.0, check_interval=3600.0,
                                fleet=settings(redis_server.url, "host-a"))
    try:
        lock = lock_of(host, worker)
        owner = spawn_sleeper()
        lock.proxy().acquire("s", owner.pid).get(timeout=T)
        redis_server.pause()
        try:
            with subscribe(kinds={"lock_lost"}) as events:
                clock.advance(LEASE)  # past the deadline: no renewal was confirmed
                assert events.get(timeout=T).data["pid"] == owner.pid
        finally:
            redis_server.resume()
        clock.advance(60.0)  # twice idle_retire: an idle lock with nothing to tell would retire now
        wait_until(lambda: retire_decisions(log_records), timeout=T)
        assert retire_decisions(log_records) == ["kept"]
        with pytest.raises(LockLost, match="was lost"):
            lock.proxy().check(owner.pid).get(timeout=T)  # the same actor, still there to say so
        with pytest.raises(LockLost, match="was lost"):
            lock.proxy().acquire("again", owner.pid).get(timeout=T)  # the owner is told once more
        lock.proxy().acquire("again", owner.pid).get(timeout=T)  # then it starts afresh
        lock.proxy().release(owner.pid).get(timeout=T)
        # Lost again, and this time the owner dies without asking: nobody is left to tell.
        lock.proxy().acquire("s", owner.pid).get(timeout=T)
        redis_server.pause()
        try:
            with subscribe(kinds={"lock_lost"}) as events:
                clock.advance(LEASE)
                events.get(timeout=T)
        finally:
            redis_server.resume()
        owner.kill()
        owner.wait(timeout=T)
        clock.advance(60.0)
        wait_until(lambda: not lock.is_alive(), timeout=T)
    finally:
        host.stop()


def test_a_paused_store_never_blocks_a_call_past_fleet_timeout_nor_crashes_the_lock(
    start_host: Callable[..., Any], redis_server: RedisServer, worker: Path,
) -> None:
    host = start_host("host-a", clock=ManualClock())
    lock = lock_of(host, worker)
    redis_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(FleetUnavailable):
            lock.proxy().acquire("s").get(timeout=T)
        assert time.monotonic() - started < TIMEOUT + 1.0
        assert lock.proxy().status().get(timeout=T) == "unlocked"  # nothing written here
    finally:
        redis_server.resume()
    # The lost reply's acquire was applied by the server: the retry gets that lease and fence.
    info = lock.proxy().acquire("s").get(timeout=T)
    assert info.fence == 1 and lock.is_alive()
    lock.proxy().release().get(timeout=T)


def test_the_server_killed_and_restarted_keeps_leases_and_fences_and_scripts_are_loaded_again(
    start_host: Callable[..., Any], redis_server: RedisServer, worker: Path,
) -> None:
    clock = ManualClock()
    host = start_host("host-a", clock=clock)
    lock = lock_of(host, worker)
    assert lock.proxy().acquire("s").get(timeout=T).fence == 1
    redis_server.kill()  # SIGKILL: only what appendfsync always wrote survives
    other = lock_of(host, worker.parent)
    with pytest.raises(FleetUnavailable):  # a store that is down: an error at once, no crash
        other.proxy().acquire("s").get(timeout=T)
    assert other.proxy().status().get(timeout=T) == "unlocked" and other.is_alive()
    redis_server.restart()
    hash_, pttl = store_lease(redis_server, worker)
    assert hash_[b"fence"] == b"1" and pttl > 0
    with redis_server.client() as client:
        assert client.execute_command("SCRIPT", "EXISTS", _renew_sha()) == [0]  # the cache is gone
    clock.advance(LEASE / 3)  # the renewal meets NOSCRIPT, loads the script, and goes through
    wait_until(lambda: lease_of(lock)["deadline_in"] == pytest.approx(LEASE - 2.0), timeout=T)
    with redis_server.client() as client:
        assert client.execute_command("SCRIPT", "EXISTS", _renew_sha()) == [1]
    lock.proxy().release().get(timeout=T)
    assert lock.proxy().acquire("again").get(timeout=T).fence == 2  # the fence survived too
    lock.proxy().release().get(timeout=T)


def _renew_sha() -> str:
    import hashlib

    from actors.fleet import _leases

    return hashlib.sha1(_leases._RENEW.encode()).hexdigest()


def test_an_asyncio_caller_cancelled_mid_release_neither_keeps_the_lease_nor_releases_twice(
    start_host: Callable[..., Any], redis_server: RedisServer, worker: Path,
) -> None:
    lock = lock_of(start_host("host-a", clock=ManualClock()), worker)
    fence = lock.proxy().acquire("s").get(timeout=T).fence
    redis_server.pause()  # the release will be under way, waiting for the store
    try:
        release = lock.proxy().release()

        async def impatient() -> None:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await release

        asyncio.run(impatient())
    finally:
        redis_server.resume()
    assert release.get(timeout=T) is None  # the call ran to its end once, whoever waited
    wait_until(lambda: store_lease(redis_server, worker)[0] == {}, timeout=LEASE + 5)
    assert lease_of(lock) is None  # nothing renews it any more
    with pytest.raises(NotLocked):
        lock.proxy().release().get(timeout=T)
    assert lock.proxy().acquire("next").get(timeout=T).fence == fence + 1
    lock.proxy().release().get(timeout=T)


def test_list_worker_leases_shows_each_hosts_leases_with_fences(
    start_host: Callable[..., Any], redis_server: RedisServer, tmp_path: Path,
) -> None:
    (tmp_path / "w1").mkdir()
    (tmp_path / "w*2").mkdir()  # a glob character in a path is matched literally
    not_utf8 = tmp_path / os.fsdecode(b"w\xff3")  # a name that is not UTF-8 is still one worker
    not_utf8.mkdir()
    host_a, host_b = start_host("host-a", clock=ManualClock()), start_host("host-b", clock=ManualClock())
    lock_of(host_a, tmp_path / "w1").proxy().acquire("one").get(timeout=T)
    lock_of(host_b, tmp_path / "w*2").proxy().acquire("two").get(timeout=T)
    lock_of(host_b, not_utf8).proxy().acquire("three").get(timeout=T)
    leases = list_worker_leases(settings(redis_server.url, "anyone"))
    assert [(lease["path"], lease["host"], lease["pid"], lease["session"], lease["fence"]) for lease in leases] == [
        (str(tmp_path / "w*2"), "host-b", os.getpid(), "two", 1),
        (str(tmp_path / "w1"), "host-a", os.getpid(), "one", 1),
        (str(not_utf8), "host-b", os.getpid(), "three", 1),
    ]
    assert all(0 < lease["expires_in"] <= LEASE for lease in leases)
    assert list_worker_leases(settings(redis_server.url + "?namespace=other", "x")) == []
    assert isinstance(LockInfo, type)


def test_a_restarted_daemon_renews_its_hosts_leases_without_being_asked(
    start_host: Callable[..., Any], redis_server: RedisServer, worker: Path, spawn_sleeper: Callable[[], Any],
) -> None:
    owner = spawn_sleeper()
    first = start_host("host-a", clock=ManualClock())
    fence = lock_of(first, worker).proxy().acquire("s", owner.pid).get(timeout=T).fence
    first.stop()  # the daemon goes; its worker (the owner) and its lease stay
    clock = ManualClock()
    second = start_host("host-a", clock=clock)
    child_id = lock_child_id(str(worker.resolve()))
    wait_until(lambda: any(child.id == child_id for child in second.proxy().which_children().get(timeout=T)),
               timeout=T)
    lock = lock_of(second, worker)
    # It renewed at once (its last confirmation is unknown to it), and keeps renewing.
    wait_until(lambda: (lease_of(lock) or {}).get("deadline_in") == pytest.approx(LEASE - 2.0), timeout=T)
    clock.advance(LEASE / 3)
    wait_until(lambda: lease_of(lock)["deadline_in"] == pytest.approx(LEASE - 2.0), timeout=T)
    assert store_lease(redis_server, worker)[1] > (LEASE - 1.0) * 1000
    assert lease_of(lock)["fence"] == fence
    lock.proxy().release(owner.pid).get(timeout=T)
    assert store_lease(redis_server, worker)[0] == {}


def test_of_many_racing_acquires_on_two_hosts_exactly_one_wins(
    start_host: Callable[..., Any], redis_server: RedisServer, worker: Path, spawn_sleeper: Callable[[], Any],
) -> None:
    hosts = [start_host("host-a", clock=ManualClock()), start_host("host-b", clock=ManualClock())]
    locks = [lock_of(host, worker) for host in hosts]
    owners = [spawn_sleeper().pid for _ in range(6)]
    barrier = threading.Barrier(len(owners))
    won: list[tuple[int, int]] = []
    refused: list[str] = []

    def race(index: int) -> None:
        lock = locks[index % 2].proxy()
        barrier.wait()
        try:
            won.append((owners[index], lock.acquire(f"s{index}", owners[index]).get(timeout=T).fence))
        except Locked as error:
            refused.append(str(error))

    threads = [threading.Thread(target=race, args=(index,)) for index in range(len(owners))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(T)
    assert len(won) == 1 and len(refused) == len(owners) - 1
    (owner, fence), = won
    hash_, _ = store_lease(redis_server, worker)
    assert (int(hash_[b"pid"]), int(hash_[b"fence"]), fence) == (owner, 1, 1)
