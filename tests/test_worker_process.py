"""`WorkerProcess`, `Backoff` and `inherit_identity`: real child processes under a Supervisor.

Children are `tests/_worker_child.py`, which appends JSON lines (start, term, ...) to
a record file; tests wait on those records or on the supervisor, never on sleeps.
Most tests use `FakeNames` (the NamePool methods a worker needs, same rules); one
uses the real `NamePool` when it imports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pykka
import pytest
from _worker_records import child_argv, records

from actors.workers._worker_process import Backoff, WorkerExited, WorkerProcess, inherit_identity
from supervision import (
    ChildSpec,
    Handle,
    ManualClock,
    Restart,
    SupervisedActor,
    Supervisor,
    kill,
)
from supervision.testing import wait_until

TIMEOUT = 5.0


# -- helpers ----------------------------------------------------------------------------------


class FakeNames(SupervisedActor):
    """A stand-in name pool: LIFO reuse, shared names, owners as in the contract."""

    def __init__(self, names: tuple[str, ...] = ("alpha", "bravo", "charlie", "delta")) -> None:
        super().__init__()
        self._available = list(reversed(names))  # a stack: the top is the end
        self._owners: dict[str, set[Any]] = {}
        self._name_of: dict[Any, str] = {}

    def checkout_name(self, owner: Any = None) -> str:
        if owner is not None and owner in self._name_of:
            return self._name_of[owner]
        name = self._available.pop()
        self._owners[name] = {owner}
        if owner is not None:
            self._name_of[owner] = name
        return name

    def associate_name(self, name: str, owner: Any) -> None:
        self.dissociate(owner)
        if name not in self._owners:
            self._available.remove(name)
            self._owners[name] = set()
        self._owners[name].add(owner)
        self._name_of[owner] = name

    def dissociate(self, owner: Any) -> None:
        name = self._name_of.pop(owner, None)
        if name is None:
            return
        self._owners[name].discard(owner)
        if not self._owners[name]:
            del self._owners[name]
            self._available.append(name)

    def get_name_by_pid(self, owner: Any) -> str | None:
        return self._name_of.get(owner)

    def pool_stats(self) -> dict[str, int]:
        return {"available_count": len(self._available), "checked_out_count": len(self._owners)}


class SlowNames(FakeNames):
    """Checkouts wait until `release` is set (a pool stuck behind its name source)."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self._release = release

    def checkout_name(self, owner: Any = None) -> str:
        self._release.wait(TIMEOUT)
        return super().checkout_name(owner)


def wait_records(path: Path, count: int, event: str = "start", label: str | None = None) -> list[dict[str, Any]]:
    return wait_until(lambda: len(found := records(path, event, label)) >= count and found)


def restarts(root: pykka.ActorRef[Any], child_id: str) -> int:
    return next(info.restarts for info in root.proxy().which_children().get(timeout=TIMEOUT) if info.id == child_id)


def is_running(root: pykka.ActorRef[Any], child_id: str) -> bool:
    return root.proxy().whereis(child_id).get(timeout=TIMEOUT) is not None


def is_gone(pid: int) -> bool:
    """No process `pid`, not even a zombie (it was reaped)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_DEAD
    except psutil.NoSuchProcess:
        return True


def is_dead(pid: int) -> bool:
    """Gone, or a zombie left for whoever reaps orphans."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return True


def start_worker(
    root: pykka.ActorRef[Any], child_id: str, argv: list[str], *, restart: Restart = Restart.PERMANENT, **kwargs: Any
) -> Handle:
    spec = ChildSpec(child_id, WorkerProcess, args=(argv,), kwargs=kwargs, restart=restart)
    root.proxy().start_child(spec).get(timeout=TIMEOUT)
    return Handle(root, child_id)


def messages(log_records: list[dict[str, Any]], level: str) -> list[str]:
    return [str(record["message"]) for record in log_records if record["level"].name == level]


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return tmp_path / "record.jsonl"


@pytest.fixture
def root() -> pykka.ActorRef[Any]:
    """A tree like `start_tree`'s: a "names" child first, workers added with start_child."""
    return Supervisor.start([ChildSpec("names", FakeNames)], max_restarts=5, max_seconds=60.0)


@pytest.fixture
def names(root: pykka.ActorRef[Any]) -> Handle:
    return Handle(root, "names")


# -- Backoff ----------------------------------------------------------------------------------


def test_backoff_doubles_per_consecutive_crash_up_to_max() -> None:
    backoff = Backoff(1.0, 10.0, jitter=0.0)
    delays = []
    for _ in range(6):
        delays.append(backoff.delay(0.0))
        backoff.record_crash(0.0)
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.crashes(0.0) == 6


def test_backoff_jitter_stretches_by_at_most_the_factor() -> None:
    assert Backoff(2.0, 2.0, jitter=0.5, random=lambda: 0.0).delay(0.0) == 2.0
    assert Backoff(2.0, 2.0, jitter=0.5, random=lambda: 1.0).delay(0.0) == 3.0
    assert Backoff(2.0, 2.0, jitter=0.5, random=lambda: 0.5).delay(0.0) == 2.5
    with_default_random = Backoff(1.0, 1.0, jitter=0.2)
    assert all(1.0 <= with_default_random.delay(0.0) <= 1.2 for _ in range(200))


def test_backoff_resets_after_a_quiet_period() -> None:
    backoff = Backoff(1.0, 100.0, jitter=0.0, reset_after=60.0)
    for now in (0.0, 1.0, 2.0):
        backoff.record_crash(now)
    assert backoff.delay(61.9) == 8.0  # 59.9 s since the last crash: not quiet yet
    assert backoff.delay(62.0) == 1.0
    backoff.record_crash(63.0)  # counts from one again
    assert backoff.delay(63.0) == 2.0


def test_a_crash_after_a_quiet_period_counts_as_the_first() -> None:
    backoff = Backoff(1.0, 100.0, jitter=0.0, reset_after=10.0)
    backoff.record_crash(0.0)
    backoff.record_crash(1.0)
    backoff.record_crash(50.0)
    assert backoff.crashes(50.0) == 1


def test_backoff_survives_a_huge_crash_count() -> None:
    backoff = Backoff(0.5, 30.0, jitter=0.0)
    for _ in range(5000):
        backoff.record_crash(0.0)
    assert backoff.delay(0.0) == 30.0
    no_delay = Backoff(0.0, 30.0)
    for _ in range(5000):
        no_delay.record_crash(0.0)
    assert no_delay.delay(0.0) == 0.0


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"min": -1.0, "max": 1.0}, ValueError),
        ({"min": 2.0, "max": 1.0}, ValueError),
        ({"min": 1.0, "max": 2.0, "jitter": -0.1}, ValueError),
        ({"min": 1.0, "max": 2.0, "reset_after": -1.0}, ValueError),
        ({"min": 1.0, "max": float("inf")}, ValueError),
        ({"min": float("nan"), "max": 1.0}, ValueError),
        ({"min": "1", "max": 2.0}, TypeError),
        ({"min": 1.0, "max": None}, TypeError),
        ({"min": True, "max": 2.0}, TypeError),
        ({"min": 1.0, "max": 2.0, "jitter": "0.2"}, TypeError),
        ({"min": 1.0, "max": 2.0, "random": 0.5}, TypeError),
    ],
)
def test_backoff_validates_its_settings(arguments: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        Backoff(**arguments)


# -- starting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "kwargs", "error"),
    [
        ("python", {}, TypeError),
        ([], {}, TypeError),
        ([sys.executable, 3], {}, TypeError),
        ([sys.executable], {"term_timeout": -1.0}, ValueError),
        ([sys.executable], {"term_timeout": "5"}, TypeError),
        ([sys.executable], {"names": object()}, TypeError),
        ([sys.executable], {"backoff": 1.0}, TypeError),
        ([sys.executable], {"env": {"A": 1}}, TypeError),
        ([sys.executable], {"env": ["A=1"]}, TypeError),
        ([sys.executable], {"clock": object()}, TypeError),
        ([sys.executable], {"cwd": 3}, TypeError),
        ([sys.executable], {"socket_path": 3}, TypeError),
    ],
)
def test_start_validates_its_arguments(argv: Any, kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        WorkerProcess.start(argv, **kwargs)


def test_a_spec_left_at_the_default_shutdown_gets_term_timeout_plus_two() -> None:
    argv = [sys.executable]
    assert ChildSpec("w", WorkerProcess, args=(argv,)).shutdown == 7.0
    assert ChildSpec("w", WorkerProcess, args=(argv,), kwargs={"term_timeout": 0.3}).shutdown == pytest.approx(2.3)
    assert ChildSpec("w", WorkerProcess, args=(argv,), kwargs={"term_timeout": 0.3}, shutdown=1.0).shutdown == 1.0
    with pytest.raises(ValueError):
        ChildSpec("w", WorkerProcess, args=(argv,), kwargs={"term_timeout": -1})


def test_spawns_with_its_name_socket_env_cwd_and_own_session(
    root: pykka.ActorRef[Any], names: Handle, record: Path, tmp_path: Path, log_records: list[dict[str, Any]]
) -> None:
    socket_path = str(tmp_path / "tree.sock")
    worker = start_worker(
        root,
        "w",
        child_argv(record, "w"),
        names=names,
        socket_path=socket_path,
        env={"WORKER_TEST_VAR": "42"},
        cwd=tmp_path,
    )
    (started,) = wait_records(record, 1)
    pid = started["pid"]
    assert started["env"] == {"AGENT_NAME": "alpha", "ACTORS_SOCKET": socket_path, "WORKER_TEST_VAR": "42"}
    assert started["cwd"] == str(tmp_path)
    assert started["sid"] == pid  # start_new_session: its own session and process group
    assert worker.proxy().process_pid().get(timeout=TIMEOUT) == pid
    info = worker.proxy().info().get(timeout=TIMEOUT)
    assert info["pid"] == pid and info["name"] == "alpha" and info["state"] == "running"
    assert info["argv"] == child_argv(record, "w") and info["cwd"] == str(tmp_path)
    assert isinstance(info["started_at"], float) and info["returncode"] is None
    # The name now belongs to the process; the actor's URN let go of it.
    pool = names.proxy()
    urn = worker.ref().actor_urn
    assert pool.get_name_by_pid(pid).get(timeout=TIMEOUT) == "alpha"
    wait_until(lambda: pool.get_name_by_pid(urn).get(timeout=TIMEOUT) is None)
    assert any(f"pid {pid}" in message and "alpha" in message for message in messages(log_records, "INFO"))


def test_without_names_the_daemons_own_identity_is_not_passed_on(
    record: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_NAME", "the-daemons-own")
    monkeypatch.setenv("ACTORS_SOCKET", "/elsewhere.sock")
    ref = WorkerProcess.start(child_argv(record, "w"), env={"WORKER_TEST_VAR": "x"})
    (started,) = wait_records(record, 1)
    assert started["env"] == {"AGENT_NAME": None, "ACTORS_SOCKET": None, "WORKER_TEST_VAR": "x"}
    ref.stop()
    assert is_gone(started["pid"])


# -- how the process's end ends the actor -----------------------------------------------------


def test_exit_zero_is_a_normal_exit_so_a_permanent_worker_is_restarted(
    root: pykka.ActorRef[Any], names: Handle, record: Path, log_records: list[dict[str, Any]]
) -> None:
    start_worker(root, "w", child_argv(record, "w", "--exit-first", "1", "0"), names=names)
    first, second = wait_records(record, 2)
    wait_until(lambda: restarts(root, "w") == 1)
    assert first["env"]["AGENT_NAME"] == second["env"]["AGENT_NAME"] == "alpha"  # LIFO reuse
    assert not any("crashed" in message for message in messages(log_records, "ERROR"))


def test_exit_zero_of_a_transient_worker_is_not_restarted_and_frees_its_name(
    root: pykka.ActorRef[Any], names: Handle, record: Path
) -> None:
    start_worker(root, "w", child_argv(record, "w", "--exit", "0"), names=names, restart=Restart.TRANSIENT)
    wait_records(record, 1)
    wait_until(lambda: not is_running(root, "w"))
    assert restarts(root, "w") == 0
    all_back = {"available_count": 4, "checked_out_count": 0}
    wait_until(lambda: names.proxy().pool_stats().get(timeout=TIMEOUT) == all_back)


def test_a_non_zero_exit_is_a_crash_so_a_transient_worker_is_restarted(
    root: pykka.ActorRef[Any], names: Handle, record: Path, log_records: list[dict[str, Any]]
) -> None:
    start_worker(root, "w", child_argv(record, "w", "--exit-first", "1", "3"), names=names, restart=Restart.TRANSIENT)
    first, second = wait_records(record, 2)
    wait_until(lambda: restarts(root, "w") == 1 and is_running(root, "w"))
    errors = messages(log_records, "ERROR")
    expected = f"WorkerExited('{sys.executable} (pid {first['pid']}) exited with status 3')"
    assert any(expected in message for message in errors)
    assert second["env"]["AGENT_NAME"] == "alpha"


def test_sigkill_of_the_process_restarts_the_worker_under_its_old_name(
    root: pykka.ActorRef[Any], names: Handle, record: Path, log_records: list[dict[str, Any]]
) -> None:
    worker = start_worker(root, "w", child_argv(record, "w"), names=names)
    (first,) = wait_records(record, 1)
    os.kill(first["pid"], signal.SIGKILL)
    _, second = wait_records(record, 2)
    wait_until(lambda: restarts(root, "w") == 1)
    assert is_gone(first["pid"])
    assert second["env"]["AGENT_NAME"] == first["env"]["AGENT_NAME"] == "alpha"
    assert worker.proxy().process_pid().get(timeout=TIMEOUT) == second["pid"]
    assert names.proxy().get_name_by_pid(first["pid"]).get(timeout=TIMEOUT) is None
    assert names.proxy().pool_stats().get(timeout=TIMEOUT) == {"available_count": 3, "checked_out_count": 1}
    assert any("was killed by SIGKILL" in message for message in messages(log_records, "ERROR"))


def test_worker_exited_describes_status_and_signal() -> None:
    assert str(WorkerExited("claude", 12, 3)) == "claude (pid 12) exited with status 3"
    assert str(WorkerExited("claude", 12, -9)) == "claude (pid 12) was killed by SIGKILL"
    assert WorkerExited("claude", 12, -15).returncode == -15


# -- how the actor's end ends the process -----------------------------------------------------


def test_kill_of_the_actor_terminates_and_reaps_its_process(
    root: pykka.ActorRef[Any], names: Handle, record: Path
) -> None:
    worker = start_worker(root, "w", child_argv(record, "w"), names=names)
    (first,) = wait_records(record, 1)
    kill(worker.ref())
    wait_records(record, 1, event="term")
    _, second = wait_records(record, 2)
    assert records(record, "term") == [{"event": "term", "label": "w", "pid": first["pid"]}]
    assert is_gone(first["pid"])  # the old incarnation ended only after reaping it
    assert second["env"]["AGENT_NAME"] == "alpha"


def test_a_process_ignoring_sigterm_gets_sigkill_after_term_timeout(
    root: pykka.ActorRef[Any], record: Path, log_records: list[dict[str, Any]]
) -> None:
    start_worker(root, "w", child_argv(record, "w", "--ignore-term"), term_timeout=0.3)
    (started,) = wait_records(record, 1)
    began = time.monotonic()
    root.proxy().terminate_child("w").get(timeout=TIMEOUT)
    elapsed = time.monotonic() - began
    assert 0.3 <= elapsed < 2.3  # SIGTERM, 0.3 s, SIGKILL, reaped: within the default grace
    assert [line["event"] for line in records(record)] == ["start", "term-ignored"]
    assert is_gone(started["pid"])
    assert any("SIGKILL" in message for message in messages(log_records, "WARNING"))


def test_what_the_process_left_in_its_group_gets_sigkill_after_term_timeout(
    root: pykka.ActorRef[Any], record: Path, log_records: list[dict[str, Any]]
) -> None:
    start_worker(root, "w", child_argv(record, "w", "--stubborn-child"), term_timeout=0.3)
    (leader,) = wait_records(record, 1, label="w")
    (stubborn,) = wait_records(record, 1, label="w-child")
    began = time.monotonic()
    root.proxy().terminate_child("w").get(timeout=TIMEOUT)
    assert time.monotonic() - began >= 0.3
    assert {(line["event"], line["label"]) for line in records(record)} >= {("term", "w"), ("term-ignored", "w-child")}
    assert is_gone(leader["pid"])
    wait_until(lambda: is_dead(stubborn["pid"]))  # an orphan: init reaps it, not us
    assert any("process group still runs 0.3s after SIGTERM" in message for message in messages(log_records, "WARNING"))


def test_stopping_the_supervisor_terminates_processes_in_reverse_order(tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    labels = ["w1", "w2", "w3"]
    root = Supervisor.start([ChildSpec(label, WorkerProcess, args=(child_argv(record, label),)) for label in labels])
    pids = [line["pid"] for line in wait_records(record, 3)]
    root.stop()
    assert [line["label"] for line in records(record, "term")] == ["w3", "w2", "w1"]
    assert all(is_gone(pid) for pid in pids)


def test_a_standalone_worker_stops_its_process(record: Path) -> None:
    ref = WorkerProcess.start(child_argv(record, "w"))
    (started,) = wait_records(record, 1)
    ref.stop()
    assert records(record, "term")[0]["pid"] == started["pid"]
    assert is_gone(started["pid"])


# -- backoff and crash loops ------------------------------------------------------------------


def test_backoff_delays_each_spawn_on_the_clock_but_not_the_restart(
    manual_clock: ManualClock, record: Path
) -> None:
    backoff = Backoff(1.0, 8.0, jitter=0.0)
    root = Supervisor.start([], clock=manual_clock)
    worker = start_worker(root, "w", child_argv(record, "w"), backoff=backoff, clock=manual_clock)
    proxy = worker.proxy()
    info = proxy.info().get(timeout=TIMEOUT)
    assert info["state"] == "waiting" and info["pid"] is None and info["spawn_delay"] == 1.0
    manual_clock.advance(0.99)
    assert proxy.process_pid().get(timeout=TIMEOUT) is None
    manual_clock.advance(0.01)
    first_pid = proxy.process_pid().get(timeout=TIMEOUT)  # the spawn was queued first
    assert first_pid == wait_records(record, 1)[0]["pid"]
    # A crash, counted by the backoff; the restart comes at once...
    os.kill(first_pid, signal.SIGKILL)
    wait_until(lambda: restarts(root, "w") == 1 and is_running(root, "w"))
    assert backoff.crashes(manual_clock.monotonic()) == 1
    info = proxy.info().get(timeout=TIMEOUT)
    assert info["state"] == "waiting" and info["spawn_delay"] == 2.0 and info["consecutive_crashes"] == 1
    # ...but its process only 2 s later.
    manual_clock.advance(1.99)
    assert proxy.process_pid().get(timeout=TIMEOUT) is None
    manual_clock.advance(0.01)
    second_pid = proxy.process_pid().get(timeout=TIMEOUT)
    assert second_pid is not None and second_pid != first_pid
    assert [line["pid"] for line in wait_records(record, 2)] == [first_pid, second_pid]


def test_stopping_before_the_delayed_spawn_spawns_nothing(manual_clock: ManualClock, record: Path) -> None:
    ref = WorkerProcess.start(child_argv(record, "w"), backoff=Backoff(1.0, 1.0), clock=manual_clock)
    ref.stop()
    assert manual_clock.pending_timers == 0
    manual_clock.advance(5.0)
    assert records(record) == []


def test_a_backoff_of_zero_spawns_at_once(manual_clock: ManualClock, record: Path) -> None:
    ref = WorkerProcess.start(child_argv(record, "w"), backoff=Backoff(0.0, 0.0), clock=manual_clock)
    (started,) = wait_records(record, 1)
    assert ref.proxy().process_pid().get(timeout=TIMEOUT) == started["pid"]


def test_a_crash_loop_escalates_to_the_supervisor(record: Path, log_records: list[dict[str, Any]]) -> None:
    root = Supervisor.start([], max_restarts=2, max_seconds=60.0)
    root.proxy().start_child(ChildSpec("w", WorkerProcess, args=(child_argv(record, "w", "--exit", "1"),))).get(
        timeout=TIMEOUT
    )
    wait_until(lambda: not root.is_alive())
    started = records(record, "start")
    assert len(started) == 3  # the first run and two restarts; the third crash is one too many
    assert all(is_gone(line["pid"]) for line in started)
    assert any("more than 2 restarts" in message for message in messages(log_records, "ERROR"))


def test_a_missing_program_is_a_crash_that_gives_the_name_back(
    root: pykka.ActorRef[Any], names: Handle, tmp_path: Path
) -> None:
    start_worker(root, "w", [str(tmp_path / "no-such-program")], names=names, restart=Restart.TEMPORARY)
    wait_until(lambda: "w" not in [info.id for info in root.proxy().which_children().get(timeout=TIMEOUT)])
    wait_until(lambda: names.proxy().pool_stats().get(timeout=TIMEOUT)["checked_out_count"] == 0)


def test_a_worker_abandoned_while_checking_out_spawns_nothing_and_gives_the_name_back(record: Path) -> None:
    release = threading.Event()
    root = Supervisor.start([ChildSpec("names", SlowNames, args=(release,))])
    names = Handle(root, "names")
    spec = ChildSpec("w", WorkerProcess, args=(child_argv(record, "w"),), kwargs={"names": names}, shutdown=0.1)
    ref = root.proxy().start_child(spec).get(timeout=TIMEOUT)
    actor = ref._actor_weakref()
    root.proxy().terminate_child("w").get(timeout=TIMEOUT)  # gives up after 0.1 s
    assert not ref.is_alive()
    release.set()
    wait_until(lambda: not actor._thread_alive())
    assert actor.process_pid() is None and actor.info()["state"] == "waiting"
    wait_until(lambda: names.proxy().pool_stats().get(timeout=TIMEOUT)["checked_out_count"] == 0)
    assert records(record) == []


# -- with the real NamePool -------------------------------------------------------------------


def test_with_the_real_name_pool_a_restarted_worker_gets_its_old_name(record: Path) -> None:
    name_pool = pytest.importorskip("actors.names._pool")
    source = lambda count, used: [f"n{i}" for i in range(count)]  # noqa: E731
    root = Supervisor.start([ChildSpec("names", name_pool.NamePool, kwargs={"source": source})])
    names = Handle(root, "names")
    worker = start_worker(root, "w", child_argv(record, "w"), names=names)
    (first,) = wait_records(record, 1)
    name = first["env"]["AGENT_NAME"]
    # Answered after the first message, which hands the name to the pid before it ends.
    assert worker.proxy().process_pid().get(timeout=TIMEOUT) == first["pid"]
    assert names.proxy().get_name_by_pid(first["pid"]).get(timeout=TIMEOUT) == name
    wait_until(lambda: names.proxy().get_name_by_pid(worker.ref().actor_urn).get(timeout=TIMEOUT) is None)
    os.kill(first["pid"], signal.SIGKILL)
    _, second = wait_records(record, 2)
    assert second["env"]["AGENT_NAME"] == name
    assert names.proxy().pool_stats().get(timeout=TIMEOUT)["checked_out_count"] == 1
    root.stop()
    assert is_gone(second["pid"])


# -- inherit_identity -------------------------------------------------------------------------


def test_inherit_identity_without_agent_name_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENT_NAME", raising=False)
    monkeypatch.setenv("ACTORS_SOCKET", "/nowhere.sock")
    assert inherit_identity() is None


def test_inherit_identity_without_a_socket_returns_the_name_and_warns(
    monkeypatch: pytest.MonkeyPatch, log_records: list[dict[str, Any]]
) -> None:
    monkeypatch.setenv("AGENT_NAME", "furiosa")
    monkeypatch.delenv("ACTORS_SOCKET", raising=False)
    assert inherit_identity() == "furiosa"
    assert any("furiosa" in message and "ACTORS_SOCKET" in message for message in messages(log_records, "WARNING"))


@pytest.mark.parametrize("kind", ["missing", "not-a-socket"])
def test_inherit_identity_with_an_unreachable_socket_raises_connection_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "tree.sock"
    if kind == "not-a-socket":
        path.write_text("")
    monkeypatch.setenv("AGENT_NAME", "furiosa")
    monkeypatch.setenv("ACTORS_SOCKET", str(path))
    with pytest.raises(ConnectionError, match="furiosa"):
        inherit_identity()


def test_inherit_identity_through_a_running_daemon(tmp_path: Path) -> None:
    pytest.importorskip("actors.daemon._gateway")
    pytest.importorskip("actors.daemon._daemon")
    from actors.daemon._client import Client

    state_dir = tmp_path / "state"
    daemon = subprocess.Popen([sys.executable, "-m", "actors", "serve", "--state-dir", str(state_dir)])
    try:
        socket_path = state_dir / "tree.sock"
        wait_until(lambda: socket_path.exists() or daemon.poll() is not None, timeout=15.0)
        assert daemon.poll() is None, "the daemon exited"
        with Client(socket_path) as client:
            name = client.call("names.checkout_name")  # this process's; the child below inherits it
        script = (
            "import json; from actors.daemon._client import Client; from actors.workers._worker_process import inherit_identity\n"
            "name = inherit_identity()\n"
            "import os\n"
            "with Client(os.environ['ACTORS_SOCKET']) as client:\n"
            "    print(json.dumps([name, client.call('names.get_name_by_pid', os.getpid())]))\n"
        )
        environment = {**os.environ, "AGENT_NAME": name, "ACTORS_SOCKET": str(socket_path)}
        output = subprocess.run(
            [sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=30, check=True
        ).stdout
        assert json.loads(output) == [name, name]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=15)


def test_inherit_identity_passes_the_daemons_refusal_through(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A refusal is the daemon's answer, not a lost daemon: `NotPermitted` as it is (before,
    every OSError — NotPermitted and StorageError included — became "did not answer")."""
    from actors import NotPermitted, start_tree

    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        with start_tree(tmp_path / "state", serve=True) as tree:
            name = tree.names.proxy().checkout_name(holder.pid).get(timeout=10)  # not our ancestor
            monkeypatch.setenv("AGENT_NAME", name)
            monkeypatch.setenv("ACTORS_SOCKET", str(tmp_path / "state" / "tree.sock"))
            with pytest.raises(NotPermitted):
                inherit_identity()
    finally:
        holder.kill()
        holder.wait(timeout=10)
