"""Stable addresses: a `Handle` reaches whichever incarnation of a child runs now.

Waits here are real seconds (the contract's "Handle waits"), so the tests that prove a
handle waited compare elapsed real time with the timeout it was given; every wait has
a bound and every blocked actor is released at teardown.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from supervision import (
    ActorCrashed,
    BadCall,
    ChildNotFound,
    ChildSpec,
    ClientError,
    DeferredReply,
    Handle,
    ManualClock,
    Restart,
    SupervisedActor,
    Supervisor,
    Undelivered,
    kill,
)
from supervision.testing import wait_until

# A handle that "raises at once" must not have waited out its timeout.
NO_WAIT = 1.0


class Gate:
    """Blocks an actor's `on_start` from its `block_from`-th start on, until released."""

    def __init__(self, block_from: int) -> None:
        self.block_from = block_from
        self.starts = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def pass_through(self) -> None:
        self.starts += 1
        if self.starts >= self.block_from:
            self.entered.set()
            self.release.wait(10)


class Worker(SupervisedActor):
    """A child with proxy methods and an `on_receive` for plain asks."""

    label = "worker"

    def __init__(self, gate: Gate | None = None) -> None:
        super().__init__()
        self.gate = gate
        self.remembered: list[Any] = []

    def on_start(self) -> None:
        if self.gate is not None:
            self.gate.pass_through()

    def urn(self) -> str:
        return self.actor_urn

    def add(self, a: int, b: int) -> int:
        return a + b

    def remember(self, item: Any) -> None:
        self.remembered.append(item)

    def recall(self) -> list[Any]:
        return list(self.remembered)

    def block(self, entered: threading.Event, release: threading.Event) -> str:
        entered.set()
        release.wait(10)
        return self.actor_urn

    def fail(self, calls: list[str]) -> None:
        calls.append(self.actor_urn)
        raise ValueError("boom")

    def relay(self, calls: list[str], other: pykka.ActorRef[Any]) -> Any:
        calls.append(self.actor_urn)
        return other.ask("urn", timeout=5)

    def answer_later(self, replies: list[DeferredReply], calls: list[str]) -> DeferredReply:
        calls.append(self.actor_urn)
        reply = DeferredReply()
        replies.append(reply)
        return reply

    def on_receive(self, message: Any) -> Any:
        if message == "urn":
            return self.actor_urn
        if isinstance(message, tuple) and message[0] == "fail":
            message[1].append(self.actor_urn)
            raise ValueError("boom")
        self.remembered.append(message)
        return None


class DyingOnFailure(Worker):
    """Its `on_failure` blocks on the gate, so a crash stays "in progress" until released."""

    def on_start(self) -> None:
        pass

    def on_failure(self, *exc_info: Any) -> None:
        if self.gate is not None:
            self.gate.entered.set()
            self.gate.release.wait(10)


class PlainWorker(pykka.ThreadingActor):
    """Any pykka actor can be a child."""

    def urn(self) -> str:
        return self.actor_urn


@pytest.fixture
def gates() -> Iterator[Callable[[int], Gate]]:
    """Gates for the test; all released at teardown so cleanup never hangs."""
    made: list[Gate] = []

    def make(block_from: int) -> Gate:
        gate = Gate(block_from)
        made.append(gate)
        return gate

    yield make
    for gate in made:
        gate.release.set()


@pytest.fixture
def events() -> Iterator[Callable[[], threading.Event]]:
    made: list[threading.Event] = []

    def make() -> threading.Event:
        event = threading.Event()
        made.append(event)
        return event

    yield make
    for event in made:
        event.set()


@pytest.fixture
def root(manual_clock: ManualClock) -> pykka.ActorRef[Any]:
    return Supervisor.start([ChildSpec("w", Worker)], clock=manual_clock)


def restarts_of(supervisor: pykka.ActorRef[Any], child_id: str) -> int:
    for info in supervisor.proxy().which_children().get(timeout=5):
        if info.id == child_id:
            return info.restarts
    raise AssertionError(f"no child {child_id!r}")


def raises_at_once(handle: Handle) -> ChildNotFound:
    started = time.monotonic()
    with pytest.raises(ChildNotFound) as raised:
        handle.ref(timeout=5)
    assert time.monotonic() - started < NO_WAIT
    return raised.value


def restart_pending(manual_clock: ManualClock, gate: Gate) -> tuple[pykka.ActorRef[Any], Handle, pykka.ActorRef[Any]]:
    """A root whose one child "w" (gated) is killed and now stuck restarting in the gate:
    the root, a handle on "w" and the killed incarnation."""
    root = Supervisor.start([ChildSpec("w", Worker, kwargs={"gate": gate})], clock=manual_clock)
    handle = Handle(root, "w")
    old = handle.ref()
    kill(old)
    assert gate.entered.wait(5)
    return root, handle, old


def start_nested(
    manual_clock: ManualClock, child_class: type[SupervisedActor], gate: Gate
) -> tuple[pykka.ActorRef[Any], Handle, pykka.ActorRef[Any]]:
    """A root over "sub" (which gives up at its first failure) over one "child" of
    `child_class` with `gate`: the root, a handle on "sub/child" and that child's ref."""
    sub_spec = ChildSpec(
        "sub",
        Supervisor,
        kwargs={"children": [ChildSpec("child", child_class, kwargs={"gate": gate})], "max_restarts": 0},
    )
    root = Supervisor.start([sub_spec], clock=manual_clock)
    handle = Handle(root, "sub/child")
    return root, handle, handle.ref()


def ref_waits_out_the_pending_restart(handle: Handle, gate: Gate, old: pykka.ActorRef[Any]) -> None:
    """While `gate` holds the restart, `handle.ref` waits its whole timeout and raises;
    once released, it reaches a new incarnation (not `old`)."""
    started = time.monotonic()
    with pytest.raises(ChildNotFound):
        handle.ref(timeout=0.2)
    assert time.monotonic() - started >= 0.2
    gate.release.set()
    new = handle.ref(timeout=5)
    assert new.actor_urn != old.actor_urn


def ref_after(handle: Handle, directory: Any, action: Callable[[], object]) -> pykka.ActorRef[Any]:
    """`handle.ref(timeout=5)`, with `action` run on another thread once the handle waits
    on `directory` (white-box: the only waiter on that directory is this handle)."""

    def act_once_the_handle_waits() -> None:
        wait_until(lambda: directory.condition._waiters, timeout=5)
        action()

    actor = threading.Thread(target=act_once_the_handle_waits, daemon=True)
    actor.start()
    try:
        return handle.ref(timeout=5)
    finally:
        actor.join(5)


# -- resolving ----------------------------------------------------------------------------


def test_ref_returns_the_running_incarnation(root: pykka.ActorRef[Any]) -> None:
    assert Handle(root, "w").ref() == root.proxy().whereis("w").get(timeout=5)


def test_ref_follows_a_restart(root: pykka.ActorRef[Any]) -> None:
    handle = Handle(root, "w")
    old = handle.ref()
    kill(old)
    wait_until(lambda: restarts_of(root, "w") == 1)
    new = handle.ref()
    assert new.actor_urn != old.actor_urn
    assert new == root.proxy().whereis("w").get(timeout=5)


def test_nested_path_reaches_the_child_of_a_child_supervisor(manual_clock: ManualClock) -> None:
    sub_spec = ChildSpec("sub", Supervisor, kwargs={"children": [ChildSpec("child", Worker)]})
    root = Supervisor.start([sub_spec], clock=manual_clock)
    sub = root.proxy().whereis("sub").get(timeout=5)
    child = sub.proxy().whereis("child").get(timeout=5)
    handle = Handle(root, "sub/child")
    assert handle.ref() == child
    assert handle.proxy().urn().get(timeout=5) == child.actor_urn


def test_path_to_a_child_supervisor_reaches_the_supervisor(manual_clock: ManualClock) -> None:
    sub_spec = ChildSpec("sub", Supervisor, kwargs={"children": [ChildSpec("child", Worker)]})
    root = Supervisor.start([sub_spec], clock=manual_clock)
    handle = Handle(root, "sub")
    assert handle.ref() == root.proxy().whereis("sub").get(timeout=5)
    assert [info.id for info in handle.proxy().which_children().get(timeout=5)] == ["child"]


def test_nested_path_follows_a_restart_of_the_inner_child(manual_clock: ManualClock) -> None:
    sub_spec = ChildSpec("sub", Supervisor, kwargs={"children": [ChildSpec("child", Worker)]})
    root = Supervisor.start([sub_spec], clock=manual_clock)
    handle = Handle(root, "sub/child")
    old = handle.ref()
    kill(old)
    assert handle.proxy().urn().get(timeout=5) != old.actor_urn


# -- ChildNotFound at once ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["nope", "w/child", "sub/nope", "nope/child"])
def test_unknown_path_raises_child_not_found_at_once(manual_clock: ManualClock, path: str) -> None:
    sub_spec = ChildSpec("sub", Supervisor, kwargs={"children": [ChildSpec("child", Worker)]})
    root = Supervisor.start([ChildSpec("w", Worker), sub_spec], clock=manual_clock)
    raises_at_once(Handle(root, path))


def test_child_not_found_names_the_path(root: pykka.ActorRef[Any]) -> None:
    error = raises_at_once(Handle(root, "missing-child"))
    assert "missing-child" in str(error)


def test_child_not_found_is_a_client_error_and_lookup_error(root: pykka.ActorRef[Any]) -> None:
    error = raises_at_once(Handle(root, "nope"))
    assert isinstance(error, ClientError)
    assert isinstance(error, LookupError)


def test_terminated_child_raises_at_once(root: pykka.ActorRef[Any]) -> None:
    handle = Handle(root, "w")
    handle.ref()
    root.proxy().terminate_child("w").get(timeout=5)
    raises_at_once(handle)


def test_ask_to_a_terminated_child_raises_child_not_found_at_once(root: pykka.ActorRef[Any]) -> None:
    handle = Handle(root, "w")
    root.proxy().terminate_child("w").get(timeout=5)
    started = time.monotonic()
    with pytest.raises(ChildNotFound):
        handle.ask("urn", timeout=5)
    with pytest.raises(ChildNotFound):
        handle.proxy().urn().get(timeout=5)
    assert time.monotonic() - started < NO_WAIT


def test_restarted_by_hand_after_terminate_resolves_again(root: pykka.ActorRef[Any]) -> None:
    handle = Handle(root, "w")
    old = handle.ref()
    root.proxy().terminate_child("w").get(timeout=5)
    new = root.proxy().restart_child("w").get(timeout=5)
    assert handle.ref() == new
    assert new.actor_urn != old.actor_urn


def test_temporary_child_that_is_gone_raises_at_once(manual_clock: ManualClock) -> None:
    root = Supervisor.start([ChildSpec("t", Worker, restart=Restart.TEMPORARY)], clock=manual_clock)
    handle = Handle(root, "t")
    kill(handle.ref())
    wait_until(lambda: root.proxy().count_children().get(timeout=5)["specs"] == 0)
    raises_at_once(handle)


def test_temporary_child_just_killed_is_not_waited_for(manual_clock: ManualClock) -> None:
    root = Supervisor.start([ChildSpec("t", Worker, restart=Restart.TEMPORARY)], clock=manual_clock)
    handle = Handle(root, "t")
    old = handle.ref()
    kill(old)
    wait_until(lambda: not old.is_alive())
    # The supervisor may not have decided yet, but no restart is coming: no 5 s wait.
    raises_at_once(handle)


def test_stopped_supervisor_raises_at_once(root: pykka.ActorRef[Any]) -> None:
    handle = Handle(root, "w")
    handle.ref()
    root.stop(timeout=5)
    raises_at_once(handle)


def test_handle_made_after_its_supervisor_stopped_raises_at_once(root: pykka.ActorRef[Any]) -> None:
    root.stop(timeout=5)
    raises_at_once(Handle(root, "w"))


def test_failed_supervisor_raises_at_once(manual_clock: ManualClock) -> None:
    root = Supervisor.start([ChildSpec("w", Worker)], max_restarts=0, clock=manual_clock)
    handle = Handle(root, "w")
    kill(handle.ref())
    wait_until(lambda: not root.is_alive())
    raises_at_once(handle)


# -- waiting for a pending restart ----------------------------------------------------------


def test_ref_waits_for_a_pending_restart_then_raises(manual_clock: ManualClock, gates: Callable[[int], Gate]) -> None:
    gate = gates(2)
    _, handle, old = restart_pending(manual_clock, gate)
    ref_waits_out_the_pending_restart(handle, gate, old)


def test_ask_timeout_covers_a_pending_restart(manual_clock: ManualClock, gates: Callable[[int], Gate]) -> None:
    gate = gates(2)
    _, handle, _ = restart_pending(manual_clock, gate)
    started = time.monotonic()
    with pytest.raises((ChildNotFound, pykka.Timeout)):
        handle.ask("urn", timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 0.2 + NO_WAIT


def test_call_made_while_a_restart_is_pending_reaches_the_new_incarnation(
    manual_clock: ManualClock, gates: Callable[[int], Gate]
) -> None:
    gate = gates(2)
    root, handle, old = restart_pending(manual_clock, gate)
    future = handle.proxy().urn()
    gate.release.set()
    assert future.get(timeout=5) == root.proxy().whereis("w").get(timeout=5).actor_urn != old.actor_urn


def test_failed_nested_supervisor_counts_as_a_pending_restart_of_its_children(
    manual_clock: ManualClock, gates: Callable[[int], Gate]
) -> None:
    gate = gates(2)  # the second "child" (started by the new "sub") blocks
    root, handle, old = start_nested(manual_clock, Worker, gate)
    kill(old)  # "sub" gives up at once and "root" restarts it
    assert gate.entered.wait(5)
    ref_waits_out_the_pending_restart(handle, gate, old)
    assert restarts_of(root, "sub") == 1


def test_handle_waiting_inside_a_nested_supervisor_survives_its_failure(
    manual_clock: ManualClock, gates: Callable[[int], Gate]
) -> None:
    gate = gates(1)
    root, handle, old = start_nested(manual_clock, DyingOnFailure, gate)
    sub_directory = root.proxy().whereis("sub").get(timeout=5)._actor_weakref()._directory
    kill(old)
    assert gate.entered.wait(5)  # "child" is crashing; "sub" has not heard yet
    # Released once the handle waits: "sub" now fails; "root" restarts it with a new "child".
    new = ref_after(handle, sub_directory, gate.release.set)
    assert new.actor_urn != old.actor_urn


def test_handle_waiting_on_a_crashing_sibling_survives_its_supervisor_giving_up(
    manual_clock: ManualClock, gates: Callable[[int], Gate]
) -> None:
    gate = gates(1)
    sub_spec = ChildSpec(
        "sub",
        Supervisor,
        kwargs={
            "children": [
                ChildSpec("a", Worker),
                ChildSpec("b", DyingOnFailure, kwargs={"gate": gate}, shutdown=0.2),
            ],
            "max_restarts": 0,
        },
    )
    root = Supervisor.start([sub_spec], clock=manual_clock)
    sub = root.proxy().whereis("sub").get(timeout=5)
    sub_directory = sub._actor_weakref()._directory
    a = sub.proxy().whereis("a").get(timeout=5)
    handle = Handle(root, "sub/b")
    old_b = handle.ref()
    kill(old_b)
    assert gate.entered.wait(5)  # "b" is crashing (stuck in on_failure); "sub" has not heard
    # Once the handle waits, "a" is killed: "sub" gives up (it stops "b", abandoned after
    # 0.2 s) and fails; "root" restarts "sub", which starts a new "b".
    new_b = ref_after(handle, sub_directory, lambda: kill(a))
    assert new_b.actor_urn != old_b.actor_urn
    assert restarts_of(root, "sub") == 1


# -- calls across restarts ------------------------------------------------------------------


def test_proxy_call_after_kill_reaches_the_new_incarnation(root: pykka.ActorRef[Any]) -> None:
    handle = Handle(root, "w")
    proxy = handle.proxy()
    old_urn = proxy.urn().get(timeout=5)
    kill(handle.ref())
    new_urn = proxy.urn().get(timeout=5)
    assert new_urn != old_urn
    assert new_urn == root.proxy().whereis("w").get(timeout=5).actor_urn


def test_call_queued_behind_a_kill_is_delivered_to_the_next_incarnation(
    root: pykka.ActorRef[Any], events: Callable[[], threading.Event]
) -> None:
    handle = Handle(root, "w")
    proxy = handle.proxy()
    old = handle.ref()
    entered, release = events(), events()
    running = proxy.block(entered, release)
    assert entered.wait(5)
    queued = proxy.urn()  # waits in the old inbox behind the running handler
    kill(old)  # takes effect ahead of the queued call
    release.set()
    assert running.get(timeout=5) == old.actor_urn  # the running handler completes
    assert queued.get(timeout=5) != old.actor_urn
    assert restarts_of(root, "w") == 1


def test_queued_tells_to_the_killed_incarnation_are_not_handled(
    root: pykka.ActorRef[Any], events: Callable[[], threading.Event]
) -> None:
    handle = Handle(root, "w")
    old = handle.ref()
    entered, release = events(), events()
    running = handle.proxy().block(entered, release)
    assert entered.wait(5)
    handle.tell("lost")
    kill(old)
    release.set()
    running.get(timeout=5)
    assert handle.proxy().recall().get(timeout=5) == []


def test_call_whose_handler_raised_gets_the_error_and_is_not_retried(root: pykka.ActorRef[Any]) -> None:
    handle = Handle(root, "w")
    calls: list[str] = []
    with pytest.raises(ValueError, match="boom"):
        handle.proxy().fail(calls).get(timeout=5)
    handle.proxy().urn().get(timeout=5)  # the crash was a crash: a new incarnation answers
    assert len(calls) == 1
    assert restarts_of(root, "w") == 1


def test_ask_whose_handler_raised_gets_the_error_and_is_not_retried(root: pykka.ActorRef[Any]) -> None:
    handle = Handle(root, "w")
    calls: list[str] = []
    with pytest.raises(ValueError, match="boom"):
        handle.ask(("fail", calls), timeout=5)
    handle.ask("urn", timeout=5)
    assert len(calls) == 1


def test_handler_that_raised_undelivered_itself_is_not_retried(
    root: pykka.ActorRef[Any], events: Callable[[], threading.Event]
) -> None:
    other = Worker.start()
    entered, release = events(), events()
    busy = other.proxy().block(entered, release)
    assert entered.wait(5)
    handle = Handle(root, "w")
    calls: list[str] = []
    relayed = handle.proxy().relay(calls, other)
    # "w"'s handler has run and its ask now waits in "other"'s inbox.
    wait_until(lambda: other.actor_inbox.qsize() == 1)
    kill(other)  # the queued ask fails with Undelivered inside w's handler
    release.set()
    busy.get(timeout=5)
    with pytest.raises(Undelivered):
        relayed.get(timeout=5)
    assert len(calls) == 1


def test_deferred_reply_cut_off_by_a_kill_is_not_retried(root: pykka.ActorRef[Any]) -> None:
    handle = Handle(root, "w")
    replies: list[DeferredReply] = []
    calls: list[str] = []
    pending = handle.proxy().answer_later(replies, calls)
    wait_until(lambda: replies)
    kill(handle.ref())
    with pytest.raises(ActorCrashed):
        pending.get(timeout=5)
    handle.proxy().urn().get(timeout=5)
    assert len(calls) == 1


def test_plain_pykka_actor_child_is_reachable_across_restarts(manual_clock: ManualClock) -> None:
    root = Supervisor.start([ChildSpec("p", PlainWorker)], clock=manual_clock)
    proxy = Handle(root, "p").proxy()
    old_urn = proxy.urn().get(timeout=5)
    kill(Handle(root, "p").ref())
    assert proxy.urn().get(timeout=5) != old_urn


# -- ask / tell / proxy ---------------------------------------------------------------------


def test_ask_returns_the_reply_of_on_receive(root: pykka.ActorRef[Any]) -> None:
    handle = Handle(root, "w")
    assert handle.ask("urn", timeout=5) == handle.ref().actor_urn


def test_ask_times_out_when_the_handler_is_slow(
    root: pykka.ActorRef[Any], events: Callable[[], threading.Event]
) -> None:
    handle = Handle(root, "w")
    entered, release = events(), events()
    handle.proxy().block(entered, release)
    assert entered.wait(5)
    with pytest.raises(pykka.Timeout):
        handle.ask("urn", timeout=0.05)


def test_tell_delivers_to_the_running_incarnation(root: pykka.ActorRef[Any]) -> None:
    handle = Handle(root, "w")
    handle.tell("hello")
    assert handle.proxy().recall().get(timeout=5) == ["hello"]


def test_tell_drops_quietly_while_no_incarnation_runs(
    root: pykka.ActorRef[Any], log_records: list[dict[str, Any]]
) -> None:
    handle = Handle(root, "w")
    root.proxy().terminate_child("w").get(timeout=5)
    handle.tell("lost")  # neither raises nor waits
    assert [r for r in log_records if r["level"].no >= 30] == []
    root.proxy().restart_child("w").get(timeout=5)
    assert handle.proxy().recall().get(timeout=5) == []


def test_tell_during_a_pending_restart_is_dropped_without_waiting(
    manual_clock: ManualClock, gates: Callable[[int], Gate]
) -> None:
    gate = gates(2)
    _, handle, _ = restart_pending(manual_clock, gate)
    started = time.monotonic()
    handle.tell("lost")
    assert time.monotonic() - started < NO_WAIT
    gate.release.set()
    assert handle.proxy().recall().get(timeout=5) == []


def test_proxy_method_returns_a_future(root: pykka.ActorRef[Any]) -> None:
    future = Handle(root, "w").proxy().add(2, 3)
    assert isinstance(future, pykka.Future)
    assert future.get(timeout=5) == 5


def test_proxy_reads_an_attribute_as_a_future(root: pykka.ActorRef[Any]) -> None:
    assert Handle(root, "w").proxy().label.get(timeout=5) == "worker"


def test_proxy_defer_tells_the_call(root: pykka.ActorRef[Any]) -> None:
    proxy = Handle(root, "w").proxy()
    proxy.remember.defer("x")
    assert proxy.recall().get(timeout=5) == ["x"]


def test_proxy_unknown_method_raises_attribute_error(root: pykka.ActorRef[Any]) -> None:
    with pytest.raises(AttributeError):
        Handle(root, "w").proxy().no_such_method  # noqa: B018


def test_call_with_wrong_arguments_is_a_bad_call_and_not_a_crash(root: pykka.ActorRef[Any]) -> None:
    handle = Handle(root, "w")
    before = handle.ref().actor_urn
    with pytest.raises(BadCall) as raised:
        handle.proxy().add(1).get(timeout=5)
    assert isinstance(raised.value, ClientError)
    assert isinstance(raised.value, TypeError)
    assert handle.proxy().urn().get(timeout=5) == before
    assert restarts_of(root, "w") == 0


# -- construction -----------------------------------------------------------------------------


@pytest.mark.parametrize("not_a_ref", [None, "root", 42, object()])
def test_handle_needs_an_actor_ref(not_a_ref: Any) -> None:
    with pytest.raises(TypeError):
        Handle(not_a_ref, "w")


@pytest.mark.parametrize("path", ["", "a//b", "/a", "a/", "/"])
def test_handle_rejects_a_malformed_path(root: pykka.ActorRef[Any], path: str) -> None:
    with pytest.raises(ValueError):
        Handle(root, path)


def test_handle_rejects_a_non_string_path(root: pykka.ActorRef[Any]) -> None:
    with pytest.raises(TypeError):
        Handle(root, 3)  # type: ignore[arg-type]


def test_handle_rejects_a_ref_that_is_not_a_supervisor() -> None:
    worker = Worker.start()
    with pytest.raises(TypeError):
        Handle(worker, "w")


# -- no message to the supervisor ------------------------------------------------------------


def test_resolving_sends_no_message_to_the_supervisor(
    root: pykka.ActorRef[Any], gates: Callable[[int], Gate]
) -> None:
    gate = gates(1)
    urn = Handle(root, "w").ref().actor_urn
    adding = root.proxy().start_child(ChildSpec("slow", Worker, kwargs={"gate": gate}))
    assert gate.entered.wait(5)
    # The supervisor is stuck inside start_child: it answers nothing now ...
    with pytest.raises(pykka.Timeout):
        root.proxy().which_children().get(timeout=0.05)
    # ... yet a fresh handle (nothing cached) resolves and its calls are answered.
    assert Handle(root, "w").proxy().urn().get(timeout=2) == urn
    assert Handle(root, "w").ask("urn", timeout=2) == urn
    gate.release.set()
    assert adding.get(timeout=5) == Handle(root, "slow").ref()


# -- calls parked for the next incarnation --------------------------------------------------


def test_a_call_made_while_a_restart_is_pending_is_delivered_once_even_without_get(
    manual_clock: ManualClock, gates: Callable[[int], Gate]
) -> None:
    gate = gates(2)
    _, handle, _ = restart_pending(manual_clock, gate)
    handle.proxy().remember("parked")  # never waited on
    gate.release.set()
    assert handle.proxy().recall().get(timeout=5) == ["parked"]


def test_a_parked_call_whose_caller_gave_up_is_never_delivered(
    manual_clock: ManualClock, gates: Callable[[int], Gate]
) -> None:
    gate = gates(2)
    _, handle, _ = restart_pending(manual_clock, gate)
    late = handle.proxy().remember("too late")
    with pytest.raises(ChildNotFound):
        late.get(timeout=0.2)
    gate.release.set()
    assert handle.proxy().recall().get(timeout=5) == []


def test_a_parked_call_gets_child_not_found_when_no_incarnation_will_come(
    manual_clock: ManualClock, gates: Callable[[int], Gate]
) -> None:
    gate = gates(1)
    root = Supervisor.start(
        [ChildSpec("w", DyingOnFailure, kwargs={"gate": gate}, restart=Restart.TEMPORARY)], clock=manual_clock
    )
    handle = Handle(root, "w")
    kill(handle.ref())
    assert gate.entered.wait(5)  # crashing: a call now waits for the supervisor's decision
    parked = handle.proxy().urn()
    gate.release.set()  # a temporary child is forgotten: nothing will answer
    with pytest.raises(ChildNotFound):
        parked.get(timeout=5)


def test_a_parked_call_gets_child_not_found_when_its_supervisor_stops(
    manual_clock: ManualClock, gates: Callable[[int], Gate]
) -> None:
    gate = gates(1)
    root = Supervisor.start([ChildSpec("w", DyingOnFailure, kwargs={"gate": gate})], clock=manual_clock)
    handle = Handle(root, "w")
    kill(handle.ref())
    assert gate.entered.wait(5)
    parked = handle.proxy().urn()
    root.stop(block=False)
    with pytest.raises(ChildNotFound):
        parked.get(timeout=5)
    gate.release.set()
