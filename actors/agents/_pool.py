"""The `AgentPool` actor: live AI-agent backends keyed by ``(primary, agent)``, swept on a clock.

A thin shell around the pure `AgentRegistry` (entries in recency order, the eviction
decisions): it stamps activity with its clock, runs the factory and every ``dispose()``
on daemon threads, and sweeps every ``sweep_interval``::

    def make_backend(chat_id: str, agent: str) -> AgentSession:   # anything with dispose()
        return AgentSession.connect(chat_id, agent)

    pool = AgentPool.start(idle_ttl=600.0, max_live=16, factory=make_backend).proxy()
    backend = pool.get("chat-1", "coder").get(timeout=5)   # made by make_backend on a miss
    pool.touch("chat-1", "coder").get()                    # still in use: not idle
    pool.sweep().get()                                     # ['chat-9:planner'] evicted now
    pool.close_chat("chat-1").get()                        # ['chat-1:coder'] (unless busy)
    pool.health().get()                                    # {'size': ..., 'busy': ..., ...}
    pool.dispose().get(timeout=10)                         # shutdown: everything disposed

How it works:

- **Sweep** (a `_Sweep` tick every ``sweep_interval`` on the clock, or `sweep()`): health
  probes first (``tick_health(now)``, on the pool's own thread between calls, so keep them
  quick), then the registry plans TTL evictions and then LRU evictions down to
  ``max_live``; each chosen entry's ``is_busy()`` is asked once more right before it is
  removed, and one found busy stays and is not reported. Removal is immediate; a probe,
  ``is_busy`` or planning error is logged and counted and never stops this or a later
  sweep. One handler per sweep, so sweeps never overlap. It costs O(entries) for the
  probes plus O(evicted) for the rest, and creates no object per evicted entry beyond
  its key string (docs/design.md, "The agent pool").
- **Disposal off the thread.** Evicted, replaced and closed backends go, one batch per
  sweep and reason, to up to ``_DISPOSAL_THREADS`` daemon threads; a slow ``dispose()``
  never delays `get`, `register` or `health`, and a key requested again gets a fresh
  backend. A ``dispose()`` that raises is logged and counted (``dispose_errors``); one
  that hangs holds its thread and the rest of its batch (later batches use the other
  threads). If no thread can be started, the batch waits for the next sweep or disposal.
- **Factory off the thread.** A `get` that misses, with a factory, returns a
  `DeferredReply`; concurrent gets of one key wait for the same call. A factory that raises
  or returns something without a callable ``dispose`` makes them raise `FactoryError`, and
  nothing is registered. A `register` of that key meanwhile wins: the waiters get the
  registered backend and the factory's late result is disposed.
- **`dispose()`** removes everything (busy entries too), stops the sweep timer, and answers
  once no disposal is running, or after ``DISPOSE_WAIT`` real seconds at most. The pool
  keeps working afterwards (`register`, `get` and `sweep()` still work; a factory call
  already running registers its backend when it returns) but never sweeps on its own
  again. A graceful stop (`on_stop`) does the same, waiting at most
  ``STOP_WAIT`` real seconds, and answers gets still waiting for the factory with
  `Undelivered`.

**Restart policy.** A crash (or `kill`) of the pool disposes every backend it held, and the
new incarnation starts empty: nothing leaks, nothing is disposed twice (an entry is
removed from the registry before its disposal is queued, and each backend is queued
once). `on_failure` hands the live backends to the disposal threads without waiting for
them, so the restart is not delayed; a factory call still running is abandoned and its
thread disposes whatever it returns; gets waiting for it fail with `ActorCrashed`, as the
contract says of every deferred reply cut off by a crash. A host that holds a backend it
got before the crash must `get` a fresh one. Not covered: an incarnation its supervisor
*abandons* (stuck in a probe past its shutdown grace) never runs `on_stop` or
`on_failure`, so its backends are not disposed.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pykka

from actors.agents._registry import (
    AgentKey,
    AgentRegistry,
    InvalidBackend,
    InvalidKey,
    Removed,
    SweepPlan,
    check_backend,
    is_busy,
    key_string,
    key_strings,
    validate_key,
    validate_now,
    validate_settings,
)
from actors._errors import FactoryError
from supervision import _events
from supervision import (
    Clock,
    DeferredReply,
    SupervisedActor,
    SystemClock,
    Timer,
    Undelivered,
    UnknownMessage,
    send_interval,
)
from supervision._errors import describe

__all__ = ["DISPOSE_WAIT", "STOP_WAIT", "AgentFactory", "AgentPool"]

#: ``factory(primary, agent) -> backend``; it may be slow (it runs on its own thread).
AgentFactory = Callable[[str, str], Any]

#: Real seconds `AgentPool.dispose()` waits for running disposals before it answers anyway.
DISPOSE_WAIT = 5.0
#: Real seconds a graceful stop waits for disposals: within a supervisor's default 5 s grace.
STOP_WAIT = 3.0
#: Daemon threads calling ``dispose()``: a hanging backend holds one, the others go on.
_DISPOSAL_THREADS = 4
#: A disposal thread yields the GIL before the first ``dispose()`` and after every this many.
_DISPOSALS_PER_YIELD = 64

_EVICTION_REASONS = ("ttl", "lru", "chat", "dispose", "replaced")
# The disposals that are evictions in the event stream (CONTRACT §1 "Events").
_EVICTION_EVENTS = frozenset({"ttl", "lru", "chat", "dispose", "replaced"})
_NOTHING = Removed([], [])  # never mutated: evict() returns fresh lists


def _start_thread(target: Callable[[], object], name: str) -> None:
    """Start a daemon thread; the one seam where this module creates threads.

    Raises ``RuntimeError`` when the process cannot start another thread.
    """
    threading.Thread(target=target, name=name, daemon=True).start()


# -- messages the pool sends itself -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Sweep:
    """Timer tick: sweep now."""


@dataclass(frozen=True, slots=True)
class _Created:
    """A factory call finished; its result waits in the creation."""

    creation: _Creation


_SWEEP = _Sweep()


# -- a factory call in flight ---------------------------------------------------------------

_RUNNING, _FINISHED, _TAKEN, _ABANDONED = "running", "finished", "taken", "abandoned"


class _Creation:
    """One factory call for a key, shared by every `get` of that key while it runs.

    Its result has exactly one owner: the pool takes it (`take`) when the `_Created`
    message arrives or while it stops or crashes; if the pool gave up first, the factory
    thread disposes it (`finish` returns False). The lock makes that hand-over race-free
    against a crash that happens while the result is on its way.
    """

    __slots__ = ("key", "waiters", "is_superseded", "_lock", "_state", "_backend", "_error")

    def __init__(self, key: AgentKey) -> None:
        self.key = key
        self.waiters: list[DeferredReply] = []
        # Actor thread only: a register() of this key won; the result is not wanted.
        self.is_superseded = False
        self._lock = threading.Lock()
        self._state = _RUNNING
        self._backend: Any = None
        self._error: BaseException | None = None

    def finish(self, backend: Any, error: BaseException | None) -> bool:
        """Factory thread: leave the result for the pool; False if the pool gave up on it."""
        with self._lock:
            if self._state is _ABANDONED:
                return False
            self._state, self._backend, self._error = _FINISHED, backend, error
            return True

    def take(self) -> tuple[bool, Any, BaseException | None]:
        """Pool thread: ``(True, backend, error)`` if finished; else abandon the call."""
        with self._lock:
            if self._state is _FINISHED:
                result = (True, self._backend, self._error)
                self._state, self._backend, self._error = _TAKEN, None, None
                return result
            if self._state is _RUNNING:
                self._state = _ABANDONED
            return False, None, None


def _run_factory(factory: AgentFactory, creation: _Creation, pool: pykka.ActorRef[Any], disposer: _Disposer) -> None:
    try:
        backend = factory(*creation.key)
        error: BaseException | None = None
    except BaseException as raised:  # whatever it is, the waiting gets must hear of it
        backend, error = None, raised
    if not creation.finish(backend, error):
        # The pool stopped or crashed meanwhile: nobody else will ever dispose this one.
        if error is None:
            disposer.submit(Removed([creation.key], [backend]), "abandoned")
        return
    try:
        pool.tell(_Created(creation))
    except pykka.ActorDeadError:
        pass  # the pool is on its way out; its on_stop/on_failure takes the result


# -- disposal off the actor's thread ------------------------------------------------------


class _Disposer:
    """Calls backends' ``dispose()`` on a few daemon threads, never on the pool's.

    Work comes in batches (`Removed` plus a reason): a sweep that evicts 50,000
    backends hands over two lists, and one thread disposes them in order. A thread
    takes a whole batch; at most ``max_threads`` run, started on demand and ended when
    the queue is empty, so a ``dispose()`` that hangs holds its thread and the rest of
    its batch, and later batches go to the other threads. Thread-safe: the pool submits
    from its thread, abandoned factory calls from theirs.
    """

    def __init__(self, log: Any, max_threads: int = _DISPOSAL_THREADS) -> None:
        self.log = log
        self._max_threads = max_threads
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._batches: deque[tuple[Removed, str]] = deque()
        self._threads = 0
        self._idle_callbacks: list[Callable[[], None]] = []
        self.in_flight = 0  # backends queued or being disposed
        self.disposed = 0
        self.errors = 0

    def submit(self, removed: Removed, reason: str) -> int:
        """Queue ``removed.backends`` for disposal as one batch; returns how many."""
        count = len(removed.backends)
        if not count:
            return 0
        with self._lock:
            self._batches.append((removed, reason))
            self.in_flight += count
            # One more thread per batch (up to the cap): a hanging dispose() does not
            # hold up the next batch.
            start_thread = self._threads < self._max_threads
            if start_thread:
                self._threads += 1
        if start_thread:
            self._start_thread()
        return count

    def _start_thread(self) -> None:
        try:
            _start_thread(self._work, "agent-pool-dispose")
        except RuntimeError as error:  # out of threads: the batch waits, nothing is lost
            with self._lock:
                self._threads -= 1
                waiting, running = self.in_flight, self._threads
            self.log.error(
                "could not start a disposal thread ({!r}); {} backends wait for {}",
                error,
                waiting,
                "a running one" if running else "the next sweep or disposal",
            )

    def resume(self) -> None:
        """Start a thread for batches left waiting by a failed thread start, if any."""
        with self._lock:
            start_thread = bool(self._batches) and self._threads == 0
            if start_thread:
                self._threads += 1
        if start_thread:
            self._start_thread()

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._batches:
                    self._threads -= 1
                    return
                removed, reason = self._batches.popleft()
            errors = self._dispose_batch(removed, reason)
            count = len(removed.backends)
            del removed  # the backends go now, on this thread, not on the pool's
            callbacks: list[Callable[[], None]] = []
            with self._lock:
                self.in_flight -= count
                self.disposed += count
                self.errors += errors
                if self.in_flight == 0:
                    self._idle.notify_all()
                    callbacks, self._idle_callbacks = self._idle_callbacks, []
            for callback in callbacks:
                callback()

    def _dispose_batch(self, removed: Removed, reason: str) -> int:
        errors = 0
        for index, backend in enumerate(removed.backends):
            if not index % _DISPOSALS_PER_YIELD:
                # Hand the GIL over now and then: otherwise a long batch holds it for whole
                # switch intervals (5 ms) while the pool's thread, which has just started
                # this one, and the caller waiting for the sweep's reply wait to run.
                time.sleep(0)
            try:
                dispose = getattr(backend, "dispose", None)
                if callable(dispose):
                    dispose()
                else:  # only a factory's invalid result gets here: nothing to call
                    label = key_string(removed.keys[index])
                    self.log.warning("dropped {!r} for {} ({}): it has no dispose()", backend, label, reason)
            except BaseException as error:  # a daemon thread: nobody else would ever see it
                errors += 1
                self.log.opt(exception=error).warning(
                    "dispose() of {} ({}) raised {!r}; the backend is gone from the pool anyway",
                    key_string(removed.keys[index]),
                    reason,
                    error,
                )
        return errors

    def wait_idle(self, timeout: float) -> bool:
        """Block up to ``timeout`` real seconds until no disposal runs; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self.in_flight == 0, timeout)

    def call_when_idle(self, callback: Callable[[], None]) -> bool:
        """Run ``callback`` (on a disposal thread) once nothing is in flight.

        Returns False, without keeping it, if nothing is in flight now.
        """
        with self._lock:
            if self.in_flight == 0:
                return False
            self._idle_callbacks.append(callback)
            return True

    def forget_callback(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._idle_callbacks:
                self._idle_callbacks.remove(callback)


# -- the actor ------------------------------------------------------------------------------


class AgentPool(SupervisedActor):
    """Keeps live backends by ``(primary, agent)``; evicts idle and excess ones on a clock.

    Start with ``AgentPool.start(*, idle_ttl=1800.0, max_live=32, sweep_interval=60.0,
    factory=None, clock=None)``; a negative, non-numeric, boolean or NaN setting (or a
    ``sweep_interval`` of 0) raises `ValueError` before anything starts. A backend is any
    object with ``dispose()``, optionally ``is_busy() -> bool`` and ``tick_health(now)``.
    See the module docstring for the sweep, the threads and the restart policy.
    """

    def __init__(
        self,
        *,
        idle_ttl: float = 1800.0,
        max_live: int = 32,
        sweep_interval: float = 60.0,
        factory: AgentFactory | None = None,
        clock: Clock | None = None,
    ) -> None:
        # InvalidSetting is a ValueError: start() raises it before any thread exists.
        self._idle_ttl, self._max_live, self._sweep_interval = validate_settings(idle_ttl, max_live, sweep_interval)
        if factory is not None and not callable(factory):
            raise TypeError(f"factory must be callable as factory(primary, agent), not {type(factory).__name__}")
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a supervision Clock, not {type(clock).__name__}")
        super().__init__()
        self._factory = factory
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._registry = AgentRegistry()
        # The factory call a get of each key joins; and every call whose result the pool
        # has not taken yet, superseded ones included (a crash must abandon them all).
        self._creations: dict[AgentKey, _Creation] = {}
        self._unfinished: set[_Creation] = set()
        self._disposer = _Disposer(self._log)
        self._timer: Timer | None = None
        self._evictions = dict.fromkeys(_EVICTION_REASONS, 0)
        self._probe_errors = 0
        self._busy_check_errors = 0
        self._busy_error: Exception | None = None
        self._park_busy_error = self._note_busy_error  # bound once: see _check_busy
        self._factory_errors = 0
        self._sweeps = 0
        self._last_sweep_ms: float | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def on_start(self) -> None:
        # The disposer logs with the incarnation's bound logger, known only once launched.
        self._disposer.log = self._log
        self._timer = send_interval(self.actor_ref, _SWEEP, self._sweep_interval, self._clock)

    def on_stop(self) -> None:
        self._stop_timer()
        self._abandon_creations(answer_waiters=True)
        count = self._dispose_later(self._take_all(), "dispose")
        # Backends are usually network sessions: give them a chance to close before the
        # process exits (disposal threads are daemons), within a bound.
        if not self._disposer.wait_idle(STOP_WAIT):
            self._log.warning(
                "agent pool stopped with {} disposals still running after {}s; left to their threads",
                self._disposer.in_flight,
                STOP_WAIT,
            )
        elif count:
            self._log.debug("agent pool stopped; disposed {} backends", count)

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Restart policy: dispose everything, start empty (see the module docstring).
        # No waiting for the disposals: the replacement starts only once this incarnation
        # is gone, and a crashed pool should be back quickly.
        self._stop_timer()
        # Gets waiting for the factory are cut off by the base class (ActorCrashed).
        self._abandon_creations(answer_waiters=False)
        count = self._dispose_later(self._take_all(), "crash")
        self._log.warning("agent pool crashed: disposing its {} live backends; the next one starts empty", count)

    def on_receive(self, message: Any) -> None:
        if isinstance(message, _Sweep):
            self._sweep(self._clock.monotonic())
        elif isinstance(message, _Created):
            self._on_created(message.creation)
        else:
            raise UnknownMessage(f"AgentPool does not handle {describe(message)}")

    # -- public API -----------------------------------------------------------------------

    def get(self, primary: str, agent: str) -> Any:
        """The backend of ``(primary, agent)``, marked active; on a miss the factory's, or None."""
        key = validate_key(primary, agent)
        backend = self._registry.get(key, self._clock.monotonic())
        if backend is not None or self._factory is None:
            return backend
        creation = self._creations.get(key)
        if creation is None:
            creation = _Creation(key)
            factory, pool, disposer = self._factory, self.actor_ref, self._disposer
            try:
                _start_thread(lambda: _run_factory(factory, creation, pool, disposer), "agent-pool-factory")
            except RuntimeError as error:  # out of threads: this get fails, the pool goes on
                self._factory_errors += 1
                self._log.error("could not start the factory thread for {}: {!r}", key_string(key), error)
                raise FactoryError(f"factory({key[0]!r}, {key[1]!r}) could not start: {error!r}") from error
            self._creations[key] = creation
            self._unfinished.add(creation)
        reply = DeferredReply()
        creation.waiters.append(reply)
        return reply

    def register(self, primary: str, agent: str, backend: Any) -> None:
        """Register ``backend`` (active now); a previous backend of that key is disposed."""
        key = validate_key(primary, agent)
        previous = self._registry.register(key, backend, self._clock.monotonic())  # InvalidBackend
        if previous is not None:
            self._dispose_later(Removed([key], [previous]), "replaced")
        if _events._subscribers:
            self._emit("backend_created", key, source="register")
        creation = self._creations.pop(key, None)
        if creation is not None:
            # The registered backend wins over a factory call still running.
            creation.is_superseded = True
            waiters, creation.waiters = creation.waiters, []
            for reply in waiters:
                reply.set(backend)

    def touch(self, primary: str, agent: str) -> bool:
        """Mark ``(primary, agent)`` active now; False if it is not registered."""
        return self._registry.touch(validate_key(primary, agent), self._clock.monotonic())

    def peek(self, primary: str, agent: str) -> Any:
        """The backend of ``(primary, agent)`` or None, without marking it active."""
        return self._registry.peek(validate_key(primary, agent))

    def health(self) -> dict[str, Any]:
        """``size``, ``busy`` and counters: evictions by reason, disposals, errors, sweeps."""
        registry = self._registry
        return {
            "size": len(registry),
            "busy": registry.count_busy(self._check_busy),
            "creating": len(self._creations),
            "disposing": self._disposer.in_flight,
            "disposed": self._disposer.disposed,
            "dispose_errors": self._disposer.errors,
            "probe_errors": self._probe_errors,
            "busy_check_errors": self._busy_check_errors,
            "factory_errors": self._factory_errors,
            "evictions": dict(self._evictions),
            "sweeps": self._sweeps,
            "last_sweep_ms": self._last_sweep_ms,
            "is_sweeping_on_timer": self._timer is not None,
            "idle_ttl": self._idle_ttl,
            "max_live": self._max_live,
            "sweep_interval": self._sweep_interval,
        }

    def sweep(self, now: float | None = None) -> list[str]:
        """Sweep now (``now`` on the clock's monotonic scale); the evicted keys, ``"primary:agent"``."""
        return self._sweep(self._clock.monotonic() if now is None else validate_now(now))

    def close_chat(self, chat_id: str) -> list[str]:
        """Evict and dispose every non-busy entry whose primary is ``chat_id``; their keys.

        A factory call still running for that chat is not cancelled: its backend is
        registered when it returns, as for any get.
        """
        if not isinstance(chat_id, str):
            raise InvalidKey(f"chat_id must be a str, not {type(chat_id).__name__}")
        removed = self._registry.evict(self._registry.keys_for_primary(chat_id), self._check_busy)
        self._dispose_later(removed, "chat")
        return key_strings(removed.keys)

    def dispose(self) -> DeferredReply | None:
        """Dispose every entry (busy ones too) and stop the sweep timer; idempotent.

        Answers once no disposal is running, or after `DISPOSE_WAIT` real seconds.
        """
        self._stop_timer()
        count = self._dispose_later(self._take_all(), "dispose")
        if count:
            self._log.info("agent pool disposed: {} backends handed to the disposal threads", count)
        return self._when_disposals_done()

    # -- sweeping -------------------------------------------------------------------------

    def _sweep(self, now: float) -> list[str]:
        started = time.perf_counter()
        registry = self._registry
        self._disposer.resume()
        try:
            self._probe_errors += registry.probe_health(now, self._log_probe_error)
        except Exception:  # only a bug of ours gets here: probes' own errors are caught inside
            self._log.exception("sweep at {}: running the health probes failed; sweeping anyway", now)
        try:
            plan = registry.plan_sweep(now, self._idle_ttl, self._max_live, self._check_busy)
        except Exception:
            self._log.exception("sweep at {}: deciding what to evict failed; nothing evicted this time", now)
            plan = SweepPlan([], [])
        # Busy is asked again right before each removal: one found busy now stays.
        ttl = registry.evict(plan.ttl_keys, self._check_busy) if plan.ttl_keys else _NOTHING
        lru = registry.evict(plan.lru_keys, self._check_busy) if plan.lru_keys else _NOTHING
        evicted = key_strings(ttl.keys + lru.keys)
        self._sweeps += 1
        if evicted:
            self._log.info(
                "sweep evicted {} idle and {} over the cap of {}; {} left",
                len(ttl.keys),
                len(lru.keys),
                self._max_live,
                len(registry),
            )
        # Handed over last, so the disposal thread starts once this handler's work is done.
        self._dispose_later(ttl, "ttl")
        self._dispose_later(lru, "lru")
        self._last_sweep_ms = (time.perf_counter() - started) * 1000.0
        return evicted

    def _log_probe_error(self, key: AgentKey, error: Exception) -> None:
        self._log.warning("health probe of {} raised {!r}; the entry stays", key_string(key), error)

    def _check_busy(self, key: AgentKey, backend: Any) -> bool:
        # Called for up to every entry in a sweep: no closure per call, the error (rare)
        # is parked by the stored callback and logged here, where the key is known.
        if not is_busy(backend, self._park_busy_error):
            return False
        error = self._busy_error
        if error is not None:
            self._busy_error = None
            self._busy_check_errors += 1
            self._log.warning("is_busy() of {} raised {!r}; treated as busy", key_string(key), error)
        return True

    def _note_busy_error(self, error: Exception) -> None:
        self._busy_error = error

    # -- disposal -------------------------------------------------------------------------

    def _take_all(self) -> Removed:
        return self._registry.clear()

    def _dispose_later(self, removed: Removed, reason: str) -> int:
        if reason in self._evictions:
            self._evictions[reason] += len(removed.backends)
        if _events._subscribers and reason in _EVICTION_EVENTS:
            for key in removed.keys:
                self._emit("backend_evicted", key, reason=reason)
        return self._disposer.submit(removed, reason)

    def _emit(self, kind: str, key: AgentKey, **data: Any) -> None:
        path = self._supervision_.child_id or "agents"
        _events.emit(kind, path, primary=key[0], agent=key[1], key=key_string(key), **data)

    def _when_disposals_done(self) -> DeferredReply | None:
        reply = DeferredReply()
        answered = threading.Lock()

        def answer() -> None:
            if answered.acquire(blocking=False):
                watchdog.cancel()
                reply.set(None)

        def answer_late() -> None:
            if answered.acquire(blocking=False):
                self._disposer.forget_callback(answer)
                self._log.warning(
                    "dispose(): {} disposals still running after {}s; answering anyway",
                    self._disposer.in_flight,
                    DISPOSE_WAIT,
                )
                reply.set(None)

        watchdog = threading.Timer(DISPOSE_WAIT, answer_late)
        watchdog.daemon = True
        if not self._disposer.call_when_idle(answer):
            return None
        watchdog.start()
        return reply

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the factory ----------------------------------------------------------------------

    def _on_created(self, creation: _Creation) -> None:
        is_finished, backend, error = creation.take()
        if not is_finished:
            return
        self._unfinished.discard(creation)
        key = creation.key
        if self._creations.get(key) is creation:
            del self._creations[key]
        label = key_string(key)
        if creation.is_superseded:
            if error is not None:
                self._log.info("factory for {} raised {!r} after a register() replaced it", label, error)
            elif self._registry.peek(key) is not backend:  # the factory may have registered it itself
                self._dispose_later(Removed([key], [backend]), "replaced")
            return
        if error is None:
            try:
                check_backend(backend)
            except InvalidBackend as invalid:
                error = invalid
                self._log.warning("factory for {} returned {!r} without dispose(); dropped", label, backend)
        if error is not None:
            self._factory_errors += 1
            self._log.warning("factory for {} failed: {!r}; {} gets fail", label, error, len(creation.waiters))
            for reply in creation.waiters:
                failure = FactoryError(f"factory({key[0]!r}, {key[1]!r}) failed: {error!r}; nothing registered")
                failure.__cause__ = error
                reply.set_exception((FactoryError, failure, None))
            return
        previous = self._registry.register(key, backend, self._clock.monotonic())
        if previous is not None:  # unreachable while register() supersedes; never leak anyway
            self._dispose_later(Removed([key], [previous]), "replaced")
        if _events._subscribers:
            self._emit("backend_created", key, source="factory")
        for reply in creation.waiters:
            reply.set(backend)

    def _abandon_creations(self, *, answer_waiters: bool) -> None:
        creations = list(self._unfinished)
        self._unfinished.clear()
        self._creations.clear()
        for creation in creations:
            is_finished, backend, error = creation.take()
            if is_finished and error is None:
                self._disposer.submit(Removed([creation.key], [backend]), "abandoned")
            if answer_waiters:
                for reply in creation.waiters:
                    gone = Undelivered(f"the agent pool stopped while the factory ran for {key_string(creation.key)}")
                    try:
                        reply.set_exception((Undelivered, gone, None))
                    except queue.Full:
                        pass
