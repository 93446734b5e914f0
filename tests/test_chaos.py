"""Reliability under load and faults: a short chaos run, its checkers, and what it found.

The run itself is `scripts/chaos.py` (`run_chaos`): a tree with its gateway in this
process, load from threads and client processes, worker processes under the root, and
a fault injector killing actors and processes. Its invariants must always hold; how
many faults it managed to inject is only asserted to be more than none.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from actors import Client, LockSupervisor, WorkerProcess, start_tree
from actors.daemon._gateway import Gateway
from actors.locks._worker_lock import WorkerLock
from supervision import (
    ChildSpec,
    DeferredReply,
    Handle,
    SupervisedActor,
    Supervisor,
    kill,
)
from supervision.testing import wait_until

ROOT = Path(__file__).resolve().parent.parent


def _load_chaos() -> Any:
    spec = importlib.util.spec_from_file_location("chaos", ROOT / "scripts" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("chaos", module)
    spec.loader.exec_module(module)
    return module


chaos = _load_chaos()

#: Figures of the report that are invariants for the run as a whole.
INVARIANTS = (
    "duplicate name holders",
    "names lost",
    "identity mismatches",
    "double lock holders",
    "lock checks failed",
    "calls hung past their timeout",
    "unexpected errors",
    "backends disposed twice",
    "backends never disposed",
)
HYGIENE = ("threads leaked", "child processes leaked", "file descriptors leaked", "temporary files left")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    config = chaos.ChaosConfig(
        seconds=5.0,
        seed=11,
        name_threads=2,
        lock_threads=2,
        agent_threads=1,
        clients=2,
        workers=2,
        fault_pause=(0.02, 0.12),
        call_timeout=10.0,
        run_dir=tmp_path_factory.mktemp("chaos"),
    )
    return chaos.run_chaos(config)


@pytest.mark.slow
def test_a_short_chaos_run_keeps_every_invariant(report):
    for label in INVARIANTS:
        assert report.value(label) == 0, f"{label}\n{report.table()}"
    assert report.value("operations done") > 0
    assert report.value("faults injected") > 0
    assert report.value("restarts seen") > 0
    assert report.value("name beliefs checked") > 0 and report.value("lock holds checked") > 0


@pytest.mark.slow
def test_after_the_chaos_and_tree_stop_nothing_is_left_behind(report):
    for label in HYGIENE:
        assert report.value(label) == 0, f"{label}\n{report.table()}"


# -- the checkers themselves ---------------------------------------------------------------------


def test_overlapping_beliefs_of_two_families_are_found():
    intervals = [
        ("ace", "a", 0.0, 2.0),
        ("ace", "b", 1.5, 3.0),  # overlaps a by 0.5
        ("ace", "a", 3.0, 4.0),  # touches b's end: no overlap
        ("ace", "a", 3.5, 3.8),  # same family twice: fine
        ("bo", "c", 0.0, 1.0),
        ("bo", "d", 1.0, 2.0),
        ("bo", "e", 5.0, 5.0),  # empty: no belief
        ("bo", "f", 4.0, 6.0),
    ]
    found = chaos.overlaps(intervals)
    assert [(key, first, second) for key, first, second, _ in found] == [("ace", "a", "b")]
    assert found[0][3] == pytest.approx(0.5)


def test_holders_shared_across_families_are_duplicates_but_associations_and_urns_are_not():
    holders = {
        "ace": ["t1.g0", "t1.g0~child"],  # an owner and the owner it associated
        "bo": ["urn:uuid:1", 4242],  # a WorkerProcess handing its name to its process
        "cy": [4242, 4343],  # two processes: a duplicate
        "di": [None, None],  # two anonymous holders: a duplicate
        "ed": ["t1.g0", "t2.g0"],  # two threads' owners: a duplicate
    }
    assert [name for name, _ in chaos.shared_across_families(holders)] == ["cy", "di", "ed"]


# -- bugs the chaos found, each reproduced deterministically -------------------------------------


class _CuttingNames(SupervisedActor):
    """A name pool stand-in that holds back the answer to one URN's dissociate.

    It shares `record` with the test across incarnations: `dissociated` lists the owners
    whose dissociate reached a handler and was answered, `held` is set once a URN's
    dissociate is waiting, so the test can kill the pool while it waits.
    """

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__()
        self._record = record

    def checkout_name(self, owner: Any = None) -> str:
        return "ace"

    def associate_name(self, name: str, owner: Any) -> None:
        return None

    def dissociate(self, owner: Any) -> Any:
        if isinstance(owner, str) and not self._record["held"].is_set():
            self._record["held"].set()
            return DeferredReply()  # a write that the crash cuts off: nothing happened
        self._record["dissociated"].append(owner)
        return None

    def get_name_by_pid(self, owner: Any) -> None:
        return None


def test_a_workers_urn_lets_go_of_its_name_even_when_a_pool_crash_cuts_the_dissociate_off(tmp_path):
    record: dict[str, Any] = {"held": threading.Event(), "dissociated": []}
    root = Supervisor.start([ChildSpec("names", _CuttingNames, args=(record,))], max_restarts=10)
    try:
        root.proxy().start_child(
            ChildSpec(
                "worker",
                WorkerProcess,
                args=([sys.executable, "-c", "import sys; sys.stdin.read()"],),
                kwargs={"names": Handle(root, "names"), "term_timeout": 1.0},
            )
        ).get(timeout=10)
        assert record["held"].wait(10), "the worker never let its URN go"
        kill(root.proxy().whereis("names").get(timeout=10), "the crash that cuts the dissociate off")
        worker_urn = root.proxy().whereis("worker").get(timeout=10).actor_urn
        # The pool is back at once; the URN's dissociate must reach it.
        wait_until(lambda: worker_urn in record["dissociated"], timeout=2)
    finally:
        root.stop(timeout=20)


@pytest.fixture
def served(tmp_path):
    tree = start_tree(tmp_path / "state", reap_interval=3600, check_interval=3600, sweep_interval=3600)
    gateway = Gateway(tree, tmp_path / "state" / "tree.sock", call_timeout=10)
    gateway.start()
    yield tree, tmp_path / "state" / "tree.sock"
    gateway.stop()
    tree.stop()


def test_a_lock_call_over_the_socket_survives_a_restart_of_its_lock(served, monkeypatch, tmp_path):
    tree, socket_path = served
    worker_dir = tmp_path / "w1"
    worker_dir.mkdir()
    gate = threading.Event()
    entered = threading.Event()
    original_status = WorkerLock.status

    def blocking_status(self: WorkerLock) -> str:
        entered.set()
        gate.wait(10)  # holds the lock actor in a handler while the test queues behind it
        return original_status(self)

    monkeypatch.setattr(WorkerLock, "status", blocking_status)
    lock = tree.locks.proxy().lock_for(str(worker_dir)).get(timeout=10)
    busy = lock.proxy().status()
    outcome: dict[str, Any] = {}

    def acquire() -> None:
        with Client(socket_path, timeout=20) as client:
            try:
                outcome["ok"] = client.call("locks.acquire", str(worker_dir), "s1")
            except Exception as error:
                outcome["error"] = error

    caller = threading.Thread(target=acquire)
    caller.start()
    try:
        assert entered.wait(10)  # status is running: the kill cannot overtake it
        wait_until(lambda: lock.actor_inbox.qsize() >= 1, timeout=10)  # the acquire waits behind status
        kill(lock, "restart under a queued call")
        monkeypatch.setattr(WorkerLock, "status", original_status)
    finally:
        gate.set()
        caller.join(20)
    busy.get(timeout=10)
    assert "error" not in outcome, f"the queued acquire was not delivered to the next lock: {outcome['error']!r}"
    assert outcome["ok"]["pid"] > 0


@pytest.fixture
def locks_under_a_root(tmp_path, monkeypatch):
    """A root with a `LockSupervisor` child ("locks"), one lock started, and two gates:
    `hold_supervisor()` keeps the lock supervisor in a handler, `hold_lock_exit` keeps a
    crashed lock from sending its exit notice."""
    hold_lock_exit = threading.Event()
    release = threading.Event()
    original_failure = WorkerLock.on_failure
    original_count = LockSupervisor.count_children

    def slow_failure(self, *exc_info):
        if hold_lock_exit.is_set():
            release.wait(10)
        return original_failure(self, *exc_info)

    in_count = threading.Event()

    def blocking_count(self):
        in_count.set()
        release.wait(10)
        return original_count(self)

    monkeypatch.setattr(WorkerLock, "on_failure", slow_failure)
    made: list = []

    def make(**lock_supervisor_kwargs):
        root = Supervisor.start([ChildSpec("locks", LockSupervisor, kwargs=lock_supervisor_kwargs)], max_restarts=5)
        made.append(root)
        locks = Handle(root, "locks")
        lock = locks.proxy().lock_for(str(tmp_path)).get(timeout=10)
        supervisor = locks.ref()

        def hold_supervisor():
            monkeypatch.setattr(LockSupervisor, "count_children", blocking_count)
            supervisor.proxy().count_children()
            assert in_count.wait(10)  # it is in the handler now (not just off the queue)
            monkeypatch.setattr(LockSupervisor, "count_children", original_count)

        return locks, supervisor, lock, hold_supervisor

    yield make, hold_lock_exit, release
    release.set()
    for root in made:
        root.stop(timeout=20)


def test_lock_for_waiting_for_an_exit_notice_survives_the_escalation_it_causes(locks_under_a_root, tmp_path):
    make, _hold_lock_exit, release = locks_under_a_root
    locks, supervisor, lock, hold_supervisor = make(max_restarts=0)
    hold_supervisor()
    pending = locks.proxy().lock_for(str(tmp_path))
    kill(lock)
    wait_until(lambda: supervisor.actor_inbox.qsize() >= 2)  # lock_for, then the lock's exit notice
    release.set()
    # The notice escalates (no restart allowed): the next lock supervisor must answer.
    fresh = pending.get(timeout=10)
    assert fresh.is_alive() and fresh != lock


def test_lock_for_waiting_for_an_exit_notice_survives_a_stop_of_the_lock_supervisor(locks_under_a_root, tmp_path):
    make, hold_lock_exit, release = locks_under_a_root
    locks, supervisor, lock, hold_supervisor = make()
    hold_lock_exit.set()
    kill(lock)
    wait_until(lambda: lock.actor_stopped.is_set())  # dead, its exit notice held back
    hold_supervisor()
    pending = locks.proxy().lock_for(str(tmp_path))
    supervisor.stop(block=False)  # a normal exit: the root restarts it
    release.set()
    fresh = pending.get(timeout=10)
    assert fresh.is_alive() and fresh != lock


CLOCK_THREAD_PROBE = """
import threading, tempfile, time
from actors import start_tree
with tempfile.TemporaryDirectory() as state:
    tree = start_tree(state, reap_interval=0.05, check_interval=0.05, sweep_interval=0.05)
    time.sleep(0.2)
    tree.stop()
deadline = time.monotonic() + 1
while time.monotonic() < deadline and any(t.name == "supervision-clock" for t in threading.enumerate()):
    time.sleep(0.02)
print(sorted(t.name for t in threading.enumerate() if t is not threading.main_thread()))
"""


def test_no_thread_outlives_a_stopped_tree():
    # A fresh interpreter: in this one, other tests' threads would blur the picture.
    result = subprocess.run(
        [sys.executable, "-c", CLOCK_THREAD_PROBE], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", result.stdout


def test_the_chaos_script_runs_as_a_program_and_reports(tmp_path):
    """`scripts/chaos.py --seconds 1` prints the table and exits 0 when everything holds."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chaos.py"), "--seconds", "1", "--clients", "1", "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
        check=False,
    )
    assert "duplicate name holders" in result.stdout and "all invariants hold" in result.stdout, result.stderr[-3000:]
    assert result.returncode == (0 if "all invariants hold: yes" in result.stdout else 1)
