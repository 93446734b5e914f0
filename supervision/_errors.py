"""Errors of the supervision layer.

`ClientError` marks the caller's fault: a supervised actor raises it to the caller
and keeps running. Everything else that escapes a handler is a crash.
"""

from __future__ import annotations

__all__ = [
    "ActorCrashed",
    "AlreadyPresent",
    "AlreadyStarted",
    "BadCall",
    "ChildNotFound",
    "ChildRunning",
    "ClientError",
    "StartError",
    "UnknownMessage",
]


class ClientError(Exception):
    """The caller's fault: raised to the caller, the actor keeps running untouched."""


class BadCall(ClientError, TypeError):
    """A call whose arguments do not fit the method's signature."""


class UnknownMessage(ClientError, TypeError):
    """An `ask` with a message the actor does not handle."""


class ActorCrashed(Exception):
    """A reply that was deferred (a returned future) was cut off by a crash.

    `__cause__` is the crash.
    """


class StartError(Exception):
    """A child (or an actor started on its own) failed to start; names the id and cause."""


class AlreadyStarted(ClientError, ValueError):
    """`start_child`: a running child already has that id."""


class AlreadyPresent(ClientError, ValueError):
    """`start_child`: a stopped child keeps that id (delete it first)."""


class ChildRunning(ClientError, ValueError):
    """`restart_child` / `delete_child` on a child that is running."""


class ChildNotFound(ClientError, LookupError):
    """No child with that id (or path), or no incarnation to reach in time."""
