"""Outside the crash rules a supervised actor behaves as plain pykka (issue 11 item 12).

Each test runs the same user class unsupervised (plain pykka, the reference) and
supervised (under a `Supervisor`, reached through `ref.proxy()` and a `Handle`).
"""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest

from supervision import ChildSpec, ClientError, Handle, ManualClock, Supervisor, kill, supervised_class
from supervision.testing import wait_until


class Legacy(pykka.ThreadingActor):
    """A pykka actor using names a library might want for itself."""

    def __init__(self) -> None:
        super().__init__()
        self._thread = "my thread"
        self._log: list[str] = []
        self.exit_reason = "mine"
        self._label = "my label"
        self._terminated = False

    def note(self, text: str) -> None:
        self._log.append(text)

    def state(self) -> tuple[Any, ...]:
        return (self._thread, list(self._log), self.exit_reason, self._label, self._terminated)


class ClassLevelNames(pykka.ThreadingActor):
    """The same names as class attributes and methods."""

    exit_reason = "class-level"

    def _log(self, text: str) -> str:
        return f"logged {text}"

    def use(self) -> tuple[str, str]:
        return (self._log("x"), self.exit_reason)


class Holder(pykka.ThreadingActor):
    """Keeps an unresolved future in an attribute, and pykka's default on_receive."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: pykka.Future[Any] = pykka.ThreadingFuture()
        self.count = 1

    def ping(self) -> str:
        return "pong"


@pykka.traversable
class Playback:
    def __init__(self) -> None:
        self.volume = 7

    def play(self) -> str:
        return "playing"


class Player(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.playback = Playback()
        self.mixer = pykka.traversable(Mixer())


class Mixer:
    def __init__(self) -> None:
        self.channels = 2

    def mute(self) -> str:
        return "muted"


def supervise(actor_class: type[pykka.ThreadingActor]) -> tuple[pykka.ActorRef[Any], Handle]:
    sup = Supervisor.start([ChildSpec("child", actor_class)], clock=ManualClock())
    return sup, Handle(sup, "child")


@pytest.fixture
def plain() -> Any:
    started: list[pykka.ActorRef[Any]] = []

    def start(actor_class: type[pykka.ThreadingActor]) -> pykka.ActorRef[Any]:
        ref = actor_class.start()
        started.append(ref)
        return ref

    yield start
    for ref in started:
        ref.stop()


# -- the user's names are the user's ---------------------------------------------------------


def test_a_users_thread_log_and_exit_reason_attributes_stay_theirs(plain: Any) -> None:
    reference = plain(Legacy).proxy()
    reference.note("a").get(timeout=5)
    expected = reference.state().get(timeout=5)

    sup, handle = supervise(Legacy)
    handle.proxy().note("a").get(timeout=5)
    assert handle.proxy().state().get(timeout=5) == expected
    assert handle.proxy().exit_reason.get(timeout=5) == "mine"
    # The supervision still works underneath: a kill restarts it with fresh user state.
    old = handle.ref()
    kill(old)
    wait_until(lambda: handle.ref() is not old)
    assert handle.proxy().state().get(timeout=5) == ("my thread", [], "mine", "my label", False)


def test_class_level_names_of_a_user_class_stay_theirs(plain: Any) -> None:
    expected = plain(ClassLevelNames).proxy().use().get(timeout=5)
    _, handle = supervise(ClassLevelNames)
    assert handle.proxy().use().get(timeout=5) == expected == ("logged x", "class-level")


# -- futures held in attributes ------------------------------------------------------------------


def test_reading_an_attribute_that_holds_a_future_answers_the_future_itself(plain: Any) -> None:
    reference = plain(Holder).proxy().pending.get(timeout=5)
    assert isinstance(reference, pykka.Future)

    sup, handle = supervise(Holder)
    through_ref = handle.ref().proxy().pending.get(timeout=5)
    through_handle = handle.proxy().pending.get(timeout=5)
    assert isinstance(through_ref, pykka.Future)
    assert through_handle is through_ref  # the actor's own future, unresolved, not waited for
    assert handle.proxy().ping().get(timeout=5) == "pong"


# -- missing attributes ------------------------------------------------------------------------


def test_a_missing_attribute_through_a_proxy_is_a_client_error_and_an_attribute_error(plain: Any) -> None:
    with pytest.raises(AttributeError):
        plain(Holder).proxy().nope  # noqa: B018  (pykka's own behaviour)

    _, handle = supervise(Holder)
    for proxy in (handle.ref().proxy(), handle.proxy()):
        with pytest.raises(AttributeError) as raised:
            proxy.nope  # noqa: B018
        assert isinstance(raised.value, ClientError)
    # A call sent without a proxy's introspection gets the same answer from the actor.
    with pytest.raises(AttributeError) as raised:
        handle.ask(pykka.messages.ProxyCall(attr_path=("nope",), args=(), kwargs={}), timeout=5)
    assert isinstance(raised.value, ClientError)
    assert handle.proxy().ping().get(timeout=5) == "pong"  # not a crash


# -- pykka's default on_receive ----------------------------------------------------------------


def test_an_unknown_message_is_answered_with_none_and_a_warning(plain: Any, log_records: list[dict[str, Any]]) -> None:
    assert plain(Holder).ask({"unknown": 1}, timeout=5) is None

    _, handle = supervise(Holder)
    before = handle.ref()
    assert handle.ask({"unknown": 2}, timeout=5) is None
    assert before.ask("another", timeout=5) is None
    handle.tell("a tell")
    assert handle.proxy().ping().get(timeout=5) == "pong"
    assert handle.ref() is before  # none of it was a crash
    warnings = [r["message"] for r in log_records if r["level"].name == "WARNING"]
    assert any("unknown" in text and "2" in text for text in warnings)
    assert any("a tell" in text for text in warnings)


def test_a_supervised_class_on_its_own_also_answers_none(plain: Any) -> None:
    ref = supervised_class(Holder).start()
    try:
        assert ref.ask("what?", timeout=5) is None
        assert ref.is_alive()
    finally:
        ref.stop()


# -- traversable attributes --------------------------------------------------------------------


def test_traversable_attributes_work_through_ref_and_handle_proxies(plain: Any) -> None:
    reference = plain(Player).proxy()
    expected = (
        reference.playback.play().get(timeout=5),
        reference.playback.volume.get(timeout=5),
        reference.mixer.mute().get(timeout=5),
        reference.mixer.channels.get(timeout=5),
    )
    assert expected == ("playing", 7, "muted", 2)

    _, handle = supervise(Player)
    for proxy in (handle.ref().proxy(), handle.proxy()):
        got = (
            proxy.playback.play().get(timeout=5),
            proxy.playback.volume.get(timeout=5),
            proxy.mixer.mute().get(timeout=5),
            proxy.mixer.channels.get(timeout=5),
        )
        assert got == expected
    with pytest.raises(AttributeError):
        handle.proxy().playback.nope  # noqa: B018


def test_a_handles_traversable_proxy_follows_a_restart() -> None:
    _, handle = supervise(Player)
    playback = handle.proxy().playback
    old = handle.ref()
    kill(old)
    wait_until(lambda: handle.ref() is not old)
    assert playback.play().get(timeout=5) == "playing"


# -- thread names ----------------------------------------------------------------------------------


def thread_names() -> list[str]:
    return [thread.name for thread in threading.enumerate()]


def test_thread_names_are_unique_within_the_process(plain: Any) -> None:
    plain(Holder)
    plain(Holder)
    assert len(thread_names()) == len(set(thread_names()))  # pykka's "<Class>-<n>"

    sup = Supervisor.start(
        [ChildSpec("a", Holder), ChildSpec("b", Holder), ChildSpec("c", Holder)], clock=ManualClock()
    )
    handle = Handle(sup, "a")
    first = handle.ref()
    first_name = first._actor_weakref()._supervision_.thread.name
    kill(first)
    wait_until(lambda: handle.ref() is not first)
    others = [supervised_class(Holder).start() for _ in range(3)]
    try:
        names = thread_names()
        ours = [name for name in names if name.split("-")[0] in {"a", "b", "c", "Holder", "Supervisor"}]
        assert len(ours) >= 9  # 2 plain + supervisor + 3 children + 3 on their own
        assert len(names) == len(set(names))
        assert handle.ref()._actor_weakref()._supervision_.thread.name != first_name
    finally:
        for ref in others:
            ref.stop()
