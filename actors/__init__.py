"""Domain actors for fleets of AI-agent workers, and the tree and daemon that serve them.

    from actors import start_tree

    with start_tree("/var/lib/fleet") as tree:
        names = tree.names.proxy()
        name = names.checkout_name(os.getpid()).get(timeout=5)   # "furiosa"

Everything public is importable from here; modules load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "NamePool": "actors.names._pool",
    "ThemedSource": "actors.names._source",
    "THEMES": "actors.names._source",
    "RESERVED_NAMES": "actors.names._source",
    "validate_name": "actors.names._source",
    "AgentPool": "actors.agents._pool",
    "WorkerLock": "actors.locks._worker_lock",
    "LockSupervisor": "actors.locks._worker_lock",
    "LockInfo": "actors.locks._lock_file",
    "start_tree": "actors._tree",
    "Tree": "actors._tree",
    "WorkerProcess": "actors.workers._worker_process",
    "Backoff": "actors.workers._worker_process",
    "inherit_identity": "actors.workers._worker_process",
    "WorkerExited": "actors.workers._worker_process",
    "Client": "actors.daemon._client",
    "connect": "actors.daemon._client",
    "AsyncClient": "actors.daemon._async_client",
    "aconnect": "actors.daemon._async_client",
    "NameSourceError": "actors._errors",
    "InvalidName": "actors._errors",
    "InvalidOwner": "actors._errors",
    "FactoryError": "actors._errors",
    "Locked": "actors._errors",
    "NotLocked": "actors._errors",
    "InvalidLock": "actors._errors",
    "NotPermitted": "actors._errors",
    "RemoteError": "actors._errors",
    "InvalidWorkerDir": "actors._errors",
    "TooManyLocks": "actors._errors",
    "StateDirInUse": "actors._errors",
    "LockLost": "actors._errors",
    "FleetUnavailable": "actors._errors",
    "ConnectionLost": "actors._errors",
    "InvalidKey": "actors.agents._registry",
    "InvalidBackend": "actors.agents._registry",
    "InvalidSetting": "actors.agents._registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'actors' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from actors.agents._pool import AgentPool
    from actors.agents._registry import InvalidBackend, InvalidKey, InvalidSetting
    from actors.daemon._async_client import AsyncClient, aconnect
    from actors.daemon._client import Client, connect
    from actors._errors import (
        ConnectionLost,
        FactoryError,
        FleetUnavailable,
        InvalidLock,
        InvalidName,
        InvalidOwner,
        InvalidWorkerDir,
        Locked,
        LockLost,
        NameSourceError,
        NotLocked,
        NotPermitted,
        RemoteError,
        StateDirInUse,
        TooManyLocks,
    )
    from actors.locks._record import LockInfo
    from actors.names._pool import NamePool
    from actors.names._source import RESERVED_NAMES, THEMES, ThemedSource, validate_name
    from actors._tree import Tree, start_tree
    from actors.locks._worker_lock import LockSupervisor, WorkerLock
    from actors.workers._worker_process import (
        Backoff,
        WorkerExited,
        WorkerProcess,
        inherit_identity,
    )
