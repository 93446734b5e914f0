#!/usr/bin/env python
"""Chaos run: the actor tree under steady load while a fault injector kills things at random.

    .venv/bin/python scripts/chaos.py --seconds 60 [--seed N] [--keep]

The tree runs in this process with a `Gateway` on its socket. Load comes from threads
here (names through a `Handle`, with associations; locks for live sleeper processes;
agent backends) and from client processes talking to the socket (checkout, checkin,
identity checks, locks). `WorkerProcess` children of the root run worker processes that
inherit their name and keep confirming it. Meanwhile a fault injector `kill`s the name
pool, the agent pool, lock actors, the lock supervisor and worker actors, and SIGKILLs
worker and client processes, at random intervals. Afterwards it checks invariants and
prints them as a table; the exit status is 0 iff they all hold.

How each invariant is judged:

- **Duplicate name holders.** Every participant records when it *believes* it holds a
  name: from the moment a checkout (or an identity confirmation) was answered until just
  before it sends a checkin, or is killed. Two beliefs of the same name by different
  families (a family is an owner plus the owners it associated with the name) must
  never overlap in time (`time.monotonic` is system-wide, so processes compare). A
  sampler also reads the pool's holders every quarter second: a name shared by two
  families is a duplicate.
- **Names lost.** After the load stops and every participant has let go, and once one
  reap interval has passed: every name ever handed out must be available again (the
  pool is drained with fresh owners to see them) or still held by a live owner.
- **Double lock holders.** Each lock is raced by several owner pids; a winner reads the
  record back (it must name it) and its hold interval, from the answered acquire to just
  before its release (or death), must not overlap another owner's on the same directory.
- **Hung calls.** Every call has a timeout; one that hits it is counted (and its caller
  stops trusting what it believes).
- **Resource hygiene.** After `Tree.stop()`: no new threads (except those of incarnations
  abandoned after their grace and of name-source calls past their timeout, counted
  apart), no child processes, no new file descriptors, no temporary files left.

`tests/test_chaos.py` runs a short version (`run_chaos(ChaosConfig(seconds=...))`).
The same file is also the client and worker program (`--client`, `--worker`).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCRIPT = Path(__file__).resolve()
now = time.monotonic
sys.path.insert(0, str(SCRIPT.parent))
from chaos_faults import FaultInjector, expected_under_faults, hostile_main  # noqa: E402

#: Set in the environment of client and worker processes of a fault-mode run.
FAULTS_ENV = "CHAOS_FAULTS"


# -- configuration and report --------------------------------------------------------------------


@dataclass
class ChaosConfig:
    """What to run and for how long; the defaults are the 60-second run's shape."""

    seconds: float = 60.0
    seed: int = 1
    name_threads: int = 3
    lock_threads: int = 2
    agent_threads: int = 1
    clients: int = 3
    workers: int = 2
    lock_dirs: int = 3
    reap_interval: float = 0.5
    check_interval: float = 0.5
    call_timeout: float = 10.0
    fault_pause: tuple[float, float] = (0.05, 0.35)
    #: Kill this share of the time a client process rather than anything else.
    client_kill_share: float = 0.12
    run_dir: Path | None = None
    keep_run_dir: bool = False
    #: Fault mode (`scripts/chaos_faults.py`): hostile peers, descriptor exhaustion, a full
    #: state filesystem (as root) and wall-clock steps, on top of the kills.
    faults: bool = False
    hostiles: int = 2


@dataclass
class Figure:
    label: str
    value: float | str
    limit: int | None = None  # an invariant: value must be <= limit

    @property
    def ok(self) -> bool:
        return self.limit is None or (isinstance(self.value, int | float) and self.value <= self.limit)


@dataclass
class ChaosReport:
    figures: list[Figure] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    run_dir: Path | None = None
    seconds: float = 0.0

    def add(self, label: str, value: float | str, limit: int | None = None) -> None:
        self.figures.append(Figure(label, value, limit))

    def value(self, label: str) -> Any:
        for figure in self.figures:
            if figure.label == label:
                return figure.value
        raise KeyError(label)

    @property
    def ok(self) -> bool:
        return all(figure.ok for figure in self.figures)

    def failures(self) -> list[Figure]:
        return [figure for figure in self.figures if not figure.ok]

    def table(self) -> str:
        width = max(len(figure.label) for figure in self.figures)
        lines = [f"{'figure':<{width}}  {'value':>10}  invariant", "-" * (width + 26)]
        for figure in self.figures:
            value = f"{figure.value:.2f}" if isinstance(figure.value, float) else str(figure.value)
            check = "" if figure.limit is None else (f"<= {figure.limit}  " + ("ok" if figure.ok else "VIOLATED"))
            lines.append(f"{figure.label:<{width}}  {value:>10}  {check}")
        lines.append("-" * (width + 26))
        lines.append(f"all invariants hold: {'yes' if self.ok else 'NO'}")
        if self.problems:
            lines.append("problems (first 30):")
            lines.extend(f"  - {problem}" for problem in self.problems[:30])
        return "\n".join(lines)


class Hung(Exception):
    """A call hit its timeout."""


# -- belief intervals -------------------------------------------------------------------------------


def overlaps(intervals: Iterable[tuple[str, Any, float, float]]) -> list[tuple[str, Any, Any, float]]:
    """`(key, family, start, end)` intervals: pairs of different families overlapping on one key.

    Returns `(key, family_a, family_b, overlap_seconds)`. Empty intervals (end <= start)
    are no belief at all.
    """
    by_key: dict[str, list[tuple[float, float, Any]]] = collections.defaultdict(list)
    for key, family, start, end in intervals:
        if end > start:
            by_key[key].append((start, end, family))
    found = []
    for key, spans in by_key.items():
        spans.sort(key=lambda span: span[0])
        active: list[tuple[float, float, Any]] = []
        for start, end, family in spans:
            active = [span for span in active if span[1] > start]
            for other_start, other_end, other_family in active:
                if other_family != family:
                    found.append((key, other_family, family, min(end, other_end) - start))
            active.append((start, end, family))
    return found


def owner_family(owner: Any) -> Any:
    """Who legitimately shares with whom: an owner and the `~`-suffixed owners it associated.

    A `WorkerProcess` URN (its hold lasts from checkout until its process has the name)
    is a wildcard: None.
    """
    if isinstance(owner, str):
        if owner.startswith("urn:"):
            return None
        return owner.partition("~")[0]
    return ("pid", owner)


def shared_across_families(holders: dict[str, list[Any]]) -> list[tuple[str, list[Any]]]:
    bad = []
    for name, owners in holders.items():
        # Each anonymous holder (None) is a family of its own.
        families = {("anonymous", index) if owner is None else owner_family(owner) for index, owner in enumerate(owners)}
        families -= {None}
        if len(families) > 1:
            bad.append((name, owners))
    return bad


# -- resource measurement --------------------------------------------------------------------------


def _fds() -> dict[int, str]:
    found = {}
    for entry in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found[int(entry)] = os.readlink(f"/proc/self/fd/{entry}")
    return found


def _children() -> set[int]:
    import psutil

    return {child.pid for child in psutil.Process().children(recursive=True)}


@dataclass
class Resources:
    threads: set[threading.Thread]
    fds: dict[int, str]
    children: set[int]
    temp_entries: int

    @classmethod
    def measure(cls) -> Resources:
        return cls(set(threading.enumerate()), _fds(), _children(), len(os.listdir(tempfile.gettempdir())))


def temporary_files(directory: Path) -> list[Path]:
    """Files a killed or interrupted writer leaves (`*.tmp*`), and the spare record files
    (`agent.lock.next`) that stopping the lock actors removes, anywhere below `directory`."""
    from actors.locks._lock_file import _TEMP_NAME as SPARE_RECORD_NAME

    if not directory.exists():
        return []
    return [
        path
        for path in directory.rglob("*")
        if (".tmp" in path.name or path.name == SPARE_RECORD_NAME) and path.is_file()
    ]


class FlakySource:
    """The themed names, slowly and sometimes not at all: checkouts that wait for a chunk
    see `NameSourceError` (a `ClientError`, expected) and the source runs under kills."""

    def __init__(self, seed: int, failure_rate: float = 0.15, max_delay: float = 0.05) -> None:
        from actors import ThemedSource

        self._names = ThemedSource()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._failure_rate = failure_rate
        self._max_delay = max_delay
        self.calls = 0
        self.failures = 0

    def __call__(self, count: int, used: frozenset[str]) -> list[str]:
        with self._lock:
            self.calls += 1
            delay = self._rng.uniform(0, self._max_delay)
            fails = self._rng.random() < self._failure_rate
            if fails:
                self.failures += 1
        time.sleep(delay)  # a slow nomenclater, not a synchronisation
        if fails:
            raise RuntimeError("chaos: the name source failed")
        return list(self._names(count, used))


# -- participants ---------------------------------------------------------------------------------


class ChaosBackend:
    """An agent backend that counts its disposals."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.disposals = 0
        self._lock = threading.Lock()

    def dispose(self) -> None:
        with self._lock:
            self.disposals += 1


class _Run:
    def __init__(self, config: ChaosConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        self.state_dir = run_dir / "state"
        self.ledger_dir = run_dir / "ledgers"
        self.ledger_dir.mkdir(parents=True, exist_ok=True)
        self.lock_dirs = [str(run_dir / "workers" / f"w{index}") for index in range(config.lock_dirs)]
        for directory in self.lock_dirs:
            os.makedirs(directory, exist_ok=True)
        self.socket_path = self.state_dir / "tree.sock"
        self.rng = random.Random(config.seed)
        self.stopping = threading.Event()
        self.faults_stop = threading.Event()
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.faults: collections.Counter[str] = collections.Counter()
        self.problems: list[str] = []
        self.name_intervals: list[tuple[str, Any, float, float]] = []
        self.lock_intervals: list[tuple[str, Any, float, float]] = []
        self.seen_names: set[str] = set()
        self.retired_owners: set[str] = set()
        self.shared_names: dict[str, list[Any]] = {}
        self.backends: list[ChaosBackend] = []
        self.registered: set[int] = set()
        self.clients: list[subprocess.Popen[bytes] | None] = [None] * config.clients
        self.client_ends: dict[int, float] = {}  # pid -> when its beliefs ended (killed)
        self.all_clients: list[subprocess.Popen[bytes]] = []
        self.sleepers: list[subprocess.Popen[bytes]] = []
        self.worker_ids = [f"worker-{index}" for index in range(config.workers)]
        self.anonymous_count = 0
        self.abandoned_logged = 0
        self.deadline_wall = time.time() + config.seconds + 120.0  # children give up by then
        self.tree: Any = None
        self.gateway: Any = None

    # -- bookkeeping ----------------------------------------------------------------------------

    def count(self, what: str, amount: int = 1) -> None:
        with self._lock:
            self.counts[what] += amount

    def problem(self, text: str) -> None:
        with self._lock:
            if len(self.problems) < 200:
                self.problems.append(text)

    def believed(self, name: str, family: Any, start: float, end: float) -> None:
        with self._lock:
            self.name_intervals.append((name, family, start, end))
            self.seen_names.add(name)

    def held_lock(self, directory: str, owner: int, start: float, end: float) -> None:
        with self._lock:
            self.lock_intervals.append((directory, owner, start, end))

    def get(self, future: Any, what: str) -> Any:
        """The future's value within the call timeout; `Hung` (counted) past it."""
        from supervision import ChildNotFound

        try:
            return future.get(timeout=self.config.call_timeout)
        except _timeout_errors() as error:
            self.count("hung calls")
            self.problem(f"hung: {what}: {error!r}")
            raise Hung(what) from None
        except ChildNotFound as error:
            if "in time" in str(error):  # a Handle waited its whole timeout for a restart
                self.count("hung calls")
                self.problem(f"hung (no restart in time): {what}: {error}")
                raise Hung(what) from None
            raise

    def unexpected(self, what: str, error: BaseException) -> None:
        label = expected_under_faults(error) if self.config.faults else None
        if label is not None:
            self.count(label)
            return
        self.count("unexpected errors")
        self.problem(f"unexpected error in {what}: {error!r}")

    # -- processes ------------------------------------------------------------------------------

    def spawn_sleeper(self) -> subprocess.Popen[bytes]:
        """A live process whose pid owns locks; it exits when its stdin closes."""
        process = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE, close_fds=True
        )
        with self._lock:
            self.sleepers.append(process)
        return process

    def end_sleeper(self, process: subprocess.Popen[bytes]) -> None:
        process.kill()
        process.wait(10)
        if process.stdin is not None:
            process.stdin.close()

    def spawn_client(self, slot: int) -> None:
        seed = self.rng.randrange(1 << 30)
        process = subprocess.Popen(
            [
                sys.executable,
                str(SCRIPT),
                "--client",
                str(self.socket_path),
                str(self.ledger_dir),
                json.dumps(self.lock_dirs),
                str(seed),
                str(self.deadline_wall),
                str(self.config.call_timeout),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            env=self.child_env(),
        )
        with self._lock:
            self.clients[slot] = process
            self.all_clients.append(process)

    def child_env(self) -> dict[str, str]:
        return {**os.environ, FAULTS_ENV: "1"} if self.config.faults else dict(os.environ)

    def spawn_hostile(self, slot: int) -> subprocess.Popen[bytes]:
        """A hostile peer process (fault mode): asks only for what it must be refused."""
        process = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--hostile", str(self.socket_path),
             str(self.ledger_dir / f"hostile-{slot}.jsonl"), json.dumps(self.lock_dirs),
             str(self.rng.randrange(1 << 30)), str(self.deadline_wall)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
        )
        with self._lock:
            self.all_clients.append(process)
        return process

    def kill_client(self, slot: int) -> bool:
        with self._lock:
            process = self.clients[slot]
        if process is None or process.poll() is not None:
            return False
        self.client_ends[process.pid] = now()  # its beliefs end here: it is dead from now on
        process.kill()
        process.wait(10)
        if process.stdin is not None:
            process.stdin.close()
        return True


def _timeout_errors() -> tuple[type[BaseException], ...]:
    import pykka

    return (pykka.Timeout, TimeoutError)


# -- load: threads -------------------------------------------------------------------------------


def _name_thread(run: _Run, index: int, seed: int) -> None:
    """Checkout, associate (with its own `~child` owner), confirm, checkin, with str owners."""
    from actors import NameSourceError
    from supervision import ActorCrashed, ClientError, StorageError

    rng = random.Random(seed)
    names = run.tree.names.proxy()
    generation = 0
    owner = f"t{index}.g{generation}"
    held: str | None = None
    since = 0.0

    def resync() -> None:
        nonlocal held, since
        for _ in range(100):
            try:
                held = run.get(names.get_name_by_pid(owner), f"get_name_by_pid({owner})")
                since = now()
                return
            except ActorCrashed:
                run.count("calls cut off by a crash")
            except StorageError as error:
                # The pool cannot read its state yet (out of descriptors): it answers nothing.
                run.unexpected(f"name thread {index}", error)  # expected only in fault mode
                run.stopping.wait(0.05)  # pacing, not synchronisation
        raise Hung(f"resync of {owner} failed 100 times")

    def retire_owner() -> None:
        """Leave this owner's names to be let go at the end; go on as a new owner."""
        nonlocal generation, owner, held
        with run._lock:
            run.retired_owners.update({owner, f"{owner}~child"})
        generation += 1
        owner, held = f"t{index}.g{generation}", None

    anonymous: list[tuple[str, str, float]] = []  # (name, its family, since)
    while not run.stopping.is_set():
        sent = now()
        try:
            if rng.random() < 0.05:
                # Anonymous holders always get a new name: the pool keeps asking the source.
                if len(anonymous) < 25 and (rng.random() < 0.55 or not anonymous):
                    name = run.get(names.checkout_name(None), "checkout_name(None)")
                    run.anonymous_count += 1
                    anonymous.append((name, f"anon-{index}-{run.anonymous_count}", now()))
                else:
                    name, family, start = anonymous.pop(0)
                    run.believed(name, family, start, sent)
                    try:
                        run.get(names.checkin_name(name), f"checkin_name({name})")
                    except (ActorCrashed, StorageError) as error:
                        # Cut off before it was durable, or refused: the name is still ours
                        # (nobody else can find an anonymous holder's name): check it in later.
                        if isinstance(error, StorageError):
                            run.unexpected(f"name thread {index}", error)  # expected only in fault mode
                        else:
                            run.count("calls cut off by a crash")
                        anonymous.append((name, family, sent))
            elif held is None:
                held = run.get(names.checkout_name(owner), f"checkout_name({owner})")
                since = now()
            else:
                choice = rng.random()
                if choice < 0.4:
                    name, held = held, None
                    run.believed(name, owner, since, sent)
                    run.get(names.checkin_name(name), f"checkin_name({name})")
                elif choice < 0.6:
                    run.get(names.associate_name(held, f"{owner}~child"), f"associate_name({held})")
                elif choice < 0.7:
                    run.get(names.dissociate(f"{owner}~child"), f"dissociate({owner}~child)")
                else:
                    got = run.get(names.get_name_by_pid(owner), f"get_name_by_pid({owner})")
                    if got != held:
                        run.count("identity mismatches")
                        run.problem(f"{owner} holds {held!r} but the pool says {got!r}")
                        run.believed(held, owner, since, sent)
                        held, since = got, now()
            run.count("operations")
        except Hung:
            # Whatever that call did is unknown: stop believing, retire this owner (its
            # names are let go at the end) and go on as a new one.
            if held is not None:
                run.believed(held, owner, since, sent)
            retire_owner()
        except (ActorCrashed, StorageError) as error:
            # Cut off before its write was durable, or refused (storage failing under the
            # fault mode): nothing happened. Ask what is true.
            if isinstance(error, StorageError):
                run.unexpected(f"name thread {index}", error)  # expected only in fault mode
            else:
                run.count("calls cut off by a crash")
            if held is not None:
                run.believed(held, owner, since, sent)
            try:
                resync()
            except Hung:
                retire_owner()
        except NameSourceError:
            run.count("name source failures seen by checkouts (expected)")
        except ClientError as error:
            run.unexpected(f"name thread {index}", error)
        except Exception as error:
            run.unexpected(f"name thread {index}", error)
            run.stopping.wait(0.01)
        run.stopping.wait(rng.uniform(0, 0.002))
    def final_checkin(name: str) -> None:
        """Check `name` in, again while refused (storage still failing) or cut off by a crash."""
        for _ in range(50):
            try:
                run.get(names.checkin_name(name), f"final checkin_name({name})")
                return
            except (ActorCrashed, StorageError):
                run.stopping.wait(0.05)  # pacing, not synchronisation
        raise Hung(f"final checkin_name({name}) refused 50 times")

    for name, family, start in anonymous:
        run.believed(name, family, start, now())
        try:
            final_checkin(name)
        except Exception as error:
            run.unexpected(f"name thread {index} final checkin", error)
    if held is not None:
        run.believed(held, owner, since, now())
        try:
            final_checkin(held)
        except Exception as error:
            run.unexpected(f"name thread {index} final checkin", error)
            with run._lock:
                run.retired_owners.update({owner, f"{owner}~child"})
    with run._lock:
        run.retired_owners.add(f"{owner}~child")


def _lock_call(run: _Run, directory: str, method: str, *args: Any, **kwargs: Any) -> Any:
    """A call to the lock of `directory`, sent again while it never reached a handler.

    `lock_for` is sent again when the lock supervisor failed while it waited for a lock's
    exit notice (`ActorCrashed`; nothing happened: see tests/test_chaos.py), the lock's
    own call when its `ActorRef` was dead by the time it was sent or handled.
    """
    import pykka

    from supervision import ActorCrashed

    for _ in range(50):
        try:
            ref = run.get(run.tree.locks.proxy().lock_for(directory), f"lock_for({directory})")
        except (ActorCrashed, pykka.ActorDeadError):
            run.count("lock_for cut off by a lock supervisor failure (sent again)")
            continue
        try:
            return run.get(getattr(ref.proxy(), method)(*args, **kwargs), f"{method} on {directory}")
        except pykka.ActorDeadError:
            run.count("lock calls sent again (actor gone)")
    raise Hung(f"{method} on {directory}: no live lock actor after 50 tries")


def _lock_thread(run: _Run, index: int, seed: int) -> None:
    """Races for the locks on behalf of a live sleeper process (its pid is the owner)."""
    from actors import Locked, NotLocked

    rng = random.Random(seed)
    sleeper = run.spawn_sleeper()
    while not run.stopping.is_set():
        directory = rng.choice(run.lock_dirs)
        owner = sleeper.pid
        start: float | None = None
        sent = now()
        try:
            try:
                _lock_call(run, directory, "acquire", f"thread-{index}", owner=owner)
            except Locked:
                run.count("lock contention (Locked)")
                run.count("operations")
                continue
            start = now()
            run.count("operations")
            record = _lock_call(run, directory, "read")
            if record is None or record.pid != owner:
                run.count("lock checks failed")
                run.problem(f"thread {index}: acquired {directory} for {owner}, but the record says {record!r}")
            _lock_call(run, directory, "check", owner=owner)
            run.stopping.wait(rng.uniform(0, 0.01))
            sent = now()
            run.held_lock(directory, owner, start, sent)
            start = None
            try:
                _lock_call(run, directory, "release", owner=owner)
            except NotLocked as error:
                run.count("lock checks failed")
                run.problem(f"thread {index}: release of {directory} for {owner}: {error}")
            run.count("operations", 3)
        except Locked as error:  # from check: someone else holds what we won
            run.count("lock checks failed")
            run.problem(f"thread {index}: check of {directory} for {owner}: {error}")
            if start is not None:
                run.held_lock(directory, owner, start, now())
        except Hung:
            if start is not None:
                run.held_lock(directory, owner, start, sent)
            run.end_sleeper(sleeper)  # its lock, if any, is stale from now on
            sleeper = run.spawn_sleeper()
        except Exception as error:
            if start is not None:
                run.held_lock(directory, owner, start, now())
            run.unexpected(f"lock thread {index}", error)
            run.stopping.wait(0.01)
        run.stopping.wait(rng.uniform(0, 0.003))
    run.end_sleeper(sleeper)


def _agent_thread(run: _Run, index: int, seed: int) -> None:
    """Registers backends and gets them back; a few chats are closed."""
    from supervision import ClientError

    rng = random.Random(seed)
    agents = run.tree.agents.proxy()
    while not run.stopping.is_set():
        primary, agent = f"chat-{index}-{rng.randrange(4)}", f"agent-{rng.randrange(3)}"
        try:
            choice = rng.random()
            if choice < 0.4:
                with run._lock:
                    backend = ChaosBackend(len(run.backends))
                    run.backends.append(backend)
                run.get(agents.register(primary, agent, backend), "register")
                with run._lock:
                    run.registered.add(backend.number)
            elif choice < 0.85:
                run.get(agents.get(primary, agent), "get")
            elif choice < 0.95:
                run.get(agents.health(), "health")
            else:
                run.get(agents.close_chat(primary), "close_chat")
            run.count("operations")
        except Hung:
            pass
        except ClientError as error:
            run.unexpected(f"agent thread {index}", error)
        except Exception as error:
            run.unexpected(f"agent thread {index}", error)
            run.stopping.wait(0.01)
        run.stopping.wait(rng.uniform(0, 0.002))


def _sampler_thread(run: _Run) -> None:
    """Reads the pool's holders four times a second: a name shared across families is a duplicate."""
    from actors.names._pool import HOLDERS_REQUEST
    from supervision import ActorCrashed

    while not run.stopping.wait(0.25):
        try:
            holders = run.get(run.tree.names.ask_future(HOLDERS_REQUEST), "holders")
        except (ActorCrashed, Hung):
            continue
        except Exception as error:
            run.unexpected("holders sampler", error)
            continue
        with run._lock:
            run.seen_names.update(holders)
            for name, owners in shared_across_families(holders):
                if name not in run.shared_names:
                    run.shared_names[name] = owners
                    run.problems.append(f"{name!r} shared across families: {owners!r}")


# -- faults -------------------------------------------------------------------------------------


def _fault_thread(run: _Run, seed: int) -> None:
    from supervision import kill

    rng = random.Random(seed)
    kinds = ["names pool", "agent pool", "lock actor", "lock supervisor", "worker process", "worker actor"]
    root = run.tree.supervisor.proxy()

    def whereis(child_id: str) -> Any:
        return run.get(root.whereis(child_id), f"whereis({child_id})")

    while not run.faults_stop.wait(rng.uniform(*run.config.fault_pause)):
        if run.config.clients and rng.random() < run.config.client_kill_share:
            slot = rng.randrange(run.config.clients)
            try:
                if run.kill_client(slot):
                    run.faults["client process"] += 1
                    run.spawn_client(slot)
            except OSError as error:  # out of descriptors (fault mode): that slot stays empty
                run.unexpected("fault injector (client process)", error)
            continue
        kind = rng.choice(kinds)
        try:
            if kind == "names pool":
                ref = whereis("names")
            elif kind == "agent pool":
                ref = whereis("agents")
            elif kind == "lock supervisor":
                ref = whereis("locks")
            elif kind == "lock actor":
                locks = whereis("locks")
                if locks is None:
                    continue
                children = [child.ref for child in run.get(locks.proxy().which_children(), "locks' children")]
                children = [child for child in children if child is not None]
                ref = rng.choice(children) if children else None
            else:
                if not run.worker_ids:
                    continue
                ref = whereis(rng.choice(run.worker_ids))
                if kind == "worker process":
                    if ref is None:
                        continue
                    pid = run.get(ref.proxy().process_pid(), "process_pid")
                    if pid is None:
                        continue
                    os.kill(pid, signal.SIGKILL)
                    run.faults[kind] += 1
                    continue
            if ref is None or not ref.is_alive():
                continue
            kill(ref, "chaos")
            run.faults[kind] += 1
        except Hung:
            pass
        except Exception as error:  # an actor that died under us: no fault this time
            if type(error).__name__ not in ("ActorDeadError", "Undelivered", "ProcessLookupError"):
                run.unexpected(f"fault injector ({kind})", error)


# -- the client and worker programs (run as child processes) --------------------------------------


class _Ledger:
    """JSON lines appended with one write each: nothing written is lost to a SIGKILL."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.counts: collections.Counter[str] = collections.Counter()
        self._flushed = now()

    def write(self, **record: Any) -> None:
        os.write(self._fd, (json.dumps(record) + "\n").encode())

    def count(self, what: str, amount: int = 1) -> None:
        self.counts[what] += amount
        if now() - self._flushed > 0.25:
            self.flush_counts()

    def flush_counts(self) -> None:
        if self.counts:
            self.write(k="counts", counts=dict(self.counts))
            self.counts.clear()
        self._flushed = now()


def _parent_gone(parent: int, deadline: float) -> bool:
    return os.getppid() != parent or time.time() > deadline


def client_main(socket_path: str, ledger_dir: str, lock_dirs: list[str], seed: int, deadline: float,
                call_timeout: float) -> int:
    """A client process: names owned by its own pid, and locks, over the socket."""
    from loguru import logger

    logger.remove()
    from actors import Client, Locked, NameSourceError, NotLocked, RemoteError
    from supervision import ActorCrashed as Crashed
    from supervision import ClientError
    from supervision import Undelivered

    parent = os.getppid()
    rng = random.Random(seed)
    faults = os.environ.get(FAULTS_ENV) == "1"
    ledger = _Ledger(Path(ledger_dir) / f"client-{os.getpid()}.jsonl")
    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.buffer.read()  # EOF or anything: stop
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    held: str | None = None
    held_lock: str | None = None

    def hung(what: str) -> int:
        ledger.count("hung calls")
        ledger.write(k="problem", text=f"client {os.getpid()} hung: {what}")
        end_beliefs()
        ledger.flush_counts()
        return 3

    def end_beliefs() -> None:
        t = now()
        if held is not None:
            ledger.write(k="name-", n=held, t=t)
        if held_lock is not None:
            ledger.write(k="lock-", d=held_lock, t=t)

    try:
        client = Client(socket_path, timeout=call_timeout + 5.0)
    except OSError as error:
        ledger.write(k="problem", text=f"client {os.getpid()} cannot connect: {error!r}")
        ledger.count("unexpected errors")
        ledger.flush_counts()
        return 4

    def call(op: str, *args: Any, **kwargs: Any) -> Any:
        for _ in range(50):
            try:
                return client.call(op, *args, **kwargs)
            except Undelivered as error:
                ledger.count("lock calls sent again (actor gone)")
                last = error
            except Crashed as error:
                if not op.startswith("locks."):
                    raise  # names: the caller asks what is true instead
                # Only the gateway's lock_for defers; cut off, it did nothing.
                ledger.count("lock_for cut off by a lock supervisor failure (sent again)")
                last = error
            except RemoteError as error:
                if error.type_name == "Timeout":
                    raise TimeoutError(str(error)) from None
                if error.type_name not in ("ActorDeadError", "Undelivered"):
                    raise
                ledger.count("lock calls sent again (actor gone)")
                last = error
        raise TimeoutError(f"{op}: never delivered after 50 tries: {last!r}")

    with client:
        while not stop.is_set() and not _parent_gone(parent, deadline):
            sent = now()
            try:
                choice = rng.random()
                if choice < 0.45:
                    if held is None:
                        held = call("names.checkout_name")
                        ledger.write(k="name+", n=held, t=now())
                    elif choice < 0.3:
                        ledger.write(k="name-", n=held, t=sent)
                        name, held = held, None
                        call("names.checkin_name", name)
                    else:
                        got = call("names.get_name_by_pid")
                        if got != held:
                            ledger.count("identity mismatches")
                            ledger.write(k="problem", text=f"client {os.getpid()} holds {held!r}, pool says {got!r}")
                            ledger.write(k="name-", n=held, t=sent)
                            held = got
                            if held is not None:
                                ledger.write(k="name+", n=held, t=now())
                    ledger.count("operations")
                else:
                    directory = rng.choice(lock_dirs)
                    try:
                        call("locks.acquire", directory, f"client-{os.getpid()}")
                    except Locked:
                        ledger.count("lock contention (Locked)")
                        ledger.count("operations")
                        continue
                    held_lock = directory
                    ledger.write(k="lock+", d=directory, t=now())
                    record = call("locks.read", directory)
                    if not isinstance(record, dict) or record.get("pid") != os.getpid():
                        ledger.count("lock checks failed")
                        ledger.write(k="problem", text=f"client {os.getpid()} won {directory}, record {record!r}")
                    try:
                        call("locks.check", directory)
                    except Locked as error:
                        ledger.count("lock checks failed")
                        ledger.write(k="problem", text=f"client {os.getpid()} check of {directory}: {error}")
                    stop.wait(rng.uniform(0, 0.01))
                    ledger.write(k="lock-", d=directory, t=now())
                    held_lock = None
                    try:
                        call("locks.release", directory)
                    except NotLocked as error:
                        ledger.count("lock checks failed")
                        ledger.write(k="problem", text=f"client {os.getpid()} release of {directory}: {error}")
                    ledger.count("operations", 4)
            except (TimeoutError, OSError) as error:
                label = expected_under_faults(error) if faults else None
                if label is not None:
                    # Refused (nothing applied), or the connection was closed with the
                    # call in flight (its effect unknown): ask what is true.
                    ledger.count(label)
                    if held is not None:
                        ledger.write(k="name-", n=held, t=sent)
                    held = None
                    with contextlib.suppress(Exception):
                        held = call("names.get_name_by_pid")
                    if held is not None:
                        ledger.write(k="name+", n=held, t=now())
                    stop.wait(0.01)
                    continue
                if isinstance(error, ClientError):  # an answer (e.g. NotPermitted), not a hang
                    ledger.count("unexpected errors")
                    ledger.write(k="problem", text=f"client {os.getpid()}: {error!r}")
                    stop.wait(0.01)
                    continue
                if isinstance(error, ConnectionError):
                    ledger.write(k="problem", text=f"client {os.getpid()} lost the daemon: {error!r}")
                    ledger.count("unexpected errors")
                    end_beliefs()
                    ledger.flush_counts()
                    return 4
                return hung(repr(error))
            except NameSourceError:
                ledger.count("name source failures seen by checkouts (expected)")
            except Crashed:
                ledger.count("calls cut off by a crash")
                # Nothing happened; ask what is true (retried: the read may be cut off too).
                if held is not None:
                    ledger.write(k="name-", n=held, t=sent)
                for _ in range(20):
                    try:
                        held = call("names.get_name_by_pid")
                        break
                    except Crashed:
                        ledger.count("calls cut off by a crash")
                    except (TimeoutError, OSError) as error:
                        label = expected_under_faults(error) if faults else None
                        if label is not None:  # refused (its state unreadable): ask again
                            ledger.count(label)
                            stop.wait(0.05)
                            continue
                        held = None
                        return hung(repr(error))
                else:
                    held = None
                    return hung("resync cut off 20 times")
                if held is not None:
                    ledger.write(k="name+", n=held, t=now())
            except Exception as error:
                label = expected_under_faults(error) if faults else None
                if label is not None:
                    ledger.count(label)  # refused (an out-of-descriptors lock call): nothing changed
                else:
                    ledger.count("unexpected errors")
                    ledger.write(k="problem", text=f"client {os.getpid()}: {error!r}")
                stop.wait(0.01)
            stop.wait(rng.uniform(0, 0.003))
        # Asked to stop: let go of everything, then say so.
        end_beliefs()
        try:
            if held is not None:
                call("names.checkin_name", held)
        except Exception as error:
            ledger.write(k="problem", text=f"client {os.getpid()} final checkin: {error!r}")
            ledger.count("unexpected errors")
        ledger.flush_counts()
    return 0


def worker_main(ledger_dir: str, deadline: float) -> int:
    """A worker process: inherit the name, then keep confirming the pool agrees."""
    from loguru import logger

    logger.remove()
    from actors import Client, inherit_identity
    from supervision import ActorCrashed, ClientError

    parent = os.getppid()
    ledger = _Ledger(Path(ledger_dir) / f"worker-{os.getpid()}.jsonl")
    name = os.environ.get("AGENT_NAME")
    for _ in range(50):
        try:
            inherit_identity()
            break
        except ActorCrashed:
            ledger.count("calls cut off by a crash")
        except Exception as error:
            label = expected_under_faults(error) if os.environ.get(FAULTS_ENV) == "1" else None
            if label is not None:  # refused (full disk, no descriptors): nothing changed, try again
                ledger.count(label)
                time.sleep(0.05)  # pacing, not synchronisation
                continue
            ledger.count("unexpected errors")
            ledger.write(k="problem", text=f"worker {os.getpid()} inherit_identity: {error!r}")
            ledger.flush_counts()
            return 5
    ledger.count("operations")
    with Client(os.environ["ACTORS_SOCKET"], timeout=15.0) as client:
        while not _parent_gone(parent, deadline):
            try:
                got = client.call("names.get_name_by_pid")
            except ActorCrashed:
                ledger.count("calls cut off by a crash")
                continue
            except (TimeoutError, OSError) as error:
                label = expected_under_faults(error) if os.environ.get(FAULTS_ENV) == "1" else None
                if label is not None:
                    ledger.count(label)
                    time.sleep(0.05)  # pacing, not synchronisation
                    continue
                if isinstance(error, ClientError):  # an answer (e.g. NotPermitted), not a hang
                    ledger.count("unexpected errors")
                    ledger.write(k="problem", text=f"worker {os.getpid()}: {error!r}")
                    time.sleep(0.05)  # pacing, not synchronisation
                    continue
                ledger.count("hung calls")
                ledger.write(k="problem", text=f"worker {os.getpid()} hung: {error!r}")
                ledger.flush_counts()
                return 3
            ledger.count("operations")
            if got == name:
                ledger.write(k="wname", n=name, t=now())
            else:
                ledger.count("identity mismatches")
                ledger.write(k="problem", text=f"worker {os.getpid()} is {name!r}, the pool says {got!r}")
            time.sleep(0.05)  # pacing, not synchronisation
    ledger.flush_counts()
    return 0


# -- reading the ledgers -----------------------------------------------------------------------------


def read_ledgers(run: _Run) -> None:
    for path in sorted(run.ledger_dir.glob("*.jsonl")):
        _, _, pid_text = path.stem.partition("-")
        pid = int(pid_text)
        family = ("pid", pid)
        open_name: tuple[str, float] | None = None
        open_lock: tuple[str, float] | None = None
        confirmations: dict[str, list[float]] = collections.defaultdict(list)
        with open(path) as file:
            lines = file.read().splitlines()
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by SIGKILL mid-write cannot happen with O_APPEND, but be safe
            kind = record.get("k")
            if kind == "counts":
                for what, amount in record["counts"].items():
                    run.count(what, amount)
            elif kind == "problem":
                run.problem(record["text"])
            elif kind == "name+":
                open_name = (record["n"], record["t"])
            elif kind == "name-" and open_name is not None:
                run.believed(open_name[0], family, open_name[1], record["t"])
                open_name = None
            elif kind == "lock+":
                open_lock = (record["d"], record["t"])
            elif kind == "lock-" and open_lock is not None:
                run.held_lock(open_lock[0], pid, open_lock[1], record["t"])
                open_lock = None
            elif kind == "wname":
                confirmations[record["n"]].append(record["t"])
        end = run.client_ends.get(pid)
        if open_name is not None:
            run.believed(open_name[0], family, open_name[1], end if end is not None else open_name[1])
        if open_lock is not None:
            run.held_lock(open_lock[0], pid, open_lock[1], end if end is not None else open_lock[1])
        for name, times in confirmations.items():
            run.believed(name, family, min(times), max(times))


# -- the run --------------------------------------------------------------------------------------


def run_chaos(config: ChaosConfig, *, progress: Callable[[str], None] | None = None) -> ChaosReport:
    """Run the chaos for `config.seconds`, stop everything, and judge the invariants."""
    from loguru import logger

    from actors import WorkerProcess, start_tree
    from actors.daemon._gateway import Gateway
    from supervision import ChildSpec

    say = progress or (lambda text: None)
    own_dir = config.run_dir is None
    run_dir = Path(tempfile.mkdtemp(prefix="chaos-")) if own_dir else Path(config.run_dir)  # type: ignore[arg-type]
    run = _Run(config, run_dir)
    report = ChaosReport(run_dir=run_dir)

    def on_log(message: Any) -> None:
        text = message.record["message"]
        if text.startswith("restarted child"):
            run.count("restarts seen")
        elif "abandoned" in text:
            run.count("incarnations abandoned")

    sink = logger.add(on_log, level="WARNING", enqueue=False)
    before = Resources.measure()
    started = now()
    threads: list[threading.Thread] = []
    source = FlakySource(config.seed)
    injector: FaultInjector | None = None
    if config.faults:
        injector = FaultInjector(run, config.seed ^ 0xFA17, spawn_hostile=run.spawn_hostile)
        injector.prepare_state_dir(run.state_dir)
    daemon_down = 0
    try:
        run.tree = start_tree(
            run.state_dir,
            name_source=source,
            reap_interval=config.reap_interval,
            check_interval=config.check_interval,
            idle_ttl=2.0,
            max_live=8,
            sweep_interval=0.5,
            max_restarts=100_000,  # the chaos must never take the whole tree down
            max_seconds=1.0,
        )
        run.gateway = Gateway(run.tree, run.socket_path, call_timeout=config.call_timeout)
        run.gateway.start()
        root = run.tree.supervisor.proxy()
        for worker_id in run.worker_ids:
            spec = ChildSpec(
                worker_id,
                WorkerProcess,
                args=([sys.executable, str(SCRIPT), "--worker", str(run.ledger_dir), str(run.deadline_wall)],),
                kwargs={"names": run.tree.names, "socket_path": str(run.socket_path), "term_timeout": 1.0,
                        "env": run.child_env()},
            )
            root.start_child(spec).get(timeout=config.call_timeout)
        for slot in range(config.clients):
            run.spawn_client(slot)

        def start(target: Callable[..., None], *args: Any, name: str) -> None:
            thread = threading.Thread(target=target, args=(run, *args), name=name, daemon=True)
            threads.append(thread)
            thread.start()

        seeds = random.Random(config.seed ^ 0x5EED)
        for index in range(config.name_threads):
            start(_name_thread, index, seeds.randrange(1 << 30), name=f"chaos-names-{index}")
        for index in range(config.lock_threads):
            start(_lock_thread, index, seeds.randrange(1 << 30), name=f"chaos-locks-{index}")
        for index in range(config.agent_threads):
            start(_agent_thread, index, seeds.randrange(1 << 30), name=f"chaos-agents-{index}")
        start(_sampler_thread, name="chaos-sampler")
        fault_thread = threading.Thread(
            target=_fault_thread, args=(run, seeds.randrange(1 << 30)), name="chaos-faults", daemon=True
        )
        fault_thread.start()
        if injector is not None:
            injector.start(config.hostiles)
        say(f"chaos for {config.seconds:g}s in {run_dir} (seed {config.seed}{', faults' if injector else ''})")

        run.faults_stop.wait(config.seconds)  # the run's length, not a synchronisation
        run.faults_stop.set()
        fault_thread.join(config.call_timeout * 3)
        if injector is not None:
            injector.stop()
        daemon_down = _daemon_down(run)
        say("faults stopped; stopping the load")
        _wind_down(run, threads)
        report.seconds = now() - started

        read_ledgers(run)
        say("checking names and locks")
        lost, lost_detail = _lost_names(run)
        run.problems.extend(lost_detail)
    finally:
        run.stopping.set()
        run.faults_stop.set()
        if injector is not None:
            injector.stop()
        _stop_everything(run)
        if injector is not None:
            injector.unmount()
        logger.remove(sink)

    agents_undisposed, agents_twice = _backend_disposals(run, stopped=True)
    hygiene = _hygiene(run, before)

    duplicates = overlaps(run.name_intervals)
    for name, first, second, seconds in duplicates[:20]:
        run.problems.append(f"name {name!r} believed by {first} and {second} at once for {seconds * 1000:.1f} ms")
    double_locks = overlaps(run.lock_intervals)
    for directory, first, second, seconds in double_locks[:20]:
        run.problems.append(f"lock {directory} held by {first} and {second} at once for {seconds * 1000:.1f} ms")

    counts = run.counts
    report.add("seconds of load", round(config.seconds, 1))
    report.add("operations done", counts["operations"])
    report.add("faults injected", sum(run.faults.values()))
    for kind in sorted(run.faults):
        report.add(f"  faults: {kind}", run.faults[kind])
    if injector is not None:
        for label, value in injector.figures():
            report.add(label, value)
        for label in sorted(counts):
            if "(expected)" in label or label.startswith(("hostile", "half frames", "malformed")):
                if label != "hostile requests served":
                    report.add(f"  {label}", counts[label])
        report.add("hostile requests served", counts["hostile requests served"], 0)
    report.add("daemon down after the faults (root failed or socket not answering)", daemon_down, 0)
    report.add("restarts seen", counts["restarts seen"])
    report.add("calls cut off by a crash (retried)", counts["calls cut off by a crash"])
    report.add("lock calls sent again (actor gone)", counts["lock calls sent again (actor gone)"])
    report.add("lock_for cut off by a lock supervisor failure (sent again)",
               counts["lock_for cut off by a lock supervisor failure (sent again)"])
    report.add("lock contention (Locked)", counts["lock contention (Locked)"])
    report.add("name source calls / failures", f"{source.calls}/{source.failures}")
    report.add("name source failures seen by checkouts (expected)",
               counts["name source failures seen by checkouts (expected)"])
    report.add("names seen", len(run.seen_names))
    report.add("name beliefs checked", len(run.name_intervals))
    report.add("lock holds checked", len(run.lock_intervals))
    report.add("duplicate name holders", len({name for name, *_ in duplicates} | set(run.shared_names)), 0)
    report.add("names lost", lost, 0)
    report.add("identity mismatches", counts["identity mismatches"], 0)
    report.add("double lock holders", len(double_locks), 0)
    report.add("lock checks failed", counts["lock checks failed"], 0)
    report.add("calls hung past their timeout", counts["hung calls"], 0)
    report.add("unexpected errors", counts["unexpected errors"], 0)
    report.add("backends registered", len(run.registered))
    report.add("backends disposed twice", agents_twice, 0)
    report.add("backends never disposed", agents_undisposed, 0)
    for label, value, limit in hygiene:
        report.add(label, value, limit)
    report.problems = run.problems
    if own_dir and report.ok and not config.keep_run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
        report.run_dir = None
    return report


def _daemon_down(run: _Run) -> int:
    """1 unless the root supervisor runs and the socket answers a call (within 10 s)."""
    from actors import Client

    deadline = now() + 10.0
    while True:
        try:
            with Client(str(run.socket_path), timeout=5.0) as client:
                client.call("names.pool_stats")
            if run.tree.supervisor.is_alive():
                return 0
        except Exception as error:
            last = error
        else:
            last = RuntimeError("the root supervisor is not alive")
        if now() > deadline:
            run.problem(f"daemon not serving after the faults: {last!r}")
            return 1
        time.sleep(0.1)  # a bounded poll for the socket to answer again


def _wind_down(run: _Run, threads: list[threading.Thread]) -> None:
    """Stop the load: threads and clients let go of what they hold; workers are terminated."""
    run.stopping.set()
    for thread in threads:
        thread.join(run.config.call_timeout * 3)
        if thread.is_alive():
            run.unexpected("wind-down", RuntimeError(f"load thread {thread.name} did not stop"))
    for process in list(run.clients):
        if process is not None and process.poll() is None and process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
    for process in list(run.clients):
        if process is None:
            continue
        try:
            process.wait(run.config.call_timeout * 2)
        except subprocess.TimeoutExpired:
            run.unexpected("wind-down", RuntimeError(f"client {process.pid} did not stop"))
            run.client_ends[process.pid] = now()
            process.kill()
            process.wait(10)
    root = run.tree.supervisor.proxy()
    for worker_id in run.worker_ids:
        try:
            run.get(root.terminate_child(worker_id), f"terminate_child({worker_id})")
            run.get(root.delete_child(worker_id), f"delete_child({worker_id})")
        except Exception as error:
            run.unexpected(f"terminating {worker_id}", error)
    # Owners retired after a hung call let go now (str owners are never reaped).
    names = run.tree.names.proxy()
    for owner in sorted(run.retired_owners):
        for _ in range(20):
            try:
                run.get(names.dissociate(owner), f"dissociate({owner})")
                break
            except Exception as error:
                if type(error).__name__ != "ActorCrashed":
                    run.unexpected("letting retired owners go", error)
                    break


def _lost_names(run: _Run) -> tuple[int, list[str]]:
    """Names checked out by no live owner after one reap interval, plus names the pool forgot."""
    import psutil

    from actors.names._pool import HOLDERS_REQUEST

    names = run.tree.names

    def holders() -> dict[str, list[Any]]:
        for _ in range(20):
            try:
                return run.get(names.ask_future(HOLDERS_REQUEST), "holders")
            except Exception as error:
                if type(error).__name__ != "ActorCrashed":
                    raise
        raise RuntimeError("holders cut off 20 times")

    def orphaned(current: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return {
            name: owners
            for name, owners in current.items()
            if not any(isinstance(owner, int) and psutil.pid_exists(owner) for owner in owners)
        }

    # One reap interval (plus a tick's slack), then whatever no live owner holds is lost.
    deadline = now() + 3 * run.config.reap_interval + 1.0
    current = holders()
    while orphaned(current) and now() < deadline:
        time.sleep(run.config.reap_interval / 5)
        current = holders()
    detail = []
    lost = 0
    for name, owners in orphaned(current).items():
        lost += 1
        detail.append(f"name {name!r} held by no live owner: {owners!r}")
    # Drain what is available with fresh owners: every name ever seen must come back.
    stats = run.get(names.proxy().pool_stats(), "pool_stats")
    drained: set[str] = set()
    drain_owners = []
    for index in range(stats["available_count"]):
        owner = f"drain-{index}"
        drain_owners.append(owner)
        drained.add(run.get(names.proxy().checkout_name(owner), "drain checkout"))
    held_now = set(current)
    with run._lock:
        seen = set(run.seen_names)
    for name in sorted(seen - drained - held_now):
        lost += 1
        detail.append(f"name {name!r} was handed out but is neither available nor held")
    for owner in drain_owners:
        run.get(names.proxy().dissociate(owner), "drain dissociate")
    return lost, detail


def _backend_disposals(run: _Run, *, stopped: bool) -> tuple[int, int]:
    """(registered backends never disposed, backends disposed more than once)."""
    with run._lock:
        backends = list(run.backends)
        registered = set(run.registered)
    if stopped:
        # Disposals run on the pool's threads; give them a bounded moment.
        deadline = now() + 10.0
        while now() < deadline and any(b.disposals == 0 for b in backends if b.number in registered):
            time.sleep(0.02)
    undisposed = sum(1 for backend in backends if backend.number in registered and backend.disposals == 0)
    twice = sum(1 for backend in backends if backend.disposals > 1)
    return (undisposed if stopped else 0), twice


def _stop_everything(run: _Run) -> None:
    for process in run.all_clients:
        if process.poll() is None:
            run.client_ends.setdefault(process.pid, now())
            process.kill()
        process.wait(10)
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
    if run.gateway is not None:
        run.gateway.stop()
    if run.tree is not None:
        run.tree.stop(timeout=60)
    for process in run.sleepers:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()


def _hygiene(run: _Run, before: Resources) -> list[tuple[str, int, int | None]]:
    """Threads, processes, descriptors and temporary files left after `Tree.stop()`."""
    from supervision import abandoned_actors

    def excepted_threads() -> tuple[set[threading.Thread], set[threading.Thread]]:
        abandoned = {actor._thread for actor in abandoned_actors() if actor._thread is not None}
        sources = {thread for thread in threading.enumerate() if thread.name.startswith("name-source-")}
        return abandoned, sources

    def clock_threads() -> set[threading.Thread]:
        # `SystemClock`'s scheduler: one thread per process, started on first use and
        # reused by every later tree; it never exits (see tests/test_chaos.py).
        return {thread for thread in threading.enumerate() if thread.name == "supervision-clock"}

    def leaked_threads() -> list[threading.Thread]:
        abandoned, sources = excepted_threads()
        excepted = abandoned | sources | clock_threads()
        return [
            thread
            for thread in threading.enumerate()
            if thread not in before.threads and thread not in excepted and thread.is_alive()
        ]

    # Threads finishing their last step (a disposal, a reply) get a bounded moment.
    deadline = now() + 10.0
    while (leaked_threads() or _children() - before.children) and now() < deadline:
        time.sleep(0.02)
    leaked = leaked_threads()
    abandoned, sources = excepted_threads()
    for thread in leaked:
        run.problems.append(f"thread left running after stop: {thread.name}")
    children = _children() - before.children
    for pid in children:
        run.problems.append(f"child process left running after stop: {pid}")
    after_fds = _fds()
    new_fds = {fd: target for fd, target in after_fds.items() if before.fds.get(fd) != target}
    for fd, target in new_fds.items():
        run.problems.append(f"file descriptor left open after stop: {fd} -> {target}")
    temporaries = temporary_files(run.run_dir)
    for path in temporaries:
        run.problems.append(f"temporary file left after stop: {path}")
    temp_delta = len(os.listdir(tempfile.gettempdir())) - before.temp_entries
    return [
        ("threads leaked", len(leaked), 0),
        ("  threads of abandoned incarnations (excepted)", len(abandoned), None),
        ("  name-source threads past their timeout (excepted)", len(sources), None),
        ("  process-wide clock thread started by the run (excepted)", len(clock_threads() - before.threads), None),
        ("child processes leaked", len(children), 0),
        ("file descriptors leaked", len(new_fds), 0),
        ("temporary files left", len(temporaries), 0),
        ("  entries in the system temp dir (after - before)", temp_delta, None),
    ]


# -- command line -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--client":
        socket_path, ledger_dir, lock_dirs, seed, deadline, call_timeout = argv[1:7]
        return client_main(socket_path, ledger_dir, json.loads(lock_dirs), int(seed), float(deadline),
                           float(call_timeout))
    if argv and argv[0] == "--worker":
        return worker_main(argv[1], float(argv[2]))
    if argv and argv[0] == "--hostile":
        socket_path, ledger_path, lock_dirs, seed, deadline = argv[1:6]
        return hostile_main(socket_path, ledger_path, json.loads(lock_dirs), int(seed), float(deadline))
    if "--fleet" in argv:  # the fleet mode: several daemons sharing one redis-server
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import chaos_fleet

        return int(chaos_fleet.main([arg for arg in argv if arg != "--fleet"]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load (default 60)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fault-pause", type=float, nargs=2, default=(0.05, 0.35), metavar=("MIN", "MAX"),
                        help="seconds between faults, drawn uniformly (default 0.05 0.35)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (ledgers, chaos.log)")
    parser.add_argument("--fleet", action="store_true",
                        help="the fleet mode instead: daemons sharing a redis-server (scripts/chaos_fleet.py --help)")
    parser.add_argument("--faults", action="store_true",
                        help="also hostile peers, descriptor exhaustion, a full state filesystem, clock steps")
    args = parser.parse_args(argv)
    from loguru import logger

    config = ChaosConfig(seconds=args.seconds, seed=args.seed, clients=args.clients, workers=args.workers,
                         fault_pause=tuple(args.fault_pause), keep_run_dir=args.keep, faults=args.faults)
    config.run_dir = Path(tempfile.mkdtemp(prefix="chaos-"))
    logger.remove()  # the tree's logs go to a file; the report goes to stdout
    log_sink = logger.add(config.run_dir / "chaos.log", level="INFO", enqueue=False)
    try:
        report = run_chaos(config, progress=lambda text: print(text, flush=True))
    finally:
        logger.remove(log_sink)
    return finish(report, config.run_dir, keep=args.keep)


def finish(report: ChaosReport, run_dir: Path, *, keep: bool) -> int:
    """Print the report; drop the run directory of a clean run unless kept; the exit status."""
    print(report.table())
    if report.ok and not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        print(f"run directory kept: {run_dir}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
