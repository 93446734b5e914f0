"""Faults in the supervision layer itself: a restart round that fails part-way (issue 11 item 11).

OTP's supervisor_SUITE `one_for_all_other_child_fails_restart`: when a sibling's restart
fails during a one_for_all round, the children already restarted in that round are stopped
again (reverse order) and the whole round is retried; every failed attempt counts toward
the restart intensity. rest_for_one does the same for the subset it restarts.
"""

from __future__ import annotations

import threading
from typing import Any

import pykka
from _actors import Recorder

from supervision import ChildSpec, Handle, ManualClock, Strategy, Supervisor, kill
from supervision.testing import wait_until


class FailsOnRestart(Recorder):
    """Starts the first time, then fails `failures["left"]` restarts before starting again."""

    def __init__(self, name: str, events: list[tuple[str, str]], failures: dict[str, int]) -> None:
        super().__init__(name, events)
        self.failures = failures

    def on_start(self) -> None:
        if self.failures["armed"] and self.failures["left"] > 0:
            self.failures["left"] -= 1
            self.events.append(("start-failed", self.name))
            raise RuntimeError(f"{self.name} refuses to restart")
        super().on_start()


def tree(strategy: Strategy, events: list[tuple[str, str]], failures: dict[str, int], max_restarts: int) -> pykka.ActorRef[Any]:
    children = [
        ChildSpec("a", Recorder, args=("a", events)),
        ChildSpec("b", FailsOnRestart, args=("b", events, failures)),
        ChildSpec("c", Recorder, args=("c", events)),
    ]
    return Supervisor.start(children, strategy=strategy, max_restarts=max_restarts, clock=ManualClock())


def crash(sup: pykka.ActorRef[Any], child_id: str) -> None:
    ref = sup.proxy().whereis(child_id).get(timeout=5)
    ref.proxy().crash_later().get(timeout=5)


def restarts(sup: pykka.ActorRef[Any]) -> dict[str, int]:
    return {info.id: info.restarts for info in sup.proxy().which_children().get(timeout=5)}


def all_running(sup: pykka.ActorRef[Any]) -> bool:
    return all(info.ref is not None for info in sup.proxy().which_children().get(timeout=5))


def test_one_for_all_stops_the_restarted_children_and_retries_the_round_when_a_sibling_fails() -> None:
    events: list[tuple[str, str]] = []
    failures = {"armed": 0, "left": 1}
    sup = tree(Strategy.ONE_FOR_ALL, events, failures, max_restarts=3)
    events.clear()
    failures["armed"] = 1
    crash(sup, "a")
    wait_until(lambda: events[-1:] == [("start", "c")] and all_running(sup))
    assert events == [
        ("failure", "a"),
        ("stop", "c"), ("stop", "b"),            # siblings stopped in reverse order
        ("start", "a"), ("start-failed", "b"), ("failure", "b"),  # first round: b fails
        ("stop", "a"),                           # what this round restarted goes again
        ("start", "a"), ("start", "b"), ("start", "c"),  # the whole round, retried
    ]
    assert restarts(sup) == {"a": 2, "b": 1, "c": 1}
    assert sup.is_alive()


def test_one_for_all_failed_attempts_count_toward_intensity_and_escalate() -> None:
    events: list[tuple[str, str]] = []
    failures = {"armed": 0, "left": 100}
    sup = tree(Strategy.ONE_FOR_ALL, events, failures, max_restarts=2)
    events.clear()
    failures["armed"] = 1
    crash(sup, "a")  # the crash counts 1, two failed rounds count 2 and 3: more than 2
    wait_until(lambda: not sup.is_alive())
    assert events.count(("start-failed", "b")) == 2
    assert events.count(("start", "a")) == events.count(("stop", "a")) == 2  # a never left running
    assert events[-1] == ("stop", "a")


def test_rest_for_one_retries_only_its_subset_when_a_later_child_fails() -> None:
    events: list[tuple[str, str]] = []
    failures = {"armed": 0, "left": 1}
    children = [
        ChildSpec("a", Recorder, args=("a", events)),
        ChildSpec("b", Recorder, args=("b", events)),
        ChildSpec("c", FailsOnRestart, args=("c", events, failures)),
    ]
    sup = Supervisor.start(children, strategy=Strategy.REST_FOR_ONE, max_restarts=3, clock=ManualClock())
    events.clear()
    failures["armed"] = 1
    crash(sup, "b")
    wait_until(lambda: events[-1:] == [("start", "c")] and all_running(sup))
    assert events == [
        ("failure", "b"),
        ("stop", "c"),
        ("start", "b"), ("start-failed", "c"), ("failure", "c"),
        ("stop", "b"),
        ("start", "b"), ("start", "c"),
    ]
    assert restarts(sup) == {"a": 0, "b": 2, "c": 1}


class Ledger(pykka.ThreadingActor):
    """Appends every call to a list shared across its incarnations."""

    def __init__(self, ledger: list[int]) -> None:
        super().__init__()
        self.ledger = ledger

    def record(self, number: int) -> int:
        self.ledger.append(number)
        return number


def test_every_handle_call_runs_exactly_once_while_its_child_is_killed_again_and_again() -> None:
    ledger: list[int] = []
    sup = Supervisor.start([ChildSpec("ledger", Ledger, args=(ledger,))], max_restarts=1_000_000, clock=ManualClock())
    handle = Handle(sup, "ledger")
    proxy = handle.proxy()
    answers: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def caller() -> None:
        number = 0
        try:
            while not stop.is_set():
                answers.append(proxy.record(number).get(timeout=10))
                number += 1
        except BaseException as error:  # reported below, never lost in the thread
            errors.append(error)

    thread = threading.Thread(target=caller, name="ledger-caller")
    thread.start()
    try:
        for _ in range(50):
            ref = handle.ref(timeout=10)
            kill(ref)
            wait_until(lambda: handle.current() not in (None, ref), interval=0.0005)
            wait_until(lambda: len(answers) > 0, interval=0.0005)
    finally:
        stop.set()
        thread.join(30)
    assert not errors and not thread.is_alive()
    assert answers == list(range(len(answers)))
    assert sorted(ledger) == answers  # none lost, none run twice
    assert sum(info.restarts for info in sup.proxy().which_children().get(timeout=5)) == 50
