"""`LockInfo.fence` without a fleet: the count of a worker's acquisitions on this host.

It grows with every new acquisition (never with a refresh by the holder), survives
releases and restarts of the lock (it is kept in the guard file, which is never replaced),
never goes back after a power cut (a reservation is synced before it is used), and no two
acquisitions ever share one, however they race. With a fleet the store's fence
is used instead (tests/test_fleet_locks.py).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from actors import _process
from actors._errors import Locked
from actors.locks import _lock_file
from actors.locks._lock_file import FENCE_RESERVE, GUARD_NAME, RECORD_NAME, LockFile
from actors.locks._record import parse_record
from actors.locks._worker_lock import LockSupervisor, WorkerLock
from supervision import ManualClock

T = 10.0


@pytest.fixture
def worker(tmp_path: Path) -> Path:
    path = tmp_path / "w"
    path.mkdir()
    return path


def test_the_fence_counts_new_acquisitions_across_releases_and_restarts(
    worker: Path, manual_clock: ManualClock,
) -> None:
    lock = WorkerLock.start(worker, clock=manual_clock)
    assert lock.proxy().acquire("s1").get(timeout=T).fence == 1
    assert lock.proxy().acquire("s1b").get(timeout=T).fence == 1  # a refresh by its holder: the same
    assert lock.proxy().read().get(timeout=T).fence == 1
    lock.proxy().release().get(timeout=T)
    assert lock.proxy().acquire("s2").get(timeout=T).fence == 2
    lock.proxy().release().get(timeout=T)
    lock.stop()
    locks = LockSupervisor.start(clock=manual_clock)  # a daemon started again
    again = locks.proxy().lock_for(str(worker)).get(timeout=T)
    assert again.proxy().acquire("s3").get(timeout=T).fence == 3
    on_disk = parse_record((worker / ".runtime" / RECORD_NAME).read_bytes())
    assert on_disk.fence == 3
    again.proxy().release().get(timeout=T)


def test_a_stale_record_taken_over_gets_the_next_fence(worker: Path, spawn_sleeper: Callable[[], Any]) -> None:
    owner = spawn_sleeper()
    lock = LockFile(worker)
    assert lock.acquire(owner.pid, "dies").fence == 1
    owner.kill()
    owner.wait()
    assert lock.acquire(os.getpid(), "next").fence == 2


def test_each_worker_counts_its_own_and_a_record_without_a_fence_reads_as_0(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    for _ in range(3):
        LockFile(first).acquire(os.getpid())
        LockFile(first).release(os.getpid())
    assert LockFile(second).acquire(os.getpid()).fence == 1
    record = (second / ".runtime" / RECORD_NAME)
    text = record.read_text().replace(', "fence": 1', "")
    assert "fence" not in text
    record.write_text(text)  # as a v3 lock without fences wrote it
    assert LockFile(second).read().fence == 0  # type: ignore[union-attr]
    assert LockFile(second).acquire(os.getpid()).fence == 0  # its holder refreshes it as it is
    LockFile(second).release(os.getpid())
    assert LockFile(second).acquire(os.getpid()).fence == 2


def test_an_unreadable_counter_counts_again_from_1_and_says_so(worker: Path, log_records: list[dict[str, Any]]) -> None:
    lock = LockFile(worker)
    lock.acquire(os.getpid())
    lock.release(os.getpid())
    (worker / ".runtime" / GUARD_NAME).write_bytes(b"\xff garbage that is no number at all, and long\n")
    assert lock.acquire(os.getpid()).fence == 1
    assert any("fence counter" in record["message"] and record["level"].name == "WARNING" for record in log_records)
    lock.release(os.getpid())
    assert lock.acquire(os.getpid()).fence == 2


def test_racing_acquisitions_never_share_a_fence(worker: Path, spawn_sleeper: Callable[[], Any]) -> None:
    owners = [spawn_sleeper().pid for _ in range(4)]
    fences: list[int] = []
    barrier = threading.Barrier(len(owners))

    def race(owner: int) -> None:
        lock = LockFile(worker)  # one file description each: they exclude each other like processes
        barrier.wait()
        for _ in range(40):
            try:
                fence = lock.acquire(owner).fence
            except Locked:
                continue
            fences.append(fence)
            lock.release(owner)

    threads = [threading.Thread(target=race, args=(owner,)) for owner in owners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(T)
    assert fences and len(set(fences)) == len(fences)  # every acquisition a fence of its own
    assert max(fences) == len(fences)  # and none skipped: the count is exact


def cycles(lock: LockFile, count: int) -> list[int]:
    """The fences of `count` acquire+release cycles by this process."""
    fences = []
    for _ in range(count):
        fences.append(lock.acquire(os.getpid()).fence)
        lock.release(os.getpid())
    return fences


def test_no_fence_above_what_is_synced_is_handed_out(worker: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The count is written without a sync; what a power cut cannot take is the reservation,
    synced (with the directories holding it) before the first fence above the last one."""
    guard = worker / ".runtime" / GUARD_NAME
    synced: list[str] = []  # the guard's text at each sync of it
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        if guard.exists() and os.path.samestat(os.fstat(fd), os.stat(guard)):
            synced.append(guard.read_text())

    monkeypatch.setattr(_lock_file.os, "fsync", fsync)
    fences = cycles(LockFile(worker), FENCE_RESERVE + 10)
    assert fences == list(range(1, FENCE_RESERVE + 11))
    boot = _process.BOOT_ID or "-"
    assert synced == [f"1 {FENCE_RESERVE} {boot}\n", f"{FENCE_RESERVE + 1} {2 * FENCE_RESERVE} {boot}\n"]


def test_after_a_power_cut_the_fence_goes_on_from_the_reservation_never_back(worker: Path) -> None:
    lock = LockFile(worker)
    assert cycles(lock, 3) == [1, 2, 3]
    guard = worker / ".runtime" / GUARD_NAME
    # What a power cut can leave: the count as last synced (1), the reservation, another boot.
    guard.write_text(f"1 {FENCE_RESERVE} 00000000-0000-0000-0000-000000000000\n")
    assert cycles(lock, 2) == [FENCE_RESERVE + 1, FENCE_RESERVE + 2]
    # The same guard in this boot (a daemon restart, no power cut) counts on: no skip.
    assert cycles(LockFile(worker), 1) == [FENCE_RESERVE + 3]


def test_a_bare_count_from_the_previous_version_goes_on_from_it(worker: Path) -> None:
    cycles(LockFile(worker), 1)
    (worker / ".runtime" / GUARD_NAME).write_text("41\n")
    assert cycles(LockFile(worker), 2) == [42, 43]
    assert (worker / ".runtime" / GUARD_NAME).read_text().split()[:2] == ["43", str(41 + FENCE_RESERVE)]
