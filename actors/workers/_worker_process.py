"""`WorkerProcess`: one OS process run by an actor, under a supervisor.

    root = Supervisor.start([ChildSpec("names", NamePool)])
    root.proxy().start_child(ChildSpec(
        "worker-1", WorkerProcess,
        args=(["claude", "--resume"],),
        kwargs={"names": Handle(root, "names"), "socket_path": "/run/fleet/tree.sock",
                "backoff": Backoff(min=1.0, max=60.0)},
    )).get(timeout=5)
    Handle(root, "worker-1").proxy().info().get(timeout=5)   # {'pid': 4242, 'name': 'furiosa', ...}

    # inside the worker (or anything it spawns):
    name = inherit_identity()                                 # 'furiosa', now also this pid's

The process's exit status decides how its actor ends: 0 is a normal exit, anything else
(a signal included) is a crash (`WorkerExited`), so the supervisor's restart type and
intensity apply to the process itself. The process runs in a process group of its own,
and nothing of the group outlives the actor: however the actor ends, and whenever the
process dies (SIGKILL included), the group gets SIGTERM, `term_timeout` real seconds,
then SIGKILL. Only a descendant that left the group on purpose (`os.setsid()`) stays.

Names: the actor checks out the last name of its `name_key` (default: the child's path in
the tree) for its own URN, spawns the process with `AGENT_NAME` (and `ACTORS_SOCKET`), hands
the name to the process's pid and lets the URN go. The pool remembers each key's last name
durably, so a restarted worker gets its name back, across restarts of the daemon too,
unless a live process outside its key took it meanwhile (then a fresh one, never a
duplicate).

Output: the process's stdout and stderr are captured, and each line is logged (INFO for
stdout, WARNING for stderr) bound to `agent_name` and `pid`, by one relay thread per
process that ends with it.
"""

from __future__ import annotations

import itertools
import math
import os
import random as _random
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pykka
from loguru import logger

from actors._process import forget_spawned, note_spawned
from actors.daemon._client import Client
from supervision import (
    ActorCrashed,
    ClientError,
    Clock,
    Handle,
    SupervisedActor,
    StorageError,
    SystemClock,
    Timer,
    UnknownMessage,
    send_after,
)
from supervision._events import emit

__all__ = [
    "KILL_WAIT",
    "NAMES_TIMEOUT",
    "SHUTDOWN_MARGIN",
    "Backoff",
    "WorkerExited",
    "WorkerProcess",
    "inherit_identity",
]

#: Real seconds the first message waits for each answer of the name pool (checkout,
#: associate), as OTP's default call timeout; also inherit_identity's socket timeout.
NAMES_TIMEOUT = 5.0
#: Real seconds to wait for the process to be reaped after SIGKILL before giving up on it.
KILL_WAIT = 1.0
#: Added to `term_timeout` for a `ChildSpec` whose shutdown is left at the default: the
#: SIGKILL wait and the name hand-back fit in it, so the actor is never abandoned while
#: its process lives.
SHUTDOWN_MARGIN = 2.0
#: Real seconds between checks for processes left in the group after the process exited.
_GROUP_POLL = 0.02
#: Real seconds a background hand-back of a name (dissociate) may wait for the pool.
_RELEASE_TIMEOUT = 30.0
#: Between attempts to dissociate a URN while the pool's storage refuses changes.
_RELEASE_PAUSE = 0.05
_RELEASE_PAUSE_MAX = 2.0

# Describe the daemon's own identity, not a worker's: never passed on implicitly.
_IDENTITY_VARIABLES = ("AGENT_NAME", "ACTORS_SOCKET")

_log = logger.bind(component="worker_process")
_release_numbers = itertools.count()  # thread names stay unique within the process


def _seconds(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, not {value!r}")
    return float(value)


# -- backoff ----------------------------------------------------------------------------------


class Backoff:
    """Exponential spawn delay for a crash-looping process (Akka's backoff supervisor).

    One object is shared by every incarnation of a spec (put it in the `ChildSpec`'s
    kwargs): it counts consecutive crashes `n` and the process is spawned
    `min(max, min·2**n)·(1 + random()·jitter)` seconds after `on_start`. `n` goes back
    to 0 once `reset_after` seconds pass without a crash. Times are the caller's clock
    (`clock.monotonic()`). Thread-safe.

        backoff = Backoff(min=1.0, max=30.0, jitter=0.0)
        backoff.delay(now=0.0)      # 1.0
        backoff.record_crash(0.0)
        backoff.delay(now=0.0)      # 2.0
        backoff.delay(now=60.0)     # 1.0: a quiet minute resets the count
    """

    def __init__(
        self,
        min: float,
        max: float,
        jitter: float = 0.2,
        reset_after: float = 60.0,
        *,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.min = _seconds("min", min)
        self.max = _seconds("max", max)
        if self.max < self.min:
            raise ValueError(f"max must be >= min, got min={min!r}, max={max!r}")
        if isinstance(jitter, bool) or not isinstance(jitter, int | float):
            raise TypeError(f"jitter must be a number, not {type(jitter).__name__}")
        if not math.isfinite(jitter) or jitter < 0:
            raise ValueError(f"jitter must be a finite number >= 0, not {jitter!r}")
        self.jitter = float(jitter)
        self.reset_after = _seconds("reset_after", reset_after)
        if not callable(random):
            raise TypeError(f"random must be a callable returning a float in [0, 1), not {type(random).__name__}")
        self._random = random
        self._lock = threading.Lock()
        self._crashes = 0
        self._last_crash: float | None = None

    def __repr__(self) -> str:
        return (
            f"Backoff(min={self.min}, max={self.max}, jitter={self.jitter}, "
            f"reset_after={self.reset_after}, n={self._crashes})"
        )

    def _forget_if_quiet(self, now: float) -> None:
        """Reset the count once `reset_after` seconds passed since the last crash (lock held)."""
        if self._last_crash is not None and now - self._last_crash >= self.reset_after:
            self._crashes = 0
            self._last_crash = None

    def crashes(self, now: float) -> int:
        """The consecutive-crash count `n` as of `now`."""
        with self._lock:
            self._forget_if_quiet(now)
            return self._crashes

    def delay(self, now: float) -> float:
        """Seconds to wait before the next spawn, as of `now` (jitter included)."""
        with self._lock:
            self._forget_if_quiet(now)
            exponent = self._crashes
        # 2.0**1000 already puts any min > 0 past max (as inf at worst); 2.0**n would overflow.
        base = min(self.max, self.min * 2.0 ** min(exponent, 1000))
        return base * (1.0 + self._random() * self.jitter)

    def record_crash(self, now: float) -> None:
        """Count a crash at `now` (a quiet period before it resets the count first)."""
        with self._lock:
            self._forget_if_quiet(now)
            self._crashes += 1
            self._last_crash = now


# -- the actor --------------------------------------------------------------------------------


class WorkerExited(Exception):
    """A worker's process ended with a non-zero status or by a signal: its actor's crash."""

    def __init__(self, program: str, pid: int, returncode: int) -> None:
        self.program = program
        self.pid = pid
        self.returncode = returncode
        super().__init__(f"{program} (pid {pid}) {_describe_exit(returncode)}")


def _describe_exit(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        signal_name = signal.Signals(-returncode).name
    except ValueError:
        signal_name = f"signal {-returncode}"
    return f"was killed by {signal_name}"


@dataclass(frozen=True, slots=True)
class _Spawn:
    """Check out a name and start the process (the first message, maybe after a backoff)."""


@dataclass(frozen=True, slots=True)
class _Exited:
    """The waiter thread reaped process `pid`."""

    pid: int
    returncode: int


_SPAWN = _Spawn()


class WorkerProcess(SupervisedActor):
    """Runs one OS process; its exit is the actor's exit (0: normal, else a crash).

    `WorkerProcess.start(argv, *, env=None, cwd=None, names=None, socket_path=None,
    term_timeout=5.0, backoff=None, clock=None, name_key=None)`. `name_key` is what its
    stable name is remembered by (default: its supervisor's path and child id). `env` is added to this process's
    environment (minus its own `AGENT_NAME`/`ACTORS_SOCKET`, which describe the
    daemon, not the worker); `names` is a `Handle` to a `NamePool`; `socket_path` is
    passed as `ACTORS_SOCKET` for `inherit_identity`; `backoff` delays the spawn on
    `clock`. Bad arguments raise `TypeError`/`ValueError` before anything starts.

    Proxy methods: `process_pid()` and `info()`.
    """

    def __init__(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        names: Handle | None = None,
        socket_path: str | os.PathLike[str] | None = None,
        term_timeout: float = 5.0,
        backoff: Backoff | None = None,
        clock: Clock | None = None,
        name_key: str | None = None,
    ) -> None:
        if not isinstance(argv, list | tuple) or not argv:
            raise TypeError(f"argv must be a non-empty list of str, not {argv!r}")
        if not all(isinstance(arg, str) for arg in argv):
            raise TypeError(f"argv must hold only str, got {argv!r}")
        if env is not None:
            if not isinstance(env, dict):
                raise TypeError(f"env must be a dict of str to str or None, not {type(env).__name__}")
            if not all(isinstance(key, str) and isinstance(value, str) for key, value in env.items()):
                raise TypeError("env must map str to str")
        if cwd is not None and not isinstance(cwd, str | os.PathLike):
            raise TypeError(f"cwd must be a path or None, not {type(cwd).__name__}")
        if names is not None and not isinstance(names, Handle):
            raise TypeError(f"names must be a Handle to a NamePool or None, not {type(names).__name__}")
        if socket_path is not None and not isinstance(socket_path, str | os.PathLike):
            raise TypeError(f"socket_path must be a path or None, not {type(socket_path).__name__}")
        if backoff is not None and not isinstance(backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff or None, not {type(backoff).__name__}")
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a supervision Clock, not {type(clock).__name__}")
        if name_key is not None and (not isinstance(name_key, str) or not name_key):
            raise TypeError(f"name_key must be a non-empty str or None, not {name_key!r}")
        self._term_timeout = _seconds("term_timeout", term_timeout)
        super().__init__()
        self._name_key = name_key
        self._argv = list(argv)
        self._env = dict(env) if env is not None else None
        self._cwd = os.fspath(cwd) if cwd is not None else None
        self._names = names
        self._socket_path = os.fspath(socket_path) if socket_path is not None else None
        self._backoff = backoff
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._spawn_timer: Timer | None = None
        self._spawn_delay = 0.0
        self._process: subprocess.Popen[bytes] | None = None
        self._exited = threading.Event()  # set by the waiter thread once the process is reaped
        self._name: str | None = None
        self._urn_holds_name = False  # our URN is still one of the name's owners
        self._pid_holds_name = False  # the process's pid is still one of the name's owners
        self._started_at: float | None = None
        self._relay: _OutputRelay | None = None
        self._is_exit_reported = False

    @classmethod
    def default_shutdown(cls, args: Iterable[Any], kwargs: dict[str, Any]) -> float:
        """The grace a `ChildSpec` left at the default gets: `term_timeout + 2.0`."""
        return _seconds("term_timeout", kwargs.get("term_timeout", 5.0)) + SHUTDOWN_MARGIN

    # -- lifecycle ----------------------------------------------------------------------------

    def on_start(self) -> None:
        # Never waits here: the supervisor starts children synchronously, and the name
        # pool may be a sibling whose own restart is queued behind this start.
        if self._backoff is not None:
            self._spawn_delay = self._backoff.delay(self._clock.monotonic())
        if self._spawn_delay > 0:
            self._log.info("spawning {} in {:.3f}s (backoff)", self._program, self._spawn_delay)
            self._spawn_timer = send_after(self.actor_ref, _SPAWN, self._spawn_delay, self._clock)
        else:
            self.actor_ref.tell(_SPAWN)

    def on_stop(self) -> None:
        self._end_process()

    def on_failure(self, *exc_info: Any) -> None:
        if self._backoff is not None:
            # Any crash of the spec counts (a missing binary loops as surely as a bad exit).
            self._backoff.record_crash(self._clock.monotonic())
        self._end_process()

    def on_receive(self, message: Any) -> None:
        if isinstance(message, _Spawn):
            self._spawn()
            if self.actor_stopped.is_set():
                # Our supervisor gave up on us while we waited for the pool: on_stop will
                # never run, so the process must not outlive this handler.
                self._end_process()
        elif isinstance(message, _Exited):
            self._on_exited(message)
        else:
            raise UnknownMessage(f"WorkerProcess does not handle {message!r}")

    # -- public API ---------------------------------------------------------------------------

    def process_pid(self) -> int | None:
        """The pid of the running process, or None before the spawn and once it is gone."""
        if self._process is None or self._exited.is_set():
            return None
        return self._process.pid

    def info(self) -> dict[str, Any]:
        """What the daemon's status shows: argv, pid, name, state, start time, exit status."""
        process = self._process
        returncode = process.returncode if process is not None and self._exited.is_set() else None
        if process is None:
            state = "waiting"
        elif returncode is None:
            state = "running"
        else:
            state = "exited"
        return {
            "argv": list(self._argv),
            "name_key": self.name_key,
            "cwd": self._cwd,
            "pid": self.process_pid(),
            "name": self._name,
            "state": state,
            "started_at": self._started_at,
            "spawn_delay": self._spawn_delay,
            "returncode": returncode,
            "exit_status": None if returncode is None else _describe_exit(returncode),
            "consecutive_crashes": (
                None if self._backoff is None else self._backoff.crashes(self._clock.monotonic())
            ),
        }

    # -- spawning -----------------------------------------------------------------------------

    @property
    def _program(self) -> str:
        return self._argv[0]

    @property
    def name_key(self) -> str:
        """What the pool remembers this worker's name by: `name_key`, or its place in the tree."""
        if self._name_key is not None:
            return self._name_key
        runtime = self._supervision_
        return runtime.path or runtime.child_id or self.actor_urn

    def _spawn(self) -> None:
        if self._process is not None:
            return
        self._spawn_timer = None
        if self._names is not None:
            # The pool is another actor, so a bounded wait here cannot deadlock us.
            self._urn_holds_name = True  # from the moment it is asked: a late answer still counts
            self._name = self._checkout(self._names)
            # Every record of this incarnation names its worker, its crash report included.
            self._supervision_.log = self._supervision_.log.bind(agent_name=self._name)
        if self.actor_stopped.is_set():
            self._log.warning("abandoned while checking out a name; {} not spawned", self._program)
            return  # on_receive gives the name back
        environment = {key: value for key, value in os.environ.items() if key not in _IDENTITY_VARIABLES}
        environment.update(self._env or {})
        if self._name is not None:
            environment["AGENT_NAME"] = self._name
        if self._socket_path is not None:
            environment["ACTORS_SOCKET"] = self._socket_path
        # Its own session: our signals reach its whole process group, and the terminal's
        # never reach it. No stdin: it would compete with the daemon's terminal.
        try:
            process = subprocess.Popen(
                self._argv,
                env=environment,
                cwd=self._cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as error:  # a crash like any other; say what could not be run
            error.add_note(f"spawning {self._argv!r} in {self._cwd or os.getcwd()!r}")
            raise
        self._process = process
        if self._name is not None:
            note_spawned(process.pid, self._name)  # its inherit_identity may beat our associate
        self._started_at = self._clock.time()
        self._relay = _OutputRelay(process, self._log.bind(pid=process.pid))
        self._relay.start()
        threading.Thread(
            target=_wait_for_exit,
            args=(process, self._exited, self.actor_ref),
            name=f"wait-{process.pid}",
            daemon=True,
        ).start()
        self._log.info(
            "spawned {} (pid {}){}",
            self._program,
            process.pid,
            "" if self._name is None else f" as {self._name!r}",
        )
        emit("worker_spawned", self.name_key, self._name, pid=process.pid)
        if self._names is not None and self._name is not None:
            self._hand_name_to_process(self._names, self._name, process.pid)

    def _checkout(self, names: Handle) -> str:
        """The key's last name if the pool can give it back; any pool's name otherwise."""
        from actors.names._pool import KeyCheckout, NamePool  # the pool imports nothing of ours

        if issubclass(names.ref(timeout=NAMES_TIMEOUT).actor_class, NamePool):
            return names.ask(KeyCheckout(self.name_key, self.actor_urn), timeout=NAMES_TIMEOUT)
        # A pool without key memory (a stand-in): the plain checkout.
        return names.proxy().checkout_name(self.actor_urn).get(timeout=NAMES_TIMEOUT)

    def _hand_name_to_process(self, names: Handle, name: str, pid: int) -> None:
        deadline = time.monotonic() + NAMES_TIMEOUT
        while True:
            try:
                names.proxy().associate_name(name, pid).get(timeout=max(0.0, deadline - time.monotonic()))
                break
            except (ActorCrashed, pykka.ActorDeadError) as error:
                # Cut off by a crash of the pool: it did not happen; its next incarnation.
                if names.is_gone() or time.monotonic() >= deadline:
                    self._log_name_kept(name, pid, error)
                    return
            except Exception as error:
                self._log_name_kept(name, pid, error)
                return
        self._pid_holds_name = True
        self._urn_holds_name = False
        self._release(self.actor_urn)

    def _log_name_kept(self, name: str, pid: int, error: Exception) -> None:
        # The URN keeps the name, so it cannot go to someone else while the process uses
        # it; the process can still claim it (inherit_identity: the daemon knows it spawned
        # it as `name`); the URN lets go when this incarnation ends.
        self._log.warning("could not associate {!r} with pid {}: {!r}; the actor keeps it", name, pid, error)

    # -- ending -------------------------------------------------------------------------------

    def _on_exited(self, exited: _Exited) -> None:
        process = self._process
        if process is None or process.pid != exited.pid:
            return
        # What it left in its group dies with it: nothing keeps running with its name and
        # no one to supervise it.
        self._end_group(process.pid)
        self._report_exit(process)
        # Before the crash is reported: the supervisor's next incarnation then checks out
        # after the pool has the name back.
        self._release_names()
        if exited.returncode == 0:
            self._log.info("{} (pid {}) exited with status 0", self._program, exited.pid)
            self.stop()
            return
        raise WorkerExited(self._program, exited.pid, exited.returncode)

    def _end_process(self) -> None:
        """SIGTERM to its process group, `term_timeout`, SIGKILL to what is left; reaped."""
        if self._spawn_timer is not None:
            self._spawn_timer.cancel()
            self._spawn_timer = None
        process = self._process
        if process is not None and not self._exited.is_set():
            deadline = time.monotonic() + self._term_timeout
            self._signal(process, signal.SIGTERM)
            self._exited.wait(self._term_timeout)
            # What it started in its group gets the same time to finish as it did.
            while self._exited.is_set() and _group_members(process.pid) and time.monotonic() < deadline:
                time.sleep(_GROUP_POLL)
            if not self._exited.is_set() or _group_members(process.pid):
                self._log.warning(
                    "{} (pid {}) or its process group still runs {}s after SIGTERM; sending SIGKILL",
                    self._program,
                    process.pid,
                    self._term_timeout,
                )
                self._signal(process, signal.SIGKILL)
                if not self._exited.wait(KILL_WAIT):
                    # Uninterruptible sleep: its waiter thread reaps it whenever it dies.
                    self._log.error("{} (pid {}) not reaped {}s after SIGKILL", self._program, process.pid, KILL_WAIT)
            if self._exited.is_set() and process.returncode is not None:
                how = _describe_exit(process.returncode)
                self._log.info("stopped {} (pid {}): it {}", self._program, process.pid, how)
        elif process is not None:
            self._end_group(process.pid)  # it died first: what it left behind goes now
        if process is not None and self._exited.is_set():
            self._report_exit(process)
        if self._relay is not None:
            self._relay.close()
        self._release_names()

    def _end_group(self, group_id: int) -> None:
        """SIGTERM to what is left of process group `group_id`, `term_timeout`, SIGKILL."""
        if not _group_members(group_id):
            if self._relay is not None:
                self._relay.close()
            return
        self._log.info("process {} is gone; ending what it left in its process group", group_id)
        _signal_group(group_id, signal.SIGTERM)
        deadline = time.monotonic() + self._term_timeout
        while _group_members(group_id) and time.monotonic() < deadline:
            time.sleep(_GROUP_POLL)
        left = _group_members(group_id)
        if left:
            self._log.warning("pids {} of process group {} still run after SIGTERM; sending SIGKILL", left, group_id)
            _signal_group(group_id, signal.SIGKILL)
        if self._relay is not None:
            self._relay.close()

    def _report_exit(self, process: subprocess.Popen[bytes]) -> None:
        if self._is_exit_reported or process.returncode is None:
            return
        self._is_exit_reported = True
        emit("worker_exited", self.name_key, self._name, pid=process.pid, status=process.returncode)

    def _signal(self, process: subprocess.Popen[bytes], signal_number: signal.Signals) -> None:
        # The group id stays taken while any member lives, so it is safe to use even
        # after the leader was reaped; its pid alone is not.
        try:
            os.killpg(process.pid, signal_number)
            return
        except (ProcessLookupError, PermissionError):
            pass  # no group left, or the process moved to another one
        if not self._exited.is_set():
            process.send_signal(signal_number)

    def _release_names(self) -> None:
        """End the pid's and the URN's hold on the name (the pid only once it is reaped)."""
        if self._pid_holds_name and self._process is not None and self._exited.is_set():
            self._pid_holds_name = False
            self._release(self._process.pid)
        if self._urn_holds_name:
            self._urn_holds_name = False
            self._release(self.actor_urn)

    def _release(self, owner: int | str) -> None:
        """Send `dissociate(owner)` now; wait for its answer off our thread.

        Sent from this thread, it reaches the pool before anything our supervisor does
        next (a restart's checkout). The wait only matters when the pool is restarting:
        then the call goes to its next incarnation.
        """
        if self._names is None:
            return
        names = self._names
        future = names.proxy().dissociate(owner)
        log = self._log

        def wait() -> None:
            deadline = time.monotonic() + _RELEASE_TIMEOUT
            attempt = future
            pause = _RELEASE_PAUSE
            while True:
                try:
                    attempt.get(timeout=max(0.0, deadline - time.monotonic()))
                    return
                except (ActorCrashed, pykka.ActorDeadError) as error:
                    # The pool crashed before the dissociate was durable: it did not happen.
                    # A str owner is never reaped, so send it again (it is idempotent) or
                    # the name would stay with a dead URN for good.
                    if names.is_gone() or time.monotonic() >= deadline:
                        last_error: Exception = error
                        break
                except StorageError as error:
                    # Refused, nothing changed (a full disk): a pid is reaped anyway, but a
                    # URN only leaves by this call, so it keeps asking while the pool lives.
                    if type(owner) is int or names.is_gone():
                        last_error = error
                        break
                    if pause == _RELEASE_PAUSE:
                        log.warning("could not dissociate {!r} yet: {!r}; asking again until it can", owner, error)
                    time.sleep(pause)  # pacing while storage fails, not synchronisation
                    pause = min(pause * 2, _RELEASE_PAUSE_MAX)
                    deadline = time.monotonic() + _RELEASE_TIMEOUT
                except Exception as error:
                    last_error = error
                    break
                attempt = names.proxy().dissociate(owner)
            # A pool whose tree is stopping keeps nothing to give back: not worth a warning.
            level = "DEBUG" if names.is_gone() else "WARNING"
            log.log(level, "could not dissociate {!r} from its name: {!r}", owner, last_error)

        threading.Thread(target=wait, name=f"name-release-{owner}-{next(_release_numbers)}", daemon=True).start()


def _signal_group(group_id: int, signal_number: signal.Signals) -> None:
    try:
        os.killpg(group_id, signal_number)
    except (ProcessLookupError, PermissionError):
        pass  # no one left in it


def _group_members(group_id: int) -> list[int]:
    """The live (not zombie) pids of process group `group_id`, from /proc.

    Zombies are left out: an orphan's zombie waits for init to reap it, and an init that
    never reaps (as in some containers) must not make us wait for the dead.
    """
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [group_id] if _group_signalable(group_id) else []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                stat = file.read()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] != b"Z" and fields[2] == str(group_id).encode():
            members.append(int(entry))
    return members


def _group_signalable(group_id: int) -> bool:
    try:
        os.killpg(group_id, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: Longest line relayed as one record; a longer one is cut into pieces of this size.
_MAX_LINE = 64 * 1024
#: Reads after `close()` at most: a detached descendant that keeps writing is not followed.
_DRAIN_PASSES = 64


class _OutputRelay:
    """Logs each line a process writes: stdout at INFO, stderr at WARNING, on one thread.

    The thread ends at end of file on both pipes, or soon after `close()` (called once the
    process and its group are gone: a descendant that detached keeps the pipes open, and
    must not keep the thread alive).
    """

    def __init__(self, process: subprocess.Popen[bytes], log: Any) -> None:
        assert process.stdout is not None and process.stderr is not None
        self._log = log
        self._streams = {process.stdout.fileno(): ("INFO", "stdout"), process.stderr.fileno(): ("WARNING", "stderr")}
        self._files = (process.stdout, process.stderr)
        self._wake_read, self._wake_write = os.pipe()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"output-{process.pid}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop once what is already written is read (idempotent); wait for it, briefly."""
        if not self._closed:
            self._closed = True
            try:
                os.write(self._wake_write, b"x")
            except OSError:
                pass  # the thread ended already and closed its end
            os.close(self._wake_write)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(KILL_WAIT)

    def _emit(self, fd: int, line: bytes) -> None:
        level, stream = self._streams[fd]
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        self._log.bind(stream=stream).log(level, "{}", text)

    def _run(self) -> None:
        pending = {fd: b"" for fd in self._streams}
        selector = selectors.DefaultSelector()
        try:
            for fd in pending:
                selector.register(fd, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            open_fds = set(pending)
            drain_passes = 0  # after close(): read what is there, never wait for more
            while open_fds and drain_passes < _DRAIN_PASSES:
                if drain_passes:
                    drain_passes += 1
                events = selector.select(timeout=0 if drain_passes else None)
                if not events and drain_passes:
                    break
                for key, _ in events:
                    fd = key.fd
                    if fd == self._wake_read:
                        selector.unregister(fd)
                        drain_passes = 1
                        continue
                    data = os.read(fd, 65536)
                    if not data:
                        selector.unregister(fd)
                        open_fds.discard(fd)
                        continue
                    buffer = pending[fd] + data
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        self._emit(fd, line)
                    while len(buffer) >= _MAX_LINE:
                        self._emit(fd, buffer[:_MAX_LINE])
                        buffer = buffer[_MAX_LINE:]
                    pending[fd] = buffer
            for fd, rest in pending.items():
                if rest:
                    self._emit(fd, rest)
        except Exception:
            self._log.exception("relaying the output of a worker process failed")
        finally:
            selector.close()
            for file in self._files:
                file.close()
            os.close(self._wake_read)


def _wait_for_exit(process: subprocess.Popen[bytes], exited: threading.Event, ref: pykka.ActorRef[Any]) -> None:
    """The waiter thread: reap the process, then tell the actor (gone already: fine)."""
    try:
        returncode = process.wait()
    finally:
        forget_spawned(process.pid)
        exited.set()
    try:
        ref.tell(_Exited(process.pid, returncode))
    except pykka.ActorDeadError:
        pass  # its incarnation ended first and already dealt with the process


# -- inside the worker ------------------------------------------------------------------------


def inherit_identity() -> str | None:
    """Claim the `AGENT_NAME` this process inherited for its own pid; return the name.

    Blocking (one round trip to the daemon through `ACTORS_SOCKET`). Returns None
    without `AGENT_NAME`; with a name but no `ACTORS_SOCKET` it returns the name
    without associating it (WARNING). Raises `ConnectionError` when the socket cannot
    be reached, and the daemon's error (e.g. `InvalidName`) when it refuses.
    """
    name = os.environ.get("AGENT_NAME")
    if not name:
        return None
    socket_path = os.environ.get("ACTORS_SOCKET")
    if not socket_path:
        _log.warning("AGENT_NAME={!r} but no ACTORS_SOCKET: the name is not associated with pid {}", name, os.getpid())
        return name
    try:
        client = Client(socket_path, timeout=NAMES_TIMEOUT)
    except OSError as error:
        raise ConnectionError(
            f"cannot reach the actors daemon at ACTORS_SOCKET={socket_path!r} to inherit {name!r}: {error}"
        ) from error
    with client:
        try:
            client.call("names.associate_name", name)  # owner omitted: this process (SO_PEERCRED)
        except (ConnectionError, StorageError, ClientError):
            raise  # the daemon's own answer (a full disk, NotPermitted, ...): as it is
        except OSError as error:  # a timeout or reset mid-call
            raise ConnectionError(f"the actors daemon at {socket_path!r} did not answer: {error}") from error
    return name
