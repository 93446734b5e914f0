"""Worker processes an operator can trust (issue 14), with real processes.

Stable names per `name_key` across restarts of the worker and of the daemon, a process
group per worker ended on every exit, the "workers" supervisor and its budget, a clean
graceful stop, and the records and events that name the worker (issue 13). Workers are
`tests/_worker_child.py`, which appends JSON lines to a record file; tests wait on those
records, on the tree or on processes, never on sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from _worker_records import child_argv, records
from loguru import logger

from actors import start_tree
from actors._tree import Tree
from actors.workers._worker_process import WorkerProcess
from supervision import ChildSpec, Handle, ManualClock, kill, subscribe
from supervision.testing import wait_until

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0


# -- helpers ----------------------------------------------------------------------------------


def wait_records(path: Path, count: int, label: str, event: str = "start") -> list[dict[str, Any]]:
    return wait_until(lambda: len(found := records(path, event, label)) >= count and found, timeout=TIMEOUT)


def is_dead(pid: int) -> bool:
    """Gone, or a zombie left for whoever reaps orphans."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return True


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def add_worker(tree: Tree, child_id: str, argv: list[str], **kwargs: Any) -> None:
    kwargs.setdefault("names", tree.names)
    kwargs.setdefault("term_timeout", 0.5)
    spec = ChildSpec(child_id, WorkerProcess, kwargs={"argv": argv, **kwargs})
    tree.workers.proxy().start_child(spec).get(timeout=TIMEOUT)


def restarts_of(supervisor: Any, child_id: str) -> int:
    infos = supervisor.proxy().which_children().get(timeout=TIMEOUT)
    return next(info.restarts for info in infos if info.id == child_id)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    tree = start_tree(tmp_path / "state", reap_interval=3600.0)
    try:
        yield tree
    finally:
        tree.stop(timeout=30)


@pytest.fixture
def record(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "record.jsonl"
    yield path
    for line in records(path, event=None):  # whatever a test left running
        kill_quietly(line["pid"])


# -- the tree ---------------------------------------------------------------------------------


def test_the_root_starts_a_workers_supervisor_after_locks(tree: Tree) -> None:
    children = tree.supervisor.proxy().which_children().get(timeout=TIMEOUT)
    assert [info.id for info in children] == ["names", "agents", "locks", "workers"]
    assert children[-1].is_supervisor
    assert isinstance(tree.workers, Handle)
    assert tree.workers.proxy().which_children().get(timeout=TIMEOUT) == []


def test_a_crash_looping_worker_escalates_to_workers_and_spares_the_other_services(
    tmp_path: Path, record: Path
) -> None:
    clock = ManualClock()  # no time passes: every crash falls inside each budget's window
    tree = start_tree(tmp_path / "state", clock=clock, reap_interval=3600.0)
    try:
        services = {child_id: Handle(tree.supervisor, child_id).ref() for child_id in ("names", "agents", "locks")}
        add_worker(tree, "looper", child_argv(record, "looper", "--exit", "1"))
        # 5 restarts fit the workers' budget; the 6th crash makes "workers" give up.
        wait_until(lambda: restarts_of(tree.supervisor, "workers") == 1, timeout=TIMEOUT)
        assert len(records(record, "start", label="looper")) == 6
        assert tree.supervisor.is_alive()
        for child_id, ref in services.items():
            assert Handle(tree.supervisor, child_id).ref() is ref, child_id
            assert restarts_of(tree.supervisor, child_id) == 0
        # Restarted empty: the crash loop is over.
        assert tree.workers.proxy().which_children().get(timeout=TIMEOUT) == []
        for line in records(record, "start", label="looper"):
            assert is_dead(line["pid"])
    finally:
        tree.stop(timeout=30)


def test_one_worker_crash_costs_a_root_without_budget_nothing(tmp_path: Path, record: Path) -> None:
    tree = start_tree(tmp_path / "state", max_restarts=0, reap_interval=3600.0)
    try:
        add_worker(tree, "once", child_argv(record, "once", "--exit-first", "1", "3"))
        wait_records(record, 2, "once")
        assert restarts_of(tree.workers.ref(), "once") == 1
        assert tree.supervisor.is_alive()
        assert restarts_of(tree.supervisor, "workers") == 0
    finally:
        tree.stop(timeout=30)


# -- names ------------------------------------------------------------------------------------


def test_a_worker_keeps_its_name_across_five_restarts_of_itself(tree: Tree, record: Path) -> None:
    add_worker(tree, "steady", child_argv(record, "steady"))
    add_worker(tree, "crashy", child_argv(record, "crashy", "--exit-first", "5", "1"))
    starts = wait_records(record, 6, "crashy")
    steady = wait_records(record, 1, "steady")
    names = {line["env"]["AGENT_NAME"] for line in starts}
    assert len(names) == 1 and None not in names
    assert steady[0]["env"]["AGENT_NAME"] not in names
    assert restarts_of(tree.workers.ref(), "crashy") == 5


def test_a_process_the_key_left_running_keeps_its_name_to_itself(tree: Tree, record: Path) -> None:
    add_worker(tree, "w", child_argv(record, "w", "--detached-child"), name_key="k")
    first = wait_records(record, 1, "w")[0]
    name = first["env"]["AGENT_NAME"]
    detached = wait_records(record, 1, "w-detached")[0]
    tree.names.proxy().associate_name(name, detached["pid"]).get(timeout=TIMEOUT)  # as inherit_identity does
    os.kill(first["pid"], signal.SIGKILL)
    second = wait_records(record, 2, "w")[1]
    assert second["env"]["AGENT_NAME"] != name  # two live processes never share a name
    assert tree.names.ask("holders", timeout=TIMEOUT)[name] == [detached["pid"]]
    kill_quietly(detached["pid"])
    wait_until(lambda: is_dead(detached["pid"]), timeout=TIMEOUT)
    tree.workers.proxy().terminate_child("w").get(timeout=TIMEOUT)
    tree.workers.proxy().restart_child("w").get(timeout=TIMEOUT)
    # The key now remembers the fresh name, which is free again.
    assert wait_records(record, 3, "w")[2]["env"]["AGENT_NAME"] == second["env"]["AGENT_NAME"]


def test_a_name_held_by_a_live_process_of_another_key_is_never_shared(tree: Tree, record: Path) -> None:
    add_worker(tree, "w", child_argv(record, "w"))
    first = wait_records(record, 1, "w")[0]
    name = first["env"]["AGENT_NAME"]
    tree.workers.proxy().terminate_child("w").get(timeout=TIMEOUT)
    wait_until(lambda: tree.names.proxy().get_name_by_pid(first["pid"]).get(timeout=TIMEOUT) is None)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tree.names.proxy().associate_name(name, other.pid).get(timeout=TIMEOUT)
        tree.workers.proxy().restart_child("w").get(timeout=TIMEOUT)
        second = wait_records(record, 2, "w")[1]
        fresh = second["env"]["AGENT_NAME"]
        assert fresh != name
        holders = tree.names.ask("holders", timeout=TIMEOUT)
        assert holders[name] == [other.pid]
        assert second["pid"] in holders[fresh]
    finally:
        other.kill()
        other.wait()


def test_the_key_gets_its_name_back_once_the_other_process_is_dead(tree: Tree, record: Path) -> None:
    add_worker(tree, "w", child_argv(record, "w"), name_key="fleet/w")
    name = wait_records(record, 1, "w")[0]["env"]["AGENT_NAME"]
    tree.workers.proxy().terminate_child("w").get(timeout=TIMEOUT)
    # A plain checkout skips a name some key remembers while another is available.
    assert tree.names.proxy().checkout_name(None).get(timeout=TIMEOUT) != name
    tree.workers.proxy().restart_child("w").get(timeout=TIMEOUT)
    assert wait_records(record, 2, "w")[1]["env"]["AGENT_NAME"] == name


DAEMON_SCRIPT = r"""
import json, sys
from loguru import logger
from actors.daemon._daemon import serve
from actors.workers._worker_process import WorkerProcess
from supervision import ChildSpec

state_dir, workers = sys.argv[1], json.loads(sys.argv[2])
logger.remove()
logger.add(sys.stderr, level="DEBUG", format="{level} {message}", backtrace=False, diagnose=False)

def started(daemon):
    for child_id, argv in workers.items():
        spec = ChildSpec(child_id, WorkerProcess, kwargs={
            "argv": argv, "names": daemon.tree.names, "term_timeout": 2.0,
            "socket_path": str(daemon.state_dir / "tree.sock")})
        daemon.tree.workers.proxy().start_child(spec).get(timeout=10)

sys.exit(serve(state_dir, heartbeat=0.5, tree_options={"reap_interval": 3600.0}, on_started=started))
"""


def start_daemon(state_dir: Path, workers: dict[str, list[str]], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-c", DAEMON_SCRIPT, str(state_dir), json.dumps(workers)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def stop_daemon(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(60)


def test_names_survive_graceful_restarts_and_a_sigkill_of_the_daemon(tmp_path: Path, record: Path) -> None:
    state_dir, log = tmp_path / "state", tmp_path / "daemon.log"
    # Each exits 0 on SIGTERM, or once the daemon's socket closes (it was SIGKILLed).
    workers = {label: child_argv(record, label, "--wait-socket") for label in ("w1", "w2", "w3")}
    process = None
    try:
        for round_number in range(1, 6):
            process = start_daemon(state_dir, workers, log)
            for label in workers:
                wait_records(record, round_number, label)
            if round_number == 4:
                process.kill()
                process.wait(30)
                for label in workers:
                    wait_records(record, 1, label, event="socket-closed")
                    # No reap tick: the next daemon judges the old processes when it checks out.
            elif round_number < 5:
                assert stop_daemon(process) == 0, log.read_text()
        for label in workers:
            starts = records(record, "start", label=label)
            assert len(starts) == 5
            assert len({line["env"]["AGENT_NAME"] for line in starts}) == 1, (label, starts)
        names = [records(record, "start", label=label)[0]["env"]["AGENT_NAME"] for label in workers]
        assert len(set(names)) == len(names)  # no two workers share or swap
        assert stop_daemon(process) == 0, log.read_text()
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


def test_a_graceful_stop_logs_no_error_and_leaves_no_process(tmp_path: Path, record: Path) -> None:
    state_dir, log = tmp_path / "state", tmp_path / "daemon.log"
    workers = {
        "on-term": child_argv(record, "on-term"),
        "with-child": child_argv(record, "with-child", "--child"),
        "on-socket": child_argv(record, "on-socket", "--wait-socket"),
    }
    process = start_daemon(state_dir, workers, log)
    try:
        for label in workers:
            wait_records(record, 1, label)
        wait_records(record, 1, "with-child-child")
        assert stop_daemon(process) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert "ERROR" not in text and "Traceback" not in text, text
    for line in records(record, event=None):
        assert is_dead(line["pid"]), line
    # Workers went first: they were signalled while the socket still answered.
    assert records(record, "term", "on-term") and records(record, "term", "with-child")


# -- process groups ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["sigkill", "crash", "restart"])
def test_no_descendant_outlives_its_worker(tree: Tree, record: Path, how: str) -> None:
    options = ["--stubborn-child"]
    if how == "crash":
        options += ["--exit-first", "1", "3"]
    add_worker(tree, "w", child_argv(record, "w", *options))
    first = wait_records(record, 1, "w")[0]
    child = wait_records(record, 1, "w-child")[0]
    if how == "sigkill":
        os.kill(first["pid"], signal.SIGKILL)
    elif how == "restart":
        kill(Handle(tree.workers.ref(), "w").ref(), "test restart")
    wait_records(record, 2, "w")
    wait_until(lambda: is_dead(child["pid"]), timeout=TIMEOUT)
    assert is_dead(first["pid"])


def test_a_descendant_that_detached_on_purpose_stays(tree: Tree, record: Path) -> None:
    add_worker(tree, "w", child_argv(record, "w", "--detached-child", "--child"))
    first = wait_records(record, 1, "w")[0]
    detached = wait_records(record, 1, "w-detached")[0]
    child = wait_records(record, 1, "w-child")[0]
    os.kill(first["pid"], signal.SIGKILL)
    wait_records(record, 2, "w")
    wait_until(lambda: is_dead(child["pid"]), timeout=TIMEOUT)
    assert not is_dead(detached["pid"])
    assert detached["sid"] == detached["pid"]


# -- records and events that name the worker --------------------------------------------------


def test_records_and_events_name_the_worker(tree: Tree, record: Path) -> None:
    captured: list[Any] = []
    sink = logger.add(lambda message: captured.append(message.record), level="DEBUG")
    events = subscribe(kinds=["worker_spawned", "worker_exited"])
    try:
        add_worker(tree, "talker", child_argv(record, "talker", "--print", "--exit-first", "1", "3"))
        first, second = wait_records(record, 2, "talker")
        name = first["env"]["AGENT_NAME"]
        pid = first["pid"]

        def about(text: str, level: str) -> list[Any]:
            return [r for r in captured if text in r["message"] and r["level"].name == level]

        wait_until(lambda: len(about("hello from talker on stdout", "INFO")) == 2, timeout=TIMEOUT)
        wait_until(lambda: len(about("hello from talker on stderr", "WARNING")) == 2, timeout=TIMEOUT)
        wait_until(lambda: about("crashed", "ERROR"), timeout=TIMEOUT)
        lines = about("hello from talker on stdout", "INFO") + about("hello from talker on stderr", "WARNING")
        assert {(r["extra"]["agent_name"], r["extra"]["pid"]) for r in lines} == {(name, pid), (name, second["pid"])}
        spawned = about(f"(pid {pid})", "INFO")
        assert spawned and all(r["extra"]["agent_name"] == name for r in spawned)
        assert all(r["extra"]["agent_name"] == name for r in about("crashed", "ERROR"))
        # The relay thread of the first process ended with it.
        wait_until(lambda: f"output-{pid}" not in {thread.name for thread in threading.enumerate()})

        seen = wait_until(lambda: [events.get(timeout=TIMEOUT) for _ in range(3)], timeout=TIMEOUT)
        assert [(e.kind, e.name, e.data["pid"]) for e in seen] == [
            ("worker_spawned", name, pid),
            ("worker_exited", name, pid),
            ("worker_spawned", name, second["pid"]),
        ]
        assert seen[1].data["status"] == 3
    finally:
        logger.remove(sink)
        events.close()


# -- the core: a durable last name per key (NameState, no processes) --------------------------


def _state() -> Any:
    from actors.names._state import NameState

    state = NameState(chunk_size=4)
    state.is_recording = True
    state.accept_chunk(["alpha", "bravo", "charlie", "delta"])
    return state


def _replayed(state: Any) -> Any:
    from actors.names._state import NameState

    twin = NameState(chunk_size=4)
    twin.apply(state.take_changes())
    return twin


def test_core_a_key_gets_its_last_name_back_once_its_processes_are_dead() -> None:
    from actors._process import Liveness

    state = _state()
    name = state.checkout_for_key("k", "urn:1")
    state.associate(name, 4001)
    state.dissociate("urn:1")
    other = state.checkout_for_key("other", "urn:2")
    assert other != name
    verdicts = {4001: Liveness.UNKNOWN}
    # Unknown keeps the old process's hold: a fresh name, never shared.
    fresh = state.checkout_for_key("k", "urn:3", None, lambda pid, start: verdicts[pid])
    assert fresh not in (name, other)
    assert state.owners_of(name) == [4001]
    state.dissociate("urn:3")
    # The key now remembers the fresh name; proof of death frees the old one for whoever.
    assert state.last_name_of_key("k") == fresh
    replayed = _replayed(state)
    assert replayed.key_names() == state.key_names() and replayed.holders() == state.holders()


def test_core_the_dead_leave_at_checkout_without_a_reap() -> None:
    from actors._process import Liveness

    state = _state()
    name = state.checkout_for_key("k", "urn:1")
    state.associate(name, 4001)
    state.dissociate("urn:1")
    again = state.checkout_for_key("k", "urn:2", None, lambda pid, start: Liveness.DEAD)
    assert again == name and state.owners_of(name) == ["urn:2"]


def test_core_a_name_taken_by_someone_else_leaves_its_key_and_plain_checkouts_skip_remembered_names() -> None:
    state = _state()
    name = state.checkout_for_key("k", "urn:1")
    state.dissociate("urn:1")  # back on top of the stack
    plain = state.checkout(5001)
    assert plain != name  # skipped while another name is available
    state.associate(name, 5002)  # taken off the stack by another process
    assert state.last_name_of_key("k") is None
    assert state.checkout_for_key("k", "urn:2") not in (name, plain)


def test_core_keys_survive_a_snapshot_and_a_journal_replay() -> None:
    from actors.names._state import NameState

    state = _state()
    first = state.checkout_for_key("a", "urn:1")
    second = state.checkout_for_key("b", "urn:2")
    snapshot = state.to_snapshot()
    assert snapshot["keys"] == [["a", first], ["b", second]]
    assert NameState.from_snapshot(snapshot, 4).key_names() == {"a": first, "b": second}
    assert _replayed(state).key_names() == {"a": first, "b": second}
    assert "keys" not in NameState(4).to_snapshot()  # nothing new in a snapshot without keys
    with pytest.raises(ValueError):
        NameState.from_snapshot({**snapshot, "keys": [["a", "zulu"]]}, 4)
    state.reset()
    assert state.key_names() == {}
