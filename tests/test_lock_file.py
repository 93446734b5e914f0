"""The worker identity lock's core: the pure verdict, the files, and races between processes."""

from __future__ import annotations

import fcntl
import json
import math
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from _racing import race_round, race_threads, start_racers
from hypothesis import given
from hypothesis import strategies as st
from loguru import logger

from actors._errors import InvalidLock, InvalidOwner, Locked, NotLocked
from actors._process import Liveness, ProcessIdentity, identify
from actors.locks import _lock_file, _record
from actors.locks._lock_file import GUARD_NAME, RECORD_NAME, LockFile
from actors.locks._record import LockInfo, LockState, Verdict, encode_record, judge, parse_record
from supervision import ClientError

RACER = Path(__file__).resolve().parent / "_lock_racer.py"
HOST = socket.gethostname()
MY_PID = os.getpid()
ME = identify(MY_PID)
assert ME is not None
MY_START = ME.start_time
BOOT = 1_000_000.0  # for the pure tests: records "modified" after it unless said otherwise


# -- helpers ---------------------------------------------------------------------------


def record_bytes(**overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "pid": 4242,
        "start_time": 1_700_000_000.5,
        "acquired_at": "2024-01-01T00:00:00.000000Z",
        "session_id": "%4",
        "hostname": HOST,
    }
    fields.update(overrides)
    return json.dumps(fields).encode()


def always_alive(info: LockInfo) -> Liveness:
    return Liveness.ALIVE


def never_alive(info: LockInfo) -> Liveness:
    return Liveness.DEAD


def pid_reused(identity: ProcessIdentity) -> ProcessIdentity:
    """Another lifetime of the same pid: it started a second earlier."""
    return ProcessIdentity(identity.pid, identity.start_ticks - 100, identity.boot_id)


def write_record(lock: LockFile, data: bytes) -> Path:
    """Plant a record by hand (as another writer, or a crash, would leave it)."""
    path = Path(lock.record_path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def assert_every_call_refused(lock: LockFile, match: str) -> None:
    """acquire, read, check and release (with and without an owner) each raise InvalidLock."""
    attempts: list[Callable[[], object]] = [
        lambda: lock.acquire(MY_PID),
        lambda: lock.read(),
        lambda: lock.check(MY_PID),
        lambda: lock.release(),
        lambda: lock.release(MY_PID),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidLock, match=match):
            attempt()


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def worker_dir(tmp_path: Path) -> Path:
    path = tmp_path / "worker"
    path.mkdir()  # the locks never create a worker's directory
    return path


@pytest.fixture
def lock(worker_dir: Path) -> LockFile:
    return LockFile(worker_dir)


@pytest.fixture
def captured_logs() -> Iterator[list[Any]]:
    records: list[Any] = []
    handler_id = logger.add(lambda message: records.append(message.record), level="DEBUG", format="{message}")
    yield records
    logger.remove(handler_id)


def dead_identity(spawn: Callable[[], subprocess.Popen[bytes]]) -> ProcessIdentity:
    child = spawn()
    identity = identify(child.pid)
    assert identity is not None
    child.kill()
    child.wait()  # reaped: the pid no longer names this process
    return identity


# -- the pure verdict ------------------------------------------------------------------


def test_no_record_is_unlocked() -> None:
    assert judge(None, mtime=0.0, boot_time=BOOT, this_host=HOST) == Verdict(LockState.UNLOCKED)


def test_a_live_owner_on_this_host_holds_it() -> None:
    verdict = judge(record_bytes(), mtime=BOOT + 5, boot_time=BOOT, this_host=HOST, liveness_of=always_alive)
    assert verdict.state is LockState.HELD and verdict.is_held
    assert verdict.info is not None and verdict.info.pid == 4242 and verdict.info.session_id == "%4"


def test_liveness_is_asked_about_the_record() -> None:
    asked: list[LockInfo] = []

    def liveness_of(info: LockInfo) -> Liveness:
        asked.append(info)
        return Liveness.DEAD

    verdict = judge(record_bytes(), mtime=BOOT + 5, boot_time=BOOT, this_host=HOST, liveness_of=liveness_of)
    assert [(info.pid, info.start_time) for info in asked] == [(4242, 1_700_000_000.5)]
    assert verdict.state is LockState.STALE and not verdict.is_held


def test_an_owner_whose_liveness_cannot_be_told_holds_the_lock() -> None:
    verdict = judge(record_bytes(), mtime=BOOT + 5, boot_time=BOOT, this_host=HOST,
                    liveness_of=lambda info: Liveness.UNKNOWN)
    assert verdict.state is LockState.HELD and verdict.is_held and verdict.is_unknown
    assert verdict.describe("/x") == "locked by pid 4242 (session %4)"


def test_a_record_from_before_boot_is_stale_even_if_its_pid_lives() -> None:
    verdict = judge(record_bytes(), mtime=BOOT - 1, boot_time=BOOT, this_host=HOST, liveness_of=always_alive)
    assert verdict.state is LockState.STALE
    assert verdict.info is not None and verdict.info.pid == 4242


@pytest.mark.parametrize("mtime", [BOOT - 1e6, BOOT + 5])
@pytest.mark.parametrize("liveness_of", [always_alive, never_alive])
def test_another_hosts_record_is_foreign_whatever_its_age_or_pid(
    mtime: float, liveness_of: Callable[[LockInfo], Liveness]
) -> None:
    verdict = judge(record_bytes(hostname="far"), mtime=mtime, boot_time=BOOT, this_host=HOST, liveness_of=liveness_of)
    assert verdict.state is LockState.FOREIGN and verdict.is_held
    assert verdict.describe("/x") == "held on host far"


CORRUPT_RECORDS = {
    "empty": b"",
    "truncated": record_bytes()[:25],
    "not utf-8": b"\xff\xfe\x00garbage",
    "list": b"[1, 2]",
    "null": b"null",
    "number": b"42",
    "pid as string": record_bytes(pid="4242"),
    "pid as bool": record_bytes(pid=True),
    "pid zero": record_bytes(pid=0),
    "pid negative": record_bytes(pid=-5),
    "pid huge": record_bytes(pid=2**63),
    "pid float": record_bytes(pid=4242.0),
    "start_time missing": json.dumps({"pid": 1, "acquired_at": "", "session_id": "", "hostname": HOST}).encode(),
    "start_time string": record_bytes(start_time="yesterday"),
    "start_time NaN": record_bytes(start_time=float("nan")),
    "hostname empty": record_bytes(hostname=""),
    "hostname number": record_bytes(hostname=7),
    "session null": record_bytes(session_id=None),
    "acquired_at number": record_bytes(acquired_at=5),
    "refreshed_at number": record_bytes(refreshed_at=5),
    "start_ticks string": record_bytes(start_ticks="7", boot_id="b"),
    "start_ticks negative": record_bytes(start_ticks=-1, boot_id="b"),
    "boot_id number": record_bytes(start_ticks=7, boot_id=7),
    "boot_id empty": record_bytes(start_ticks=7, boot_id=""),
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "too large": record_bytes(session_id="x" * 70_000),
}


@pytest.mark.parametrize("data", CORRUPT_RECORDS.values(), ids=CORRUPT_RECORDS.keys())
def test_an_unreadable_record_is_corrupt_unless_from_before_boot(data: bytes) -> None:
    verdict = judge(data, mtime=BOOT + 5, boot_time=BOOT, this_host=HOST, liveness_of=always_alive)
    assert verdict.state is LockState.CORRUPT and verdict.info is None and verdict.reason
    assert verdict.describe("/w/.runtime/agent.lock") == "corrupt (/w/.runtime/agent.lock)"
    before_boot = judge(data, mtime=BOOT - 5, boot_time=BOOT, this_host=HOST, liveness_of=always_alive)
    assert before_boot.state is LockState.STALE and before_boot.info is None
    assert before_boot.describe("/x") == "stale (from before boot)"


def test_status_lines_of_each_verdict() -> None:
    info = parse_record(record_bytes(session_id="%7"))
    assert Verdict(LockState.UNLOCKED).describe("/x") == "unlocked"
    assert Verdict(LockState.HELD, info).describe("/x") == "locked by pid 4242 (session %7)"
    assert Verdict(LockState.STALE, info).describe("/x") == "stale (dead pid 4242)"
    assert Verdict(LockState.STALE, None).describe("/x") == "stale (from before boot)"
    assert Verdict(LockState.FOREIGN, info).describe("/x") == f"held on host {HOST}"
    assert Verdict(LockState.CORRUPT, None, "bad").describe("/p/agent.lock") == "corrupt (/p/agent.lock)"


def test_parse_ignores_unknown_keys_and_accepts_an_int_start_time() -> None:
    info = parse_record(record_bytes(start_time=17, future_field=[1, 2]))
    assert info == LockInfo(4242, 17.0, "2024-01-01T00:00:00.000000Z", "%4", HOST)


@given(st.binary(max_size=300), st.booleans())
def test_judge_never_raises_and_never_calls_a_pre_boot_record_corrupt(data: bytes, is_before_boot: bool) -> None:
    mtime = BOOT - 1 if is_before_boot else BOOT + 1
    verdict = judge(data, mtime=mtime, boot_time=BOOT, this_host=HOST, liveness_of=always_alive)
    assert verdict.state is not LockState.UNLOCKED
    if is_before_boot:
        assert verdict.state in (LockState.STALE, LockState.FOREIGN)


infos = st.builds(
    LockInfo,
    pid=st.integers(1, 2**31 - 1),
    start_time=st.floats(0, 4e9, allow_nan=False),
    acquired_at=st.text(max_size=40),
    session_id=st.text(max_size=40),
    hostname=st.text(min_size=1, max_size=40),
    refreshed_at=st.none() | st.text(max_size=40),
    start_ticks=st.none() | st.integers(0, 2**62),
    boot_id=st.none() | st.text(min_size=1, max_size=40),
)


@given(infos)
def test_records_round_trip(info: LockInfo) -> None:
    assert parse_record(encode_record(info)) == info


@given(infos)
def test_a_record_is_one_line_of_ascii_json_of_its_fields(info: LockInfo) -> None:
    fields = {name: getattr(info, name) for name in LockInfo.__dataclass_fields__}
    assert encode_record(info) == (json.dumps(fields, ensure_ascii=True, allow_nan=False) + "\n").encode()


def test_a_record_with_a_non_finite_start_time_cannot_be_encoded() -> None:
    for start_time in (math.nan, math.inf):
        with pytest.raises(ValueError):
            encode_record(LockInfo(4242, start_time, "2024-01-01T00:00:00.000000Z", "%4", HOST))


# -- acquire, refresh, read, check, status ---------------------------------------------


def test_lock_info_has_the_record_fields() -> None:
    assert list(LockInfo.__dataclass_fields__) == [
        "pid",
        "start_time",
        "acquired_at",
        "session_id",
        "hostname",
        "refreshed_at",
        "start_ticks",
        "boot_id",
        "fence",
    ]


def test_acquire_writes_the_identity_record(lock: LockFile) -> None:
    assert lock.status() == "unlocked" and lock.read() is None
    info = lock.acquire(MY_PID, "%4")
    assert (info.pid, info.session_id, info.hostname, info.refreshed_at) == (MY_PID, "%4", HOST, None)
    assert info.start_time == MY_START
    assert info.acquired_at.endswith("Z") and "T" in info.acquired_at
    on_disk = json.loads(Path(lock.record_path).read_bytes())
    assert on_disk["pid"] == MY_PID and on_disk["start_time"] == MY_START
    assert on_disk["hostname"] == HOST and on_disk["session_id"] == "%4"
    assert (on_disk["start_ticks"], on_disk["boot_id"]) == (ME.start_ticks, ME.boot_id)
    assert (info.start_ticks, info.boot_id) == (ME.start_ticks, ME.boot_id)
    assert lock.read() == info
    assert lock.inspect() == Verdict(LockState.HELD, info)
    assert lock.status() == f"locked by pid {MY_PID} (session %4)"
    lock.check(MY_PID)  # the owner itself is not locked out


def test_acquired_at_comes_from_the_injected_wall_time(worker_dir: Path) -> None:
    lock = LockFile(worker_dir, wall_time=lambda: 86400.25)
    assert lock.acquire(MY_PID).acquired_at == "1970-01-02T00:00:00.250000Z"


def test_the_same_owner_again_refreshes(worker_dir: Path) -> None:
    clock = iter([100.0, 200.0, 300.0])
    lock = LockFile(worker_dir, wall_time=lambda: next(clock))
    first = lock.acquire(MY_PID, "%1")
    second = lock.acquire(MY_PID, "%2")
    assert (second.acquired_at, second.start_time) == (first.acquired_at, first.start_time)
    assert second.session_id == "%2" and second.refreshed_at == "1970-01-01T00:03:20.000000Z"
    third = lock.acquire(MY_PID)  # no session given: keeps the current one
    assert third.session_id == "%2" and third.refreshed_at == "1970-01-01T00:05:00.000000Z"
    assert lock.read() == third


def test_another_live_owner_is_refused_with_its_pid_and_session(
    lock: LockFile, spawn_sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    holder = spawn_sleeper()
    held = lock.acquire(holder.pid, "%9")
    with pytest.raises(Locked, match=rf"locked by pid {holder.pid} \(session %9\)") as raised:
        lock.acquire(MY_PID, "%1")
    assert isinstance(raised.value, ClientError)
    with pytest.raises(Locked, match=rf"pid {holder.pid}"):
        lock.check(MY_PID)
    lock.check(holder.pid)
    assert lock.read() == held
    # A second LockFile on the same directory (another actor) sees the same.
    with pytest.raises(Locked):
        LockFile(lock.worker_dir).acquire(MY_PID)


def test_a_different_start_time_for_the_holders_pid_is_another_owner(lock: LockFile) -> None:
    assert MY_START is not None
    lock.acquire(MY_PID, "%1")
    with pytest.raises(Locked):
        lock.acquire(pid_reused(ME))
    with pytest.raises(Locked):
        lock.check(pid_reused(ME))
    with pytest.raises(Locked):
        lock.release(pid_reused(ME))
    assert lock.read() is not None


def test_a_record_naming_this_process_needs_no_proc_read(lock: LockFile, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process running the code is alive: judging its own record, or taking the lock for
    itself by pid, answers from the identity cached once per process."""
    assert _record.own_identity() == ME

    def no_proc_read(*args: object) -> None:
        raise AssertionError(f"read /proc for {args}")

    monkeypatch.setattr(_lock_file, "identify", no_proc_read)
    for name in ("identify", "liveness", "liveness_by_start_time"):
        monkeypatch.setattr(_record, name, no_proc_read)
    info = lock.acquire(MY_PID, "%1")
    assert (info.pid, info.start_ticks, info.boot_id) == (MY_PID, ME.start_ticks, ME.boot_id)
    assert lock.status() == f"locked by pid {MY_PID} (session %1)"
    lock.check(MY_PID)
    assert lock.release_if_stale() is None
    lock.release()
    lock.acquire(ME, "%2")
    lock.release(ME)
    assert lock.status() == "unlocked"


def test_a_record_naming_this_pid_with_another_start_time_is_judged_by_proc(
    lock: LockFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[object, ...]] = []
    real_liveness, real_by_start_time = _record.liveness, _record.liveness_by_start_time

    def recording(*args: Any) -> Liveness:
        asked.append(args)
        return real_liveness(*args) if len(args) == 3 else real_by_start_time(*args)

    monkeypatch.setattr(_record, "liveness", recording)
    monkeypatch.setattr(_record, "liveness_by_start_time", recording)
    earlier = pid_reused(ME)
    lock.acquire(earlier, "%old")  # v3: judged by start ticks and boot id
    assert lock.inspect().state is LockState.STALE  # an earlier process with our pid
    assert asked == [(MY_PID, earlier.start_ticks, ME.boot_id)]
    write_record(lock, record_bytes(pid=MY_PID, start_time=MY_START - 100))  # v2: by start time
    assert lock.inspect().state is LockState.STALE
    assert asked[1:] == [(MY_PID, MY_START - 100)]


def test_a_forked_child_knows_its_own_identity(lock: LockFile) -> None:
    assert _record.own_identity() == ME  # cached in the parent first
    held = lock.acquire(MY_PID, "%parent")
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            facts = {
                "identity": _record.own_identity() == identify(os.getpid()) != ME,
                "parent_holds": lock.inspect() == Verdict(LockState.HELD, held),
                "refused": False,
            }
            try:
                lock.acquire(os.getpid(), "%child")
            except Locked:
                facts["refused"] = True
            os.write(writer, json.dumps(facts).encode())
        finally:
            os._exit(0)
    os.close(writer)
    try:
        with os.fdopen(reader, "rb") as pipe:
            facts = json.loads(pipe.read() or b"{}")
    finally:
        os.waitpid(child, 0)
    assert facts == {"identity": True, "parent_holds": True, "refused": True}
    assert lock.read() == held


@pytest.mark.parametrize("owner", ["123", 12.0, True, False, 0, -1, None, 2**40, [1]])
def test_acquire_refuses_owners_that_are_not_pids(worker_dir: Path, owner: Any) -> None:
    lock = LockFile(worker_dir)
    with pytest.raises(InvalidOwner):
        lock.acquire(owner)
    with pytest.raises(InvalidOwner):
        lock.check(owner)
    assert list(worker_dir.iterdir()) == []  # refused before touching the disk


def test_acquire_refuses_a_pid_that_does_not_run(
    lock: LockFile, spawn_sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    dead_pid = dead_identity(spawn_sleeper).pid
    with pytest.raises(InvalidOwner, match=str(dead_pid)):
        lock.acquire(dead_pid)


@pytest.mark.parametrize("session_id", [None, 5, b"%4", "x" * 1025])
def test_acquire_refuses_a_bad_session_id(lock: LockFile, session_id: Any) -> None:
    with pytest.raises(ClientError):
        lock.acquire(MY_PID, session_id)


# -- stale records ---------------------------------------------------------------------


def test_the_lock_of_a_dead_process_is_taken_over(
    lock: LockFile, spawn_sleeper: Callable[[], subprocess.Popen[bytes]], captured_logs: list[Any]
) -> None:
    child = spawn_sleeper()
    lock.acquire(child.pid, "%3")
    assert lock.status() == f"locked by pid {child.pid} (session %3)"
    child.kill()
    child.wait()
    assert lock.status() == f"stale (dead pid {child.pid})"
    stale = lock.read()  # read shows the record as it is; the verdict says stale
    assert stale is not None and stale.pid == child.pid
    assert lock.inspect().state is LockState.STALE
    lock.check(MY_PID)  # a dead owner locks nobody out
    info = lock.acquire(MY_PID, "%1")
    assert info.pid == MY_PID and lock.read() == info
    assert lock.status() == f"locked by pid {MY_PID} (session %1)"
    [warning] = [r for r in captured_logs if r["level"].name == "WARNING"]
    assert f"dead pid {child.pid}" in warning["message"]
    assert warning["extra"]["worker_dir"] == lock.worker_dir


def test_a_reused_pid_does_not_keep_the_lock(lock: LockFile) -> None:
    # The record names this (live) pid, but a process that started 100 s earlier.
    assert MY_START is not None
    lock.acquire(pid_reused(ME), "%old")
    assert lock.status() == f"stale (dead pid {MY_PID})"
    lock.check(MY_PID)
    info = lock.acquire(MY_PID, "%new")
    assert info.start_ticks == ME.start_ticks and info.session_id == "%new"


def test_a_v2_record_from_before_boot_is_stale_even_naming_a_live_owner(lock: LockFile) -> None:
    # Without start ticks and boot id only its age can tell it from a previous boot.
    os.utime(write_record(lock, record_bytes(pid=MY_PID, start_time=MY_START)), (0, 0))
    assert lock.status() == f"stale (dead pid {MY_PID})"
    with pytest.raises(NotLocked):
        lock.release(MY_PID)
    assert not os.path.lexists(lock.record_path)


def test_boot_time_is_injectable_and_judges_only_records_without_ticks(worker_dir: Path) -> None:
    LockFile(worker_dir).acquire(MY_PID, "%1")
    rebooted = LockFile(worker_dir, boot_time=time.time() + 3600)
    assert rebooted.status() == f"locked by pid {MY_PID} (session %1)"  # v3: by boot id
    write_record(rebooted, record_bytes(pid=MY_PID, start_time=MY_START))
    assert rebooted.status() == f"stale (dead pid {MY_PID})"


def test_release_of_a_stale_record_removes_it_and_raises_not_locked(
    lock: LockFile, spawn_sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    dead = dead_identity(spawn_sleeper)
    lock.acquire(dead, "%3")
    with pytest.raises(NotLocked, match=f"dead pid {dead.pid}"):
        lock.release()
    assert lock.status() == "unlocked"
    assert sorted(os.listdir(Path(lock.record_path).parent)) == [GUARD_NAME]


def test_release_if_stale_removes_only_a_dead_owners_record(
    lock: LockFile, spawn_sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    assert lock.release_if_stale() is None
    lock.acquire(MY_PID)
    assert lock.release_if_stale() is None
    assert lock.status().startswith("locked by")
    dead = dead_identity(spawn_sleeper)
    lock.force_release()
    lock.acquire(dead, "%3")
    verdict = lock.release_if_stale()
    assert verdict is not None and verdict.state is LockState.STALE
    assert verdict.info is not None and verdict.info.pid == dead.pid
    assert lock.status() == "unlocked"


def test_release_if_stale_never_raises_for_a_path_turned_symlink(
    lock: LockFile, worker_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # .runtime becomes a symlink between the look and the removal of a stale record.
    lock.acquire(pid_reused(ME))
    runtime = Path(lock.record_path).parent
    real_look = LockFile._look

    def look_then_swap(self: LockFile) -> Verdict:
        verdict = real_look(self)
        runtime.rename(tmp_path / "elsewhere")
        runtime.symlink_to(tmp_path / "elsewhere")
        return verdict

    monkeypatch.setattr(LockFile, "_look", look_then_swap)
    assert lock.release_if_stale() is None
    assert (tmp_path / "elsewhere" / RECORD_NAME).exists()  # nothing done through the link


def test_release_if_stale_leaves_other_hosts_and_corrupt_records_and_logs_once(
    lock: LockFile, captured_logs: list[Any]
) -> None:
    write_record(lock, b"{")
    assert lock.release_if_stale() is None
    assert lock.release_if_stale() is None
    warnings = [r for r in captured_logs if r["level"].name == "WARNING"]
    assert len(warnings) == 1 and lock.record_path in warnings[0]["message"]
    assert Path(lock.record_path).read_bytes() == b"{"
    write_record(lock, record_bytes(hostname="far", pid=MY_PID))
    assert lock.release_if_stale() is None
    assert lock.status() == "held on host far"


def test_leftovers_of_killed_writers_are_cleaned(lock: LockFile) -> None:
    runtime = Path(lock.record_path).parent
    runtime.mkdir(mode=0o700, parents=True)
    (runtime / _lock_file._TEMP_NAME).write_bytes(b"half a rec")  # a writer killed mid-write
    write_record(lock, record_bytes(pid=MY_PID, start_time=1.0))  # stale
    info = lock.acquire(MY_PID)
    assert sorted(os.listdir(runtime)) == [RECORD_NAME, GUARD_NAME]
    assert parse_record(Path(lock.record_path).read_bytes()) == info
    lock.release()
    assert sorted(os.listdir(runtime)) == [GUARD_NAME]  # nothing kept between locks


# -- the temporary file: the next record while it is written ---------------------------

TEMP_NAME = _lock_file._TEMP_NAME


@pytest.mark.parametrize("kind", ["hard link", "group-readable", "fifo", "symlink"])
def test_a_temporary_file_that_is_not_ours_alone_is_replaced_never_written(
    lock: LockFile, tmp_path: Path, kind: str
) -> None:
    precious = tmp_path / "precious"
    precious.write_bytes(b"precious\n")
    runtime = Path(lock.record_path).parent
    runtime.mkdir(mode=0o700, parents=True)
    temp = runtime / TEMP_NAME
    if kind == "hard link":
        os.link(precious, temp)
    elif kind == "group-readable":
        temp.write_bytes(b"old")
        temp.chmod(0o640)
    elif kind == "fifo":
        os.mkfifo(temp, 0o600)
    else:
        temp.symlink_to(precious)
    info = lock.acquire(MY_PID, "%1")
    assert precious.read_bytes() == b"precious\n"
    assert parse_record(Path(lock.record_path).read_bytes()) == info
    assert stat.S_IMODE(os.lstat(lock.record_path).st_mode) == 0o600
    assert os.lstat(lock.record_path).st_nlink == 1


def test_release_removes_a_record_whose_temporary_name_is_a_hard_link_to_it(lock: LockFile) -> None:
    # rename(2) between two names of one inode does nothing and succeeds: the record
    # would stay while release() said it went.
    lock.acquire(MY_PID, "%1")
    runtime = Path(lock.record_path).parent
    os.link(lock.record_path, runtime / TEMP_NAME)
    lock.release(MY_PID)
    assert not os.path.lexists(lock.record_path)
    assert lock.status() == "unlocked"
    lock.acquire(MY_PID, "%2")  # the other name is a plain file of ours again: reused
    assert parse_record(Path(lock.record_path).read_bytes()) == lock.read()


def test_a_directory_under_the_temporary_name_is_refused(lock: LockFile) -> None:
    runtime = Path(lock.record_path).parent
    (runtime / TEMP_NAME).mkdir(mode=0o700, parents=True)
    with pytest.raises(InvalidLock, match="is a directory; remove it by hand"):
        lock.acquire(MY_PID)
    assert lock.status() == "unlocked"
    write_record(lock, record_bytes(pid=MY_PID, start_time=1.0))  # stale: breaking sweeps
    with pytest.raises(InvalidLock, match="is a directory"):
        lock.acquire(MY_PID)  # the sweep leaves the directory, and it is still in the way
    lock.force_release()
    (runtime / TEMP_NAME).rmdir()
    lock.acquire(MY_PID)
    (runtime / TEMP_NAME).mkdir()
    lock.release(MY_PID)  # the record cannot become the temporary file: it is removed
    assert lock.status() == "unlocked" and (runtime / TEMP_NAME).is_dir()


def test_readers_take_no_lock(lock: LockFile, worker_dir: Path) -> None:
    held = lock.acquire(MY_PID, "%1")
    impatient = LockFile(worker_dir, guard_timeout=0.01)
    writer = os.open(lock.guard_path, os.O_RDONLY)
    try:
        fcntl.flock(writer, fcntl.LOCK_EX)  # a writer inside its critical section
        assert impatient.read() == held
        assert impatient.status() == f"locked by pid {MY_PID} (session %1)"
        impatient.check(MY_PID)
    finally:
        os.close(writer)


def test_release_judges_the_record_on_disk(
    lock: LockFile, spawn_sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    # Replaced behind our back by a record naming another live process: never removed.
    holder = identify(spawn_sleeper().pid)
    assert holder is not None
    lock.acquire(MY_PID, "%1")
    write_record(lock, encode_record(LockInfo(holder.pid, holder.start_time, "x", "%1", HOST,
                                              start_ticks=holder.start_ticks, boot_id=holder.boot_id)))
    with pytest.raises(Locked, match=f"locked by pid {holder.pid}"):
        lock.release(MY_PID)
    assert lock.read() is not None and lock.read().pid == holder.pid


# -- other hosts -----------------------------------------------------------------------


def test_another_hosts_record_is_broken_only_by_force_release(worker_dir: Path) -> None:
    far = LockFile(worker_dir, hostname="far-host")
    far.acquire(MY_PID, "%5")
    lock = LockFile(worker_dir)
    assert lock.status() == "held on host far-host"
    attempts: list[Callable[[], object]] = [
        lambda: lock.acquire(MY_PID),
        lambda: lock.release(),
        lambda: lock.release(MY_PID),
        lambda: lock.check(MY_PID),
    ]
    for attempt in attempts:
        with pytest.raises(Locked, match="held on host far-host"):
            attempt()
    assert lock.release_if_stale() is None
    os.utime(lock.record_path, (0, 0))  # our boot says nothing of theirs
    assert lock.status() == "held on host far-host"
    lock.force_release()
    assert lock.status() == "unlocked" and lock.read() is None
    lock.force_release()  # nothing left: nothing to do
    lock.acquire(MY_PID)


# -- corrupt records -------------------------------------------------------------------

CORRUPT_FILES = {name: CORRUPT_RECORDS[name] for name in ("empty", "truncated", "list", "pid as string", "too large")}


@pytest.mark.parametrize("data", CORRUPT_FILES.values(), ids=CORRUPT_FILES.keys())
def test_a_corrupt_record_is_refused_until_force_release(lock: LockFile, data: bytes) -> None:
    path = write_record(lock, data)
    assert_every_call_refused(lock, "corrupt lock record")
    assert lock.status() == f"corrupt ({lock.record_path})"
    assert path.read_bytes() == data  # left for a human
    lock.force_release()
    assert lock.status() == "unlocked"
    lock.acquire(MY_PID)


@pytest.mark.parametrize("data", CORRUPT_FILES.values(), ids=CORRUPT_FILES.keys())
def test_a_corrupt_record_from_before_boot_is_stale_and_taken_over(lock: LockFile, data: bytes) -> None:
    path = write_record(lock, data)
    os.utime(path, (0, 0))
    assert lock.status() == "stale (from before boot)"
    assert lock.read() is None
    lock.check(MY_PID)
    assert lock.acquire(MY_PID, "%1").pid == MY_PID
    assert lock.status() == f"locked by pid {MY_PID} (session %1)"


# -- release ---------------------------------------------------------------------------


def test_release_by_the_owner(lock: LockFile) -> None:
    lock.acquire(MY_PID)
    lock.release(MY_PID)
    assert lock.status() == "unlocked" and not os.path.lexists(lock.record_path)
    with pytest.raises(NotLocked):
        lock.release(MY_PID)


def test_release_by_another_owner_is_refused_naming_the_holder(
    lock: LockFile, spawn_sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    holder = spawn_sleeper()
    lock.acquire(holder.pid, "%8")
    with pytest.raises(Locked, match=rf"locked by pid {holder.pid} \(session %8\)"):
        lock.release(MY_PID)
    assert lock.read() is not None
    lock.release()  # without an owner: any live owner's record goes
    assert lock.status() == "unlocked"


def test_release_without_a_record_raises_not_locked(lock: LockFile, worker_dir: Path) -> None:
    with pytest.raises(NotLocked):
        lock.release()
    assert list(worker_dir.iterdir()) == []  # nothing created just to say so
    lock.acquire(MY_PID)
    lock.release()
    with pytest.raises(NotLocked):
        lock.release()


@pytest.mark.parametrize("owner", ["1", True, 0, 1.5])
def test_release_refuses_owners_that_are_not_pids(lock: LockFile, owner: Any) -> None:
    with pytest.raises(InvalidOwner):
        lock.release(owner)


# -- symlinks and odd files --------------------------------------------------------------


def test_a_symlinked_runtime_dir_is_refused_and_never_written_through(lock: LockFile, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    runtime = Path(lock.record_path).parent
    runtime.symlink_to(target)
    attempts: list[Callable[[], object]] = [
        lambda: lock.acquire(MY_PID),
        lambda: lock.read(),
        lambda: lock.inspect(),
        lambda: lock.check(MY_PID),
        lambda: lock.release(),
        lambda: lock.force_release(),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidLock, match="symlink"):
            attempt()
    assert lock.status() == f"corrupt ({runtime})"
    assert lock.release_if_stale() is None
    assert list(target.iterdir()) == []
    assert runtime.is_symlink()


def test_a_runtime_dir_swapped_for_a_symlink_while_held_is_refused(lock: LockFile, tmp_path: Path) -> None:
    """Held or not, every call looks at `.runtime` afresh: one replaced by a symlink after
    the lock was taken is refused, and the real directory keeps the record untouched."""
    held = lock.acquire(MY_PID, "%1")
    runtime = Path(lock.record_path).parent
    moved = runtime.with_name(".runtime-moved")
    runtime.rename(moved)
    target = tmp_path / "elsewhere"
    target.mkdir()
    runtime.symlink_to(target)
    for attempt in (lambda: lock.release(), lambda: lock.release(MY_PID), lambda: lock.acquire(MY_PID, "%2")):
        with pytest.raises(InvalidLock, match="symlink"):
            attempt()
    assert lock.status() == f"corrupt ({runtime})"
    assert list(target.iterdir()) == []
    assert parse_record((moved / RECORD_NAME).read_bytes()) == held
    runtime.unlink()
    moved.rename(runtime)
    assert lock.read() == held
    lock.release(MY_PID)
    assert lock.status() == "unlocked"


def test_a_symlinked_record_is_refused_and_its_target_untouched(lock: LockFile, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_bytes(record_bytes(pid=MY_PID, start_time=MY_START))
    os.utime(target, (1_000_000, 1_000_000))
    Path(lock.record_path).parent.mkdir(parents=True)
    Path(lock.record_path).symlink_to(target)
    assert_every_call_refused(lock, "symlink")
    assert lock.status() == f"corrupt ({lock.record_path})"
    assert lock.release_if_stale() is None
    lock.force_release()  # unlinks the link itself
    assert not os.path.lexists(lock.record_path)
    assert target.read_bytes() == record_bytes(pid=MY_PID, start_time=MY_START)
    assert target.stat().st_mtime == 1_000_000
    lock.acquire(MY_PID)


def test_a_symlinked_guard_is_refused(lock: LockFile, tmp_path: Path) -> None:
    target = tmp_path / "not-there"
    runtime = Path(lock.record_path).parent
    runtime.mkdir(parents=True)
    (runtime / GUARD_NAME).symlink_to(target)
    with pytest.raises(InvalidLock, match="agent.lock.flock"):
        lock.acquire(MY_PID)
    with pytest.raises(InvalidLock):
        lock.force_release()
    assert lock.status() == f"corrupt ({lock.guard_path})"
    assert not target.exists() and not os.path.lexists(lock.record_path)


def test_a_directory_or_fifo_under_the_records_name_is_refused(lock: LockFile) -> None:
    runtime = Path(lock.record_path).parent
    runtime.mkdir(parents=True)
    os.mkfifo(lock.record_path)  # opening it must not hang
    with pytest.raises(InvalidLock, match="not a regular file"):
        lock.read()
    assert lock.status() == f"corrupt ({lock.record_path})"
    lock.force_release()
    os.mkdir(lock.record_path)
    with pytest.raises(InvalidLock):
        lock.acquire(MY_PID)
    with pytest.raises(InvalidLock, match="directory"):
        lock.force_release()


@pytest.mark.parametrize("name", [RECORD_NAME, GUARD_NAME])
def test_a_socket_under_the_records_or_the_guards_name_is_refused_and_force_released(
    lock: LockFile, name: str
) -> None:
    runtime = Path(lock.record_path).parent
    runtime.mkdir(parents=True)
    planted = socket.socket(socket.AF_UNIX)
    try:
        planted.bind(str(runtime / name))  # opening a socket fails with ENXIO
        if name == RECORD_NAME:
            with pytest.raises(InvalidLock, match="not a regular file"):
                lock.read()
            assert lock.status() == f"corrupt ({lock.record_path})"
            lock.force_release()  # removes any record, a socket included
            assert not os.path.lexists(lock.record_path)
        else:
            write_record(lock, record_bytes(pid=MY_PID, start_time=MY_START))
            with pytest.raises(InvalidLock):
                lock.acquire(MY_PID)
            with pytest.raises(InvalidLock):
                lock.release()
            assert lock.read() is not None  # reads need no guard
    finally:
        planted.close()


def test_a_runtime_that_is_a_file_is_refused(lock: LockFile) -> None:
    Path(lock.record_path).parent.write_bytes(b"")
    with pytest.raises(InvalidLock, match="not a directory"):
        lock.acquire(MY_PID)
    assert lock.status() == f"corrupt ({Path(lock.record_path).parent})"


# -- files, permissions, descriptors ---------------------------------------------------


def test_files_are_owner_only_whatever_the_umask(lock: LockFile) -> None:
    previous = os.umask(0)
    try:
        lock.acquire(MY_PID)
    finally:
        os.umask(previous)
    runtime = Path(lock.record_path).parent
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
    assert stat.S_IMODE(os.stat(lock.record_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(lock.guard_path).st_mode) == 0o600


def test_a_loose_runtime_dir_and_guard_are_tightened(lock: LockFile) -> None:
    runtime = Path(lock.record_path).parent
    runtime.mkdir(parents=True)
    runtime.chmod(0o755)
    Path(lock.guard_path).touch()
    Path(lock.guard_path).chmod(0o666)
    lock.acquire(MY_PID)
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
    assert stat.S_IMODE(os.stat(lock.guard_path).st_mode) == 0o600


def test_the_guard_file_is_never_replaced_or_deleted(
    lock: LockFile, spawn_sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    lock.acquire(MY_PID)
    inode = os.stat(lock.guard_path).st_ino
    lock.release(MY_PID)
    lock.acquire(MY_PID)
    lock.force_release()
    lock.acquire(dead_identity(spawn_sleeper))
    lock.acquire(MY_PID)  # breaks the stale record
    lock.release()
    assert os.stat(lock.guard_path).st_ino == inode


def test_no_descriptor_stays_open(lock: LockFile, worker_dir: Path, tmp_path: Path) -> None:
    lock.status()
    before = open_fd_count()
    lock.acquire(MY_PID, "%1")
    lock.acquire(MY_PID, "%2")
    lock.read()
    lock.check(MY_PID)
    lock.status()
    lock.release_if_stale()
    with pytest.raises(Locked):
        LockFile(worker_dir, hostname="other").acquire(MY_PID)
    lock.release(MY_PID)
    with pytest.raises(NotLocked):
        lock.release()
    write_record(lock, b"[]")
    with pytest.raises(InvalidLock):
        lock.acquire(MY_PID)
    with pytest.raises(InvalidLock):
        lock.release()
    lock.status()
    lock.force_release()
    other = tmp_path / "other"
    other.mkdir()
    (other / ".runtime").symlink_to(tmp_path)
    with pytest.raises(InvalidLock):
        LockFile(other).acquire(MY_PID)
    assert open_fd_count() == before


def test_a_guard_held_too_long_times_out_as_locked(lock: LockFile, worker_dir: Path) -> None:
    lock.acquire(MY_PID, "%1")
    stuck = os.open(lock.guard_path, os.O_RDONLY)
    try:
        fcntl.flock(stuck, fcntl.LOCK_EX)
        impatient = LockFile(worker_dir, guard_timeout=0.05)
        with pytest.raises(Locked, match="stayed locked"):
            impatient.release(MY_PID)
        # Reads take no lock and still answer.
        assert impatient.status() == f"locked by pid {MY_PID} (session %1)"
    finally:
        os.close(stuck)
    lock.release(MY_PID)


# -- exclusion ---------------------------------------------------------------------------


def test_flock_on_two_descriptions_of_one_file_excludes_within_a_process(tmp_path: Path) -> None:
    # What makes two LockFile objects (two actors) in one process exclude each other.
    path = tmp_path / "guard"
    path.touch()
    first = os.open(path, os.O_RDONLY)
    second = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BlockingIOError):
            fcntl.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(first, fcntl.LOCK_UN)
        fcntl.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(first)
        os.close(second)


def test_threads_with_their_own_lock_objects_exclude_each_other(
    worker_dir: Path, spawn_sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    # One process, two LockFile objects (as two lock actors would be), four threads, each
    # acquiring for a different live owner. Every round exactly one may win.
    owners = [spawn_sleeper().pid for _ in range(4)]
    locks = [LockFile(worker_dir), LockFile(worker_dir)]
    referee = LockFile(worker_dir)
    race_threads(
        owners,
        rounds=200,
        acquire=lambda index: locks[index % 2].acquire(owners[index], f"thread-{index}"),
        read_holder=referee.read,
        release=lambda _round_index, pid: referee.release(pid),
    )


def test_readers_never_see_a_torn_or_mixed_record_while_records_are_rewritten(
    worker_dir: Path, spawn_sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    # One writer cycles acquire/release for two owners with sessions of different
    # lengths (records grow and shrink); readers in other threads, each with
    # its own LockFile, must only ever see no record or a whole one of those owners.
    other = spawn_sleeper().pid
    owners = {MY_PID: "%a", other: "%a-much-longer-session-id-than-the-other-one"}
    writer = LockFile(worker_dir)
    writer.acquire(MY_PID)
    writer.release()
    done = threading.Event()
    seen: list[tuple[LockState, int | None, str | None]] = []
    errors: list[BaseException] = []

    def read() -> None:
        reader = LockFile(worker_dir)
        try:
            while not done.is_set():
                verdict = reader.inspect()
                info = verdict.info
                seen.append((verdict.state, info and info.pid, info and info.session_id))
        except BaseException as error:  # reported below, with the thread's verdicts
            errors.append(error)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        for index in range(600):
            pid = MY_PID if index % 2 else other
            writer.acquire(pid, owners[pid])
            writer.release(pid)
    finally:
        done.set()
        for thread in readers:
            thread.join()
    assert not errors
    assert seen
    for state, pid, session_id in seen:
        assert state in (LockState.UNLOCKED, LockState.HELD)
        assert pid is None or owners[pid] == session_id


LOOPING_PROCESS = """
import os, sys
sys.path.insert(0, {root!r})
from loguru import logger
logger.remove()
from actors._errors import Locked, NotLocked
from actors.locks._lock_file import LockFile
lock = LockFile({worker_dir!r})
cycle = 0
print("looping", flush=True)
while not os.path.exists({stop!r}):
    cycle += 1
{body}
"""

READ_BODY = "    lock.read()"
WRITE_BODY = """\
    try:
        lock.acquire(os.getpid(), "x" * (1 if cycle % 2 else 200))  # grows and shrinks
        lock.release(os.getpid())
    except (Locked, NotLocked):
        pass"""


@contextmanager
def looping_processes(body: str, count: int, worker_dir: Path, tmp_path: Path) -> Iterator[None]:
    """`count` processes running `body` in a loop on `worker_dir`'s lock for the block;
    each must end cleanly once told to stop."""
    stop = tmp_path / "stop"
    code = LOOPING_PROCESS.format(
        root=str(Path(__file__).resolve().parent.parent), worker_dir=str(worker_dir), stop=str(stop), body=body
    )
    processes = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(count)]
    try:
        for process in processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "looping"
        yield
    finally:
        stop.touch()
        for process in processes:
            process.wait(timeout=30)
    assert all(process.returncode == 0 for process in processes)


def test_a_reader_sees_whole_records_only_and_promptly_while_processes_cycle_the_lock(
    worker_dir: Path, tmp_path: Path
) -> None:
    writer = LockFile(worker_dir)
    writer.acquire(MY_PID)
    writer.release(MY_PID)
    reader = LockFile(worker_dir, guard_timeout=30.0)
    slowest = 0.0
    with looping_processes(WRITE_BODY, 2, worker_dir, tmp_path):
        for _ in range(3000):
            started = time.monotonic()
            verdict = reader.inspect()
            slowest = max(slowest, time.monotonic() - started)
            assert verdict.state in (LockState.UNLOCKED, LockState.HELD), verdict
    assert slowest < 5.0  # never waits out a guard held by a writer that is not stuck


def test_readers_in_many_processes_never_starve_a_writer(worker_dir: Path, tmp_path: Path) -> None:
    # Linux flock favours no one: eight processes reading in a loop would keep the guard
    # shared all the time, and an acquire of a free lock would time out as Locked,
    # if readers took the guard at all (a rename replaces the record whole: they need none).
    writer = LockFile(worker_dir, guard_timeout=0.5)
    writer.acquire(MY_PID, "%w")
    writer.release(MY_PID)
    with looping_processes(READ_BODY, 8, worker_dir, tmp_path):
        for _ in range(30):
            writer.acquire(MY_PID, "%w")
            writer.release(MY_PID)


@pytest.mark.slow
def test_of_eight_racing_processes_exactly_one_wins_every_round(
    worker_dir: Path, tmp_path: Path, spawn_sleeper: Callable[[], subprocess.Popen[bytes]]
) -> None:
    # Eight processes, each with its own LockFile, are told "acquire" together, round
    # after round. Every third round starts from a stale record of a dead process, so
    # breaking it races too. The winner releases before the next round.
    referee = LockFile(worker_dir)
    dead = dead_identity(spawn_sleeper)
    with start_racers(RACER, worker_dir, tmp_path, 8) as racers:
        for round_index in range(240):
            if round_index % 3 == 2:
                referee.acquire(dead, "%dead")
                assert referee.status() == f"stale (dead pid {dead.pid})"
            holder = race_round(racers, referee, round_index)
            assert holder.session_id == f"racer-{holder.pid}"
    assert sorted(os.listdir(Path(referee.record_path).parent)) == [GUARD_NAME]
