"""Erlang/OTP-style supervision for pykka actors.

    from supervision import ChildSpec, Handle, Supervisor

    root = Supervisor.start([ChildSpec("worker", Worker)])
    worker = Handle(root, "worker").proxy()
    worker.do_work().get(timeout=5)   # survives restarts of "worker"
    root.stop()

In an asyncio task, every such future is awaitable without blocking the loop
(`total = await worker.do_work()`, `await gather(f1, f2)`); `subscribe()` streams what
the tree does (`Event`s: child_started, child_exited, child_restarted, ...).

Modules: `_actor` (crash semantics, `kill`), `_supervisor` (strategies, intensity,
dynamic children), `_spec` (specs and pure decisions), `_handle` (stable addresses),
`_future` (awaitable futures, `gather`), `_events` (the event bus), `_clock` (clocks
and timers), `_snapshot` (durable state), `testing` (pytest plugin).
"""

from supervision._actor import (
    DeferredReply,
    ExitReason,
    Killed,
    SupervisedActor,
    Undelivered,
    abandoned_actors,
    kill,
    supervised_class,
)
from supervision._clock import (
    Clock,
    ManualClock,
    SystemClock,
    Timer,
    send_after,
    send_interval,
)
from supervision._errors import (
    ActorCrashed,
    AlreadyPresent,
    AlreadyStarted,
    BadCall,
    ChildNotFound,
    ChildRunning,
    ClientError,
    NoSuchAttribute,
    StartError,
    StorageError,
    UnknownMessage,
)
from supervision._events import Event, Subscription, emit, subscribe
from supervision._future import AwaitableFuture, gather
from supervision._handle import Handle
from supervision._snapshot import SnapshotError, SnapshotStore, make_private_directory, quarantine_file
from supervision._spec import ChildInfo, ChildSpec, Restart, Strategy
from supervision._supervisor import RestartIntensityExceeded, Supervisor

__all__ = [
    "ActorCrashed",
    "AlreadyPresent",
    "AlreadyStarted",
    "AwaitableFuture",
    "BadCall",
    "ChildInfo",
    "ChildNotFound",
    "ChildRunning",
    "ChildSpec",
    "ClientError",
    "Clock",
    "DeferredReply",
    "Event",
    "ExitReason",
    "Handle",
    "Killed",
    "ManualClock",
    "NoSuchAttribute",
    "Restart",
    "RestartIntensityExceeded",
    "SnapshotError",
    "SnapshotStore",
    "StartError",
    "StorageError",
    "Strategy",
    "Subscription",
    "SupervisedActor",
    "Supervisor",
    "SystemClock",
    "Timer",
    "Undelivered",
    "UnknownMessage",
    "abandoned_actors",
    "emit",
    "gather",
    "kill",
    "send_after",
    "send_interval",
    "subscribe",
    "make_private_directory",
    "quarantine_file",
    "supervised_class",
]
