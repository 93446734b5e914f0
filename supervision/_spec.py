"""Child specifications and the supervisor's pure decisions.

    ChildSpec("names", NamePool, kwargs={"state_path": "names.state"})
    ChildSpec("locks", Supervisor, kwargs={"children": [], "strategy": Strategy.ONE_FOR_ONE})

The decisions a supervisor takes on a crash are plain functions over plain data,
tested without threads: `should_restart` (restart type × exit kind),
`restart_targets` (strategy × child order) and `RestartIntensity` (OTP's window).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import pykka

__all__ = [
    "ChildInfo",
    "ChildSpec",
    "Restart",
    "RestartIntensity",
    "Strategy",
    "restart_targets",
    "should_restart",
]


class Strategy(str, Enum):
    """Which children a crash takes down with it (OTP's strategies)."""

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class Restart(str, Enum):
    """When a child is restarted: always, only after a crash, or never."""

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class _Default:
    def __repr__(self) -> str:
        return "<default>"


_DEFAULT: Any = _Default()
WORKER_SHUTDOWN = 5.0


@dataclass(frozen=True)
class ChildSpec:
    """How to start one child and what to do when it exits.

    `shutdown` is the grace (real seconds) for a graceful stop before the child is
    abandoned; None waits forever. Left at its default it is 5.0 for workers, None
    for supervisors, or what the actor class's `default_shutdown(args, kwargs)` says.
    """

    id: str
    actor_class: type[pykka.Actor]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None
    restart: Restart = Restart.PERMANENT
    shutdown: float | None = field(default=_DEFAULT)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str):
            raise TypeError(f"child id must be a str, not {type(self.id).__name__}")
        if not self.id:
            raise ValueError("child id must not be empty")
        if "/" in self.id:
            raise ValueError(f"child id {self.id!r} must not contain '/' (it separates handle paths)")
        if not (isinstance(self.actor_class, type) and issubclass(self.actor_class, pykka.ThreadingActor)):
            raise TypeError(f"child {self.id!r}: actor_class must be a pykka.ThreadingActor subclass, got {self.actor_class!r}")
        if not isinstance(self.args, tuple):
            raise TypeError(f"child {self.id!r}: args must be a tuple, not {type(self.args).__name__}")
        if self.kwargs is not None and not isinstance(self.kwargs, dict):
            raise TypeError(f"child {self.id!r}: kwargs must be a dict or None, not {type(self.kwargs).__name__}")
        try:
            restart = Restart(self.restart)
        except ValueError:
            raise ValueError(f"child {self.id!r}: unknown restart type {self.restart!r}") from None
        object.__setattr__(self, "restart", restart)
        shutdown = self.shutdown
        if shutdown is _DEFAULT:
            shutdown = self._default_shutdown()
        if shutdown is not None:
            if isinstance(shutdown, bool) or not isinstance(shutdown, int | float) or math.isnan(shutdown):
                raise TypeError(f"child {self.id!r}: shutdown must be seconds or None, got {shutdown!r}")
            if shutdown < 0:
                raise ValueError(f"child {self.id!r}: shutdown must be >= 0, got {shutdown!r}")
            shutdown = float(shutdown)
        object.__setattr__(self, "shutdown", shutdown)

    def _default_shutdown(self) -> float | None:
        hook = getattr(self.actor_class, "default_shutdown", None)
        if callable(hook):
            return hook(self.args, dict(self.kwargs or {}))
        if self.is_supervisor:
            return None
        return WORKER_SHUTDOWN

    @property
    def is_supervisor(self) -> bool:
        return bool(getattr(self.actor_class, "is_supervisor", False))


@dataclass(frozen=True)
class ChildInfo:
    """One row of `Supervisor.which_children()`."""

    id: str
    ref: pykka.ActorRef[Any] | None
    restarts: int
    is_supervisor: bool
    restart: Restart = Restart.PERMANENT

    @property
    def running(self) -> bool:
        return self.ref is not None


def should_restart(restart: Restart, *, crashed: bool) -> bool:
    """OTP: permanent always, transient only after a crash, temporary never."""
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return crashed
    return False


def restart_targets(strategy: Strategy, order: list[str], failed: str) -> list[str]:
    """Ids to stop and start again, in start order, when `failed` must be restarted."""
    if strategy is Strategy.ONE_FOR_ONE:
        return [failed]
    if strategy is Strategy.ONE_FOR_ALL:
        return list(order)
    return order[order.index(failed):]


class RestartIntensity:
    """OTP's restart intensity: more than `max_restarts` within `max_seconds` is too many.

    A restart at time `t` counts while `now - t <= max_seconds`.
    """

    def __init__(self, max_restarts: int, max_seconds: float) -> None:
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int):
            raise TypeError(f"max_restarts must be an int, not {type(max_restarts).__name__}")
        if isinstance(max_seconds, bool) or not isinstance(max_seconds, int | float) or math.isnan(max_seconds):
            raise TypeError(f"max_seconds must be a number, not {max_seconds!r}")
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
        if max_seconds < 0:
            raise ValueError(f"max_seconds must be >= 0, got {max_seconds}")
        self.max_restarts = max_restarts
        self.max_seconds = float(max_seconds)
        self._times: deque[float] = deque()

    def add(self, now: float) -> bool:
        """Count a restart at `now`; True while the intensity still allows it."""
        self._times.append(now)
        while self._times and now - self._times[0] > self.max_seconds:
            self._times.popleft()
        return len(self._times) <= self.max_restarts

    @property
    def recent(self) -> int:
        return len(self._times)
