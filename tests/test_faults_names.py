"""Faults around the name pool (issue 11, items 1, 3, 4 and 7; CONTRACT §2 and §5).

- Liveness that cannot be read (EMFILE, ENOMEM, EACCES) frees nothing.
- A wall-clock step of any size, before or after a restart, never frees a live owner's name.
- A full disk: `StorageError`, reads go on, writes resume by themselves, the tree survives.
- Over the socket a worker acts only for itself.

Each test names the old code path it catches. Time comes from `manual_clock`; waits are
bounded waits on conditions.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from _processes import end, sleeper
from _disks import fill, small_tmpfs

import actors._process as process_module
from actors._process import forget_spawned, note_spawned
from actors import NotPermitted, start_tree
from actors.daemon._client import Client
from actors.daemon._gateway import Gateway
from actors.names._journal import Journal
from actors.names._pool import NamePool, PeerCall
from supervision import ManualClock, StorageError, UnknownMessage, kill
from supervision.testing import wait_until

TIMEOUT = 10.0
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def owner() -> Iterator[subprocess.Popen[bytes]]:
    process = sleeper()
    yield process
    end(process)


def messages(log_records: list[dict[str, Any]], level: str) -> list[str]:
    return [record["message"] for record in log_records if record["level"].name == level]


# -- liveness that cannot be read --------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENOMEM, errno.EACCES])
def test_an_unreadable_proc_frees_no_name_and_is_logged_once_per_episode(
    manual_clock: ManualClock,
    owner: subprocess.Popen[bytes],
    monkeypatch: pytest.MonkeyPatch,
    log_records: list[dict[str, Any]],
    code: int,
) -> None:
    """Old code: `is_same_process_alive` read UNKNOWN as "not alive" and reaped the name."""
    pool = NamePool.start(clock=manual_clock, reap_interval=1.0).proxy()
    name = pool.checkout_name(owner.pid).get(timeout=TIMEOUT)

    def cannot_look(pid: int) -> int | None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(process_module, "_start_ticks", cannot_look)
    for _ in range(3):
        manual_clock.advance(1.0)
    assert pool.pool_stats().get(timeout=TIMEOUT)["checked_out_count"] == 1
    assert pool.get_name_by_pid(owner.pid).get(timeout=TIMEOUT) == name
    warnings = [message for message in messages(log_records, "WARNING") if "cannot tell" in message]
    assert len(warnings) == 1  # once per episode, not per tick
    monkeypatch.undo()
    manual_clock.advance(1.0)
    assert pool.get_name_by_pid(owner.pid).get(timeout=TIMEOUT) == name
    assert any("checked again" in message for message in messages(log_records, "INFO"))
    # Proof of death still frees it: the reaper works, it only refused to guess.
    end(owner)
    manual_clock.advance(1.0)
    assert pool.pool_stats().get(timeout=TIMEOUT)["checked_out_count"] == 0


_EMFILE_CHILD = textwrap.dedent(
    """
    import json, os, resource, subprocess, sys
    sys.path.insert(0, sys.argv[1])
    from loguru import logger
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    from actors._process import identify
    from actors.names._pool import NamePool
    from supervision import ManualClock

    owner = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    clock = ManualClock()
    pool = NamePool.start(clock=clock, reap_interval=1.0).proxy()
    name = pool.checkout_name(owner.pid).get(timeout=10)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    hog = []
    try:
        while True:
            hog.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    try:
        identify(owner.pid)
        probe = None
    except OSError as error:
        probe = error.errno
    for _ in range(3):
        clock.advance(1.0)  # reap ticks, each failing to read /proc/<pid>/stat
    held = pool.get_name_by_pid(owner.pid).get(timeout=10)
    count = pool.pool_stats().get(timeout=10)["checked_out_count"]
    for fd in hog:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    owner.kill()
    owner.wait()
    print(json.dumps({"probe": probe, "kept": held == name, "checked_out": count}), flush=True)
    pool.actor_ref.stop()
    """
)


def test_a_pool_out_of_file_descriptors_reaps_nothing() -> None:
    """A real EMFILE: RLIMIT_NOFILE lowered in a subprocess and every descriptor taken.

    Old code: the reaper's `/proc/<pid>/stat` read failed with EMFILE, which counted as
    "dead", and the live owner's name went back to the pool.
    """
    result = subprocess.run(
        [sys.executable, "-c", _EMFILE_CHILD, str(ROOT)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["probe"] == errno.EMFILE  # the fault was real: /proc could not be read
    assert report == {"probe": errno.EMFILE, "kept": True, "checked_out": 1}
    assert "cannot tell" in result.stderr


# -- wall-clock steps --------------------------------------------------------------------------


def _step_clock(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Step the wall clock as the process sees it (never the machine's clock)."""
    real_time, real_boot = time.time, psutil.boot_time
    monkeypatch.setattr(time, "time", lambda: real_time() + seconds)
    monkeypatch.setattr(psutil, "boot_time", lambda: real_boot() + seconds)
    monkeypatch.setattr(process_module, "boot_time", lambda: float(real_boot()) + seconds)


@pytest.mark.parametrize("seconds", [5.0, -5.0, 86_400.0])
@pytest.mark.parametrize("when", ["after the checkout", "before the checkout"])
@pytest.mark.parametrize("restart", ["graceful", "crash"])
def test_a_wall_clock_step_and_a_restart_never_free_a_live_owners_name(
    tmp_path: Path,
    manual_clock: ManualClock,
    owner: subprocess.Popen[bytes],
    monkeypatch: pytest.MonkeyPatch,
    seconds: float,
    when: str,
    restart: str,
) -> None:
    """Old code: owners were stored with an epoch start time computed through the boot
    time (which moves with the wall clock); after a restart a step of more than 1 s made
    the live owner a "different process", and the reaper freed its name."""
    path = tmp_path / "names.state"
    if when == "before the checkout":
        _step_clock(monkeypatch, seconds)
    pool = NamePool.start(state_path=path, clock=manual_clock, reap_interval=1.0)
    name = pool.proxy().checkout_name(owner.pid).get(timeout=TIMEOUT)
    if restart == "graceful":
        pool.stop()
    else:
        kill(pool)
        wait_until(lambda: not pool.is_alive())
    if when == "before the checkout":
        monkeypatch.undo()  # the clock is set right again
    else:
        _step_clock(monkeypatch, seconds)
    again = NamePool.start(state_path=path, clock=manual_clock, reap_interval=1.0).proxy()
    for _ in range(2):
        manual_clock.advance(1.0)
    assert again.get_name_by_pid(owner.pid).get(timeout=TIMEOUT) == name
    assert again.pool_stats().get(timeout=TIMEOUT)["checked_out_count"] == 1
    assert again.checkout_name().get(timeout=TIMEOUT) != name


def test_a_v2_record_is_judged_by_start_time_then_pinned_to_start_ticks(
    tmp_path: Path, manual_clock: ManualClock, owner: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """State written by v2 (owners with only `start_time`) loads; the first tick that finds
    the owner alive pins it to ticks + boot id, so a later step cannot free it."""
    from supervision import SnapshotStore

    identity = process_module.identify(owner.pid)
    assert identity is not None
    path = tmp_path / "names.state"
    v2 = {"version": 1, "available": ["b"], "holders": [["a", [["pid", owner.pid, identity.start_time]]]]}
    SnapshotStore(path, version=1).save(v2)
    pool = NamePool.start(state_path=path, clock=manual_clock, reap_interval=1.0).proxy()
    manual_clock.advance(1.0)  # alive by start time: pinned
    assert pool.get_name_by_pid(owner.pid).get(timeout=TIMEOUT) == "a"  # (and that tick is done)
    _step_clock(monkeypatch, 86_400.0)
    manual_clock.advance(1.0)
    assert pool.get_name_by_pid(owner.pid).get(timeout=TIMEOUT) == "a"


# -- a full disk ---------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 512 KiB tmpfs mounted for the test (root only)."""
    with small_tmpfs(tmp_path / "disk", "512k") as mount_point:
        yield mount_point


def test_a_full_disk_refuses_changes_keeps_the_tree_and_resumes_when_freed(
    small_disk: Path, manual_clock: ManualClock, log_records: list[dict[str, Any]]
) -> None:
    """Old code: the failed write crashed the pool, whose restarts failed to write their
    start snapshot until the root supervisor gave up and the daemon exited."""
    state_dir = small_disk / "state"
    tree = start_tree(state_dir, clock=manual_clock, reap_interval=3600)
    try:
        names = tree.names.proxy()
        before = names.checkout_name("urn:before").get(timeout=TIMEOUT)
        filler = fill(small_disk)
        # The journal's preallocated blocks still take frames; the first that needs more
        # space is refused.
        answered: dict[str, str] = {}
        for index in range(5000):
            try:
                answered[f"urn:fill-{index}"] = names.checkout_name(f"urn:fill-{index}").get(timeout=TIMEOUT)
            except StorageError as error:
                assert error.errno == errno.ENOSPC
                break
        else:
            pytest.fail("5,000 checkouts on a full disk were all written")
        for index in range(10):
            with pytest.raises(StorageError) as raised:
                names.checkout_name(f"urn:refused-{index}").get(timeout=TIMEOUT)
            assert raised.value.errno == errno.ENOSPC
            assert str(state_dir / "names.state") in str(raised.value)
        # Reads answer; nothing answered before is lost.
        assert names.get_name_by_pid("urn:before").get(timeout=TIMEOUT) == before
        assert names.get_name_by_pid("urn:refused-0").get(timeout=TIMEOUT) is None
        # A restart while the disk is full starts anyway: no restart budget is spent on it.
        kill(tree.names.ref())
        wait_until(lambda: tree.names.current() is not None)
        assert tree.names.proxy().get_name_by_pid("urn:before").get(timeout=TIMEOUT) == before
        with pytest.raises(StorageError):
            tree.names.proxy().checkout_name("urn:refused-again").get(timeout=TIMEOUT)
        children = {child.id: child for child in tree.supervisor.proxy().which_children().get(timeout=TIMEOUT)}
        assert children["names"].restarts == 1 and children["names"].ref is not None
        assert tree.supervisor.is_alive()
        errors = [message for message in messages(log_records, "ERROR") if "cannot write its state" in message]
        assert len(errors) == 2  # one per episode (and per incarnation), not one per call
        filler.unlink()
        after = tree.names.proxy().checkout_name("urn:after").get(timeout=TIMEOUT)
        assert any("writes its state again" in message for message in messages(log_records, "INFO"))
    finally:
        tree.stop()
    again = NamePool.start(state_path=state_dir / "names.state", clock=manual_clock).proxy()
    assert again.get_name_by_pid("urn:before").get(timeout=TIMEOUT) == before
    assert again.get_name_by_pid("urn:after").get(timeout=TIMEOUT) == after
    assert again.get_name_by_pid("urn:refused-0").get(timeout=TIMEOUT) is None
    assert {owner: again.get_name_by_pid(owner).get(timeout=TIMEOUT) for owner in answered} == answered


def test_a_pool_that_cannot_read_its_state_answers_no_read_until_it_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, owner: subprocess.Popen[bytes]
) -> None:
    """Old code: a restart that could not read its state (EMFILE while the daemon was out of
    descriptors) started empty and answered reads from that: a live holder's name was "None",
    and its own checkin was refused as "not held by the caller" (chaos --faults)."""
    state = tmp_path / "names.state"
    first = NamePool.start(state_path=state, reap_interval=3600)
    name = first.proxy().checkout_name(owner.pid).get(timeout=TIMEOUT)
    first.stop()
    real_load = Journal.load
    refusing = threading.Event()
    refusing.set()

    def load(self: Journal, chunk_size: int, default_name: str) -> Any:
        if refusing.is_set():
            raise OSError(errno.EMFILE, "Too many open files")
        return real_load(self, chunk_size, default_name)

    monkeypatch.setattr(Journal, "load", load)
    pool = NamePool.start(state_path=state, reap_interval=3600)
    names = pool.proxy()
    for call in (
        lambda: names.get_name_by_pid(owner.pid),
        lambda: names.checkin_name(name),
        lambda: names.dissociate(owner.pid),
        lambda: names.pool_stats(),
        lambda: names.checkout_name(),
        lambda: pool.ask(PeerCall(owner.pid, "checkin_name", (name,)), block=False),
    ):
        with pytest.raises(StorageError) as raised:
            call().get(timeout=TIMEOUT)
        assert raised.value.errno == errno.EMFILE
    refusing.clear()  # descriptors again: the first call reads the state and answers the truth
    assert names.get_name_by_pid(owner.pid).get(timeout=TIMEOUT) == name
    assert names.pool_stats().get(timeout=TIMEOUT)["checked_out_count"] == 1
    assert names.checkout_name().get(timeout=TIMEOUT) != name
    assert pool.ask(PeerCall(owner.pid, "checkin_name", (name,)), timeout=TIMEOUT) is None
    assert names.get_name_by_pid(owner.pid).get(timeout=TIMEOUT) is None
    pool.stop()


# -- owners over the socket -------------------------------------------------------------------------


@pytest.fixture
def socket_path(tmp_path: Path) -> Iterator[Path]:
    """A tree served in-process on tmp_path/state/tree.sock."""
    tree = start_tree(tmp_path / "state", reap_interval=3600, check_interval=3600, sweep_interval=3600)
    gateway = Gateway(tree, tmp_path / "state" / "tree.sock")
    gateway.start()
    yield tmp_path / "state" / "tree.sock"
    gateway.stop()
    tree.stop()


_WORKER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from actors.daemon._client import Client
    with Client(sys.argv[2], timeout=10) as client:
        for line in sys.stdin:
            op, args = json.loads(line)
            try:
                reply = {"ok": client.call(op, *args)}
            except Exception as error:
                reply = {"error": type(error).__name__, "message": str(error)}
            print(json.dumps(reply), flush=True)
    """
)


class Worker:
    """A real worker process talking to the socket; `call` runs one op in it."""

    def __init__(self, socket_path: Path) -> None:
        argv = [sys.executable, "-c", _WORKER, str(ROOT), str(socket_path)]
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.process.pid

    def call(self, op: str, *args: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps([op, list(args)]) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the worker ended"
        return json.loads(line)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=TIMEOUT)


def test_a_worker_cannot_check_in_another_workers_name(socket_path: Path) -> None:
    """Old code: `names.checkin_name` served anyone, and B ended A's live name."""
    holder, other = Worker(socket_path), Worker(socket_path)
    try:
        name = holder.call("names.checkout_name")["ok"]
        assert other.call("names.checkin_name", name)["error"] == "NotPermitted"
        assert holder.call("names.get_name_by_pid")["ok"] == name
        with Client(socket_path, timeout=10) as me:
            assert me.call("names.get_name_by_pid", holder.pid) == name  # read-only: any pid
        assert other.call("names.checkout_name")["ok"] != name
        assert holder.call("names.checkin_name", name) == {"ok": None}  # its own: allowed
        # A name nobody holds is not the caller's either: refused, so the peer learns it.
        assert holder.call("names.checkin_name", name)["error"] == "NotPermitted"
        assert other.call("names.checkin_name", "never-handed-out")["error"] == "NotPermitted"
    finally:
        holder.close()
        other.close()


def test_a_worker_acts_only_for_itself(socket_path: Path) -> None:
    """Old code: an explicit owner was honoured, so `checkout_name(1)` took a name for init."""
    with Client(socket_path, timeout=10) as me:
        for op, args in [
            ("names.checkout_name", [1]),
            ("names.checkout_name", ["urn:someone-else"]),
            ("names.associate_name", ["quartz", 1]),
            ("names.dissociate", [1]),
        ]:
            with pytest.raises(NotPermitted):
                me.call(op, *args)
        for op in ("names.reset", "names.reconcile"):
            with pytest.raises(UnknownMessage):
                me.call(op, *([[]] if op == "names.reconcile" else []))
        assert me.call("names.get_name_by_pid", 1) is None
        assert me.call("names.pool_stats")["checked_out_count"] == 0
        mine = me.call("names.checkout_name", os.getpid())  # itself, spelled out: allowed
        assert me.call("names.checkout_name") == mine


def test_a_child_process_inherits_its_parents_name_and_a_stranger_cannot(socket_path: Path) -> None:
    """Old code: `names.associate_name` joined any held name, so a stranger could share it."""
    holder, stranger = Worker(socket_path), Worker(socket_path)  # siblings: neither descends from the other
    try:
        with Client(socket_path, timeout=10) as me:
            held = holder.call("names.checkout_name")["ok"]
            assert stranger.call("names.associate_name", held)["error"] == "NotPermitted"
            assert me.call("names.get_name_by_pid", stranger.pid) is None
            assert stranger.call("names.checkin_name", held)["error"] == "NotPermitted"
            assert me.call("names.get_name_by_pid", holder.pid) == held
            # This process holds a name; a worker it started is its child and may inherit it.
            mine = me.call("names.checkout_name")
            assert holder.call("names.associate_name", mine) == {"ok": None}
            assert me.call("names.get_name_by_pid", holder.pid) == mine
            assert me.call("names.get_name_by_pid") == mine  # shared, not moved
            # A name nobody holds can be restored by anyone (after a restart, say).
            assert stranger.call("names.associate_name", "restored-name") == {"ok": None}
            assert me.call("names.get_name_by_pid", stranger.pid) == "restored-name"
    finally:
        holder.close()
        stranger.close()


def test_a_spawned_worker_claims_its_name_before_its_worker_process_associated_it(tmp_path: Path) -> None:
    """Old code: when the WorkerProcess's `associate_name(name, pid)` had not landed (the pool
    restarting, a full disk), the worker's own `inherit_identity` was refused NotPermitted: the
    name was held by the actor's URN, which is neither the worker nor an ancestor (chaos, CI)."""
    tree = start_tree(tmp_path / "state", reap_interval=3600, check_interval=3600, sweep_interval=3600)
    gateway = Gateway(tree, tmp_path / "state" / "tree.sock")
    gateway.start()
    names = tree.names.proxy()
    actor_urn = "urn:uuid:a-worker-process-incarnation"
    spawned, stranger = Worker(tmp_path / "state" / "tree.sock"), Worker(tmp_path / "state" / "tree.sock")
    try:
        name = names.checkout_name(actor_urn).get(timeout=TIMEOUT)  # as WorkerProcess._checkout does
        note_spawned(spawned.pid, name)  # as WorkerProcess._spawn does right after Popen
        assert stranger.call("names.associate_name", name)["error"] == "NotPermitted"
        assert spawned.call("names.associate_name", name) == {"ok": None}
        assert names.get_name_by_pid(spawned.pid).get(timeout=TIMEOUT) == name
        assert names.get_name_by_pid(actor_urn).get(timeout=TIMEOUT) == name  # shared, not moved
        # Any other name the daemon holds for someone else stays refused to it.
        other = names.checkout_name("urn:uuid:someone-else").get(timeout=TIMEOUT)
        assert spawned.call("names.associate_name", other)["error"] == "NotPermitted"
        forget_spawned(spawned.pid)  # reaped: its pid may name another process now
        assert spawned.call("names.dissociate") == {"ok": None}
        assert spawned.call("names.associate_name", name)["error"] == "NotPermitted"
    finally:
        forget_spawned(spawned.pid)
        spawned.close()
        stranger.close()
        gateway.stop()
        tree.stop()


# -- a crash while a change is being written -----------------------------------------------------


def test_a_change_being_written_when_the_pool_crashes_is_answered_truthfully(
    tmp_path: Path, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkin whose frame is on its way to disk when the pool is killed: once durable,
    its caller hears that it succeeded. (Before: the crash marked the journal abandoned
    first, the frame still landed, and the caller got ActorCrashed — "nothing happened" —
    so it went on believing it held a name the next incarnation handed to someone else:
    the chaos run's duplicate holders.)"""
    from actors.names._journal import Journal
    from supervision import ChildSpec, Handle, Supervisor

    writing, release = threading.Event(), threading.Event()
    real_append = Journal._append

    def slow_append(self: Journal, data: bytes) -> None:
        if gate_on.is_set():
            writing.set()
            release.wait(TIMEOUT)
        real_append(self, data)

    gate_on = threading.Event()
    monkeypatch.setattr(Journal, "_append", slow_append)
    path = tmp_path / "names.state"
    root = Supervisor.start(
        [ChildSpec("names", NamePool, kwargs={"state_path": path, "clock": manual_clock})], clock=manual_clock
    )
    try:
        names = Handle(root, "names")
        name = names.proxy().checkout_name("holder").get(timeout=TIMEOUT)
        gate_on.set()
        checkin = names.proxy().checkin_name(name)
        assert writing.wait(TIMEOUT)
        first = names.ref()
        kill(first)
        release.set()
        assert checkin.get(timeout=TIMEOUT) is None  # durable, so answered: not ActorCrashed
        gate_on.clear()
        wait_until(lambda: names.ref() is not first)
        assert names.proxy().get_name_by_pid("holder").get(timeout=TIMEOUT) is None
        assert names.proxy().checkout_name("next").get(timeout=TIMEOUT) == name  # LIFO: it is free
    finally:
        release.set()
        root.stop()
