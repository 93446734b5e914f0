"""OTP parity of `Supervisor`, case by case."""

from __future__ import annotations

import threading
import time
from typing import Any

import pykka
import pytest
from _actors import Gate, Hang, Recorder

from supervision import (
    AlreadyPresent,
    AlreadyStarted,
    BadCall,
    ChildNotFound,
    ChildRunning,
    ChildSpec,
    ClientError,
    Handle,
    ManualClock,
    Restart,
    StartError,
    Strategy,
    Supervisor,
    kill,
)
from supervision.testing import wait_until


def specs(events: list, *names: str, **options: Any) -> list[ChildSpec]:
    return [ChildSpec(name, Recorder, args=(name, events), **options) for name in names]


def urns(sup: pykka.ActorRef) -> dict[str, str | None]:
    return {
        info.id: (info.ref.actor_urn if info.ref is not None else None)
        for info in sup.proxy().which_children().get(timeout=5)
    }


def restarts(sup: pykka.ActorRef) -> dict[str, int]:
    return {info.id: info.restarts for info in sup.proxy().which_children().get(timeout=5)}


def crash(sup: pykka.ActorRef, child_id: str) -> None:
    """Crash a child through a tell (the path pykka itself treats as fatal)."""
    ref = sup.proxy().whereis(child_id).get(timeout=5)
    ref.proxy().crash_later().get(timeout=5)
    wait_until(lambda: not ref.is_alive())


def settle(sup: pykka.ActorRef, expected_restarts: dict[str, int]) -> None:
    wait_until(lambda: {k: v for k, v in restarts(sup).items() if k in expected_restarts} == expected_restarts)
    wait_until(lambda: sup.proxy().count_children().get(timeout=5)["active"] == len(urns(sup)))


# -- start and stop order ------------------------------------------------------------------


def test_children_start_in_order_synchronously_and_stop_in_reverse():
    events: list = []
    sup = Supervisor.start(specs(events, "a", "b", "c"))
    assert events == [("start", "a"), ("start", "b"), ("start", "c")]
    sup.stop()
    assert events[3:] == [("stop", "c"), ("stop", "b"), ("stop", "a")]


def test_failed_start_rolls_back_in_reverse_and_names_the_child():
    events: list = []
    failing = threading.Event()
    failing.set()
    children = [
        ChildSpec("a", Recorder, args=("a", events)),
        ChildSpec("b", Recorder, args=("b", events)),
        ChildSpec("c", Recorder, args=("c", events, failing)),
        ChildSpec("d", Recorder, args=("d", events)),
    ]
    with pytest.raises(StartError, match=r"'c'.*refuses to start"):
        Supervisor.start(children)
    assert events == [("start", "a"), ("start", "b"), ("start-failed", "c"), ("failure", "c"), ("stop", "b"), ("stop", "a")]


def test_constructor_failure_of_a_child_is_a_start_error():
    with pytest.raises(StartError, match="'bad'"):
        Supervisor.start([ChildSpec("bad", Recorder, args=("only-one-arg",))])


# -- strategies -------------------------------------------------------------------------------


def test_one_for_one_restarts_only_the_crashed_child():
    events: list = []
    sup = Supervisor.start(specs(events, "a", "b", "c"))
    before = urns(sup)
    crash(sup, "b")
    settle(sup, {"b": 1})
    after = urns(sup)
    assert after["a"] == before["a"] and after["c"] == before["c"]
    assert after["b"] != before["b"]
    assert restarts(sup) == {"a": 0, "b": 1, "c": 0}


def crash_b(
    strategy: Strategy, names: tuple[str, ...], expected_restarts: dict[str, int]
) -> tuple[pykka.ActorRef, dict[str, str | None], list]:
    """Children `names` under `strategy`; "b" crashes and the restarts settle at
    `expected_restarts`: the supervisor, the urns before the crash and the events since."""
    events: list = []
    sup = Supervisor.start(specs(events, *names), strategy=strategy)
    before = urns(sup)
    events.clear()
    crash(sup, "b")
    settle(sup, expected_restarts)
    return sup, before, events


def test_one_for_all_stops_siblings_in_reverse_and_restarts_all_in_order():
    sup, before, events = crash_b(Strategy.ONE_FOR_ALL, ("a", "b", "c"), {"a": 1, "b": 1, "c": 1})
    assert events == [
        ("failure", "b"),
        ("stop", "c"),
        ("stop", "a"),
        ("start", "a"),
        ("start", "b"),
        ("start", "c"),
    ]
    after = urns(sup)
    assert all(after[name] != before[name] for name in "abc")


def test_rest_for_one_restarts_the_crashed_child_and_those_started_after_it():
    sup, before, events = crash_b(Strategy.REST_FOR_ONE, ("a", "b", "c", "d"), {"b": 1, "c": 1, "d": 1})
    assert events == [
        ("failure", "b"),
        ("stop", "d"),
        ("stop", "c"),
        ("start", "b"),
        ("start", "c"),
        ("start", "d"),
    ]
    assert urns(sup)["a"] == before["a"]
    assert restarts(sup) == {"a": 0, "b": 1, "c": 1, "d": 1}


def test_one_crash_decision_counts_once_however_many_children_restart():
    clock = ManualClock()
    events: list = []
    sup = Supervisor.start(specs(events, "a", "b", "c"), strategy=Strategy.ONE_FOR_ALL, max_restarts=1, clock=clock)
    crash(sup, "a")
    settle(sup, {"a": 1, "b": 1, "c": 1})
    assert sup.is_alive()


def test_one_for_all_forgets_a_temporary_sibling_it_terminates():
    events: list = []
    children = [
        ChildSpec("a", Recorder, args=("a", events)),
        ChildSpec("t", Recorder, args=("t", events), restart=Restart.TEMPORARY),
    ]
    sup = Supervisor.start(children, strategy=Strategy.ONE_FOR_ALL)
    crash(sup, "a")
    wait_until(lambda: list(urns(sup)) == ["a"] and urns(sup)["a"] is not None)
    assert ("start", "t") not in events[events.index(("failure", "a")) :]


# -- restart types ------------------------------------------------------------------------------


def exit_child(sup: pykka.ActorRef, child_id: str, how: str) -> None:
    ref = sup.proxy().whereis(child_id).get(timeout=5)
    if how == "crash":
        crash(sup, child_id)
    elif how == "self-stop":
        ref.proxy().quit().get(timeout=5)
    elif how == "stopped-by-other":
        ref.stop(timeout=5)
    elif how == "shutdown":
        sup.proxy().terminate_child(child_id).get(timeout=5)
    wait_until(lambda: not ref.is_alive())


@pytest.mark.parametrize(
    ("restart", "how", "restarted", "spec_kept"),
    [
        (Restart.PERMANENT, "crash", True, True),
        (Restart.PERMANENT, "self-stop", True, True),
        (Restart.PERMANENT, "stopped-by-other", True, True),
        (Restart.PERMANENT, "shutdown", False, True),
        (Restart.TRANSIENT, "crash", True, True),
        (Restart.TRANSIENT, "self-stop", False, True),
        (Restart.TRANSIENT, "stopped-by-other", False, True),
        (Restart.TRANSIENT, "shutdown", False, True),
        (Restart.TEMPORARY, "crash", False, False),
        (Restart.TEMPORARY, "self-stop", False, False),
        (Restart.TEMPORARY, "stopped-by-other", False, False),
        (Restart.TEMPORARY, "shutdown", False, False),
    ],
)
def test_restart_types_after_each_kind_of_exit(restart, how, restarted, spec_kept):
    events: list = []
    sup = Supervisor.start([ChildSpec("w", Recorder, args=("w", events), restart=restart), *specs(events, "marker")])
    exit_child(sup, "w", how)
    # A message through the supervisor after the exit notice: its decision is made by then.
    if restarted:
        wait_until(lambda: restarts(sup).get("w") == 1 and urns(sup)["w"] is not None)
    else:
        wait_until(lambda: urns(sup).get("w") is None)
        sup.proxy().count_children().get(timeout=5)
        assert restarts(sup).get("w", 0) == 0
    ids = [info.id for info in sup.proxy().which_children().get(timeout=5)]
    assert ("w" in ids) is spec_kept


def test_normal_exit_of_a_permanent_child_counts_toward_intensity():
    clock = ManualClock()
    events: list = []
    sup = Supervisor.start(specs(events, "w"), max_restarts=1, clock=clock)
    exit_child(sup, "w", "self-stop")
    settle(sup, {"w": 1})
    exit_child(sup, "w", "self-stop")
    wait_until(lambda: not sup.is_alive())


# -- restart intensity ---------------------------------------------------------------------------


def test_exactly_max_restarts_within_the_window_survive_one_more_escalates():
    clock = ManualClock()
    events: list = []
    sup = Supervisor.start(specs(events, "a", "w"), max_restarts=3, max_seconds=5.0, clock=clock)
    for expected in (1, 2, 3):
        crash(sup, "w")
        settle(sup, {"w": expected})
        clock.advance(1.0)
    assert sup.is_alive()
    events.clear()
    crash(sup, "w")  # the 4th restart within 5 s
    wait_until(lambda: not sup.is_alive())
    assert events == [("failure", "w"), ("stop", "a")]


def crash_twice(seconds_apart: float) -> pykka.ActorRef:
    """One child "w" (at most 1 restart in 5 s) crashes, is restarted, and crashes again
    `seconds_apart` later: the supervisor."""
    clock = ManualClock()
    events: list = []
    sup = Supervisor.start(specs(events, "w"), max_restarts=1, max_seconds=5.0, clock=clock)
    crash(sup, "w")
    settle(sup, {"w": 1})
    clock.advance(seconds_apart)
    crash(sup, "w")
    return sup


def test_restart_at_exactly_max_seconds_still_counts():
    sup = crash_twice(5.0)  # now - t == max_seconds: the first restart still counts
    wait_until(lambda: not sup.is_alive())


def test_restarts_older_than_the_window_are_forgotten():
    sup = crash_twice(5.001)
    settle(sup, {"w": 2})
    assert sup.is_alive()


def test_max_restarts_zero_makes_the_first_crash_fatal():
    events: list = []
    sup = Supervisor.start(specs(events, "w"), max_restarts=0, clock=ManualClock())
    crash(sup, "w")
    wait_until(lambda: not sup.is_alive())


def test_restart_child_by_hand_counts_nothing():
    events: list = []
    sup = Supervisor.start(specs(events, "w"), max_restarts=0, clock=ManualClock())
    for _ in range(3):
        sup.proxy().terminate_child("w").get(timeout=5)
        sup.proxy().restart_child("w").get(timeout=5)
    assert sup.is_alive()
    assert restarts(sup) == {"w": 3}


def test_a_failed_restart_attempt_counts_as_another_restart_and_is_retried():
    events: list = []
    failing = threading.Event()
    sup = Supervisor.start(
        [ChildSpec("w", Recorder, args=("w", events, failing))], max_restarts=3, clock=ManualClock()
    )
    failing.set()
    crash(sup, "w")  # restart 1 fails, retried: 2, 3, then the 4th counted restart escalates
    wait_until(lambda: not sup.is_alive())
    assert events.count(("start-failed", "w")) == 3


def test_a_failed_restart_that_then_succeeds_keeps_the_supervisor():
    events: list = []
    failing = threading.Event()

    class FailOnce(Recorder):
        def on_start(self) -> None:
            if failing.is_set():
                failing.clear()
                raise RuntimeError("first restart fails")
            super().on_start()

    sup = Supervisor.start([ChildSpec("w", FailOnce, args=("w", events))], max_restarts=3, clock=ManualClock())
    failing.set()
    crash(sup, "w")
    wait_until(lambda: urns(sup)["w"] is not None and restarts(sup)["w"] == 1)
    assert Handle(sup, "w").proxy().ping().get(timeout=5) == "w"


# -- nested supervisors ------------------------------------------------------------------------------


def test_child_supervisor_exceeding_its_intensity_is_restarted_by_its_parent():
    events: list = []
    clock = ManualClock()
    sub_spec = ChildSpec("sub", Supervisor, kwargs={"children": specs(events, "w"), "max_restarts": 0})
    root = Supervisor.start([sub_spec], clock=clock)
    sub_before = root.proxy().whereis("sub").get(timeout=5)
    w = Handle(root, "sub/w")
    w_before = w.proxy().urn().get(timeout=5)
    kill(w.ref())
    wait_until(lambda: restarts(root) == {"sub": 1} and urns(root)["sub"] is not None)
    assert not sub_before.is_alive()
    assert w.proxy().urn().get(timeout=5) != w_before
    assert root.is_alive()


def test_restart_of_a_child_supervisor_does_not_recreate_dynamic_children():
    events: list = []
    root = Supervisor.start([ChildSpec("sub", Supervisor, kwargs={"children": specs(events, "static"), "max_restarts": 0})])
    sub = root.proxy().whereis("sub").get(timeout=5)
    sub.proxy().start_child(ChildSpec("dynamic", Recorder, args=("dynamic", events))).get(timeout=5)
    kill(sub)
    wait_until(lambda: restarts(root) == {"sub": 1} and urns(root)["sub"] is not None)
    new_sub = root.proxy().whereis("sub").get(timeout=5)
    assert [info.id for info in new_sub.proxy().which_children().get(timeout=5)] == ["static"]


def test_a_killed_supervisor_stops_its_children_before_it_is_restarted():
    events: list = []
    root = Supervisor.start([ChildSpec("sub", Supervisor, kwargs={"children": specs(events, "x", "y")})])
    events.clear()
    kill(root.proxy().whereis("sub").get(timeout=5))
    wait_until(lambda: restarts(root) == {"sub": 1} and urns(root)["sub"] is not None)
    assert events == [("stop", "y"), ("stop", "x"), ("start", "x"), ("start", "y")]


def test_supervisor_passes_its_clock_to_child_supervisors():
    clock = ManualClock()
    root = Supervisor.start([ChildSpec("sub", Supervisor, kwargs={"children": []})], clock=clock)
    sub = root.proxy().whereis("sub").get(timeout=5)
    assert sub._actor_weakref()._clock is clock


# -- dynamic children ---------------------------------------------------------------------------------


def test_start_child_and_its_errors():
    events: list = []
    sup = Supervisor.start([])
    ref = sup.proxy().start_child(ChildSpec("d", Recorder, args=("d", events))).get(timeout=5)
    assert ref.proxy().ping().get(timeout=5) == "d"
    with pytest.raises(AlreadyStarted):
        sup.proxy().start_child(ChildSpec("d", Recorder, args=("d", events))).get(timeout=5)
    sup.proxy().terminate_child("d").get(timeout=5)
    with pytest.raises(AlreadyPresent):
        sup.proxy().start_child(ChildSpec("d", Recorder, args=("d", events))).get(timeout=5)
    failing = threading.Event()
    failing.set()
    with pytest.raises(StartError, match="'f'"):
        sup.proxy().start_child(ChildSpec("f", Recorder, args=("f", events, failing))).get(timeout=5)
    assert [info.id for info in sup.proxy().which_children().get(timeout=5)] == ["d"]
    with pytest.raises(BadCall):
        sup.proxy().start_child("not a spec").get(timeout=5)
    assert sup.is_alive()


def test_terminate_restart_delete_and_whereis():
    events: list = []
    sup = Supervisor.start(specs(events, "a", "b"))
    first = sup.proxy().whereis("a").get(timeout=5)
    with pytest.raises(ChildRunning):
        sup.proxy().restart_child("a").get(timeout=5)
    with pytest.raises(ChildRunning):
        sup.proxy().delete_child("a").get(timeout=5)
    assert sup.proxy().terminate_child("a").get(timeout=5) is None
    assert not first.is_alive()
    assert sup.proxy().whereis("a").get(timeout=5) is None
    sup.proxy().terminate_child("a").get(timeout=5)  # a no-op on a stopped child
    second = sup.proxy().restart_child("a").get(timeout=5)
    assert second.actor_urn != first.actor_urn and second.is_alive()
    assert [info.id for info in sup.proxy().which_children().get(timeout=5)] == ["a", "b"]
    sup.proxy().terminate_child("a").get(timeout=5)
    sup.proxy().delete_child("a").get(timeout=5)
    assert [info.id for info in sup.proxy().which_children().get(timeout=5)] == ["b"]


@pytest.mark.parametrize("method", ["terminate_child", "restart_child", "delete_child", "whereis"])
def test_unknown_child_ids_raise_child_not_found_and_the_supervisor_lives(method):
    sup = Supervisor.start([])
    with pytest.raises(ChildNotFound, match="nope"):
        getattr(sup.proxy(), method)("nope").get(timeout=5)
    with pytest.raises(ClientError):
        getattr(sup.proxy(), method)(42).get(timeout=5)
    assert sup.is_alive()


def test_which_and_count_children():
    events: list = []
    sup = Supervisor.start(
        [*specs(events, "a"), ChildSpec("sub", Supervisor, kwargs={"children": []}), *specs(events, "b")]
    )
    sup.proxy().terminate_child("b").get(timeout=5)
    infos = sup.proxy().which_children().get(timeout=5)
    assert [(i.id, i.running, i.is_supervisor) for i in infos] == [("a", True, False), ("sub", True, True), ("b", False, False)]
    assert sup.proxy().count_children().get(timeout=5) == {"specs": 3, "active": 2, "supervisors": 1, "workers": 2}


def test_restart_keeps_a_childs_position_in_which_children():
    events: list = []
    sup = Supervisor.start(specs(events, "a", "b", "c"))
    crash(sup, "a")
    settle(sup, {"a": 1})
    assert [info.id for info in sup.proxy().which_children().get(timeout=5)] == ["a", "b", "c"]


# -- shutdown graces ------------------------------------------------------------------------------------


def test_a_child_hanging_in_on_stop_is_abandoned_after_its_grace():
    release = threading.Event()
    events: list = []
    sup = Supervisor.start([*specs(events, "a"), ChildSpec("hang", Hang, args=(release,), shutdown=0.2)])
    hang_ref = sup.proxy().whereis("hang").get(timeout=5)
    started = time.monotonic()
    sup.stop(timeout=10)
    assert time.monotonic() - started < 5
    assert events[-1] == ("stop", "a")
    assert not hang_ref.is_alive()  # refused from now on, though its thread still runs
    release.set()


def test_terminate_child_returns_once_a_hung_child_is_abandoned():
    release = threading.Event()
    sup = Supervisor.start([ChildSpec("hang", Hang, args=(release,), shutdown=0.1)])
    sup.proxy().terminate_child("hang").get(timeout=5)
    assert sup.proxy().count_children().get(timeout=5)["active"] == 0
    release.set()


def test_a_busy_child_gets_its_grace_to_finish_the_current_handler():
    entered, release = threading.Event(), threading.Event()
    sup = Supervisor.start([ChildSpec("g", Gate, args=(entered, release), shutdown=None)])
    ref = sup.proxy().whereis("g").get(timeout=5)
    reply = ref.proxy().wait()
    entered.wait(5)
    stopping = sup.stop(block=False)
    release.set()
    assert reply.get(timeout=5) == "released"
    assert stopping.get(timeout=5) is True


# -- validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("children", "options", "error"),
    [
        ("not a list", {}, TypeError),
        ([object()], {}, TypeError),
        ([ChildSpec("a", Recorder), ChildSpec("a", Recorder)], {}, ValueError),
        ([], {"max_restarts": -1}, ValueError),
        ([], {"max_seconds": -0.5}, ValueError),
        ([], {"strategy": "one_for_none"}, ValueError),
        ([], {"max_restarts": "3"}, TypeError),
    ],
)
def test_supervisor_validates_before_starting_anything(children, options, error):
    before = len(pykka.ActorRegistry.get_all())
    with pytest.raises(error):
        Supervisor.start(children, **options)
    assert len(pykka.ActorRegistry.get_all()) == before


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((1, Recorder), {}, TypeError),
        (("", Recorder), {}, ValueError),
        (("a/b", Recorder), {}, ValueError),
        (("a", object), {}, TypeError),
        (("a", "Recorder"), {}, TypeError),
        (("a", Recorder), {"shutdown": -1}, ValueError),
        (("a", Recorder), {"restart": "sometimes"}, ValueError),
        (("a", Recorder), {"args": ["not", "a", "tuple"]}, TypeError),
    ],
)
def test_child_spec_validates_itself(args, kwargs, error):
    with pytest.raises(error):
        ChildSpec(*args, **kwargs)


def test_child_spec_defaults():
    assert ChildSpec("w", Recorder).shutdown == 5.0
    assert ChildSpec("s", Supervisor).shutdown is None
    assert ChildSpec("w", Recorder, shutdown=None).shutdown is None
    assert ChildSpec("w", Recorder, restart="transient").restart is Restart.TRANSIENT
