"""Crash semantics: what escapes a handler is a crash, ClientErrors are not, kill()."""

from __future__ import annotations

import errno
import threading
from typing import Any

import pykka
import pytest
from _actors import Gate, Recorder
from pykka import messages as pykka_messages

from supervision import (
    ActorCrashed,
    BadCall,
    ChildSpec,
    ClientError,
    DeferredReply,
    Killed,
    StartError,
    StorageError,
    SupervisedActor,
    Supervisor,
    Undelivered,
    kill,
    supervised_class,
)
from supervision._actor import NoSuchAttribute
from supervision.testing import wait_until


class Account(SupervisedActor):
    def __init__(self) -> None:
        super().__init__()
        self.balance = 0
        self.hooks: list[str] = []
        self.pending: DeferredReply | None = None

    def on_stop(self) -> None:
        self.hooks.append("on_stop")

    def on_failure(self, *exc_info: Any) -> None:
        self.hooks.append("on_failure")

    def deposit(self, amount: int) -> int:
        if amount <= 0:
            raise BadCall(f"amount must be > 0, got {amount}")
        self.balance += amount
        return self.balance

    def explode(self) -> None:
        self.balance = -1
        raise RuntimeError("explode")

    def type_bug(self) -> None:
        len(5)  # a TypeError inside the method: a bug, so a crash

    def interrupt(self) -> None:
        raise KeyboardInterrupt

    def later(self) -> DeferredReply:
        self.pending = DeferredReply()
        return self.pending

    def answer(self, value: Any) -> None:
        assert self.pending is not None
        self.pending.set(value)

    def plain_future(self) -> pykka.Future:
        future = pykka.ThreadingFuture()
        threading.Thread(target=lambda: future.set("from a thread")).start()
        return future

    def get_hooks(self) -> list[str]:
        return list(self.hooks)

    def deposit_durably(self, amount: int) -> int:
        self.balance += amount
        self.balance -= amount  # the change is not applied: the write failed
        raise StorageError(errno.ENOSPC, "No space left on device", "/state/account")


class Journal(SupervisedActor):
    """An on_receive-based actor whose durable write can fail."""

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[str] = []

    def on_receive(self, message: Any) -> Any:
        if message == "entries":
            return list(self.entries)
        if message.startswith("fail:"):
            raise StorageError(errno.EIO, "Input/output error", "/state/journal")
        self.entries.append(message)
        return len(self.entries)


def actor_of(ref: pykka.ActorRef) -> Any:
    return ref._actor_weakref()


def test_exception_in_an_ask_reaches_the_caller_and_crashes_the_actor():
    ref = Account.start()
    actor = actor_of(ref)
    with pytest.raises(RuntimeError, match="explode"):
        ref.proxy().explode().get(timeout=5)
    wait_until(lambda: actor._terminated.is_set())
    assert not ref.is_alive()
    assert actor.hooks == ["on_failure"]
    assert actor.exit_reason.is_crash


def test_exception_in_a_tell_crashes_the_actor():
    ref = Account.start()
    actor = actor_of(ref)
    ref.proxy().explode.defer()
    wait_until(lambda: actor._terminated.is_set())
    assert actor.hooks == ["on_failure"]


def test_exception_in_on_start_is_a_crash_and_start_raises_start_error():
    class Broken(Account):
        def on_start(self) -> None:
            raise ValueError("no config")

    with pytest.raises(StartError, match="no config") as raised:
        Broken.start()
    assert isinstance(raised.value.__cause__, ValueError)


def test_client_error_goes_to_the_caller_and_the_actor_keeps_its_state():
    ref = Account.start()
    ref.proxy().deposit(5).get(timeout=5)
    with pytest.raises(BadCall, match="amount must be > 0"):
        ref.proxy().deposit(-1).get(timeout=5)
    assert ref.is_alive()
    assert ref.proxy().deposit(1).get(timeout=5) == 6


def test_arguments_that_do_not_fit_are_a_client_type_error_not_a_crash():
    ref = Account.start()
    with pytest.raises(BadCall) as raised:
        ref.proxy().deposit(1, 2, 3).get(timeout=5)
    assert isinstance(raised.value, TypeError) and isinstance(raised.value, ClientError)
    with pytest.raises(TypeError):
        ref.proxy().deposit(wrong_keyword=1).get(timeout=5)
    assert ref.proxy().deposit(2).get(timeout=5) == 2


def test_a_type_error_inside_a_method_is_a_crash():
    ref = Account.start()
    with pytest.raises(TypeError) as raised:
        ref.proxy().type_bug().get(timeout=5)
    assert not isinstance(raised.value, ClientError)
    wait_until(lambda: not ref.is_alive())


def test_unknown_messages_get_none_and_private_or_missing_attributes_are_client_errors(log_records):
    # Contract: an actor keeping pykka's default on_receive answers None with a WARNING
    # (it used to raise UnknownMessage); a missing attribute is a ClientError that is also
    # an AttributeError (it used to be a BadCall, a TypeError); a private one stays a BadCall.
    ref = Account.start()
    assert ref.ask({"what": "is this"}, timeout=5) is None
    assert any(r["level"].name == "WARNING" and "what" in r["message"] for r in log_records)
    with pytest.raises(BadCall, match="private"):
        ref.ask(pykka_messages.ProxyCall(attr_path=("_stop",), args=(), kwargs={}), timeout=5)
    with pytest.raises(NoSuchAttribute, match="no attribute") as missing:
        ref.ask(pykka_messages.ProxyCall(attr_path=("nope",), args=(), kwargs={}), timeout=5)
    assert isinstance(missing.value, ClientError) and isinstance(missing.value, AttributeError)
    ref.tell("an unknown tell is logged and ignored")
    assert ref.proxy().deposit(1).get(timeout=5) == 1


def test_unknown_tell_is_logged_at_warning(log_records):
    ref = Account.start()
    ref.tell("junk")
    ref.proxy().deposit(1).get(timeout=5)
    assert any(r["level"].name == "WARNING" and "junk" in r["message"] for r in log_records)


def test_queued_asks_fail_with_undelivered_and_queued_tells_are_dropped(log_records):
    entered, release = threading.Event(), threading.Event()
    ref = supervised_class(Gate).start(entered, release)
    actor = actor_of(ref)
    first = ref.proxy().wait()
    entered.wait(5)
    boom = ref.ask(pykka_messages.ProxyCall(attr_path=("missing_method_crash",), args=(), kwargs={}), block=False)
    queued_ask = ref.proxy().count()
    ref.tell(pykka_messages.ProxyCall(attr_path=("count",), args=(), kwargs={}))
    kill(ref, "test kill")
    release.set()
    assert first.get(timeout=5) == "released"  # the running handler completes, its reply is delivered
    for future in (boom, queued_ask):
        with pytest.raises(pykka.ActorDeadError) as raised:
            future.get(timeout=5)
        assert isinstance(raised.value, Undelivered)
    wait_until(lambda: actor._terminated.is_set())  # set once the queued tells are dropped
    assert any(r["level"].name == "WARNING" and "dropped" in r["message"] for r in log_records)
    assert actor.calls == 1


def test_kill_takes_effect_ahead_of_queued_messages_and_is_a_crash():
    entered, release = threading.Event(), threading.Event()
    ref = supervised_class(Gate).start(entered, release)
    ref.proxy().wait()
    entered.wait(5)
    queued = [ref.proxy().count() for _ in range(3)]
    kill(ref, "make way")
    actor = actor_of(ref)
    release.set()
    for future in queued:
        with pytest.raises(Undelivered):
            future.get(timeout=5)
    wait_until(lambda: actor._terminated.is_set())
    assert isinstance(actor.exit_reason.exception, Killed)
    assert "make way" in str(actor.exit_reason.exception)


def test_kill_of_a_dead_actor_is_a_no_op_and_bad_targets_are_type_errors():
    ref = Account.start()
    ref.stop()
    kill(ref)
    plain = Recorder.start("plain", [])
    with pytest.raises(TypeError, match="plain pykka actor"):
        kill(plain)
    with pytest.raises(TypeError):
        kill("not a ref")
    with pytest.raises(TypeError):
        kill(plain, reason=42)
    plain.stop()


def test_base_exception_crashes_only_that_actor():
    bystander = Recorder.start("bystander", [])
    ref = Account.start()
    with pytest.raises(KeyboardInterrupt):
        ref.proxy().interrupt().get(timeout=5)
    wait_until(lambda: not ref.is_alive())
    assert bystander.is_alive()
    assert bystander.proxy().ping().get(timeout=5) == "bystander"
    bystander.stop()


def test_plain_pykka_actors_keep_pykka_behaviour():
    plain = Recorder.start("plain", [])
    with pytest.raises(RuntimeError):
        plain.proxy().crash().get(timeout=5)
    assert plain.is_alive()  # pykka: an exception in an ask leaves the actor running
    plain.stop()


def test_a_supervised_plain_actor_gets_the_crash_semantics():
    events: list = []
    sup = Supervisor.start([ChildSpec("r", Recorder, args=("r", events))])
    ref = sup.proxy().whereis("r").get(timeout=5)
    assert isinstance(actor_of(ref), Recorder)
    with pytest.raises(RuntimeError):
        ref.proxy().crash().get(timeout=5)
    wait_until(lambda: actor_of(ref) is None or actor_of(ref)._terminated.is_set())
    wait_until(lambda: ("failure", "r") in events)
    assert ("stop", "r") not in events


def test_a_handler_may_answer_later_with_a_deferred_reply():
    ref = Account.start()
    reply = ref.proxy().later()
    assert ref.proxy().deposit(3).get(timeout=5) == 3  # the inbox is not blocked
    ref.proxy().answer("done").get(timeout=5)
    assert reply.get(timeout=5) == "done"
    assert ref.proxy().plain_future().get(timeout=5) == "from a thread"


def test_a_deferred_reply_cut_off_by_a_crash_raises_actor_crashed():
    ref = Account.start()
    reply = ref.proxy().later()
    ref.proxy().deposit(1).get(timeout=5)
    kill(ref, "cut off")
    with pytest.raises(ActorCrashed) as raised:
        reply.get(timeout=5)
    assert isinstance(raised.value.__cause__, Killed)


def test_supervised_actors_run_on_daemon_threads():
    ref = Account.start()
    assert actor_of(ref)._thread.daemon
    assert supervised_class(Recorder).use_daemon_thread


def test_on_stop_failure_is_logged_and_counts_as_abnormal(log_records):
    class BadStop(Account):
        def on_stop(self) -> None:
            raise OSError("disk gone")

    ref = BadStop.start()
    actor = actor_of(ref)
    ref.stop(timeout=5)
    wait_until(lambda: actor._terminated.is_set())
    assert actor.exit_reason.is_crash
    assert any(r["level"].name == "ERROR" and "on_stop" in r["message"] for r in log_records)


def test_crash_is_logged_at_error_with_traceback_and_actor_id(log_records):
    events: list = []
    sup = Supervisor.start([ChildSpec("logged", Recorder, args=("logged", events))])
    ref = sup.proxy().whereis("logged").get(timeout=5)
    with pytest.raises(RuntimeError):
        ref.proxy().crash().get(timeout=5)
    # One record per crash: the report and what the supervisor did about it.
    wait_until(lambda: any(r["level"].name == "ERROR" and "restarted" in r["message"] for r in log_records))
    errors = [r for r in log_records if r["level"].name == "ERROR"]
    assert errors and errors[0]["exception"] is not None
    assert errors[0]["extra"]["actor"] == "logged" and errors[0]["extra"]["incarnation"] == 0
    assert errors[0]["message"].startswith("restarted child logged (restart 1): logged (incarnation 0) crashed")


def test_supervised_class_rejects_non_actors_and_is_cached():
    with pytest.raises(TypeError):
        supervised_class(object)
    assert supervised_class(Recorder) is supervised_class(Recorder)
    assert supervised_class(Account) is Account


def test_a_storage_error_reaches_the_caller_and_the_actor_keeps_its_state(log_records):
    ref = Account.start()
    proxy = ref.proxy()
    proxy.deposit(5).get(timeout=5)
    with pytest.raises(StorageError) as raised:
        proxy.deposit_durably(3).get(timeout=5)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == "/state/account"
    proxy.deposit_durably.defer(3)  # as a tell: logged, not a crash
    assert proxy.deposit(1).get(timeout=5) == 6
    assert ref.is_alive() and actor_of(ref).exit_reason is None
    assert actor_of(ref).hooks == []  # neither on_failure nor on_stop ran


def test_a_storage_error_from_on_receive_is_not_a_crash_for_asks_or_tells(log_records):
    ref = Journal.start()
    assert ref.ask("one", timeout=5) == 1
    with pytest.raises(StorageError) as raised:
        ref.ask("fail:two", timeout=5)
    assert raised.value.errno == errno.EIO
    ref.tell("fail:three")
    assert ref.ask("four", timeout=5) == 2
    assert ref.ask("entries", timeout=5) == ["one", "four"]
    assert any(r["level"].name == "WARNING" and "fail:three" in r["message"] for r in log_records)
