"""Stable addresses for supervised children, across restarts and nested supervisors.

    names = Handle(root_ref, "names").proxy()
    names.checkout_name().get(timeout=5)      # reaches whichever incarnation runs now
    Handle(root_ref, "locks/worker-3").ask("status")

Resolving sends no message to the supervisor: the handle reads the supervisor's
published `Directory` and caches the incarnation it found while that one lives.
A call that never reached a handler (the actor died or was restarting) is parked in
the child's directory slot and handed to the next incarnation (see `_directory`); a
call whose handler raised is not retried. `proxy()` follows `pykka.traversable`
attributes, as a pykka proxy does.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import time
from collections.abc import Generator
from typing import Any

import pykka
from pykka import messages as pykka_messages
from pykka._envelope import Envelope

from supervision._actor import NoSuchAttribute, Undelivered
from supervision._directory import Directory
from supervision._errors import ChildNotFound
from supervision._future import AwaitableFuture

__all__ = ["Handle"]


def _directory_of(ref: pykka.ActorRef[Any]) -> Directory | None:
    actor = ref._actor_weakref()
    directory = getattr(actor, "_directory", None)
    return directory if isinstance(directory, Directory) else None


class _NestedSupervisorGone(Exception):
    """A supervisor inside the path stopped while we looked; walk again from the root."""


class Handle:
    """A stable address: a supervisor and a child path (`"locks/worker-3"`)."""

    def __init__(self, supervisor_ref: pykka.ActorRef[Any], path: str) -> None:
        if not isinstance(supervisor_ref, pykka.ActorRef):
            raise TypeError(f"Handle needs a supervisor ActorRef, not {type(supervisor_ref).__name__}")
        if not isinstance(path, str):
            raise TypeError(f"Handle path must be a str, not {type(path).__name__}")
        parts = path.split("/")
        if not path or any(not part for part in parts):
            raise ValueError(f"invalid handle path {path!r}")
        directory = _directory_of(supervisor_ref)
        if directory is None and supervisor_ref.is_alive():
            raise TypeError(f"{supervisor_ref} is not a Supervisor")
        self.supervisor_ref = supervisor_ref
        self.path = path
        self._parts = parts
        self._root = directory
        self._cached: pykka.ActorRef[Any] | None = None
        self._proxy: _HandleProxy | None = None
        # The directory and id of the child itself, once found: where late calls park.
        self._leaf: tuple[Directory, str] | None = None

    def __repr__(self) -> str:
        return f"Handle({self.supervisor_ref}, {self.path!r})"

    # -- resolving --------------------------------------------------------------------------

    def ref(self, timeout: float | None = 5.0) -> pykka.ActorRef[Any]:
        """The current incarnation; waits up to `timeout` real seconds for a pending restart."""
        cached = self._cached
        if cached is not None and not cached.actor_stopped.is_set():
            return cached
        return self._resolve(None if timeout is None else time.monotonic() + timeout)

    def current(self) -> pykka.ActorRef[Any] | None:
        """The running incarnation now, or None; never waits, never raises."""
        cached = self._cached
        if cached is not None and not cached.actor_stopped.is_set():
            return cached
        try:
            return self._resolve(time.monotonic())
        except ChildNotFound:
            return None

    def _resolve(self, deadline: float | None) -> pykka.ActorRef[Any]:
        while True:
            try:
                return self._resolve_once(deadline)
            except _NestedSupervisorGone as gone:
                # The supervisor is still on its way out; its parent decides once it is
                # gone. Wait for a change in the parent's directory, then walk again.
                parent, child_id = gone.args
                with parent.condition:
                    slot = parent.slots.get(child_id)
                    if slot is not None and slot.ref is not None and not slot.ref.actor_stopped.is_set():
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            raise ChildNotFound(f"{self.path!r}: {child_id!r} did not come back in time") from None
                        parent.condition.wait(0.05 if remaining is None else min(remaining, 0.05))

    def _resolve_once(self, deadline: float | None) -> pykka.ActorRef[Any]:
        directory = self._root
        if directory is None:
            raise ChildNotFound(f"{self.path!r}: supervisor {self.supervisor_ref} is not running")
        ref: pykka.ActorRef[Any] | None = None
        parent_directory = directory
        last = len(self._parts) - 1
        for depth, part in enumerate(self._parts):
            where = "/".join(self._parts[: depth + 1])
            with directory.condition:
                while True:
                    if not directory.alive:
                        if depth > 0:
                            raise _NestedSupervisorGone(parent_directory, self._parts[depth - 1])
                        raise ChildNotFound(f"{where!r}: its supervisor has stopped")
                    slot = directory.slots.get(part)
                    if slot is None:
                        raise ChildNotFound(f"no child {where!r}")
                    if depth == last:
                        self._leaf = (directory, part)
                    ref = slot.ref
                    if ref is not None and not ref.actor_stopped.is_set():
                        break
                    if not slot.pending and ref is None:
                        raise ChildNotFound(f"child {where!r} is not running")
                    # A restart is pending, or the incarnation is ending and its
                    # supervisor has not decided yet: wait for the next change.
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise ChildNotFound(f"child {where!r} did not come back in time")
                    directory.condition.wait(remaining if remaining is None else min(remaining, 0.5))
                next_directory = slot.directory
            if depth < len(self._parts) - 1:
                if next_directory is None:
                    raise ChildNotFound(f"{where!r} is not a supervisor, so {self.path!r} does not exist")
                parent_directory, directory = directory, next_directory
        assert ref is not None
        self._cached = ref
        return ref

    # -- calling ------------------------------------------------------------------------------

    def proxy(self) -> _HandleProxy:
        """A proxy whose calls go to the current incarnation each time (futures back).

        A call made while a restart is pending is sent when the caller waits on its
        future (`get()`), as the contract allows; otherwise it is sent at once.
        """
        if self._proxy is None:
            self._proxy = _HandleProxy(self)
        return self._proxy

    def ask(self, message: Any, timeout: float | None = None) -> Any:
        """Send `message` and wait for the reply; `timeout` also covers a pending restart."""
        return _HandleFuture(self, message).get(timeout=timeout)

    def ask_future(self, message: Any) -> pykka.Future[Any]:
        """`ask` without waiting."""
        return _HandleFuture(self, message)

    def is_gone(self) -> bool:
        """True once the handle's own supervisor has stopped: nothing will ever answer."""
        return self._root is None or not self._root.alive

    def tell(self, message: Any) -> None:
        """Deliver to the running incarnation; dropped quietly while none runs."""
        ref = self.current()
        if ref is None:
            return
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            pass


_UNSENT, _SENT, _PARKED = "unsent", "sent", "parked"


class _HandleFuture(AwaitableFuture[Any]):
    """The reply to a call through a `Handle`; a call no handler got goes to the next incarnation.

    The future itself is the envelope's `reply_to` (one future per call, as pykka's
    proxies). A call that reaches an incarnation too late, or is made while a restart is
    pending, is parked in the child's directory slot and handed to the next incarnation
    by its supervisor (`Directory.park`), so the caller wakes once, with the answer.
    """

    def __init__(self, handle: Handle | None = None, message: Any = None) -> None:
        super().__init__()
        self._handle = handle
        self._message = message
        self._state = _UNSENT
        if handle is not None:
            ref = handle.current()
            if ref is not None:
                self.deliver(ref)
            else:
                self._park_undelivered()

    # -- as a parked call (see supervision._directory) ------------------------------------

    def deliver(self, ref: pykka.ActorRef[Any]) -> None:
        self._state = _SENT
        # A closed inbox rejects at once: the call is parked again or answered Undelivered.
        ref.actor_inbox.put(Envelope(self._message, reply_to=self))

    def give_back(self) -> None:
        """No incarnation will come: wake the caller, whose `get()` then decides."""
        self._state = _UNSENT
        error = Undelivered("no incarnation to deliver the call to")
        error.reply_to = self
        try:
            self.set_exception((Undelivered, error, None))
        except queue.Full:
            pass

    def _park_undelivered(self) -> bool:
        """Called when no handler got this call: park it for the next incarnation if one comes."""
        leaf = self._handle._leaf if self._handle is not None else None
        if leaf is None:
            return False
        directory, child_id = leaf
        self._state = _PARKED
        if directory.park(child_id, self):
            return True
        self._state = _UNSENT
        return False

    # -- waiting --------------------------------------------------------------------------

    def _claim_send(self) -> bool:
        """True for the one waiter that sends an unsent call (several may wait on it)."""
        with self._condition:
            is_sender = self._state is _UNSENT and self._result is None
            if is_sender:
                self._state = _SENT
        return is_sender

    def _take_back_undelivered(self, error: Undelivered) -> bool:
        """True if `error` is this call's own `Undelivered`: clear it so the call goes again."""
        if error.reply_to is not self:
            return False  # the handler ran and raised it: not ours to retry
        with self._condition:
            result = self._result
            if result is not None and result.exc_info is not None and result.exc_info[1] is error:
                self._result = None
                self._state = _UNSENT
        return True

    def __await__(self) -> Generator[Any, None, Any]:
        handle = self._handle
        if handle is None:
            return (yield from super().__await__())
        while True:
            if self._state is _UNSENT:
                ref = handle.current()
                if ref is None:
                    # Only while a restart is pending: the wait for the directory to change
                    # is a blocking one, so it runs on a worker thread (never per call).
                    ref = yield from asyncio.to_thread(handle.ref, None).__await__()
                if self._claim_send():
                    self.deliver(ref)
            yield from self._wait_async()
            try:
                return self._outcome()
            except Undelivered as error:
                if not self._take_back_undelivered(error):
                    raise

    def get(self, *, timeout: float | None = None) -> Any:
        handle = self._handle
        if handle is None:  # made by pykka's own map()/join() helpers
            return super().get(timeout=timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._state is _UNSENT:
                # Resolved with no lock held (it may wait); one sender wins the send.
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                ref = handle.ref(timeout=remaining)
                if self._claim_send():
                    self.deliver(ref)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return super().get(timeout=remaining)
            except Undelivered as error:
                if not self._take_back_undelivered(error):
                    raise
            except pykka.Timeout:
                leaf = handle._leaf
                if self._state is _PARKED and leaf is not None and leaf[0].unpark(leaf[1], self):
                    self._state = _UNSENT
                    raise ChildNotFound(f"child {handle.path!r} did not come back in time") from None
                raise


class _HandleProxy:
    """Method calls become asks to the current incarnation; `.defer()` makes them tells.

    Traversable attributes (`pykka.traversable`) give nested proxies, as pykka's do.
    """

    def __init__(self, handle: Handle, attr_path: tuple[str, ...] = ()) -> None:
        self._handle = handle
        self._attr_path = attr_path
        self._members: dict[str, _HandleMethod | _HandleProxy] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        member = self._members.get(name)
        if member is not None:
            return member
        attr_path = (*self._attr_path, name)
        kind = _kind_of(self._handle.current(), attr_path)
        if kind is _VALUE:
            return _HandleFuture(self._handle, pykka_messages.ProxyGetAttr(attr_path=attr_path))
        if kind is _TRAVERSABLE:
            member = _HandleProxy(self._handle, attr_path)
        else:
            member = _HandleMethod(self._handle, attr_path)
        self._members[name] = member
        return member

    def __repr__(self) -> str:
        suffix = f", attr_path={self._attr_path!r}" if self._attr_path else ""
        return f"<HandleProxy for {self._handle!r}{suffix}>"


_MISSING = object()
_METHOD, _TRAVERSABLE, _VALUE = "method", "traversable", "value"


def _kind_of(ref: pykka.ActorRef[Any] | None, attr_path: tuple[str, ...]) -> str:
    """How a proxy treats `attr_path` on the running incarnation (a method while none runs).

    Looked up without running properties, as pykka's proxies introspect.
    """
    if ref is None:
        return _METHOD
    actor = ref._actor_weakref()
    if actor is None:
        return _METHOD
    label = ref.actor_class.__name__
    parent: Any = actor
    for name in attr_path[:-1]:
        parent = getattr(parent, name, _MISSING)
        if parent is _MISSING:
            raise NoSuchAttribute(f"{label} has no attribute {'.'.join(attr_path)!r}")
    try:
        attribute = inspect.getattr_static(parent, attr_path[-1])
    except AttributeError:
        raise NoSuchAttribute(f"{label} has no attribute {'.'.join(attr_path)!r}") from None
    if isinstance(attribute, staticmethod | classmethod) or callable(attribute):
        return _METHOD  # pykka's order: a callable is a method even when traversable
    if _is_traversable(attribute):
        return _TRAVERSABLE
    return _VALUE  # plain values and properties are read with ProxyGetAttr


def _is_traversable(attribute: Any) -> bool:
    return getattr(attribute, "_pykka_traversable", False) is True or getattr(attribute, "pykka_traversable", False) is True


class _HandleMethod:
    __slots__ = ("_attr_path", "_handle")

    def __init__(self, handle: Handle, attr_path: tuple[str, ...]) -> None:
        self._handle = handle
        self._attr_path = attr_path

    def __call__(self, *args: Any, **kwargs: Any) -> pykka.Future[Any]:
        return _HandleFuture(
            self._handle, pykka_messages.ProxyCall(attr_path=self._attr_path, args=args, kwargs=kwargs)
        )

    def defer(self, *args: Any, **kwargs: Any) -> None:
        self._handle.tell(pykka_messages.ProxyCall(attr_path=self._attr_path, args=args, kwargs=kwargs))
