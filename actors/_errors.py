"""Errors of the domain actors. All validation errors are `ClientError`s."""

from __future__ import annotations

from supervision import ClientError, StorageError

__all__ = [
    "ConnectionLost",
    "FactoryError",
    "FleetUnavailable",
    "InvalidLock",
    "InvalidName",
    "InvalidOwner",
    "InvalidWorkerDir",
    "LockLost",
    "Locked",
    "NameSourceError",
    "NotLocked",
    "NotPermitted",
    "RemoteError",
    "StateDirInUse",
    "TooManyLocks",
]


class NameSourceError(ClientError, RuntimeError):
    """The name source raised, timed out, or yielded no usable name."""


class InvalidName(ClientError, ValueError):
    """A name that fails validation (see `actors.validate_name`)."""


class InvalidOwner(ClientError, TypeError):
    """An owner that is not None, a positive int pid or a str."""


class NotPermitted(ClientError, PermissionError):
    """A socket peer asked to act for another process (a worker acts only for itself)."""


class FactoryError(ClientError, RuntimeError):
    """The agent pool's factory raised; nothing was registered."""


class Locked(ClientError, RuntimeError):
    """The worker lock is held by another live owner (the message names pid and session)."""


class NotLocked(ClientError, RuntimeError):
    """Release of a lock that nobody (alive) holds."""


class InvalidLock(ClientError, ValueError):
    """The lock record is corrupt, or the lock path is a symlink."""


class InvalidWorkerDir(ClientError, ValueError):
    """A worker directory the locks cannot use (missing, not a directory, unreadable, on
    /proc, outside the `LockSupervisor`'s root, ...); the message names the path and errno."""


class TooManyLocks(ClientError, RuntimeError):
    """`max_locks` lock actors are live already; retry once some retire."""


class StateDirInUse(ClientError, RuntimeError):
    """Another tree or daemon holds this state directory (the message names its pid)."""


class LockLost(ClientError, RuntimeError):
    """The fleet lease of a worker lock ran out: the lock is no longer held."""


class FleetUnavailable(StorageError):
    """The fleet store cannot be reached in time: name changes are refused, not guessed."""


class ConnectionLost(ConnectionError):
    """The daemon connection broke with a call in flight: its effect is unknown."""


class RemoteError(Exception):
    """An error from the daemon whose type this package does not export."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_message = message
