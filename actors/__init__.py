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
    "NamePool": "actors._name_pool",
    "ThemedSource": "actors._names",
    "THEMES": "actors._names",
    "RESERVED_NAMES": "actors._names",
    "validate_name": "actors._names",
    "AgentPool": "actors._agent_pool",
    "WorkerLock": "actors._worker_lock",
    "LockSupervisor": "actors._worker_lock",
    "InvalidWorkerDir": "actors._worker_lock",
    "LockInfo": "actors._lock_file",
    "start_tree": "actors._tree",
    "Tree": "actors._tree",
    "WorkerProcess": "actors._worker_process",
    "Backoff": "actors._worker_process",
    "inherit_identity": "actors._worker_process",
    "WorkerExited": "actors._worker_process",
    "Client": "actors._client",
    "connect": "actors._client",
    "NameSourceError": "actors._errors",
    "InvalidName": "actors._errors",
    "InvalidOwner": "actors._errors",
    "FactoryError": "actors._errors",
    "Locked": "actors._errors",
    "NotLocked": "actors._errors",
    "InvalidLock": "actors._errors",
    "NotPermitted": "actors._errors",
    "RemoteError": "actors._errors",
    "InvalidKey": "actors._agent_registry",
    "InvalidBackend": "actors._agent_registry",
    "InvalidSetting": "actors._agent_registry",
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
    from actors._agent_pool import AgentPool
    from actors._agent_registry import InvalidBackend, InvalidKey, InvalidSetting
    from actors._client import Client, connect
    from actors._errors import (
        FactoryError,
        InvalidLock,
        InvalidName,
        InvalidOwner,
        Locked,
        NameSourceError,
        NotLocked,
        NotPermitted,
        RemoteError,
    )
    from actors._lock_file import LockInfo
    from actors._name_pool import NamePool
    from actors._names import RESERVED_NAMES, THEMES, ThemedSource, validate_name
    from actors._tree import Tree, start_tree
    from actors._worker_lock import InvalidWorkerDir, LockSupervisor, WorkerLock
    from actors._worker_process import (
        Backoff,
        WorkerExited,
        WorkerProcess,
        inherit_identity,
    )
