"""The product's actor tree: a root supervisor with the name pool, agent pool, locks, workers.

    with start_tree("/var/lib/fleet") as tree:
        name = tree.names.proxy().checkout_name(os.getpid()).get(timeout=5)
        lock = tree.locks.proxy().lock_for("/work/agents/w3").get(timeout=5)
        lock.proxy().acquire("session-1").get(timeout=5)

Worker processes join the "workers" supervisor: `tree.workers.proxy().start_child(spec)`.
It has its own restart budget (5 in 60 s), so a crash-looping worker costs the root
nothing; when "workers" gives up, the root restarts it (empty) within the root's budget.
Starting a tree again on the same `state_dir` recovers the name pool's state. One tree
per `state_dir`, across processes and within one: a second `start_tree` (or `python -m
actors serve`) on it raises `StateDirInUse` naming the holder's pid until `Tree.stop()`.

In a fleet (contract §7) the names live in a Redis-protocol store shared by every host::

    tree = start_tree("/var/lib/fleet", fleet="redis://store:6379/0", host_id="host-a")
    tree.fleet.epoch          # this host's epoch; the lease is renewed on a thread of its own
"""

from __future__ import annotations

import errno
import fcntl
import inspect
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pykka
from loguru import logger

from actors._errors import FleetUnavailable, StateDirInUse
from supervision import ChildSpec, Clock, Handle, StartError, Strategy, Supervisor, make_private_directory

__all__ = ["LOCK_NAME", "NAMES_STATE", "StateDirClaim", "Tree", "prepare_state_dir", "start_tree"]

NAMES_STATE = "names.state"
#: The "workers" supervisor's own restart budget: this many restarts within this many seconds.
WORKERS_MAX_RESTARTS = 5
WORKERS_MAX_SECONDS = 60.0
LOCK_NAME = "daemon.lock"

# The trees of this process and their claims, so that a tree whose root has ended (failed,
# or stopped without `Tree.stop()`) does not keep its state dir from a new one.
_claims: dict[Path, tuple[StateDirClaim, pykka.ActorRef[Any], Any]] = {}
_claims_lock = threading.Lock()


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


class StateDirClaim:
    """The kernel lock (`flock` on ``state_dir/daemon.lock``) that makes one tree per state dir.

    flock belongs to an open file description, so each claim opens the file anew: a second
    claim conflicts with the first whether it comes from another process or this one. The
    kernel drops the lock when its holder dies; the pid written into the file only serves
    the refusal message.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            content = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            self.holder = int(content) if content.isdigit() else None
            who = f"pid {self.holder}" if self.holder else "another process"
            raise StateDirInUse(f"{state_dir} is in use by a tree or daemon ({who})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd
        self._lock = threading.Lock()

    def release(self) -> None:
        """Let another tree have the state dir (idempotent)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)  # closing the only descriptor of the description drops the flock
                self._fd = None


class Tree:
    """The running tree: `.supervisor` (root ref), `.names`, `.agents`, `.locks`, `.workers` (Handles)."""

    def __init__(
        self,
        supervisor: pykka.ActorRef[Any],
        state_dir: Path,
        claim: StateDirClaim | None = None,
        fleet: Any = None,
    ) -> None:
        self.supervisor = supervisor
        self.state_dir = state_dir
        self.names = Handle(supervisor, "names")
        self.agents = Handle(supervisor, "agents")
        self.locks = Handle(supervisor, "locks")
        self.workers = Handle(supervisor, "workers")
        self._claim = claim
        self.gateway: Any = None  # the socket's Gateway with start_tree(serve=True)
        #: The `FleetHost` (actors.fleet._hosts) of a tree in a fleet: lease, epoch, conflicts.
        self.fleet = fleet

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: the socket (if served), children in reverse start order (idempotent);
        then free the state dir."""
        gateway, self.gateway = self.gateway, None
        if gateway is not None:
            gateway.stop()
        if self.supervisor.is_alive():
            self.supervisor.stop(timeout=timeout)
        actor = self.supervisor._actor_weakref()
        if actor is not None and not actor._terminated.wait(timeout):
            # Its actors may still write the state: another tree must not start on it yet.
            logger.bind(state_dir=str(self.state_dir)).warning(
                "the tree on {} did not stop within {}s; keeping its state dir locked", self.state_dir, timeout
            )
            return
        if self.fleet is not None:
            self.fleet.stop(leave=True)  # the names wait one host lease for this host's return
        if self._claim is not None:
            with _claims_lock:
                if _claims.get(self.state_dir, (None,))[0] is self._claim:
                    del _claims[self.state_dir]
            self._claim.release()

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
    serve: bool = False,
    agent_factory: Any = None,
    fleet: str | None = None,
    host_id: str | None = None,
    host_lease: float = 15.0,
    lock_lease: float = 15.0,
    fleet_timeout: float = 2.0,
    on_lock_lost: str = "terminate",
) -> Tree:
    """Start the root supervisor (one_for_one) with "names", "agents", "locks", "workers".

    `agent_factory` is the AgentPool's `factory(primary, agent)`. With `serve=True` the tree
    is also served on ``state_dir/tree.sock`` as `python -m actors serve` serves it (same
    gateway); `Tree.stop()` closes the socket first. Raises `StateDirInUse` (naming the
    holder's pid) while another tree or daemon, in this process or another, holds `state_dir`.

    With `fleet` (a ``redis://`` or ``unix://`` URL, contract §7) this host joins the fleet
    before anything starts: the names live in the store, the locks take leases there.
    `FleetUnavailable` when the store does not answer within `fleet_timeout`;
    `StateDirInUse` when a live daemon already has this `host_id` (default: the hostname)
    in the fleet's namespace; `ValueError` for a bad URL or setting.
    """
    from actors.agents._pool import AgentPool
    from actors.names._pool import NamePool
    from actors.locks._worker_lock import LockSupervisor

    settings = None
    if fleet is not None:
        from actors.fleet._connection import FleetSettings

        settings = FleetSettings.parse(
            fleet, host_id=host_id, host_lease=host_lease, lock_lease=lock_lease, fleet_timeout=fleet_timeout,
            on_lock_lost=on_lock_lost,
        )
    path = prepare_state_dir(state_dir)
    names_options: dict[str, Any] = {}
    locks_options: dict[str, Any] = {}
    if settings is not None and "fleet" in inspect.signature(LockSupervisor.__init__).parameters:
        # Only in a fleet, and only to a LockSupervisor that takes it (fleet-locks' branch).
        locks_options["fleet"] = settings

    def children() -> list[ChildSpec]:
        return [
            ChildSpec(
                "names",
                NamePool,
                kwargs={
                    "source": name_source,
                    "chunk_size": chunk_size,
                    "state_path": path / NAMES_STATE,
                    "clock": clock,
                    "reap_interval": reap_interval,
                    **names_options,
                },
            ),
            ChildSpec(
                "agents",
                AgentPool,
                kwargs={"idle_ttl": idle_ttl, "max_live": max_live, "sweep_interval": sweep_interval, "clock": clock,
                        "factory": agent_factory},
            ),
            ChildSpec(
                "locks", LockSupervisor, kwargs={"check_interval": check_interval, "clock": clock, **locks_options}
            ),
            ChildSpec(
                "workers",
                Supervisor,
                kwargs={"max_restarts": WORKERS_MAX_RESTARTS, "max_seconds": WORKERS_MAX_SECONDS, "clock": clock},
            ),
        ]
    with _claims_lock:
        earlier = _claims.get(path)
        if earlier is not None and _has_ended(earlier[1]):
            if earlier[2] is not None:
                earlier[2].stop(leave=False)  # its pool is gone; this tree joins with the same token
            earlier[0].release()
            del _claims[path]
        claim = StateDirClaim(path)
        host = None
        try:
            if settings is not None:
                from actors.fleet._hosts import FleetHost, load_token

                # After the state dir's lock: the token proves this is the same daemon again.
                host = FleetHost(settings, token=load_token(path))
                host.start()
                names_options["fleet"] = host
            root = Supervisor.start(
                children(), strategy=Strategy.ONE_FOR_ONE, max_restarts=max_restarts, max_seconds=max_seconds,
                clock=clock,
            )
        except BaseException as error:
            if host is not None:
                host.stop(leave=True)
            claim.release()
            cause = error.__cause__ if isinstance(error, StartError) else None
            if isinstance(cause, FleetUnavailable | StateDirInUse):
                raise cause from error
            raise
        _claims[path] = (claim, root, host)
    tree = Tree(root, path, claim, fleet=host)
    if serve:
        _serve(tree)
    return tree


def _serve(tree: Tree) -> None:
    """Serve `tree` on its state dir's socket, as the daemon does; a failure stops the tree."""
    from actors.daemon._client import SOCKET_NAME
    from actors.daemon._gateway import Gateway

    def shutdown() -> None:  # `tree.shutdown` from a worker: the graceful stop of the whole tree
        threading.Thread(target=tree.stop, name="tree-shutdown", daemon=True).start()

    gateway = Gateway(tree, tree.state_dir / SOCKET_NAME, on_shutdown=shutdown)
    try:
        gateway.start()
    except BaseException:
        tree.stop()
        raise
    tree.gateway = gateway


def _has_ended(root: pykka.ActorRef[Any]) -> bool:
    """True once a root supervisor has stopped for good (its children stopped before it)."""
    actor = root._actor_weakref()
    return actor is None or actor._terminated.is_set()
