"""OTP supervisors for pykka actors.

    sup = Supervisor.start(
        [ChildSpec("db", Database), ChildSpec("web", WebServer, restart=Restart.TRANSIENT)],
        strategy=Strategy.REST_FOR_ONE, max_restarts=3, max_seconds=5.0,
    )
    web = Handle(sup, "web").proxy()     # stays valid across restarts
    web.serve("/").get(timeout=5)
    sup.stop()                           # children stop in reverse order

The supervisor is a small state machine over `_ChildRecord`s: `_start` starts one
child, `_terminate` stops one within its grace, `_on_child_exit` decides what an exit
means (`should_restart`, `restart_targets`, `RestartIntensity` from `_spec`). A crash
reaches it as a message from the dying child's thread, off every call path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import pykka
from pykka import messages as pykka_messages
from pykka._envelope import Envelope

from supervision._actor import ExitReason, SupervisedActor, log_crash, supervised_class
from supervision._clock import Clock, SystemClock
from supervision._directory import Directory
from supervision._errors import (
    AlreadyPresent,
    AlreadyStarted,
    BadCall,
    ChildNotFound,
    ChildRunning,
    StartError,
    UnknownMessage,
    describe,
)
from supervision._events import emit
from supervision._future import AwaitableFuture
from supervision._spec import (
    ChildInfo,
    ChildSpec,
    Restart,
    RestartIntensity,
    Strategy,
    restart_targets,
    should_restart,
)

__all__ = ["RestartIntensityExceeded", "Supervisor"]

_yield_cpu = getattr(os, "sched_yield", lambda: None)


class RestartIntensityExceeded(Exception):
    """A supervisor gave up: too many restarts in its window. Its parent sees a crash."""


@dataclass(slots=True)
class _ChildExited:
    child_id: str
    ref: pykka.ActorRef[Any]
    reason: ExitReason
    log: Any = None  # the incarnation's bound logger, for its crash report
    label: str = ""

    def report(self, outcome: str = "") -> None:
        """One record per exit: the crash report (ERROR) or normal exit, and what was done."""
        error = self.reason.exception
        if self.reason.is_crash and error is not None:
            log_crash(self.log, self.label, error, error.__traceback__, outcome)
        elif outcome.startswith("restarted"):
            self.log.warning("{}: {} exited normally", outcome, self.label)
        else:
            self.log.debug("{}: {} exited normally", outcome or "no action", self.label)


@dataclass(slots=True)
class _RetryRestart:
    child_ids: list[str]


@dataclass(slots=True)
class _ChildRecord:
    spec: ChildSpec
    actor: SupervisedActor | None = None
    ref: pykka.ActorRef[Any] | None = None
    incarnations: int = 0

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def restarts(self) -> int:
        return max(0, self.incarnations - 1)

    @property
    def is_running(self) -> bool:
        # A stopped incarnation whose exit notice is still queued is not running.
        return self.ref is not None and not self.ref.actor_stopped.is_set()

    @property
    def running_ref(self) -> pykka.ActorRef[Any] | None:
        return self.ref if self.is_running else None


def _validate_children(children: Any) -> list[ChildSpec]:
    if not isinstance(children, list | tuple):
        raise TypeError(f"children must be a list of ChildSpec, not {type(children).__name__}")
    seen: set[str] = set()
    for spec in children:
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"children must be ChildSpec instances, got {spec!r}")
        if spec.id in seen:
            raise ValueError(f"duplicate child id {spec.id!r}")
        seen.add(spec.id)
    return list(children)


class Supervisor(SupervisedActor):
    """Starts, watches and restarts children by OTP's rules.

    `Supervisor.start(children, *, strategy, max_restarts, max_seconds, clock)` returns
    once every child runs, or raises `StartError` after stopping those it started.
    """

    is_supervisor: ClassVar[bool] = True

    def __init__(
        self,
        children: list[ChildSpec] | None = None,
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        specs = _validate_children([] if children is None else children)
        try:
            self.strategy = Strategy(strategy)
        except ValueError:
            raise ValueError(f"unknown strategy {strategy!r}") from None
        self._intensity = RestartIntensity(max_restarts, max_seconds)
        self._clock: Clock = clock if clock is not None else SystemClock()
        super().__init__()
        self._records: dict[str, _ChildRecord] = {spec.id: _ChildRecord(spec) for spec in specs}
        self._directory = Directory(str(self))
        # Where this supervisor sits in its tree ("" at the top, "locks" below the root):
        # its parent sets it before starting it, and events name children by it.
        self._tree_path = ""

    # -- lifecycle ------------------------------------------------------------------------

    def on_start(self) -> None:
        started: list[_ChildRecord] = []
        for record in list(self._records.values()):
            try:
                self._start(record)
            except StartError:
                for done in reversed(started):
                    self._terminate(done)
                self._directory.close()
                raise
            started.append(record)

    def on_stop(self) -> None:
        self._shut_down()

    def on_failure(self, *exc_info: Any) -> None:
        # Never two live copies of a subtree: our children go before our parent restarts us.
        self._shut_down()

    def _shut_down(self) -> None:
        # Closed first: handles waiting below us then wait for our parent's decision
        # instead of reading "not running" into each child we stop on the way out.
        self._directory.close()
        self._terminate_all()

    # -- starting and stopping one child -----------------------------------------------------

    def _start(self, record: _ChildRecord, *, is_reported: bool = False) -> pykka.ActorRef[Any]:
        """Start `record`'s next incarnation (`is_reported`: its exit report says so already)."""
        spec = record.spec
        kwargs = dict(spec.kwargs or {})
        if spec.is_supervisor:
            kwargs.setdefault("clock", self._clock)  # a tree shares one notion of time
        try:
            actor = supervised_class(spec.actor_class)(*spec.args, **kwargs)
        except BaseException as error:  # SystemExit in a constructor is a failed start, not ours
            raise StartError(f"child {spec.id!r} failed to start: {describe(error)}") from error
        self_ref = self.actor_ref
        directory = self._directory
        path = self._child_path(spec.id)
        actor._supervision_.path = path
        if isinstance(actor, Supervisor):
            actor._tree_path = path

        def on_exit(ref: pykka.ActorRef[Any], reason: ExitReason) -> None:
            directory.exiting(spec.id, ref)
            error = reason.exception
            emit("child_exited", path, reason=reason.kind, error=None if error is None else repr(error))
            exited = _ChildExited(spec.id, ref, reason, actor._supervision_.log, actor._supervision_label())
            try:
                self_ref.tell(exited)
            except pykka.ActorDeadError:
                exited.report(f"child {spec.id} not restarted (its supervisor is gone)")

        # Calls that reached the last incarnation too late go first into the new inbox:
        # the new incarnation handles them right after on_start, with no extra hop.
        directory.hand_over(spec.id, actor.actor_ref)
        try:
            ref = actor._supervision_launch(child_id=spec.id, incarnation=record.incarnations, exit_listener=on_exit)
        except StartError as error:
            raise StartError(f"child {spec.id!r} failed to start: {error.__cause__ or error!r}") from (error.__cause__ or error)
        record.actor, record.ref = actor, ref
        record.incarnations += 1
        child_directory = actor._directory if isinstance(actor, Supervisor) else None
        self._directory.update(spec.id, ref=ref, pending=False, directory=child_directory)
        emit("child_started", path, incarnation=record.incarnations - 1, is_supervisor=spec.is_supervisor)
        if record.incarnations > 1:
            emit("child_restarted", path, restarts=record.restarts)
            if not is_reported:
                self._supervision_.log.warning("restarted child {} (restart {})", spec.id, record.restarts)
        return ref

    def _child_path(self, child_id: str) -> str:
        return f"{self._tree_path}/{child_id}" if self._tree_path else child_id

    def _terminate(self, record: _ChildRecord, *, pending: bool = False) -> None:
        """Stop `record`'s incarnation gracefully within its grace, or abandon it."""
        actor, ref = record.actor, record.ref
        record.actor = record.ref = None
        self._directory.update(record.id, ref=None, pending=pending)
        if actor is None or ref is None:
            return
        # Straight into the inbox: a stop sent to a stopping actor is simply answered.
        ref.actor_inbox.put(Envelope(pykka_messages._ActorStop(), reply_to=None))
        grace = record.spec.shutdown
        if not actor._supervision_.terminated.wait(grace):
            self._supervision_.log.warning("child {} did not stop within {}s; abandoned", record.id, grace)
            actor._supervision_abandon()

    def _terminate_all(self) -> None:
        for record in reversed(list(self._records.values())):
            if record.is_running:
                self._terminate(record)

    # -- what an exit means ------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _ChildExited):
            return self._on_child_exit(message)
        if isinstance(message, _RetryRestart):
            return self._restart_in_order(message.child_ids)
        raise UnknownMessage(f"Supervisor does not handle {describe(message)}")

    def _on_child_exit(self, exited: _ChildExited) -> None:
        # Reported once the decision is carried out (one record: what happened and what
        # was done), so the report is not on the restart's path.
        outcome = f"child {exited.child_id}: its supervisor failed while acting on the exit"
        try:
            outcome = self._apply_exit(exited)
            if outcome.startswith("restarted"):
                # Callers waiting for the new incarnation go first: on a busy (or single)
                # CPU the report would otherwise delay their answers by its formatting.
                _yield_cpu()
        except RestartIntensityExceeded:
            outcome = f"child {exited.child_id}: too many restarts, giving up"
            raise
        finally:
            exited.report(outcome)

    def _apply_exit(self, exited: _ChildExited) -> str:
        """Carry out what an exit means; returns what was done, for the report."""
        record = self._records.get(exited.child_id)
        if record is None or record.ref is not exited.ref:
            return f"child {exited.child_id} (an incarnation already replaced or stopped)"
        record.actor = record.ref = None
        crashed = exited.reason.is_crash
        if not should_restart(record.spec.restart, crashed=crashed):
            if record.spec.restart is Restart.TEMPORARY:
                self._forget(record.id)
            else:
                self._directory.update(record.id, ref=None, pending=False)
            return f"child {record.id} not restarted ({record.spec.restart.value})"
        self._count_restart(f"child {record.id!r} exited ({exited.reason.kind})")
        order = list(self._records)
        targets = restart_targets(self.strategy, order, record.id)
        for child_id in targets:
            self._directory.update(child_id, ref=self._records[child_id].ref, pending=True)
        for child_id in reversed(targets):
            sibling = self._records[child_id]
            if sibling.is_running:
                self._terminate(sibling, pending=True)
            if sibling.spec.restart is Restart.TEMPORARY and child_id != record.id:
                self._forget(child_id)
        self._restart_in_order([child_id for child_id in targets if child_id in self._records], reported=record.id)
        if not record.is_running:
            return f"restart of child {record.id} failed, trying again"
        # Worded as the WARNING of other restarts ("restarted child ..."): one record.
        return f"restarted child {record.id} (restart {record.restarts})"

    def _restart_in_order(self, child_ids: list[str], reported: str | None = None) -> None:
        """Start `child_ids` (one strategy round) in order; a failure retries the whole round.

        As OTP (supervisor_SUITE `one_for_all_other_child_fails_restart`): when one start
        fails, the children this round already started are stopped again, in reverse order,
        and the round is tried again from a message to ourselves. Each failed attempt counts
        as a restart, so a child that never starts escalates as usual.
        """
        started: list[_ChildRecord] = []
        for child_id in child_ids:
            record = self._records.get(child_id)
            if record is None or record.is_running:
                continue
            try:
                self._start(record, is_reported=child_id == reported)
            except StartError as error:
                self._supervision_.log.error("restart of child {} failed: {}", child_id, error)
                for sibling in reversed(started):
                    self._terminate(sibling, pending=True)
                for later in child_ids:
                    if later in self._records:
                        self._directory.update(later, ref=None, pending=True)
                self._count_restart(f"restart of child {child_id!r} failed")
                self.actor_ref.tell(_RetryRestart(child_ids))
                return
            started.append(record)

    def _count_restart(self, why: str) -> None:
        if self._intensity.add(self._clock.monotonic()):
            return
        message = (
            f"{self._supervision_label()}: more than {self._intensity.max_restarts} restarts within "
            f"{self._intensity.max_seconds}s (last: {why}); stopping all children and giving up"
        )
        self._supervision_.log.error(message)
        emit(
            "intensity_exceeded",
            self._tree_path,
            max_restarts=self._intensity.max_restarts,
            max_seconds=self._intensity.max_seconds,
            last=why,
        )
        self._shut_down()
        raise RestartIntensityExceeded(message)

    def _forget(self, child_id: str) -> None:
        self._records.pop(child_id, None)
        self._directory.remove(child_id)

    # -- the dynamic child API (errors go to the caller, never crash us) -----------------------

    def _record(self, child_id: Any) -> _ChildRecord:
        if not isinstance(child_id, str):
            raise BadCall(f"child id must be a str, not {type(child_id).__name__}")
        record = self._records.get(child_id)
        if record is None:
            raise ChildNotFound(f"{self._supervision_label()} has no child {describe(child_id)}")
        return record

    def which_children(self) -> list[ChildInfo]:
        """Every child, in the order its spec was added."""
        return [
            ChildInfo(record.id, record.running_ref, record.restarts, record.spec.is_supervisor, record.spec.restart)
            for record in self._records.values()
        ]

    def count_children(self) -> dict[str, int]:
        """OTP's counts: `specs`, `active`, `supervisors`, `workers`."""
        records = list(self._records.values())
        supervisors = sum(1 for record in records if record.spec.is_supervisor)
        return {
            "specs": len(records),
            "active": sum(1 for record in records if record.is_running),
            "supervisors": supervisors,
            "workers": len(records) - supervisors,
        }

    def start_child(self, spec: ChildSpec) -> Any:
        """Add and start a child; `AlreadyStarted` / `AlreadyPresent` / `StartError`."""
        if not isinstance(spec, ChildSpec):
            raise BadCall(f"start_child takes a ChildSpec, not {type(spec).__name__}")
        existing = self._records.get(spec.id)
        if existing is not None:
            if existing.is_running:
                raise AlreadyStarted(f"child {spec.id!r} is already running")
            raise AlreadyPresent(f"child {spec.id!r} is present but stopped (delete_child it first)")
        record = self._records[spec.id] = _ChildRecord(spec)
        try:
            return self._start(record)
        except StartError as error:
            self._forget(spec.id)
            return _failed(error)

    def terminate_child(self, child_id: str) -> None:
        """Stop a child (within its grace); keep its spec unless it is temporary."""
        record = self._record(child_id)
        if record.is_running:
            self._terminate(record)
        if record.spec.restart is Restart.TEMPORARY:
            self._forget(record.id)

    def restart_child(self, child_id: str) -> Any:
        """Start a stopped child again from its spec (`ChildRunning` if it runs)."""
        record = self._record(child_id)
        if record.is_running:
            raise ChildRunning(f"child {child_id!r} is running")
        try:
            return self._start(record)
        except StartError as error:
            self._directory.update(record.id, ref=None, pending=False)
            return _failed(error)

    def delete_child(self, child_id: str) -> None:
        """Forget a stopped child's spec (`ChildRunning` if it runs)."""
        record = self._record(child_id)
        if record.is_running:
            raise ChildRunning(f"child {child_id!r} is running")
        self._forget(child_id)

    def whereis(self, child_id: str) -> pykka.ActorRef[Any] | None:
        """The child's current incarnation, or None while it is not running."""
        return self._record(child_id).running_ref

    def child_ids(self) -> list[str]:
        return list(self._records)

    @classmethod
    def default_shutdown(cls, args: Iterable[Any], kwargs: dict[str, Any]) -> float | None:
        return None


def _failed(error: BaseException) -> pykka.Future[Any]:
    """A reply that raises `error` without crashing the supervisor (it is not a ClientError)."""
    future: pykka.Future[Any] = AwaitableFuture()
    future.set_exception((type(error), error, error.__traceback__))
    return future
