"""The lock actors: `WorkerLock` semantics through proxies, owner watching on a
`ManualClock`, crashes and restarts under `LockSupervisor`, and races between threads
and between processes. The core itself (`LockFile`) is tested in test_lock_file.py."""

from __future__ import annotations

import fcntl
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pykka
import pytest
from _racing import race_round, race_threads, start_racers

from actors._errors import InvalidLock, InvalidOwner, Locked, NotLocked
from actors._process import ProcessIdentity, identify
from actors.locks import _lock_file, _record
from actors.locks._lock_file import GUARD_NAME, RECORD_NAME, LockFile
from actors.locks._record import LockInfo, encode_record
from actors.locks._worker_lock import InvalidWorkerDir, LockSupervisor, WorkerLock, lock_child_id
from supervision import (
    BadCall,
    ChildSpec,
    ClientError,
    Handle,
    ManualClock,
    Supervisor,
    kill,
)
from supervision.testing import wait_until

RACER = Path(__file__).resolve().parent / "_worker_lock_racer.py"
MY_PID = os.getpid()
ME = identify(MY_PID)
assert ME is not None
MY_START = ME.start_time
EARLIER_LIFE = ProcessIdentity(MY_PID, ME.start_ticks - 100, ME.boot_id)  # this pid, a second earlier
HOST = socket.gethostname()
T = 10.0  # real seconds an ask may take before the test fails
CHECK = 5.0


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
def worker_dir(tmp_path: Path) -> Path:
    path = tmp_path / "worker"
    path.mkdir()  # the locks never create a worker's directory
    return path


@pytest.fixture
def lock_ref(worker_dir: Path, manual_clock: ManualClock) -> pykka.ActorRef[WorkerLock]:
    return WorkerLock.start(worker_dir, clock=manual_clock, check_interval=CHECK)


@pytest.fixture
def lock(lock_ref: pykka.ActorRef[WorkerLock]) -> Any:
    return lock_ref.proxy()


def record_path(worker_dir: Path) -> Path:
    return worker_dir / ".runtime" / RECORD_NAME


def plant_record(worker_dir: Path, data: bytes) -> Path:
    """Write a record by hand, as a crashed or foreign writer would leave it."""
    path = record_path(worker_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def info_messages(log_records: list[dict[str, Any]]) -> list[str]:
    return [record["message"] for record in log_records if record["level"].name == "INFO"]


# -- acquire, refresh, release, read, check, status ----------------------------------------------


def test_acquire_writes_the_identity_record_for_the_calling_process(lock: Any, worker_dir: Path) -> None:
    info = lock.acquire("%4").get(timeout=T)
    assert (info.pid, info.session_id, info.hostname) == (MY_PID, "%4", HOST)
    assert MY_START is not None and math.isclose(info.start_time, MY_START, abs_tol=1.0)
    on_disk = json.loads(record_path(worker_dir).read_bytes())
    assert {"pid", "start_time", "acquired_at", "session_id", "hostname"} <= set(on_disk)
    assert on_disk["pid"] == MY_PID and on_disk["acquired_at"] == info.acquired_at
    assert lock.read().get(timeout=T) == info
    assert lock.status().get(timeout=T) == f"locked by pid {MY_PID} (session %4)"
    lock.check().get(timeout=T)  # the holder passes its own check


def test_acquired_at_is_rfc3339_from_the_clocks_wall_time(worker_dir: Path) -> None:
    clock = ManualClock(wall_start=1_700_000_000.25)
    lock = WorkerLock.start(worker_dir, clock=clock).proxy()
    assert lock.acquire().get(timeout=T).acquired_at == "2023-11-14T22:13:20.250000Z"
    clock.advance(90.0)
    assert lock.acquire().get(timeout=T).refreshed_at == "2023-11-14T22:14:50.250000Z"


def test_the_same_owner_again_refreshes(lock: Any, manual_clock: ManualClock) -> None:
    first = lock.acquire("one").get(timeout=T)
    manual_clock.advance(1.0)
    again = lock.acquire("two", owner=MY_PID).get(timeout=T)
    assert again.acquired_at == first.acquired_at and again.refreshed_at is not None
    assert again.session_id == "two"
    assert lock.acquire().get(timeout=T).session_id == "two"  # "" keeps the session


def test_another_live_owner_is_refused_naming_its_pid_and_session(
    lock: Any, lock_ref: pykka.ActorRef[WorkerLock], spawn_sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    other = spawn_sleeper()
    lock.acquire("%7", owner=other.pid).get(timeout=T)
    with pytest.raises(Locked) as refused:
        lock.acquire("mine").get(timeout=T)
    assert str(other.pid) in str(refused.value) and "%7" in str(refused.value)
    with pytest.raises(Locked):
        lock.check().get(timeout=T)
    lock.check(other.pid).get(timeout=T)
    with pytest.raises(Locked, match=str(other.pid)):
        lock.release(MY_PID).get(timeout=T)
    assert lock.status().get(timeout=T) == f"locked by pid {other.pid} (session %7)"
    assert lock_ref.is_alive()
    lock.release(other.pid).get(timeout=T)
    assert lock.status().get(timeout=T) == "unlocked"


def test_the_calling_process_locks_and_unlocks_without_reading_proc(
    lock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default owner is this process: its identity is cached, and its own record is
    alive without asking /proc (the lock cycle's hot path)."""
    assert _record.own_identity() == ME

    def no_proc_read(*args: object) -> None:
        raise AssertionError(f"read /proc for {args}")

    monkeypatch.setattr(_lock_file, "identify", no_proc_read)
    for name in ("identify", "liveness", "liveness_by_start_time"):
        monkeypatch.setattr(_record, name, no_proc_read)
    info = lock.acquire("%1").get(timeout=T)
    assert (info.pid, info.start_ticks, info.boot_id) == (MY_PID, ME.start_ticks, ME.boot_id)
    lock.check().get(timeout=T)
    assert lock.status().get(timeout=T) == f"locked by pid {MY_PID} (session %1)"
    lock.release().get(timeout=T)
    lock.acquire("%2", MY_PID).get(timeout=T)
    lock.release(MY_PID).get(timeout=T)
    with pytest.raises(NotLocked):
        lock.release().get(timeout=T)


def test_release_without_owner_removes_any_live_owners_record(
    lock: Any, spawn_sleeper: Callable[[], subprocess.Popen[bytes]], worker_dir: Path
) -> None:
    other = spawn_sleeper()
    lock.acquire("s", owner=other.pid).get(timeout=T)
    lock.release().get(timeout=T)
    assert lock.read().get(timeout=T) is None
    assert not record_path(worker_dir).exists()


def test_release_of_nothing_or_of_a_stale_record_raises_not_locked(
    lock: Any, worker_dir: Path, spawn_sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    with pytest.raises(NotLocked):
        lock.release().get(timeout=T)
    with pytest.raises(NotLocked):
        lock.release(MY_PID).get(timeout=T)
    doomed = spawn_sleeper()
    lock.acquire("gone", owner=doomed.pid).get(timeout=T)
    doomed.kill()
    doomed.wait()
    with pytest.raises(NotLocked, match="stale"):
        lock.release().get(timeout=T)
    assert not record_path(worker_dir).exists()


def test_read_is_none_without_a_record_and_shows_a_stale_one(
    lock: Any, spawn_sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    assert lock.read().get(timeout=T) is None
    doomed = spawn_sleeper()
    held = lock.acquire("x", owner=doomed.pid).get(timeout=T)
    doomed.kill()
    doomed.wait()
    assert lock.read().get(timeout=T) == held
    assert lock.status().get(timeout=T) == f"stale (dead pid {doomed.pid})"
    lock.check().get(timeout=T)  # a stale record holds nobody back


@pytest.mark.parametrize("owner", ["123", 1.5, True, [1], b"1"])
def test_an_owner_that_is_not_an_int_is_a_client_error(
    lock: Any, lock_ref: pykka.ActorRef[WorkerLock], owner: Any
) -> None:
    for call in (lambda: lock.acquire("", owner), lambda: lock.release(owner), lambda: lock.check(owner)):
        with pytest.raises(ClientError):
            call().get(timeout=T)
    assert lock_ref.is_alive()
    assert lock.status().get(timeout=T) == "unlocked"


def test_a_pid_that_does_not_run_cannot_acquire(lock: Any, spawn_sleeper: Callable[[], subprocess.Popen[bytes]]) -> None:
    doomed = spawn_sleeper()
    doomed.kill()
    doomed.wait()
    with pytest.raises(InvalidOwner):
        lock.acquire("", doomed.pid).get(timeout=T)
    with pytest.raises(ClientError):
        lock.acquire("", -5).get(timeout=T)


def test_bad_arguments_are_client_errors_not_crashes(lock: Any, lock_ref: pykka.ActorRef[WorkerLock]) -> None:
    with pytest.raises(ClientError):
        lock.acquire(42).get(timeout=T)  # session_id must be a str
    with pytest.raises(BadCall):
        lock.release(1, 2, 3).get(timeout=T)  # does not fit the signature
    with pytest.raises(ClientError):
        lock_ref.ask("what?", timeout=T)
    assert lock_ref.is_alive()


def test_only_the_six_lock_methods_are_public() -> None:
    own = {name for name in vars(WorkerLock) if not name.startswith("_") and callable(getattr(WorkerLock, name))}
    hooks = {"on_start", "on_stop", "on_failure", "on_receive"}
    assert own - hooks == {"acquire", "release", "read", "check", "status", "force_release"}


# -- corrupt, symlinked, foreign ----------------------------------------------------------------


def _truncated_record() -> bytes:
    data = encode_record(LockInfo(MY_PID, MY_START or 0.0, "2024-01-01T00:00:00.000000Z", "s", HOST))
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "data",
    [b"", b"{not json", _truncated_record(), b'{"pid": "x"}', b"[1, 2]"],
    ids=["empty", "unparsable", "truncated", "wrong-types", "not-an-object"],
)
def test_a_corrupt_record_is_invalid_lock_until_force_release_and_never_a_crash(
    lock: Any,
    lock_ref: pykka.ActorRef[WorkerLock],
    worker_dir: Path,
    manual_clock: ManualClock,
    data: bytes,
) -> None:
    path = plant_record(worker_dir, data)
    for call in (lock.read, lock.check, lock.acquire, lock.release):
        with pytest.raises(InvalidLock):
            call().get(timeout=T)
    assert lock.status().get(timeout=T) == f"corrupt ({path})"
    manual_clock.advance(CHECK * 3)  # the owner check leaves it alone, without crashing
    assert lock.status().get(timeout=T) == f"corrupt ({path})"
    assert lock_ref.is_alive()
    lock.force_release().get(timeout=T)
    assert lock.status().get(timeout=T) == "unlocked"
    assert lock.acquire().get(timeout=T).pid == MY_PID


def test_a_symlinked_runtime_dir_is_refused_and_never_written_through(
    lock: Any, lock_ref: pykka.ActorRef[WorkerLock], worker_dir: Path, tmp_path: Path, manual_clock: ManualClock
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (worker_dir / ".runtime").symlink_to(elsewhere)
    for call in (lock.acquire, lock.read, lock.check, lock.release, lock.force_release):
        with pytest.raises(InvalidLock):
            call().get(timeout=T)
    assert lock.status().get(timeout=T) == f"corrupt ({worker_dir / '.runtime'})"
    manual_clock.advance(CHECK)
    assert list(elsewhere.iterdir()) == []
    assert lock_ref.is_alive()


def test_a_symlinked_record_is_refused_and_its_target_untouched(
    lock: Any, lock_ref: pykka.ActorRef[WorkerLock], worker_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    target.write_text("precious")
    (worker_dir / ".runtime").mkdir(parents=True, mode=0o700)
    record_path(worker_dir).symlink_to(target)
    for call in (lock.acquire, lock.read, lock.check, lock.release):
        with pytest.raises(InvalidLock):
            call().get(timeout=T)
    assert lock.status().get(timeout=T) == f"corrupt ({record_path(worker_dir)})"
    assert target.read_text() == "precious"
    lock.force_release().get(timeout=T)  # removes the link, never its target
    assert target.read_text() == "precious" and not record_path(worker_dir).is_symlink()
    assert lock_ref.is_alive()


def test_another_hosts_record_is_broken_only_by_force_release(
    lock: Any, worker_dir: Path, manual_clock: ManualClock
) -> None:
    LockFile(worker_dir, hostname="elsewhere.example").acquire(MY_PID, "remote")
    assert lock.status().get(timeout=T) == "held on host elsewhere.example"
    with pytest.raises(Locked, match="elsewhere.example"):
        lock.acquire().get(timeout=T)
    with pytest.raises(Locked):
        lock.release().get(timeout=T)
    with pytest.raises(Locked):
        lock.check().get(timeout=T)
    manual_clock.advance(CHECK * 2)
    assert lock.read().get(timeout=T).hostname == "elsewhere.example"
    lock.force_release().get(timeout=T)
    assert lock.status().get(timeout=T) == "unlocked"


# -- owner death, pid reuse, killed processes ---------------------------------------------------


def test_the_owners_death_releases_the_lock_within_check_interval(
    lock: Any,
    manual_clock: ManualClock,
    log_records: list[dict[str, Any]],
    spawn_sleeper: Callable[[], subprocess.Popen[bytes]],
) -> None:
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.acquire("%9", owner=owner.pid).get(timeout=T)
        manual_clock.advance(CHECK)
        assert lock.status().get(timeout=T) == f"locked by pid {owner.pid} (session %9)"
    finally:
        owner.kill()
        owner.wait()
    assert lock.status().get(timeout=T) == f"stale (dead pid {owner.pid})"
    manual_clock.advance(CHECK)
    assert lock.status().get(timeout=T) == "unlocked"  # the tick was handled before this ask
    assert any(str(owner.pid) in message for message in info_messages(log_records))
    successor = spawn_sleeper()
    assert lock.acquire("next", successor.pid).get(timeout=T).pid == successor.pid


def test_a_reused_pid_does_not_keep_the_lock(lock: Any, worker_dir: Path) -> None:
    # A record naming our live pid but another start time: the pid was recycled.
    LockFile(worker_dir).acquire(EARLIER_LIFE, "old life")
    assert lock.status().get(timeout=T) == f"stale (dead pid {MY_PID})"
    info = lock.acquire("new life").get(timeout=T)
    assert info.start_ticks == ME.start_ticks and info.session_id == "new life"


def test_the_tick_releases_a_recycled_pids_record(lock: Any, worker_dir: Path, manual_clock: ManualClock) -> None:
    LockFile(worker_dir).acquire(EARLIER_LIFE, "old life")
    manual_clock.advance(CHECK)
    assert lock.status().get(timeout=T) == "unlocked"


def test_a_released_worker_keeps_only_its_guard_file(lock: Any, worker_dir: Path) -> None:
    runtime = worker_dir / ".runtime"
    lock.acquire().get(timeout=T)
    assert sorted(os.listdir(runtime)) == [RECORD_NAME, GUARD_NAME]
    lock.release().get(timeout=T)
    assert sorted(os.listdir(runtime)) == [GUARD_NAME]


def test_a_process_killed_while_holding_the_guard_flock_leaves_a_lock_that_can_be_taken(
    lock: Any, worker_dir: Path
) -> None:
    lock.acquire().get(timeout=T)
    lock.release().get(timeout=T)  # the guard file now exists
    guard = worker_dir / ".runtime" / GUARD_NAME
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n",
            str(guard),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        probe = os.open(guard, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):  # it really holds the guard
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(probe)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock.acquire("after").get(timeout=T).session_id == "after"
    lock.release(MY_PID).get(timeout=T)


# -- crashes and restarts -------------------------------------------------------------------


def test_a_lock_killed_mid_work_is_restarted_and_nothing_is_lost(
    tmp_path: Path, manual_clock: ManualClock, spawn_sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    (tmp_path / "w").mkdir()
    locks = LockSupervisor.start(root=tmp_path, clock=manual_clock, check_interval=CHECK)
    first = locks.proxy().lock_for("w").get(timeout=T)
    child_id = lock_child_id(str(tmp_path.resolve() / "w"))
    handle = Handle(locks, child_id).proxy()
    handle.acquire("%1").get(timeout=T)
    # Calls queued behind the kill never reach the old incarnation: the handle resends them.
    pending = [handle.acquire("%1") for _ in range(20)]
    kill(first, "test")
    assert all(future.get(timeout=T).pid == MY_PID for future in pending)
    wait_until(lambda: not first.is_alive())
    second = locks.proxy().lock_for("w").get(timeout=T)
    assert second != first and second.is_alive() and not first.is_alive()
    assert locks.proxy().which_children().get(timeout=T)[0].restarts == 1
    # The new incarnation re-read the record: the holder still holds it.
    assert second.proxy().status().get(timeout=T) == f"locked by pid {MY_PID} (session %1)"
    other = spawn_sleeper()
    with pytest.raises(Locked):
        second.proxy().acquire("", other.pid).get(timeout=T)
    second.proxy().check().get(timeout=T)
    second.proxy().release(MY_PID).get(timeout=T)


def test_a_lock_never_hands_out_a_dead_incarnation(tmp_path: Path, manual_clock: ManualClock) -> None:
    (tmp_path / "w").mkdir()
    locks = LockSupervisor.start(root=tmp_path, clock=manual_clock, max_restarts=1000, max_seconds=1.0)
    for _ in range(30):
        ref = locks.proxy().lock_for("w").get(timeout=T)
        kill(ref)
        wait_until(lambda: not ref.is_alive(), interval=0.0001)
        # Often asked before the supervisor heard of the crash: it must wait for the
        # restart, never answer with the incarnation that has stopped.
        again = locks.proxy().lock_for("w").get(timeout=T)
        assert again != ref
        assert again.proxy().status().get(timeout=T) == "unlocked"


def test_lock_for_waits_for_the_restart_of_an_incarnation_that_is_still_ending(
    tmp_path: Path, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hold the killed incarnation between "stopped" and its exit notice to the supervisor.
    gate = threading.Event()
    original_on_failure = WorkerLock.on_failure

    def slow_on_failure(self: WorkerLock, *exc_info: Any) -> None:
        gate.wait(T)
        original_on_failure(self, *exc_info)

    monkeypatch.setattr(WorkerLock, "on_failure", slow_on_failure)
    locks = LockSupervisor.start(root=tmp_path, clock=manual_clock).proxy()
    ref = locks.lock_for("w").get(timeout=T)
    kill(ref)
    wait_until(lambda: not ref.is_alive())
    answer = locks.lock_for("w")
    assert locks.count_children().get(timeout=T)["specs"] == 1  # the supervisor still serves
    with pytest.raises(pykka.Timeout):
        answer.get(timeout=0)  # handled before count_children, and still waiting
    gate.set()
    again = answer.get(timeout=T)
    assert again != ref and again.is_alive()
    assert locks.which_children().get(timeout=T)[0].restarts == 1


def test_the_owner_check_stops_with_the_lock(
    worker_dir: Path, manual_clock: ManualClock
) -> None:
    stopped = WorkerLock.start(worker_dir, clock=manual_clock)
    killed = WorkerLock.start(worker_dir, clock=manual_clock)
    assert manual_clock.pending_timers == 2
    stopped.stop()
    kill(killed)
    wait_until(lambda: not killed.is_alive())
    wait_until(lambda: manual_clock.pending_timers == 0)


def test_a_restarted_lock_supervisor_recreates_locks_on_demand(
    tmp_path: Path, manual_clock: ManualClock, spawn_sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    # As the tree starts it: a child of the root, the clock coming from the parent.
    (tmp_path / "w").mkdir()
    root = Supervisor.start([ChildSpec("locks", LockSupervisor, kwargs={"root": str(tmp_path), "check_interval": 2.0})],
                            clock=manual_clock)
    locks = Handle(root, "locks")
    lock = locks.proxy().lock_for("w").get(timeout=T)
    child_id = lock_child_id(str(tmp_path.resolve() / "w"))
    assert Handle(root, f"locks/{child_id}").ref(timeout=T) == lock
    owner = spawn_sleeper()
    lock.proxy().acquire("%2", owner.pid).get(timeout=T)
    kill(locks.ref(timeout=T), "test")
    wait_until(lambda: not lock.is_alive())
    relocked = locks.proxy().lock_for("w").get(timeout=T)
    assert relocked != lock
    assert [info.id for info in locks.proxy().which_children().get(timeout=T)] == [child_id]
    assert relocked.proxy().status().get(timeout=T) == f"locked by pid {owner.pid} (session %2)"
    owner.kill()
    owner.wait()
    manual_clock.advance(2.0)  # the parent's clock and the spec's interval reached the lock
    assert relocked.proxy().status().get(timeout=T) == "unlocked"


# -- lock_for -----------------------------------------------------------------------------------


def test_lock_for_returns_one_actor_per_real_directory(tmp_path: Path, manual_clock: ManualClock) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    locks = LockSupervisor.start(root=tmp_path, clock=manual_clock).proxy()
    first = locks.lock_for(tmp_path / "a").get(timeout=T)
    for spelling in [str(tmp_path / "a"), tmp_path / "a" / ".." / "a", tmp_path / "link", "a", "a/../a", "./link"]:
        assert locks.lock_for(spelling).get(timeout=T) == first, spelling
    assert locks.lock_for("b").get(timeout=T) != first
    assert locks.count_children().get(timeout=T)["active"] == 2


def test_lock_for_without_root_resolves_against_the_current_directory(
    tmp_path: Path, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    locks = LockSupervisor.start(clock=manual_clock).proxy()
    assert locks.lock_for("w").get(timeout=T) == locks.lock_for(tmp_path / "w").get(timeout=T)
    assert locks.lock_for("/").get(timeout=T).is_alive()  # no root: anywhere goes


def test_lock_for_refuses_directories_outside_root(tmp_path: Path, manual_clock: ManualClock) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "escape").symlink_to(tmp_path)
    ref = LockSupervisor.start(root=root, clock=manual_clock)
    locks = ref.proxy()
    for outside in ["/etc", "..", "../root-sibling", tmp_path / "x", "escape", "escape/x", str(root) + "-sibling"]:
        with pytest.raises(InvalidWorkerDir) as refused:
            locks.lock_for(outside).get(timeout=T)
        assert isinstance(refused.value, ClientError) and isinstance(refused.value, ValueError)
    for bad in [42, None, b"bytes", ["a"]]:
        with pytest.raises(ClientError) as refused_type:
            locks.lock_for(bad).get(timeout=T)
        assert isinstance(refused_type.value, TypeError)
    for bad_path in ["", "a\0b"]:
        with pytest.raises(ClientError):
            locks.lock_for(bad_path).get(timeout=T)
    assert ref.is_alive() and locks.count_children().get(timeout=T)["specs"] == 0
    assert locks.lock_for(root).get(timeout=T).is_alive()  # the root itself is not outside


def test_child_ids_encode_percent_and_slash_and_handles_reach_them(
    tmp_path: Path, manual_clock: ManualClock
) -> None:
    root = tmp_path / "w%2Fo"
    (root / "x%y").mkdir(parents=True)
    locks_ref = LockSupervisor.start(root=root, clock=manual_clock)
    lock = locks_ref.proxy().lock_for("x%y").get(timeout=T)
    resolved = str(root.resolve() / "x%y")
    child_id = resolved.replace("%", "%25").replace("/", "%2F")
    assert child_id == lock_child_id(resolved) and "/" not in child_id and child_id.endswith("w%252Fo%2Fx%25y")
    assert [info.id for info in locks_ref.proxy().which_children().get(timeout=T)] == [child_id]
    assert Handle(locks_ref, child_id).ref(timeout=T) == lock
    assert Handle(locks_ref, child_id).proxy().status().get(timeout=T) == "unlocked"


def test_a_lock_stopped_by_hand_is_started_again_by_lock_for(tmp_path: Path, manual_clock: ManualClock) -> None:
    locks = LockSupervisor.start(root=tmp_path, clock=manual_clock).proxy()
    lock = locks.lock_for("w").get(timeout=T)
    child_id = lock_child_id(str(tmp_path.resolve() / "w"))
    locks.terminate_child(child_id).get(timeout=T)
    assert not lock.is_alive()
    again = locks.lock_for("w").get(timeout=T)
    assert again.is_alive() and again != lock


def test_lock_supervisor_is_a_supervisor_and_validates_its_settings(tmp_path: Path) -> None:
    assert LockSupervisor.is_supervisor
    assert ChildSpec("locks", LockSupervisor).shutdown is None
    for interval in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            LockSupervisor.start(root=tmp_path, check_interval=interval)
        with pytest.raises(ValueError):
            WorkerLock.start(tmp_path, check_interval=interval)
    with pytest.raises(TypeError):
        WorkerLock.start(tmp_path, check_interval="5")
    with pytest.raises(TypeError):
        WorkerLock.start(42)
    with pytest.raises(ValueError):
        LockSupervisor.start(root=tmp_path, max_restarts=-1)
    for idle_retire in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            LockSupervisor.start(root=tmp_path, idle_retire=idle_retire)
    for max_locks, error in ((0, ValueError), (-5, ValueError), (True, TypeError), (2.0, TypeError)):
        with pytest.raises(error):
            LockSupervisor.start(root=tmp_path, max_locks=max_locks)


@pytest.mark.parametrize("name", [RECORD_NAME, GUARD_NAME])
def test_a_socket_planted_in_runtime_is_invalid_lock_never_a_crash(
    lock_ref: pykka.ActorRef[WorkerLock], worker_dir: Path, manual_clock: ManualClock, name: str
) -> None:
    runtime = worker_dir / ".runtime"
    runtime.mkdir(parents=True, mode=0o700)
    planted = socket.socket(socket.AF_UNIX)
    try:
        planted.bind(str(runtime / name))  # opening a socket fails with ENXIO
        lock = lock_ref.proxy()
        with pytest.raises(InvalidLock):
            lock.acquire().get(timeout=T)
        manual_clock.advance(CHECK)  # the owner check copes too
        if name == RECORD_NAME:
            lock.force_release().get(timeout=T)  # removes any record, a socket included
            assert not os.path.lexists(runtime / name)
        else:
            with pytest.raises(InvalidLock):  # nothing is done through a guard it refuses
                lock.force_release().get(timeout=T)
        assert lock.status().get(timeout=T) in ("unlocked", f"corrupt ({runtime / name})")
        assert lock_ref.is_alive()
    finally:
        planted.close()


def test_an_unusable_worker_directory_is_a_client_error(tmp_path: Path, manual_clock: ManualClock) -> None:
    too_long = WorkerLock.start(tmp_path / ("x" * 300), clock=manual_clock)
    with pytest.raises(InvalidWorkerDir, match="too long"):
        too_long.proxy().acquire().get(timeout=T)
    (tmp_path / "file").write_text("not a directory")
    under_a_file = WorkerLock.start(tmp_path / "file" / "w", clock=manual_clock)
    for call in (lambda: under_a_file.proxy().acquire(), lambda: under_a_file.proxy().read(),
                 lambda: under_a_file.proxy().check(), lambda: under_a_file.proxy().release()):
        with pytest.raises(InvalidWorkerDir, match="Not a directory"):
            call().get(timeout=T)
    for ref in (too_long, under_a_file):
        assert ref.proxy().status().get(timeout=T).startswith("unusable (")
        assert ref.is_alive()


# -- descriptors ---------------------------------------------------------------------------


def test_a_lock_that_holds_nothing_keeps_no_file_descriptor_open(
    lock: Any, manual_clock: ManualClock, worker_dir: Path, spawn_sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    other = spawn_sleeper()
    lock.acquire().get(timeout=T)  # warm up (first use creates the directories)
    lock.release().get(timeout=T)
    before = open_fd_count()
    for index in range(100):
        lock.acquire(f"s{index}").get(timeout=T)
        lock.acquire(f"s{index}").get(timeout=T)
        lock.read().get(timeout=T)
        lock.check().get(timeout=T)
        lock.status().get(timeout=T)
        with pytest.raises(Locked):
            lock.acquire("", other.pid).get(timeout=T)
        lock.release(MY_PID).get(timeout=T)
        with pytest.raises(NotLocked):
            lock.release().get(timeout=T)
        manual_clock.advance(CHECK)
    plant_record(worker_dir, b"junk")
    with pytest.raises(InvalidLock):
        lock.read().get(timeout=T)
    lock.force_release().get(timeout=T)
    assert lock.status().get(timeout=T) == "unlocked"
    assert open_fd_count() == before


# -- races -------------------------------------------------------------------------------------


def test_threads_racing_through_two_lock_actors_on_one_directory_exactly_one_wins(
    worker_dir: Path, manual_clock: ManualClock, spawn_sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    owners = [spawn_sleeper().pid for _ in range(6)]
    proxies = [WorkerLock.start(worker_dir, clock=manual_clock).proxy() for _ in range(2)]
    race_threads(
        owners,
        rounds=100,
        acquire=lambda index: proxies[index % 2].acquire(f"thread-{index}", owners[index]).get(timeout=T),
        read_holder=lambda: proxies[0].read().get(timeout=T),
        release=lambda round_index, pid: proxies[round_index % 2].release(pid).get(timeout=T),
    )


@pytest.mark.slow
def test_of_eight_processes_each_with_its_own_lock_actor_exactly_one_holds_every_round(
    worker_dir: Path, tmp_path: Path
) -> None:
    referee = LockFile(worker_dir)
    with start_racers(RACER, worker_dir, tmp_path, 8) as racers:
        for round_index in range(200):
            race_round(racers, referee, round_index)
