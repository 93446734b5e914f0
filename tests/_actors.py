"""Small actors shared by the supervision tests."""

from __future__ import annotations

import threading
from typing import Any

import pykka


class Recorder(pykka.ThreadingActor):
    """A plain pykka actor that records its lifecycle into a shared list."""

    def __init__(self, name: str, events: list[tuple[str, str]], fail_start: threading.Event | None = None) -> None:
        super().__init__()
        self.name = name
        self.events = events
        self.fail_start = fail_start
        self.value = 0

    def on_start(self) -> None:
        if self.fail_start is not None and self.fail_start.is_set():
            self.events.append(("start-failed", self.name))
            raise RuntimeError(f"{self.name} refuses to start")
        self.events.append(("start", self.name))

    def on_stop(self) -> None:
        self.events.append(("stop", self.name))

    def on_failure(self, *exc_info: Any) -> None:
        self.events.append(("failure", self.name))

    def ping(self) -> str:
        return self.name

    def urn(self) -> str:
        return self.actor_urn

    def crash(self) -> None:
        raise RuntimeError(f"{self.name} crashed on purpose")

    def crash_later(self) -> None:
        self.actor_ref.tell("crash")

    def quit(self) -> None:
        self.stop()

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError(f"{self.name} crashed in a tell")
        return super().on_receive(message)


class Hang(pykka.ThreadingActor):
    """An actor whose on_stop blocks until released (a child that hangs in shutdown)."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release

    def on_stop(self) -> None:
        self.release.wait()

    def ping(self) -> str:
        return "pong"


class Gate(pykka.ThreadingActor):
    """Blocks in `wait()` until its event is set; counts handled calls."""

    def __init__(self, entered: threading.Event, release: threading.Event) -> None:
        super().__init__()
        self.entered = entered
        self.release = release
        self.calls = 0

    def wait(self) -> str:
        self.calls += 1
        self.entered.set()
        self.release.wait()
        return "released"

    def count(self) -> int:
        self.calls += 1
        return self.calls

    def urn(self) -> str:
        return self.actor_urn
