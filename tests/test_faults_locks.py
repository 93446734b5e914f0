"""Worker locks under faults (issue 11 items 4, 6, 8): process identity that no wall-clock
step moves and that only proof of death breaks, unusable worker directories and a full
disk that crash nothing, and lock actors that stay bounded (idle retirement, `max_locks`,
no thread per directory read, out of threads)."""

from __future__ import annotations

import builtins
import errno
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pykka
import pytest
from _disks import fill, small_tmpfs

from actors import _process
from actors._errors import InvalidWorkerDir, Locked, TooManyLocks
from actors.locks._lock_file import GUARD_NAME, RECORD_NAME
from actors.locks._worker_lock import LockSupervisor, WorkerLock, lock_child_id
from supervision import ChildSpec, ClientError, Handle, ManualClock, StartError, StorageError, Supervisor, kill
from supervision.testing import wait_until

T = 10.0
CHECK = 5.0
MY_PID = os.getpid()


@pytest.fixture
def root_with_locks(tmp_path: Path, manual_clock: ManualClock) -> Callable[..., tuple[pykka.ActorRef[Any], Any]]:
    """`make(**LockSupervisor kwargs)`: a root Supervisor whose child "locks" is a
    LockSupervisor on `tmp_path`; returns (root ref, the "locks" Handle)."""

    def make(**kwargs: Any) -> tuple[pykka.ActorRef[Any], Any]:
        kwargs.setdefault("root", str(tmp_path))
        kwargs.setdefault("check_interval", CHECK)
        root = Supervisor.start([ChildSpec("locks", LockSupervisor, kwargs=kwargs)], clock=manual_clock)
        return root, Handle(root, "locks")

    return make


def restarts(supervisor: pykka.ActorRef[Any]) -> dict[str, int]:
    return {info.id: info.restarts for info in supervisor.proxy().which_children().get(timeout=T)}


def call_lock(locks: Any, worker_dir: str | Path, method: str, *args: Any, **kwargs: Any) -> Any:
    return locks.proxy().call_lock(str(worker_dir), method, list(args), kwargs).get(timeout=T)


def warnings_about(log_records: list[dict[str, Any]], text: str) -> list[str]:
    return [r["message"] for r in log_records if r["level"].name == "WARNING" and text in r["message"]]


# -- process identity: only proof of death breaks a lock ------------------------------------------


def test_an_owner_whose_liveness_cannot_be_read_keeps_the_lock_and_is_logged_once(
    tmp_path: Path,
    manual_clock: ManualClock,
    spawn_sleeper: Callable[[], subprocess.Popen[bytes]],
    monkeypatch: pytest.MonkeyPatch,
    log_records: list[dict[str, Any]],
) -> None:
    holder = spawn_sleeper()
    (tmp_path / "w").mkdir()
    lock = WorkerLock.start(tmp_path / "w", clock=manual_clock, check_interval=CHECK).proxy()
    lock.acquire("%h", holder.pid).get(timeout=T)
    real_open = builtins.open
    stat_path = f"/proc/{holder.pid}/stat"

    def out_of_descriptors(file: Any, *args: Any, **kwargs: Any) -> Any:
        if file == stat_path:
            raise OSError(errno.EMFILE, "Too many open files", file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", out_of_descriptors)
    with pytest.raises(Locked, match=f"locked by pid {holder.pid}"):
        lock.acquire("%me").get(timeout=T)
    with pytest.raises(Locked):
        lock.check().get(timeout=T)
    assert lock.status().get(timeout=T) == f"locked by pid {holder.pid} (session %h)"
    manual_clock.advance(CHECK * 3)  # three owner checks: none frees anything
    assert lock.read().get(timeout=T).pid == holder.pid
    assert len(warnings_about(log_records, f"whether pid {holder.pid} lives")) == 1
    monkeypatch.setattr(builtins, "open", real_open)
    manual_clock.advance(CHECK)  # retried at the next check: alive, still held
    assert lock.status().get(timeout=T) == f"locked by pid {holder.pid} (session %h)"
    holder.kill()
    holder.wait()
    manual_clock.advance(CHECK)  # proof of death, at last
    assert lock.status().get(timeout=T) == "unlocked"


@pytest.fixture
def step_wall_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Step the wall clock by `seconds` as the kernel would: `time.time()` and the boot
    time derived from it (`psutil.boot_time`, `actors._process.boot_time`) move together."""
    real_time, real_boot = time.time, psutil.boot_time
    step = [0.0]
    monkeypatch.setattr(time, "time", lambda: real_time() + step[0])
    monkeypatch.setattr(psutil, "boot_time", lambda: real_boot() + step[0])
    monkeypatch.setattr(_process, "boot_time", lambda: float(real_boot() + step[0]))

    def set_step(seconds: float) -> None:
        step[0] = seconds

    return set_step


def test_a_forward_step_larger_than_the_uptime_leaves_a_live_holders_lock_held(
    tmp_path: Path,
    manual_clock: ManualClock,
    spawn_sleeper: Callable[[], subprocess.Popen[bytes]],
    step_wall_clock: Callable[[float], None],
) -> None:
    holder = spawn_sleeper()
    (tmp_path / "w").mkdir()
    lock = WorkerLock.start(tmp_path / "w", clock=manual_clock, check_interval=CHECK).proxy()
    lock.acquire("%h", holder.pid).get(timeout=T)
    uptime = time.time() - psutil.boot_time()
    step_wall_clock(uptime + 86_400.0)  # the record's mtime is now "before boot"
    assert os.stat(tmp_path / "w" / ".runtime" / RECORD_NAME).st_mtime < psutil.boot_time()
    with pytest.raises(Locked, match=f"locked by pid {holder.pid}"):
        lock.acquire("%me").get(timeout=T)
    manual_clock.advance(CHECK)
    assert lock.status().get(timeout=T) == f"locked by pid {holder.pid} (session %h)"
    restarted = WorkerLock.start(tmp_path / "w", clock=manual_clock).proxy()  # a new lock actor
    assert restarted.status().get(timeout=T) == f"locked by pid {holder.pid} (session %h)"
    assert restarted.acquire("%h2", holder.pid).get(timeout=T).session_id == "%h2"  # still its owner


@pytest.mark.parametrize("seconds", [5.0, -5.0])
def test_a_small_step_then_a_restart_of_the_locks_never_frees_a_live_holders_lock(
    tmp_path: Path,
    root_with_locks: Callable[..., tuple[pykka.ActorRef[Any], Any]],
    manual_clock: ManualClock,
    spawn_sleeper: Callable[[], subprocess.Popen[bytes]],
    step_wall_clock: Callable[[float], None],
    seconds: float,
) -> None:
    holder = spawn_sleeper()
    other = spawn_sleeper()
    (tmp_path / "w").mkdir()
    root, locks = root_with_locks()

    def lock() -> Any:
        return locks.proxy().lock_for("w").get(timeout=T).proxy()

    lock().acquire("%h", holder.pid).get(timeout=T)
    step_wall_clock(seconds)
    root.proxy().terminate_child("locks").get(timeout=T)  # the daemon's lock subtree starts afresh
    root.proxy().restart_child("locks").get(timeout=T)
    assert lock().status().get(timeout=T) == f"locked by pid {holder.pid} (session %h)"
    with pytest.raises(Locked):
        lock().acquire("%o", other.pid).get(timeout=T)
    manual_clock.advance(CHECK * 2)
    assert lock().read().get(timeout=T).pid == holder.pid
    assert lock().acquire("%h2", holder.pid).get(timeout=T).session_id == "%h2"  # still its owner
    lock().release(holder.pid).get(timeout=T)


# -- unusable worker directories and a full disk: errors, never crashes ---------------------------


def test_sixteen_acquires_of_proc_1_crash_nothing(
    root_with_locks: Callable[..., tuple[pykka.ActorRef[Any], Any]],
) -> None:
    root, locks = root_with_locks(root=None)
    for index in range(16):
        with pytest.raises(InvalidWorkerDir, match="/proc/1") as refused:
            if index % 2:
                call_lock(locks, "/proc/1", "acquire", "s")
            else:
                lock = locks.proxy().lock_for("/proc/1").get(timeout=T)
                lock.proxy().acquire("s").get(timeout=T)
        assert "Errno" in str(refused.value)
    for method in ("read", "check", "release"):
        with pytest.raises(InvalidWorkerDir, match="/proc/1"):
            call_lock(locks, "/proc/1", method)
    assert call_lock(locks, "/proc/1", "status").startswith("unusable (")
    assert restarts(root) == {"locks": 0}
    assert all(count == 0 for count in restarts(locks.ref(timeout=T)).values())
    assert root.is_alive() and not os.path.lexists("/proc/1/.runtime")


@pytest.mark.parametrize("kind", ["missing parent is a file", "not a directory", "unreadable"])
def test_an_unusable_worker_directory_is_invalid_worker_dir_and_status_says_unusable(
    tmp_path: Path, root_with_locks: Callable[..., tuple[pykka.ActorRef[Any], Any]], kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, locks = root_with_locks()
    (tmp_path / "file").write_text("x")
    worker = {"missing parent is a file": tmp_path / "file" / "w", "not a directory": tmp_path / "file",
              "unreadable": tmp_path / "locked-out"}[kind]
    if kind == "unreadable":
        worker.mkdir()
        real_open = os.open

        def refuse(path: Any, *args: Any, **kwargs: Any) -> int:  # root reads anything: refuse as EACCES would
            if os.fspath(path).startswith(str(worker)):
                raise PermissionError(errno.EACCES, "Permission denied", str(worker))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", refuse)
    for method in ("acquire", "release", "read", "check"):
        with pytest.raises(InvalidWorkerDir, match=str(worker)):
            call_lock(locks, worker, method)
    assert call_lock(locks, worker, "status").startswith("unusable (")
    assert restarts(root) == {"locks": 0}


def test_a_missing_worker_directory_is_invalid_worker_dir_and_nothing_creates_it(
    tmp_path: Path, root_with_locks: Callable[..., tuple[pykka.ActorRef[Any], Any]], manual_clock: ManualClock,
) -> None:
    # CONTRACT v3: a missing worker directory is unusable; a mistyped name must not become a
    # fresh, unlocked worker.
    worker = tmp_path / "team" / "missing"
    missing = rf"{worker}.*\[Errno 2\]"  # names the path and the errno
    lock = WorkerLock.start(worker, clock=manual_clock, check_interval=CHECK)
    root, locks = root_with_locks()
    for method in ("acquire", "read", "check", "release"):
        with pytest.raises(InvalidWorkerDir, match=missing):
            getattr(lock.proxy(), method)().get(timeout=T)
        with pytest.raises(InvalidWorkerDir, match=missing):  # no live lock actor: from the files
            call_lock(locks, worker, method)
    assert lock.proxy().status().get(timeout=T).startswith("unusable (")
    assert call_lock(locks, worker, "status").startswith("unusable (")
    live = locks.proxy().lock_for(worker).get(timeout=T)  # through a live lock actor too
    for method in ("acquire", "read", "check", "release"):
        with pytest.raises(InvalidWorkerDir, match=missing):
            call_lock(locks, worker, method)
    assert call_lock(locks, worker, "status").startswith("unusable (")
    manual_clock.advance(CHECK)  # the owner checks of a missing directory crash nothing either
    assert lock.is_alive() and live.is_alive()
    assert restarts(root) == {"locks": 0}
    assert list(tmp_path.iterdir()) == []  # neither the directory nor its parent was created
    worker.mkdir(parents=True)  # once the caller makes it, it is an ordinary worker
    assert lock.proxy().acquire("%1").get(timeout=T).pid == MY_PID
    assert call_lock(locks, worker, "status") == f"locked by pid {MY_PID} (session %1)"
    lock.proxy().release().get(timeout=T)
    lock.stop()


@pytest.fixture
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted for the test (a real ENOSPC), unmounted afterwards."""
    with small_tmpfs(tmp_path / "small", "64k") as mount_point:
        yield mount_point


def test_a_full_disk_makes_acquire_a_storage_error_and_it_works_again_once_freed(
    full_tmpfs: Path,
    root_with_locks: Callable[..., tuple[pykka.ActorRef[Any], Any]],
    manual_clock: ManualClock,
) -> None:
    root, locks = root_with_locks(root=str(full_tmpfs))
    worker = full_tmpfs / "w"
    worker.mkdir()
    call_lock(locks, worker, "acquire", "%1")
    call_lock(locks, worker, "release")
    filler = fill(full_tmpfs)
    for _ in range(3):
        with pytest.raises(StorageError) as failed:
            call_lock(locks, worker, "acquire", "%2")
        assert failed.value.errno == errno.ENOSPC and RECORD_NAME in str(failed.value)
    assert call_lock(locks, worker, "status") == "unlocked"
    manual_clock.advance(CHECK)
    assert sorted(os.listdir(worker / ".runtime")) == [GUARD_NAME]  # no temporary file left
    assert restarts(root) == {"locks": 0}
    assert all(count == 0 for count in restarts(locks.ref(timeout=T)).values())
    filler.unlink()
    assert call_lock(locks, worker, "acquire", "%3").session_id == "%3"
    call_lock(locks, worker, "release")


# -- bounded lock actors ---------------------------------------------------------------------------


def test_reading_six_thousand_directories_starts_no_lock_actor_and_no_thread(
    tmp_path: Path, root_with_locks: Callable[..., tuple[pykka.ActorRef[Any], Any]],
) -> None:
    root, locks = root_with_locks()
    (tmp_path / "held").mkdir()
    call_lock(locks, tmp_path / "held", "acquire", "%1")  # one live lock: its actor answers
    for index in range(6000):
        (tmp_path / f"w{index}").mkdir()
    threads_before = threading.active_count()
    for index in range(6000):
        assert call_lock(locks, tmp_path / f"w{index}", "status") == "unlocked"
    for index in range(50):
        assert call_lock(locks, tmp_path / f"w{index}", "read") is None
        call_lock(locks, tmp_path / f"w{index}", "check")
    assert call_lock(locks, tmp_path / "held", "status") == f"locked by pid {MY_PID} (session %1)"
    assert threading.active_count() <= threads_before + 2
    assert locks.proxy().count_children().get(timeout=T)["specs"] == 1
    assert list((tmp_path / "w0").iterdir()) == []  # reading creates nothing
    assert restarts(root) == {"locks": 0}


def test_an_idle_lock_actor_retires_after_idle_retire_unless_it_holds_the_lock(
    tmp_path: Path, root_with_locks: Callable[..., tuple[pykka.ActorRef[Any], Any]], manual_clock: ManualClock,
) -> None:
    (tmp_path / "w").mkdir()
    root, locks = root_with_locks(idle_retire=60.0)
    lock = locks.proxy().lock_for("w").get(timeout=T)
    lock.proxy().acquire("%1").get(timeout=T)
    lock.proxy().release().get(timeout=T)
    manual_clock.advance(59.0)
    assert lock.is_alive()
    manual_clock.advance(1.0)  # 60 s after its last call
    wait_until(lambda: not lock.is_alive())
    wait_until(lambda: locks.proxy().count_children().get(timeout=T)["specs"] == 0)
    assert restarts(root) == {"locks": 0}
    held = locks.proxy().lock_for("w").get(timeout=T)  # started afresh on demand
    assert held != lock
    held.proxy().acquire("%2").get(timeout=T)
    manual_clock.advance(180.0)  # holds the lock: stays, to notice its owner's death
    assert held.is_alive()
    assert held.proxy().status().get(timeout=T) == f"locked by pid {MY_PID} (session %2)"
    held.proxy().release().get(timeout=T)
    manual_clock.advance(60.0)
    wait_until(lambda: not held.is_alive())
    assert call_lock(locks, tmp_path / "w", "status") == "unlocked"  # answered from the files


def test_more_than_max_locks_live_lock_actors_raise_too_many_locks(
    tmp_path: Path, root_with_locks: Callable[..., tuple[pykka.ActorRef[Any], Any]], manual_clock: ManualClock,
) -> None:
    for index in range(4):
        (tmp_path / f"w{index}").mkdir()
    root, locks = root_with_locks(max_locks=3, idle_retire=60.0)
    for index in range(3):
        call_lock(locks, tmp_path / f"w{index}", "acquire", "%1")
    with pytest.raises(TooManyLocks):
        call_lock(locks, tmp_path / "w3", "acquire", "%1")
    with pytest.raises(TooManyLocks):
        locks.proxy().lock_for("w3").get(timeout=T)
    assert call_lock(locks, tmp_path / "w3", "status") == "unlocked"  # reads need no actor
    call_lock(locks, tmp_path / "w0", "release")
    manual_clock.advance(60.0)
    wait_until(lambda: locks.proxy().count_children().get(timeout=T)["specs"] == 2)
    assert call_lock(locks, tmp_path / "w3", "acquire", "%1").pid == MY_PID
    assert restarts(root) == {"locks": 0}


def test_out_of_threads_a_lock_call_fails_and_the_lock_supervisor_does_not_crash_loop(
    tmp_path: Path,
    root_with_locks: Callable[..., tuple[pykka.ActorRef[Any], Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "w0").mkdir()
    root, locks = root_with_locks()
    locks_ref = locks.ref(timeout=T)
    real_start = threading.Thread.start

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    for index in range(10):
        with pytest.raises(StartError, match="can't start new thread"):
            call_lock(locks_ref, tmp_path / f"w{index}", "acquire", "%1")
        with pytest.raises(StartError):
            locks_ref.proxy().lock_for(f"v{index}").get(timeout=T)
    assert call_lock(locks_ref, tmp_path / "w0", "status") == "unlocked"
    monkeypatch.setattr(threading.Thread, "start", real_start)
    assert locks_ref.is_alive() and restarts(root) == {"locks": 0}
    assert locks_ref.proxy().count_children().get(timeout=T)["specs"] == 0
    assert not [ref for ref in pykka.ActorRegistry.get_by_class(WorkerLock) if not ref.is_alive()]
    assert call_lock(locks_ref, tmp_path / "w0", "acquire", "%1").pid == MY_PID


def test_call_lock_never_waits_for_the_lock_actor(
    tmp_path: Path, root_with_locks: Callable[..., tuple[pykka.ActorRef[Any], Any]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "w").mkdir()
    root, locks = root_with_locks()
    call_lock(locks, tmp_path / "w", "acquire", "%1")
    gate = threading.Event()
    real_status = WorkerLock.status

    def slow_status(self: WorkerLock) -> str:
        gate.wait(T)
        return real_status(self)

    monkeypatch.setattr(WorkerLock, "status", slow_status)
    pending = locks.proxy().call_lock(str(tmp_path / "w"), "status", [], {})
    assert locks.proxy().count_children().get(timeout=T)["specs"] == 1  # the supervisor still answers
    with pytest.raises(pykka.Timeout):
        pending.get(timeout=0)  # waits for the lock actor; the supervisor does not
    gate.set()
    assert pending.get(timeout=T) == f"locked by pid {MY_PID} (session %1)"
    child_id = lock_child_id(str(tmp_path.resolve() / "w"))
    assert [info.id for info in locks.proxy().which_children().get(timeout=T)] == [child_id]
    assert restarts(root) == {"locks": 0}


def test_call_lock_refuses_what_it_does_not_serve(
    tmp_path: Path, root_with_locks: Callable[..., tuple[pykka.ActorRef[Any], Any]],
) -> None:
    root, locks = root_with_locks()
    refused: list[tuple[str, list[Any]]] = [("force_release", []), ("lock_for", []), ("_stop", []),
                                            ("acquire", [1, 2, 3, 4]), ("status", ["extra"])]
    for method, args in refused:
        with pytest.raises(ClientError):
            call_lock(locks, tmp_path / "w", method, *args)
    with pytest.raises(ClientError):
        locks.proxy().call_lock(str(tmp_path / "w"), "read", "not a list", {}).get(timeout=T)
    assert call_lock(locks, "/elsewhere", "status").startswith("unusable (")  # outside the root
    assert restarts(root) == {"locks": 0}


def test_a_call_its_lock_never_handled_is_sent_again_through_a_handle(
    tmp_path: Path, root_with_locks: Callable[..., tuple[pykka.ActorRef[Any], Any]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "w").mkdir()
    root, locks = root_with_locks()
    call_lock(locks, tmp_path / "w", "acquire", "%1")
    lock = locks.proxy().lock_for("w").get(timeout=T)
    entered, gate = threading.Event(), threading.Event()
    real_read = WorkerLock.read

    def slow_read(self: WorkerLock) -> Any:
        entered.set()
        gate.wait(T)
        return real_read(self)

    monkeypatch.setattr(WorkerLock, "read", slow_read)
    busy = lock.proxy().read()
    assert entered.wait(T)  # the lock actor is inside a handler
    pending = locks.proxy().call_lock(str(tmp_path / "w"), "status", [], {})
    wait_until(lambda: lock.actor_inbox.qsize() >= 1)  # queued behind it
    kill(lock, "test")  # the queued call will never be handled by this incarnation
    gate.set()
    assert busy.get(timeout=T).pid == MY_PID
    assert pending.get(timeout=T) == f"locked by pid {MY_PID} (session %1)"  # sent again, answered
    assert restarts(root) == {"locks": 0}
