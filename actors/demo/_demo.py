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


def start_demo_workers(daemon: Any, *, workers: int = 3, seconds: float = 0.0, status_every: float = 4.0) -> None:
    """Add demo worker processes to a running daemon's root; one of them is flaky.

    Every `status_every` seconds the status is written to stdout; with `seconds` > 0 the
    daemon stops itself after that long (so the demo ends on its own).
    """
    from actors.daemon._client import SOCKET_NAME
    from actors.daemon._status import render_status
    from actors.workers._worker_process import Backoff, WorkerProcess

    root = daemon.tree.supervisor
    for index in range(1, workers + 1):
        worker_dir = daemon.state_dir / "workers" / f"w{index}"
        worker_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "actors.demo._worker", str(worker_dir)]
        flaky = index == workers
        if flaky:
            argv.append("--flaky")
        spec = ChildSpec(
            f"worker-{index}",
            WorkerProcess,
            kwargs={
                "argv": argv,
                "names": daemon.tree.names,
                "socket_path": str(daemon.state_dir / SOCKET_NAME),
                "term_timeout": 2.0,
                "backoff": Backoff(0.5, 4.0) if flaky else None,
            },
        )
        root.proxy().start_child(spec).get(timeout=10)

    def report() -> None:
        started = time.monotonic()
        while not daemon.stopping.wait(status_every):
            _say("\n" + render_status(daemon.status()))
            if seconds and time.monotonic() - started >= seconds:
                _say(f"\ndemo ran {seconds:.0f}s; stopping the daemon")
                daemon.request_stop()

    threading.Thread(target=report, name="demo-status", daemon=True).start()
