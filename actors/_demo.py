"""A small demo of a supervised tree: a child crashes and comes back.

Run it with `python -m actors demo` (the README's main-job command).
"""

from __future__ import annotations

import sys
import time

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
