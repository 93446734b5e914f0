"""Errors of the supervision layer.

`ClientError` marks the caller's fault: a supervised actor raises it to the caller
and keeps running. Everything else that escapes a handler is a crash.
"""

from __future__ import annotations

import reprlib

__all__ = [
    "ActorCrashed",
    "AlreadyPresent",
    "AlreadyStarted",
    "BadCall",
    "ChildNotFound",
    "ChildRunning",
    "ClientError",
    "NoSuchAttribute",
    "StartError",
    "StorageError",
    "UnknownMessage",
    "describe",
]


class _BoundedRepr(reprlib.Repr):
    def repr_instance(self, obj: object, level: int) -> str:
        try:
            return super().repr_instance(obj, level)
        except Exception:  # a hostile __repr__ must not turn a refusal into a crash
            return f"<{type(obj).__name__} object>"


_repr = _BoundedRepr()
_repr.maxlevel = 3
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlong = 40


def describe(value: object) -> str:
    """`repr(value)` bounded in depth and length, for error messages quoting a caller's value.

    A plain repr of a hostile value (a list nested 1,000 deep, a 1 MB string) raises
    `RecursionError` or floods the reply; this never raises and stays short.
    """
    try:
        return _repr.repr(value)
    except Exception:
        return f"<{type(value).__name__} object>"



class ClientError(Exception):
    """The caller's fault: raised to the caller, the actor keeps running untouched."""


class BadCall(ClientError, TypeError):
    """A call whose arguments do not fit the method's signature."""


class NoSuchAttribute(ClientError, AttributeError):
    """A proxy call or read of an attribute the actor does not have (or keeps private)."""


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


class StorageError(OSError):
    """Durable state could not be written (disk full, I/O error, read-only file system).

    Not a crash: the change was not applied, the caller gets this error (naming the path and
    the errno), and the actor keeps running and answering reads.
    """
