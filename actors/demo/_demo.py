"""A small demo of a supervised tree: a child crashes and comes back.

Run it with `python -m actors demo` (the README's main-job command).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from supervision import ChildSpec, Handle, Strategy, SupervisedActor, Supervisor, kill


class Counter(SupervisedActor):
    """Counts; its count survives nothing (it is the child that is restarted)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def increment(self) -> int:
        self.count += 1
        return self.count

    def fail(self) -> None:
        raise RuntimeError("a bug in the counter")


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _table(root) -> str:
    rows = root.proxy().which_children().get(timeout=5)
    return "\n".join(
        f"  {info.id:<10} {'running' if info.running else 'stopped':<8} restarts={info.restarts}" for info in rows
    )


def run_demo(rounds: int = 3) -> int:
    """Start a tree, crash a child `rounds` times through two paths, show each restart."""
    root = Supervisor.start(
        [ChildSpec("counter", Counter), ChildSpec("bystander", Counter)],
        strategy=Strategy.ONE_FOR_ONE,
        max_restarts=10,
        max_seconds=5.0,
    )
    counter = Handle(root, "counter").proxy()
    try:
        _say("tree started:\n" + _table(root))
        for round_number in range(1, rounds + 1):
            for _ in range(3):
                counter.increment().get(timeout=5)
            before = Handle(root, "counter").ref()
            if round_number % 2:
                _say(f"\nround {round_number}: the counter raises inside a call")
                try:
                    counter.fail().get(timeout=5)
                except RuntimeError as error:
                    _say(f"  caller got: {error!r}")
            else:
                _say(f"\nround {round_number}: kill() from outside")
                kill(before, "demo kill")
            # The handle reaches the new incarnation by itself; its count starts again.
            value = counter.increment().get(timeout=5)
            after = Handle(root, "counter").ref()
            _say(f"  restarted: {before.actor_urn[-8:]} -> {after.actor_urn[-8:]}, count is {value} again")
            _say(_table(root))
            time.sleep(0.2)
    finally:
        root.stop(timeout=10)
    _say("\ntree stopped in reverse order; demo done")
    return 0


#: What `serve --demo` should give the tree, so that an idle worker's session is evicted
#: by TTL within the demo's minute: a short idle TTL, swept every second.
DEMO_TREE_OPTIONS: dict[str, Any] = {"idle_ttl": 4.0, "sweep_interval": 1.0}
#: The agent-pool key's second part for a demo worker's session (the first is its name).
SESSION_AGENT = "session"


class DemoSession:
    """A demo worker's warm "session" backend in the agent pool; counts its disposal."""

    def __init__(self, name: str, counts: dict[str, int], lock: threading.Lock) -> None:
        self.name = name
        self._counts = counts
        self._lock = lock

    def dispose(self) -> None:
        with self._lock:
            self._counts["disposed"] += 1


class SessionKeeper:
    """Keeps each busy demo worker's session warm in the tree's agent pool.

    A worker is busy while it holds its worker lock. At each `tick()` the keeper registers
    a session for a busy worker that has none (counted in `created`) and marks an existing
    one active; an idle worker's session is left alone, so the pool evicts it by TTL.
    """

    def __init__(self, tree: Any, worker_dirs: dict[str, str], *, timeout: float = 5.0) -> None:
        self._tree = tree
        self._worker_dirs = worker_dirs  # child id -> its worker directory
        self._timeout = timeout
        self._lock = threading.Lock()
        self.counts = {"created": 0, "disposed": 0, "kept_warm": 0}

    def tick(self) -> None:
        agents = self._tree.agents.proxy()
        for child_id, worker_dir in self._worker_dirs.items():
            try:
                info = Handle(self._tree.workers.ref(timeout=self._timeout), child_id).proxy().info().get(
                    timeout=self._timeout
                )
                record = self._tree.locks.proxy().call_lock(worker_dir, "read").get(timeout=self._timeout)
            except Exception:
                continue  # restarting or stopping: next tick
            name, pid = info.get("name"), info.get("pid")
            if not name or pid is None or record is None or record.pid != pid:
                continue  # idle (or not running): its session cools down
            if agents.touch(name, SESSION_AGENT).get(timeout=self._timeout):
                with self._lock:
                    self.counts["kept_warm"] += 1
                continue
            agents.register(name, SESSION_AGENT, DemoSession(name, self.counts, self._lock)).get(timeout=self._timeout)
            with self._lock:
                self.counts["created"] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


def start_demo_workers(
    daemon: Any,
    *,
    workers: int = 3,
    seconds: float = 0.0,
    status_every: float = 4.0,
    keep_every: float = 1.0,
    pace: float = 1.0,
) -> SessionKeeper:
    """Add demo worker processes under the daemon's "workers" supervisor; one is flaky.

    Each worker alternates work (holding its worker lock) and idleness; a `SessionKeeper`
    keeps its session warm in the agent pool while it works. Every `status_every` seconds
    the status is written to stdout; with `seconds` > 0 the daemon stops itself after
    that long (so the demo ends on its own). `pace` scales the workers' durations.
    """
    from actors.daemon._client import SOCKET_NAME
    from actors.daemon._status import render_status
    from actors.workers._worker_process import Backoff, WorkerProcess

    tree = daemon.tree
    worker_dirs: dict[str, str] = {}
    for index in range(1, workers + 1):
        worker_dir = daemon.state_dir / "workers" / f"w{index}"
        worker_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "actors.demo._worker", str(worker_dir)]
        flaky = index == workers
        if flaky:
            argv.append("--flaky")
        if pace != 1.0:
            argv += ["--pace", repr(float(pace))]
        child_id = f"worker-{index}"
        spec = ChildSpec(
            child_id,
            WorkerProcess,
            kwargs={
                "argv": argv,
                "names": tree.names,
                "socket_path": str(daemon.state_dir / SOCKET_NAME),
                "term_timeout": 2.0,
                "backoff": Backoff(0.5, 4.0) if flaky else None,
                "name_key": f"workers/{child_id}",
            },
        )
        tree.workers.proxy().start_child(spec).get(timeout=10)
        worker_dirs[child_id] = str(worker_dir)
    keeper = SessionKeeper(tree, worker_dirs)

    def keep() -> None:
        while not daemon.stopping.wait(keep_every):
            keeper.tick()

    def report() -> None:
        started = time.monotonic()
        while not daemon.stopping.wait(status_every):
            status = daemon.status()
            status["sessions"] = keeper.snapshot()
            _say("\n" + render_status(status))
            if seconds and time.monotonic() - started >= seconds:
                _say(f"\ndemo ran {seconds:.0f}s; stopping the daemon")
                daemon.request_stop()

    threading.Thread(target=keep, name=f"demo-sessions-{id(keeper):x}", daemon=True).start()
    threading.Thread(target=report, name=f"demo-status-{id(keeper):x}", daemon=True).start()
    return keeper
