"""The product's actor tree: a root supervisor with the name pool, agent pool and locks.

    with start_tree("/var/lib/fleet") as tree:
        name = tree.names.proxy().checkout_name(os.getpid()).get(timeout=5)
        lock = tree.locks.proxy().lock_for("/work/agents/w3").get(timeout=5)
        lock.proxy().acquire("session-1").get(timeout=5)

Worker processes join later with `tree.supervisor.proxy().start_child(spec)`.
Starting a tree again on the same `state_dir` recovers the name pool's state.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pykka
from loguru import logger

from supervision import ChildSpec, Clock, Handle, Strategy, Supervisor, make_private_directory

__all__ = ["NAMES_STATE", "Tree", "prepare_state_dir", "start_tree"]

NAMES_STATE = "names.state"


def prepare_state_dir(state_dir: str | os.PathLike[str]) -> Path:
    """Create `state_dir` owner-only (0700), or tighten an existing one with a WARNING.

    A symlink is refused: the state of a daemon is never read or written through one.
    """
    path = Path(state_dir).absolute()
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        make_private_directory(path)
        return path
    if stat.S_ISLNK(info.st_mode):
        raise ValueError(f"state dir {path} is a symlink; refusing to use it")
    if not stat.S_ISDIR(info.st_mode):
        raise ValueError(f"state dir {path} is not a directory")
    if info.st_uid != os.geteuid():
        # Its owner could swap the socket or the state under us.
        raise PermissionError(f"state dir {path} belongs to uid {info.st_uid}, not to this user ({os.geteuid()})")
    if info.st_mode & 0o077:
        logger.bind(state_dir=str(path)).warning(
            "state dir {} had loose permissions {:o}; tightened to 700", path, stat.S_IMODE(info.st_mode)
        )
        os.chmod(path, 0o700)
    return path


class Tree:
    """The running tree: `.supervisor` (root ref), `.names`, `.agents`, `.locks` (Handles)."""

    def __init__(self, supervisor: pykka.ActorRef[Any], state_dir: Path) -> None:
        self.supervisor = supervisor
        self.state_dir = state_dir
        self.names = Handle(supervisor, "names")
        self.agents = Handle(supervisor, "agents")
        self.locks = Handle(supervisor, "locks")

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: children in reverse start order (idempotent)."""
        if self.supervisor.is_alive():
            self.supervisor.stop(timeout=timeout)
        actor = self.supervisor._actor_weakref()
        if actor is not None:
            actor._terminated.wait(timeout)

    @property
    def is_running(self) -> bool:
        return self.supervisor.is_alive()

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Tree({str(self.state_dir)!r}, running={self.is_running})"


def start_tree(
    state_dir: str | os.PathLike[str],
    *,
    clock: Clock | None = None,
    name_source: Any = None,
    chunk_size: int = 12,
    idle_ttl: float = 1800.0,
    max_live: int = 32,
    sweep_interval: float = 60.0,
    reap_interval: float = 5.0,
    check_interval: float = 5.0,
    max_restarts: int = 3,
    max_seconds: float = 5.0,
) -> Tree:
    """Start the root supervisor (one_for_one) with "names", "agents", "locks", in that order."""
    from actors.agents._pool import AgentPool
    from actors.names._pool import NamePool
    from actors.locks._worker_lock import LockSupervisor

    path = prepare_state_dir(state_dir)
    children = [
        ChildSpec(
            "names",
            NamePool,
            kwargs={
                "source": name_source,
                "chunk_size": chunk_size,
                "state_path": path / NAMES_STATE,
                "clock": clock,
                "reap_interval": reap_interval,
            },
        ),
        ChildSpec(
            "agents",
            AgentPool,
            kwargs={"idle_ttl": idle_ttl, "max_live": max_live, "sweep_interval": sweep_interval, "clock": clock},
        ),
        ChildSpec("locks", LockSupervisor, kwargs={"check_interval": check_interval, "clock": clock}),
    ]
    root = Supervisor.start(
        children, strategy=Strategy.ONE_FOR_ONE, max_restarts=max_restarts, max_seconds=max_seconds, clock=clock
    )
    return Tree(root, path)
