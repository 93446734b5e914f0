"""Crash semantics for pykka actors ("let it crash").

`SupervisedActor` is a `pykka.ThreadingActor` whose own loop turns every escaping
exception into a crash, never a process-wide stop::

    class Counter(SupervisedActor):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def add(self, n: int) -> int:
            if n < 0:
                raise BadCall("n must be >= 0")   # a ClientError: the caller's fault
            self.count += n
            return self.count

    ref = Counter.start()          # synchronous: on_start has run
    ref.proxy().add(2).get()       # 2
    kill(ref)                      # crashes at its next message boundary

A supervisor runs any other `pykka.ThreadingActor` subclass as a class derived from
it and this one (`supervised_class`), so pykka itself is never patched.

Rules, in one place (see the contract, "Crash semantics"): an exception escaping a
handler (ask or tell) or `on_start` stops the actor, runs `on_failure` (not
`on_stop`), hands the ask its original exception, fails queued asks with an
`ActorDeadError` (`Undelivered`, safe to retry) and drops queued tells with a
WARNING. A `ClientError` (or `StorageError`) is returned to the caller and the actor
keeps running.

Outside those rules it behaves as pykka: the library's per-actor state is one slot,
`_supervision_` (a user's `self._thread` or `self._log` are theirs), an unknown message
gets None and a WARNING, a missing attribute is `NoSuchAttribute` (also an
`AttributeError`), reading an attribute that holds a future answers that future.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import queue
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self

import pykka
from loguru import logger
from pykka import messages as pykka_messages
from pykka._envelope import Envelope

from supervision._errors import (
    ActorCrashed,
    BadCall,
    ClientError,
    NoSuchAttribute,
    StorageError,
    StartError,
    describe,
)
from supervision._future import AwaitableFuture

__all__ = [
    "DeferredReply",
    "ExitReason",
    "Killed",
    "NoSuchAttribute",
    "SupervisedActor",
    "Undelivered",
    "abandoned_actors",
    "kill",
    "supervised_class",
]


class Undelivered(pykka.ActorDeadError):
    """An ask that never reached a handler: its actor stopped first. Safe to retry."""

    reply_to: pykka.Future[Any] | None = None
    not_handled: bool = False


class Killed(Exception):
    """The crash `kill()` causes; its message is the reason given."""


@dataclass(frozen=True, slots=True)
class ExitReason:
    """How an incarnation ended: `normal` (stopped) or `crash` (with the exception)."""

    kind: str
    exception: BaseException | None = None

    @property
    def is_crash(self) -> bool:
        return self.kind == "crash"


NORMAL_EXIT = ExitReason("normal")


class _Kill:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _Inbox(queue.Queue[Envelope[Any]]):
    """pykka's inbox, plus closing (nothing is lost in a dead inbox) and a front door for kill."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.owner_name = "actor"

    def put(self, envelope: Envelope[Any], block: bool = True, timeout: float | None = None) -> None:
        """Queue `envelope`; a closed inbox rejects it (outside the mutex: see `_reject`)."""
        with self.mutex:
            if not self.closed:
                self.queue.append(envelope)
                self.unfinished_tasks += 1
                self.not_empty.notify()
                return
        # Rejecting may park a Handle's call in a directory, whose lock is taken before
        # an inbox's when calls are handed over: never hold the mutex here.
        _reject(envelope, self.owner_name)

    def put_front(self, envelope: Envelope[Any]) -> bool:
        """Queue `envelope` ahead of everything else; False if the inbox is closed."""
        with self.not_empty:
            if self.closed:
                return False
            self.queue.appendleft(envelope)
            self.unfinished_tasks += 1
            self.not_empty.notify()
            return True

    def close(self) -> list[Envelope[Any]]:
        """Refuse all further messages; return what was still queued."""
        with self.mutex:
            self.closed = True
            left = list(self.queue)
            self.queue.clear()
            return left


def _reject(envelope: Envelope[Any], owner_name: str) -> None:
    message = envelope.message
    if isinstance(message, _Kill) or (envelope.reply_to is None and isinstance(message, pykka_messages._ActorStop)):
        return  # a kill or stop for an actor already gone has nothing left to do
    if envelope.reply_to is None:
        logger.bind(actor=owner_name).warning(
            "{} is not running; dropped a message sent to it: {!r}", owner_name, _short(message)
        )
        return
    if isinstance(message, pykka_messages._ActorStop):
        _settle(envelope.reply_to, None)  # stopping a stopped actor succeeds, as in pykka
        return
    park = getattr(envelope.reply_to, "_park_undelivered", None)
    if park is not None and park():
        return  # a Handle's call, kept for the next incarnation (see _directory)
    error = Undelivered(f"{owner_name} stopped before handling the message")
    # Ties the error to this envelope: a Handle re-sends only its own undelivered call,
    # never one whose handler raised an Undelivered from a nested ask.
    error.reply_to = envelope.reply_to
    _settle(envelope.reply_to, None, (Undelivered, error, None))


def _settle(future: pykka.Future[Any], value: Any, exc_info: Any = None) -> bool:
    """Complete `future` once; False if it was already complete."""
    try:
        if exc_info is None:
            future.set(value)
        else:
            future.set_exception(exc_info)
    except queue.Full:
        return False
    return True


def _short(message: Any) -> str:
    return describe(message)


class DeferredReply(AwaitableFuture[Any]):
    """A future a handler returns to answer later (`set`/`set_exception` from any thread).

    Any `pykka.Future` works as a handler's return value; this one (as every
    `AwaitableFuture`) notifies callbacks, so the caller's reply needs no helper thread.
    """

    def set_not_handled(self, reason: str) -> None:
        """Fail with `Undelivered`: the call had no effect, so a `Handle` sends it again."""
        error = Undelivered(reason)
        error.not_handled = True
        self.set_exception((Undelivered, error, None))


def _forward(source: pykka.Future[Any], target: pykka.Future[Any]) -> None:
    try:
        value = source.get(timeout=0)
    except Undelivered as error:
        if getattr(error, "not_handled", False):
            error.reply_to = target  # declared unhandled by the actor: the caller may resend
        _settle(target, None, sys.exc_info())
    except BaseException:
        _settle(target, None, sys.exc_info())
    else:
        _settle(target, value)


# Incarnations a supervisor gave up on after their grace; they may still be running.
_abandoned: weakref.WeakSet[SupervisedActor] = weakref.WeakSet()


def abandoned_actors() -> list[SupervisedActor]:
    """Incarnations abandoned after their shutdown grace whose threads still run."""
    return [actor for actor in list(_abandoned) if actor._supervision_.thread_alive()]


ExitListener = Callable[[pykka.ActorRef[Any], ExitReason], None]

# Thread names are unique within the process, as pykka's are ("Name-7").
_thread_numbers = itertools.count()


class _Runtime:
    """The library's per-actor state, kept in one slot (`_supervision_`) of the actor.

    A user's actor class owns every other name: its `self._thread`, `self._log` or
    `self.exit_reason` never meet ours.
    """

    __slots__ = (
        "child_id",
        "exit_listeners",
        "exit_reason",
        "incarnation",
        "log",
        "path",
        "pending_replies",
        "started",
        "started_ok",
        "terminated",
        "thread",
    )

    def __init__(self) -> None:
        self.started = threading.Event()
        self.terminated = threading.Event()
        self.started_ok = False
        self.exit_reason: ExitReason | None = None
        self.exit_listeners: list[ExitListener] = []
        self.pending_replies: set[pykka.Future[Any]] = set()
        self.thread: threading.Thread | None = None
        self.child_id: str | None = None
        self.path = ""  # the supervisor path and child id ("workers/w1"), set by its supervisor
        self.incarnation = 0
        self.log: Any = logger

    def thread_alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


class _LibraryView:
    """A convenience name (`_log`, `exit_reason`, ...) over `_supervision_` that a user may take.

    Assigning the name on an instance stores the user's own value, which then wins;
    `supervised_class` hands the name to a user's class that defines it itself.
    """

    __slots__ = ("getter", "name")

    def __init__(self, getter: Callable[[Any], Any]) -> None:
        self.getter = getter
        self.name = getter.__name__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        own = instance.__dict__.get(self.name, _NOTHING)
        return self.getter(instance) if own is _NOTHING else own

    def __set__(self, instance: Any, value: Any) -> None:
        instance.__dict__[self.name] = value

    def __delete__(self, instance: Any) -> None:
        if instance.__dict__.pop(self.name, _NOTHING) is _NOTHING:
            raise AttributeError(self.name)


_NOTHING = object()

# Names SupervisedActor offers for the library's own actors; a user's class keeps its own.
_USER_NAMES = ("_log", "_label", "_thread", "_terminated", "_thread_alive", "exit_reason")


class _Proxy(pykka.ActorProxy[Any]):
    """pykka's proxy, except that a missing attribute is also a ClientError (`NoSuchAttribute`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except NoSuchAttribute:
            raise
        except AttributeError as error:
            raise NoSuchAttribute(str(error)) from None


class _Ref(pykka.ActorRef[Any]):
    """pykka's `ActorRef`, whose `proxy()` is a `_Proxy`."""

    def proxy(self) -> Any:
        return _Proxy(actor_ref=self)


class SupervisedActor(pykka.ThreadingActor):
    """A `pykka.ThreadingActor` with the supervision crash semantics.

    `start()` is synchronous: it returns once `on_start` has run, and raises
    `StartError` if it failed. Threads are daemon threads, so an abandoned
    incarnation never keeps the process alive. The library's state lives in the
    single attribute `_supervision_`; `_log`, `_label`, `_thread`, `_terminated`
    and `exit_reason` are conveniences a subclass may take over.
    """

    use_daemon_thread: ClassVar[bool] = True
    _supervision_: _Runtime

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._supervision_ = _Runtime()
        super().__init__(*args, **kwargs)
        self._actor_ref = _Ref(self)
        self.actor_inbox.owner_name = str(self)  # type: ignore[attr-defined]

    @staticmethod
    def _create_actor_inbox() -> _Inbox:
        return _Inbox()

    @staticmethod
    def _create_future() -> AwaitableFuture[Any]:
        # pykka's ActorRef.ask creates the reply future through this, on the caller's
        # thread: every ask and proxy call to a supervised actor gets an awaitable one.
        return AwaitableFuture()

    # -- conveniences for the library's own actors (a user's class may take these names) --

    @_LibraryView
    def _log(self) -> Any:
        """A loguru logger bound to this actor (child id, incarnation, urn)."""
        return self._supervision_.log

    @_LibraryView
    def _label(self) -> str:
        return self._supervision_label()

    @_LibraryView
    def _thread(self) -> threading.Thread | None:
        return self._supervision_.thread

    @_LibraryView
    def _terminated(self) -> threading.Event:
        return self._supervision_.terminated

    def _thread_alive(self) -> bool:
        return self._supervision_.thread_alive()

    @_LibraryView
    def exit_reason(self) -> ExitReason | None:
        """How this incarnation ended, or None while it runs."""
        return self._supervision_.exit_reason

    # -- starting ---------------------------------------------------------------------

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> pykka.ActorRef[Self]:
        """Start the actor and wait for its `on_start`; `StartError` if that fails."""
        return cls(*args, **kwargs)._supervision_launch()

    def _supervision_launch(
        self,
        *,
        child_id: str | None = None,
        incarnation: int = 0,
        exit_listener: ExitListener | None = None,
    ) -> pykka.ActorRef[Self]:
        state = self._supervision_
        state.child_id = child_id
        state.incarnation = incarnation
        state.log = logger.bind(
            actor=child_id or self.__class__.__name__, incarnation=incarnation, urn=self.actor_urn
        )
        if exit_listener is not None:
            state.exit_listeners.append(exit_listener)
        pykka.ActorRegistry.register(self.actor_ref)
        self._start_actor_loop()
        state.started.wait()
        if state.exit_reason is not None and state.exit_reason.is_crash and not state.started_ok:
            cause = state.exit_reason.exception
            if isinstance(cause, StartError):
                raise cause
            label = child_id or self.__class__.__name__
            raise StartError(f"{label} failed to start: {cause!r}") from cause
        return self.actor_ref

    def _start_actor_loop(self) -> None:
        state = self._supervision_
        state.thread = threading.Thread(
            target=self._actor_loop,
            name=f"{state.child_id or self.__class__.__name__}-{next(_thread_numbers)}",
            daemon=True,
        )
        state.thread.start()

    # -- the loop -----------------------------------------------------------------------

    def _actor_loop(self) -> None:
        state = self._supervision_
        try:
            try:
                self.on_start()
            except BaseException as error:
                self._supervision_crash(error, sys.exc_info()[2])
                return
            state.started_ok = True
            state.started.set()
            self._supervision_run()
        finally:
            self._supervision_teardown()

    def _supervision_run(self) -> None:
        get = self.actor_inbox.get
        stopped = self.actor_stopped
        handle = self._handle_receive
        future_type = pykka.Future
        read_attribute = pykka_messages.ProxyGetAttr
        while not stopped.is_set():
            envelope = get()
            message = envelope.message
            if message.__class__ is _Kill:
                self._supervision_crash(Killed(message.reason), None)
                return
            reply_to = envelope.reply_to
            try:
                response = handle(message)
            except (ClientError, StorageError):
                self._supervision_refuse(reply_to, message)
                continue
            except TypeError as error:
                if _is_signature_mismatch(error, self, message):
                    self._supervision_refuse(reply_to, message, BadCall(f"{_describe_call(message)}: {error}"))
                    continue
                if reply_to is not None:
                    reply_to.set_exception()
                self._supervision_crash(error, sys.exc_info()[2])
                return
            except BaseException as error:
                if reply_to is not None:
                    reply_to.set_exception()
                self._supervision_crash(error, sys.exc_info()[2])
                return
            if reply_to is not None:
                # Only what a handler returns is unwrapped: an attribute read answers the
                # future it holds, as pykka does.
                if isinstance(response, future_type) and message.__class__ is not read_attribute:
                    self._supervision_chain(response, reply_to)
                else:
                    reply_to.set(response)

    def _supervision_refuse(self, reply_to: pykka.Future[Any] | None, message: Any, error: Exception | None = None) -> None:
        if reply_to is not None:
            if error is None:
                reply_to.set_exception()
            else:
                reply_to.set_exception((type(error), error, None))
            return
        shown = error if error is not None else sys.exc_info()[1]
        self._supervision_.log.warning("ignored a message sent without reply ({!r}): {}", _short(message), shown)

    def _supervision_chain(self, response: pykka.Future[Any], reply_to: pykka.Future[Any]) -> None:
        pending = self._supervision_.pending_replies
        pending.add(reply_to)

        def done(source: pykka.Future[Any]) -> None:
            pending.discard(reply_to)
            _forward(source, reply_to)

        if isinstance(response, AwaitableFuture):
            response.add_done_callback(done)
        else:
            threading.Thread(target=lambda: done(_wait(response)), daemon=True, name="reply-forward").start()

    def _handle_receive(self, message: Any) -> Any:
        cls = message.__class__
        if cls is pykka_messages.ProxyCall:
            return self._supervision_resolve(message.attr_path, call=True)(*message.args, **message.kwargs)
        if cls is pykka_messages.ProxyGetAttr:
            return self._supervision_resolve(message.attr_path, call=False)
        if cls is pykka_messages._ActorStop:
            return self._stop()
        if cls is pykka_messages.ProxySetAttr:
            return super()._handle_receive(message)
        # pykka's default on_receive answers None with a WARNING; so do we (through loguru).
        # Not overridden on this class: in a class derived from a user's actor it would
        # shadow the user's own on_receive.
        if type(self).on_receive is pykka.Actor.on_receive:
            self._supervision_.log.warning("Unexpected message received by {}: {}", self, _short(message))
            return None
        return self.on_receive(message)

    def _supervision_resolve(self, attr_path: tuple[str, ...], *, call: bool) -> Any:
        target: Any = self
        for name in attr_path:
            if name.startswith("_"):
                raise BadCall(f"{self.__class__.__name__}.{'.'.join(attr_path)} is private")
            try:
                target = getattr(target, name)
            except AttributeError:
                raise NoSuchAttribute(f"{self.__class__.__name__} has no attribute {'.'.join(attr_path)!r}") from None
        if call and not callable(target):
            raise BadCall(f"{self.__class__.__name__}.{'.'.join(attr_path)} is not callable")
        return target

    # -- ending -------------------------------------------------------------------------

    def _stop(self) -> None:
        state = self._supervision_
        pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        try:
            self.on_stop()
        except BaseException as error:
            state.log.opt(exception=error).error("{} failed in on_stop", self._supervision_label())
            state.exit_reason = ExitReason("crash", error)
        else:
            state.log.debug("{} stopped", self._supervision_label())
            state.exit_reason = NORMAL_EXIT
        if state.pending_replies:
            # Deferred replies on_stop did not settle: never leave a caller waiting forever.
            # Not Undelivered: their handlers ran, so a Handle must not send them again.
            gone = pykka.ActorDeadError(f"{self._supervision_label()} stopped before answering")
            for reply_to in list(state.pending_replies):
                _settle(reply_to, None, (pykka.ActorDeadError, gone, None))
            state.pending_replies.clear()

    def _supervision_crash(self, error: BaseException, tb: TracebackType | None) -> None:
        state = self._supervision_
        pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        state.exit_reason = ExitReason("crash", error)
        if not state.exit_listeners:
            # On its own nobody else reports it; a supervisor logs its child's crash once
            # it has acted on it, so the report is off the restart path.
            log_crash(state.log, self._supervision_label(), error, tb)
        try:
            self.on_failure(type(error), error, tb)
        except BaseException as hook_error:
            state.log.opt(exception=hook_error).error("{} failed in on_failure", self._supervision_label())
        if state.pending_replies:
            cut_off = ActorCrashed(f"{self._supervision_label()} crashed before answering: {error!r}")
            cut_off.__cause__ = error
            for reply_to in list(state.pending_replies):
                _settle(reply_to, None, (ActorCrashed, cut_off, None))
            state.pending_replies.clear()

    def _supervision_teardown(self) -> None:
        state = self._supervision_
        if not self.actor_stopped.is_set():  # abandoned by its supervisor mid-handler
            pykka.ActorRegistry.unregister(self.actor_ref)
            self.actor_stopped.set()
        left = self.actor_inbox.close()  # type: ignore[attr-defined]
        for envelope in left:
            _reject(envelope, str(self))
        if state.exit_reason is None:
            state.exit_reason = NORMAL_EXIT
        state.started.set()  # wakes a start() waiting on a failed on_start
        state.terminated.set()
        for listener in state.exit_listeners:
            try:
                listener(self.actor_ref, state.exit_reason)
            except Exception:
                state.log.exception("exit listener failed")

    def _supervision_abandon(self) -> None:
        """Give up on this incarnation (it outlived its grace): refuse further messages."""
        _abandoned.add(self)
        pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        for envelope in self.actor_inbox.close():  # type: ignore[attr-defined]
            _reject(envelope, str(self))

    def _supervision_label(self) -> str:
        state = self._supervision_
        if state.child_id is None:
            return str(self)
        return f"{state.child_id} (incarnation {state.incarnation})"


def log_crash(log: Any, label: str, error: BaseException, tb: TracebackType | None, outcome: str = "") -> None:
    """The crash report of one incarnation: ERROR, with its traceback unless it was a kill."""
    prefix = f"{outcome}: " if outcome else ""
    if isinstance(error, Killed):
        log.error("{}{} killed: {}", prefix, label, error)
    else:
        log.opt(exception=(type(error), error, tb)).error("{}{} crashed: {!r}", prefix, label, error)


def _wait(future: pykka.Future[Any]) -> pykka.Future[Any]:
    try:
        future.get()
    except BaseException:
        pass
    return future


def _describe_call(message: Any) -> str:
    if isinstance(message, pykka_messages.ProxyCall):
        return ".".join(message.attr_path) + "()"
    return type(message).__name__


def _is_signature_mismatch(error: TypeError, actor: Any, message: Any) -> bool:
    """True when a proxy call's arguments do not fit the method (not a bug inside it)."""
    if not isinstance(message, pykka_messages.ProxyCall):
        return False
    # Arguments are bound before a method's first line runs: if they do not bind, the
    # TypeError came from the call itself, not from a bug inside the method.
    try:
        method = actor._supervision_resolve(message.attr_path, call=True)
        inspect.signature(method).bind(*message.args, **message.kwargs)
    except TypeError:
        return True
    except (ValueError, ClientError):
        return False
    return False


@functools.cache
def supervised_class(actor_class: type[pykka.ThreadingActor]) -> type[SupervisedActor]:
    """`actor_class` itself if it has the crash semantics, else a class derived from it that has.

    Names the user's class defines itself (`_log`, `exit_reason`, ...) stay the user's.
    """
    if issubclass(actor_class, SupervisedActor):
        return actor_class
    if not (isinstance(actor_class, type) and issubclass(actor_class, pykka.ThreadingActor)):
        raise TypeError(f"{actor_class!r} is not a pykka.ThreadingActor subclass")
    namespace: dict[str, Any] = {"__module__": actor_class.__module__, "__qualname__": actor_class.__qualname__}
    for name in _USER_NAMES:
        for klass in actor_class.__mro__:
            if name in vars(klass):
                namespace[name] = vars(klass)[name]
                break
    return type(actor_class.__name__, (SupervisedActor, actor_class), namespace)


def kill(ref: pykka.ActorRef[Any], reason: str = "killed") -> None:
    """Make a live actor crash from the outside (Erlang's `exit(Pid, kill)`).

    It takes effect at the actor's next message boundary, ahead of anything queued;
    a handler already running completes and its reply is delivered. A dead actor is
    left alone.
    """
    if not isinstance(ref, pykka.ActorRef):
        raise TypeError(f"kill() takes an ActorRef, not {type(ref).__name__}")
    if not isinstance(reason, str):
        raise TypeError(f"kill() reason must be a str, not {type(reason).__name__}")
    inbox = ref.actor_inbox
    if not isinstance(inbox, _Inbox):
        if not ref.is_alive():
            return
        raise TypeError(f"{ref} is a plain pykka actor; kill() needs a supervised actor")
    inbox.put_front(Envelope(_Kill(reason)))
