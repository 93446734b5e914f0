#!/usr/bin/env python
"""Fleet chaos run: daemons sharing one redis-server and one worker tree, under random faults.

    .venv/bin/python scripts/chaos_fleet.py --seconds 60 [--daemons 3] [--seed N] [--keep]

It starts a `redis-server` of its own (Unix socket, `appendonly yes`, `appendfsync always`)
and 2-3 daemons (`python -m actors serve --fleet URL --host-id hN`, each on its own state
dir, short leases so that faults matter within a minute), all locking workers of ONE
worker tree (the same absolute paths: where fleet locks matter). Client processes, a few
per daemon, take names and worker locks over their daemon's socket and write ledgers
stamped with `time.monotonic()` (one machine: one clock every process compares on).
Meanwhile a fault injector SIGKILLs daemons (restarted on the same state dir and host id),
SIGSTOPs them for less and more than a lease, SIGKILLs client processes, SIGSTOPs the
server for less and more than `fleet_timeout`, and SIGKILLs and restarts it. With
`zombie=True` (the CLI's default for runs of 40 s or more) one daemon is also frozen past
its host lease plus the quarantine, so its names go to other hosts and come back as
conflicts. Afterwards the invariants are printed as a table (exit 1 when one fails);
docs/design-fleet-chaos.md says what each one means and why it is judged that way.

`run_fleet_chaos(FleetChaosConfig(seconds=...))` returns the report (tests/test_chaos_fleet.py).
The same file is the client program (`--client`).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import heapq
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from _redis_server import RedisServer  # noqa: E402
from chaos import ChaosReport, finish, overlaps  # noqa: E402

SCRIPT = Path(__file__).resolve()
now = time.monotonic

#: Fault kinds, as the report names them.
DAEMON_KILL = "daemon SIGKILL (restarted, same state dir and host id)"
DAEMON_STOP_SHORT = "daemon SIGSTOP shorter than the lock deadline"
DAEMON_STOP_LONG = "daemon SIGSTOP longer than a lease"
DAEMON_ZOMBIE = "daemon SIGSTOP past host lease + quarantine (zombie)"
CLIENT_KILL = "client process SIGKILL"
SERVER_STOP_SHORT = "server SIGSTOP shorter than fleet_timeout"
SERVER_STOP_LONG = "server SIGSTOP longer than fleet_timeout"
SERVER_KILL = "server SIGKILL + restart"
#: The ERROR line of a conflict (actors/fleet/_hosts.py).
CONFLICT_LINE = re.compile(r"name '([^']+)' of this host went to host")
BASIC_KINDS = (DAEMON_KILL, DAEMON_STOP_SHORT, DAEMON_STOP_LONG, CLIENT_KILL, SERVER_STOP_SHORT,
               SERVER_STOP_LONG, SERVER_KILL)


@dataclass
class FleetChaosConfig:
    """What to run and for how long; the defaults are the 60-second run's shape."""

    seconds: float = 60.0
    seed: int = 1
    daemons: int = 3
    clients_per_daemon: int = 2
    workers: int = 4
    host_lease: float = 6.0
    lock_lease: float = 6.0
    fleet_timeout: float = 0.5
    reap_interval: float = 0.5
    call_timeout: float = 2.0
    #: Seconds between two fault injections, drawn uniformly.
    fault_pause: tuple[float, float] = (0.4, 1.6)
    #: One daemon frozen past its host lease + quarantine (needs >= ~20 s of load).
    zombie: bool = False
    run_dir: Path | None = None
    keep_run_dir: bool = False


# -- the run's processes ----------------------------------------------------------------------------


@dataclass
class Daemon:
    host: str
    state_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    state: str = "down"  # running | frozen | down
    #: (start, end) when it could not act: frozen or down (end None while it lasts).
    outages: list[list[float | None]] = field(default_factory=list)
    expected_exit: bool = False
    crashes: int = 0

    @property
    def socket_path(self) -> Path:
        return self.state_dir / "tree.sock"

    def out(self, since: float) -> None:
        self.outages.append([since, None])

    def back(self, at: float) -> None:
        if self.outages and self.outages[-1][1] is None:
            self.outages[-1][1] = at

    def was_out_between(self, start: float, end: float) -> bool:
        for out_start, out_end in self.outages:
            assert out_start is not None
            if out_start <= end and (out_end is None or out_end >= start):
                return True
        return False


@dataclass
class FleetChaosReport(ChaosReport):
    """chaos.py's report, plus notes: what the invariants excused, and why."""

    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        text = super().table()
        if self.notes:
            text += "\nexcused by the contract's limits (first 30):\n" + "\n".join(f"  - {n}" for n in self.notes[:30])
        return text


@dataclass
class ClientProc:
    host: str
    slot: int
    process: subprocess.Popen[bytes]
    ledger: Path
    ended: float | None = None  # when its beliefs ended for sure (killed, or seen exited)


class _Run:
    def __init__(self, config: FleetChaosConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        self.ledger_dir = run_dir / "ledgers"
        self.ledger_dir.mkdir(parents=True, exist_ok=True)
        self.worker_dirs = [str((run_dir / "tree" / f"w{index}").resolve()) for index in range(config.workers)]
        for directory in self.worker_dirs:
            os.makedirs(directory, exist_ok=True)
        self.rng = random.Random(config.seed)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.load_over = threading.Event()
        self.faults: collections.Counter[str] = collections.Counter()
        self.counts: collections.Counter[str] = collections.Counter()
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.server: RedisServer | None = None
        self.server_state = "running"
        self.url = ""
        self.daemons: list[Daemon] = []
        self.clients: list[ClientProc] = []
        self.all_clients: list[ClientProc] = []
        self.events: list[dict[str, Any]] = []  # lock_lost / name_conflict / storage_failed, stamped on receipt
        self.deadline_wall = time.time() + config.seconds + 180.0  # children give up by then
        self.client_serial = 0

    def note(self, text: str) -> None:
        with self.lock:
            if len(self.notes) < 300:
                self.notes.append(text)

    def problem(self, text: str) -> None:
        with self.lock:
            if len(self.problems) < 300:
                self.problems.append(text)

    # -- daemons ------------------------------------------------------------------------------

    def daemon_argv(self, daemon: Daemon) -> list[str]:
        c = self.config
        return [sys.executable, "-m", "actors", "serve", "--state-dir", str(daemon.state_dir), "--fleet", self.url,
                "--host-id", daemon.host, "--host-lease", str(c.host_lease), "--lock-lease", str(c.lock_lease),
                "--fleet-timeout", str(c.fleet_timeout), "--reap-interval", str(c.reap_interval),
                "--check-interval", str(c.reap_interval), "--log-level", "INFO"]

    def launch_daemon(self, daemon: Daemon) -> None:
        with open(daemon.log_path, "ab") as log:
            daemon.process = subprocess.Popen(self.daemon_argv(daemon), cwd=ROOT, stdin=subprocess.DEVNULL,
                                              stdout=log, stderr=subprocess.STDOUT, close_fds=True)
        daemon.expected_exit = False

    def serving(self, daemon: Daemon) -> bool:
        from actors import Client

        try:
            with Client(str(daemon.socket_path), timeout=2.0) as client:
                client.call("names.pool_stats")
            return True
        except Exception:
            return False

    def start_daemon(self, daemon: Daemon, deadline: float) -> bool:
        """Launch (again, while it exits: e.g. the server paused at its join) until it serves."""
        while now() < deadline:
            if daemon.process is None or daemon.process.poll() is not None:
                self.launch_daemon(daemon)
            assert daemon.process is not None
            while now() < deadline and daemon.process.poll() is None:  # a bounded wait on a condition
                if self.serving(daemon):
                    return True
                time.sleep(0.1)
            if daemon.process.poll() is not None:
                self.counts["daemon starts refused (store unavailable; started again)"] += 1
                time.sleep(0.3)  # pacing before the next launch, not synchronisation
        return False

    # -- clients ------------------------------------------------------------------------------

    def spawn_client(self, host_index: int, slot: int) -> ClientProc:
        daemon = self.daemons[host_index]
        with self.lock:
            self.client_serial += 1
            serial = self.client_serial
        ledger = self.ledger_dir / f"{daemon.host}-c{slot}-{serial}.jsonl"
        err = open(ledger.with_suffix(".err"), "wb")  # noqa: SIM115 -- the client's stderr
        process = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--client", str(daemon.socket_path), str(ledger),
             json.dumps(self.worker_dirs), str(self.rng.randrange(1 << 30)), str(self.deadline_wall),
             str(self.config.call_timeout), "churn" if slot == 1 else "keep"],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, close_fds=True,
        )  # fmt: skip
        err.close()
        client = ClientProc(daemon.host, slot, process, ledger)
        with self.lock:
            self.all_clients.append(client)
        return client

    def end_client(self, client: ClientProc, at: float) -> None:
        if client.ended is None:
            client.ended = at
        if client.process.stdin is not None:
            with contextlib.suppress(OSError):
                client.process.stdin.close()


# -- events, followed on each daemon's socket ------------------------------------------------------

FOLLOWED = ["lock_lost", "name_conflict", "storage_failed", "lock_acquired"]


def _follow_events(run: _Run, daemon: Daemon) -> None:
    """Stamp each followed event with its receipt time; reconnect across restarts."""
    from actors.daemon._protocol import FrameReader, request_frame

    while not run.stopping.is_set():
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(str(daemon.socket_path))
                sock.sendall(request_frame(1, "events.follow", [FOLLOWED], {}))
                reader = FrameReader()
                while not run.stopping.is_set():
                    try:
                        data = sock.recv(65536)
                    except TimeoutError:
                        continue
                    if not data:
                        break
                    received = now()
                    reader.feed(data)
                    for frame in reader.frames():
                        if isinstance(frame, dict) and isinstance(frame.get("event"), dict):
                            with run.lock:
                                run.events.append({**frame["event"], "host": daemon.host, "received": received})
        except OSError:
            pass
        run.stopping.wait(0.2)  # the daemon is down or restarting: try again shortly


# -- faults -----------------------------------------------------------------------------------------


def _fault_thread(run: _Run) -> None:
    c = run.config
    rng = random.Random(c.seed * 7919 + 1)
    due: list[tuple[float, int, str, Any]] = []  # (when, serial, action, target): resumes
    serial = 0
    # Every kind once first, in an order where none waits for another to end (the long
    # freezes last), then at random.
    first = [CLIENT_KILL, SERVER_STOP_SHORT, DAEMON_STOP_SHORT, SERVER_KILL, DAEMON_KILL, SERVER_STOP_LONG,
             DAEMON_STOP_LONG]
    first_server_stop_long = True
    # The zombie goes first, once the clients hold names and while every daemon runs (its
    # freeze must end before the load does); the other faults follow.
    zombie_at = now() + 4.0 if c.zombie else None
    next_fault = (zombie_at or now()) + rng.uniform(*c.fault_pause)
    restarting: list[threading.Thread] = []

    def later(delay: float, action: str, target: Any) -> None:
        nonlocal serial
        serial += 1
        heapq.heappush(due, (now() + delay, serial, action, target))

    def running_daemons() -> list[Daemon]:
        return [daemon for daemon in run.daemons if daemon.state == "running"]

    def restart(daemon: Daemon) -> None:
        if not run.start_daemon(daemon, now() + 60.0):
            run.problem(f"{daemon.host} did not serve again within 60 s after its SIGKILL")
        daemon.state = "running"
        daemon.back(now())

    zombie: list[Any] = [None, 0.0]  # the zombie daemon, and when it wakes

    def inject(kind: str) -> bool:
        nonlocal first_server_stop_long
        if now() < zombie[1] and kind not in (CLIENT_KILL, SERVER_STOP_SHORT):
            # While the zombie sleeps the rest of the fleet must run and sweep, so that its
            # names are quarantined and then go to others: only small faults meanwhile.
            return False
        daemons = running_daemons()
        # Keep at least one daemon able to act, so the fleet always has a live host.
        spare = len(daemons) >= 2
        if kind == DAEMON_KILL and spare:
            daemon = rng.choice(daemons)
            assert daemon.process is not None
            daemon.state = "down"
            daemon.out(now())
            daemon.expected_exit = True
            daemon.process.kill()
            daemon.process.wait(10)
            thread = threading.Thread(target=restart, args=(daemon,), name=f"restart-{daemon.host}", daemon=True)
            thread.start()
            restarting.append(thread)
            return True
        if kind in (DAEMON_STOP_SHORT, DAEMON_STOP_LONG, DAEMON_ZOMBIE) and spare:
            daemon = rng.choice(daemons)
            assert daemon.process is not None
            deadline = c.lock_lease - 2.0
            if kind == DAEMON_STOP_SHORT:
                # Within the deadline even when the last renewal went out a whole renewal
                # interval (lease / 3) before the freeze.
                length = rng.uniform(0.2, deadline - c.lock_lease / 3 - 0.2)
            elif kind == DAEMON_STOP_LONG:
                length = rng.uniform(c.lock_lease + 0.5, c.lock_lease + 2.5)
            else:
                # Gone (a lease), quarantined (a lease from when a sweep notices: later if the
                # server was paused meanwhile), reissued, then back.
                length = 3 * c.host_lease + 4.0
            if kind == DAEMON_ZOMBIE:
                zombie[:] = [daemon, now() + length]
                # By then its names are out of quarantine and on top of the free stack, where
                # the churners (who get their own name back, LIFO) never reach: fresh
                # clients on the other hosts take them.
                later(2 * c.host_lease + 4.5, "newcomers", daemon)
            daemon.state = "frozen"
            daemon.out(now())
            os.kill(daemon.process.pid, signal.SIGSTOP)
            later(length, "resume daemon", daemon)
            return True
        if kind == CLIENT_KILL:
            with run.lock:
                live = [client for client in run.clients if client.process.poll() is None
                        and (now() >= zombie[1] or client.host != zombie[0].host)]
            if not live:
                return False
            client = rng.choice(live)
            client.ended = now()  # its beliefs end here: it is dead from now on
            client.process.kill()
            client.process.wait(10)
            return True
        if kind in (SERVER_STOP_SHORT, SERVER_STOP_LONG) and run.server_state == "running":
            assert run.server is not None
            if kind == SERVER_STOP_SHORT:
                length = rng.uniform(0.05, c.fleet_timeout * 0.8)
            elif rng.random() < 0.5 and not first_server_stop_long:
                length = rng.uniform(c.fleet_timeout * 2, c.lock_lease - 2.0)
            else:
                # Past the holders' deadlines (lease - 2 s): leases get lost for real.
                length = rng.uniform(c.lock_lease - 1.7, c.lock_lease - 0.5)
            first_server_stop_long = first_server_stop_long and kind != SERVER_STOP_LONG
            run.server_state = "paused"
            run.server.pause()
            later(length, "resume server", None)
            return True
        if kind == SERVER_KILL and run.server_state == "running":
            assert run.server is not None
            run.server_state = "down"
            run.server.restart()  # SIGKILL, reaped, then the same data dir again (answers PING)
            run.server_state = "running"
            return True
        return False

    def settle(entry: tuple[float, int, str, Any]) -> None:
        _, _, action, target = entry
        if action == "resume daemon":
            os.kill(target.process.pid, signal.SIGCONT)
            target.state = "running"
            target.back(now())
        elif action == "resume server":
            assert run.server is not None
            run.server.resume()
            run.server_state = "running"
        elif action == "newcomers" and not run.load_over.is_set():
            for host_index, daemon in enumerate(run.daemons):
                if daemon is not target:
                    newcomer = run.spawn_client(host_index, c.clients_per_daemon)
                    with run.lock:
                        run.clients.append(newcomer)
            run.counts["newcomer clients started during the zombie's sleep"] += len(run.daemons) - 1

    while not run.load_over.is_set():
        wake = next_fault if not due else min(next_fault, due[0][0])
        if zombie_at is not None:
            wake = min(wake, zombie_at)
        if run.load_over.wait(max(0.0, wake - now())):
            break
        while due and due[0][0] <= now():
            settle(heapq.heappop(due))
        if zombie_at is not None and now() >= zombie_at:
            if inject(DAEMON_ZOMBIE):
                run.faults[DAEMON_ZOMBIE] += 1
                zombie_at = None
            else:
                zombie_at = now() + 0.5
        if now() >= next_fault:
            kind = first[0] if first else rng.choice(BASIC_KINDS)
            if inject(kind):
                run.faults[kind] += 1
                if first and first[0] == kind:
                    first.pop(0)
            elif first:
                first.append(first.pop(0))  # not possible now (e.g. a daemon already out): later
            next_fault = now() + rng.uniform(*c.fault_pause)
    # The load is over: end every fault still going on.
    while due:
        settle(heapq.heappop(due))
    for thread in restarting:
        thread.join(90)


def _client_keeper(run: _Run) -> None:
    """Notices exited clients (SIGTERMed owners exit) and starts a new one in their slot."""
    while not run.load_over.wait(0.1):
        with run.lock:
            clients = list(run.clients)
        for index, client in enumerate(clients):
            if client.process.poll() is not None:
                run.end_client(client, now())
                if client.process.returncode not in (0, -signal.SIGKILL):
                    run.counts[f"client exits with code {client.process.returncode}"] += 1
                host_index = next(i for i, daemon in enumerate(run.daemons) if daemon.host == client.host)
                replacement = run.spawn_client(host_index, client.slot)
                with run.lock:
                    run.clients[index] = replacement


def _daemon_watch(run: _Run) -> None:
    """A daemon that exits without being killed by the injector is a crash: counted, started again."""
    while not run.stopping.wait(0.2):
        for daemon in run.daemons:
            process = daemon.process
            if daemon.state == "running" and not daemon.expected_exit and process is not None and \
                    process.poll() is not None:
                daemon.crashes += 1
                run.problem(f"{daemon.host} exited by itself with {process.returncode} (see {daemon.log_path})")
                daemon.state = "down"
                daemon.out(now())
                if run.start_daemon(daemon, now() + 60.0):
                    daemon.state = "running"
                    daemon.back(now())


# -- the client program -----------------------------------------------------------------------------


def client_main(socket_path: str, ledger_path: str, worker_dirs: list[str], seed: int, deadline: float,
                call_timeout: float, keeps_name: bool = False) -> int:
    """Takes names and worker locks over one daemon's socket; writes its beliefs to a ledger.

    A client that `keeps_name` is like a worker: it keeps its name for its whole life (until
    the pool says it is no longer its name); the others check theirs in and out again.

    Lines: `name+`/`name-` (a name believed from the answered checkout to the checkin sent
    or the answer that showed it gone), `lock+`/`lock-` (a lock from the answered acquire to
    the release sent, or to the loss learned: SIGTERM, `LockLost`), `sigterm`, `error`.
    """
    from actors import Client, ConnectionLost, FleetUnavailable, Locked, LockLost, NameSourceError, NotLocked

    fd = os.open(ledger_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    rng = random.Random(seed)
    pid = os.getpid()
    held: dict[str, Any] = {"name": None, "lock": None}  # lock: (worker dir, fence)

    def write(**record: Any) -> None:
        os.write(fd, (json.dumps(record) + "\n").encode())  # one write: whole lines, even from the handler

    def on_sigterm(signum: int, frame: Any) -> None:
        # The owner of a lost lock is told by SIGTERM: the notice is now. It then exits.
        at = now()
        write(ev="sigterm", t=at)
        if held["lock"] is not None:
            write(ev="lock-", dir=held["lock"][0], fence=held["lock"][1], t=at, how="sigterm")
        if held["name"] is not None:
            write(ev="name-", name=held["name"], t=at, how="exit")
        os._exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    stop = threading.Event()

    def watch_stdin() -> None:
        with contextlib.suppress(Exception):
            sys.stdin.buffer.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    connection: list[Client | None] = [None]
    unknown = (TimeoutError, ConnectionLost, FleetUnavailable, OSError)

    def call(op: str, *args: Any, **kwargs: Any) -> Any:
        if connection[0] is None:
            connection[0] = Client(socket_path, timeout=call_timeout)
        try:
            return connection[0].call(op, *args, **kwargs)
        except (TimeoutError, ConnectionLost):
            with contextlib.suppress(Exception):
                connection[0].close()
            connection[0] = None
            raise

    def expected(error: BaseException, what: str) -> None:
        write(ev="error", what=what, type=type(error).__name__, expected=True, t=now())

    def unexpected(error: BaseException, what: str) -> None:
        write(ev="error", what=what, type=type(error).__name__, message=str(error)[:300], expected=False, t=now())

    name_until = lock_until = 0.0
    release_pending: str | None = None

    def name_step() -> None:
        nonlocal name_until
        name = held["name"]
        if name is None:
            got = call("names.checkout_name")
            at = now()
            write(ev="name+", name=got, t=at)
            held["name"] = got
            name_until = at + rng.uniform(0.05, 2.5)
        elif now() >= name_until and not keeps_name:
            at = now()
            write(ev="name-", name=name, t=at, how="checkin")
            held["name"] = None
            call("names.checkin_name", name)  # unknown outcome: the next checkout says (idempotent)
        elif rng.random() < 0.5:
            got = call("names.get_name_by_pid")
            if got != name:
                at = now()
                write(ev="name-", name=name, t=at, how="lost", now_holds=got)
                held["name"] = None
                if got is not None:
                    write(ev="name+", name=got, t=now())
                    held["name"] = got
                    name_until = now() + rng.uniform(0.05, 2.5)

    def lock_step() -> None:
        nonlocal lock_until, release_pending
        current = held["lock"]
        if current is None:
            if release_pending is not None:
                # An acquire whose answer was lost may have been granted: let it go.
                try:
                    call("locks.release", release_pending)
                except (NotLocked, LockLost, Locked):
                    pass
                release_pending = None
                return
            directory = rng.choice(worker_dirs)
            try:
                info = call("locks.acquire", directory, f"c{pid}")
            except unknown:
                release_pending = directory
                raise
            at = now()
            write(ev="lock+", dir=directory, fence=info["fence"], t=at, record_pid=info["pid"])
            held["lock"] = (directory, info["fence"])
            long_hold = rng.random() < 0.3
            lock_until = at + (rng.uniform(1.0, 7.0) if long_hold else rng.uniform(0.02, 0.4))
        elif now() >= lock_until:
            directory, fence = current
            at = now()
            write(ev="lock-", dir=directory, fence=fence, t=at, how="release")
            held["lock"] = None
            try:
                call("locks.release", directory)
            except LockLost as error:
                write(ev="locklost", dir=directory, fence=fence, t=now(), at="release", message=str(error)[:200])
            except unknown:
                release_pending = directory
                raise
        else:
            directory, fence = current
            try:
                call("locks.check", directory)
            except LockLost:
                at = now()
                write(ev="lock-", dir=directory, fence=fence, t=at, how="LockLost")
                held["lock"] = None

    steps = [("names", name_step), ("locks", lock_step)]
    while not stop.is_set() and time.time() < deadline:
        for what, step in steps:
            try:
                step()
            except (Locked, NotLocked, NameSourceError) as error:
                expected(error, what)
            except LockLost as error:
                expected(error, what)
            except unknown as error:
                expected(error, what)
                stop.wait(0.05)
            except Exception as error:
                unexpected(error, what)
                stop.wait(0.05)
        stop.wait(rng.uniform(0.01, 0.08))
    # Let go of everything (the beliefs end as the calls are sent).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if held["lock"] is not None:
        directory, fence = held["lock"]
        write(ev="lock-", dir=directory, fence=fence, t=now(), how="release")
        held["lock"] = None
        with contextlib.suppress(Exception):
            call("locks.release", directory)
    if held["name"] is not None:
        write(ev="name-", name=held["name"], t=now(), how="checkin")
        with contextlib.suppress(Exception):
            call("names.checkin_name", held["name"])
        held["name"] = None
    if release_pending is not None:
        with contextlib.suppress(Exception):
            call("locks.release", release_pending)
    write(ev="exit", t=now())
    os.close(fd)
    return 0


# -- reading the ledgers ----------------------------------------------------------------------------


@dataclass
class Hold:
    key: str  # a name or a worker dir
    family: tuple[str, int]  # (host, pid)
    start: float
    end: float
    fence: int = 0
    how: str = ""


def _read_ledgers(run: _Run, end_of_run: float) -> tuple[list[Hold], list[Hold], list[dict[str, Any]], list[int]]:
    names: list[Hold] = []
    locks: list[Hold] = []
    errors: list[dict[str, Any]] = []
    sigterms: list[int] = []
    for client in run.all_clients:
        pid = client.process.pid
        family = (client.host, pid)
        closing = client.ended if client.ended is not None else end_of_run
        open_names: dict[str, float] = {}
        open_lock: tuple[str, int, float] | None = None
        if not client.ledger.exists():
            continue
        for line in client.ledger.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                run.problem(f"torn ledger line in {client.ledger.name}: {line[:80]!r}")
                continue
            kind = record.get("ev")
            if kind == "name+":
                open_names[record["name"]] = record["t"]
            elif kind == "name-":
                start = open_names.pop(record["name"], None)
                if start is not None:
                    names.append(Hold(record["name"], family, start, record["t"], how=record["how"]))
            elif kind == "lock+":
                open_lock = (record["dir"], record["fence"], record["t"])
                if record.get("record_pid") != pid:
                    run.problem(f"{family}: acquired {record['dir']} but the record names pid "
                                f"{record.get('record_pid')}")
            elif kind == "lock-":
                if open_lock is not None:
                    locks.append(Hold(open_lock[0], family, open_lock[2], record["t"], open_lock[1], record["how"]))
                    open_lock = None
            elif kind == "sigterm":
                sigterms.append(pid)
            elif kind == "error":
                errors.append({**record, "family": family})
        for name, start in open_names.items():
            names.append(Hold(name, family, start, closing, how="died"))
        if open_lock is not None:
            locks.append(Hold(open_lock[0], family, open_lock[2], closing, open_lock[1], "died"))
    return names, locks, errors, sigterms


def _daemon_of(run: _Run, host: str) -> Daemon:
    return next(daemon for daemon in run.daemons if daemon.host == host)


#: Slack for the "deadline at least 2 s before the server's expiry" order: scheduling of the
#: holder's timer and of the runner's stamps (clock *rates* differ by far less).
DEADLINE_SLACK = 0.5


def _deadline_window(run: _Run, acquired: float, successor: float) -> tuple[float, float]:
    """When the holder's deadline can fall, for a hold answered at `acquired` and a successor
    answered at `successor`: the holder's daemon must have been out then to be excused.

    The deadline is (send time of the last confirmed renewal or acquire) + lock_lease - 2 s;
    the acquire was sent at most `call_timeout` before its answer, so the deadline is not
    before `acquired + lock_lease - 2 - call_timeout`. The server applied that renewal after
    it was sent and the successor acquired only after the server's expiry, so the deadline
    is at least 2 s before `successor`. A daemon out only outside this window was running
    at its deadline: it must have noticed in time.
    """
    c = run.config
    return acquired + max(0.0, c.lock_lease - 2.0 - c.call_timeout), successor - 2.0 + DEADLINE_SLACK


def _judge_locks(run: _Run, locks: list[Hold], report_problem: Any) -> dict[str, int]:
    """Double holders (excused only when the earlier holder's daemon could not act and the
    fence protects), fences in order, and each lost lease noticed before its successor."""
    figures: collections.Counter[str] = collections.Counter()
    by_key: dict[tuple[str, tuple[str, int], float], Hold] = {}
    for hold in locks:
        by_key[(hold.key, hold.family, hold.start)] = hold
    intervals = [(hold.key, (hold.family, hold.start), hold.start, hold.end) for hold in locks]
    for directory, first, second, seconds in overlaps(intervals):
        a, b = by_key[(directory, first[0], first[1])], by_key[(directory, second[0], second[1])]
        earlier, later = (a, b) if a.start <= b.start else (b, a)
        daemon = _daemon_of(run, earlier.family[0])
        excused = daemon.was_out_between(*_deadline_window(run, earlier.start, later.start)) and \
            later.fence > earlier.fence
        if excused:
            figures["excused"] += 1
            run.note(f"lock {directory}: {earlier.family} (fence {earlier.fence}, {earlier.how}) overlapped "
                     f"{later.family} (fence {later.fence}) by {seconds * 1000:.0f} ms; {earlier.family[0]} "
                     f"was frozen or down meanwhile")
        else:
            figures["double"] += 1
            report_problem(f"lock {directory} held by {earlier.family} (fence {earlier.fence}, {earlier.how}) and "
                           f"{later.family} (fence {later.fence}) at once for {seconds * 1000:.1f} ms")
    # Fences grow with every acquisition: in acquisition order, between holds that did not overlap.
    for directory in {hold.key for hold in locks}:
        ordered = sorted((hold for hold in locks if hold.key == directory), key=lambda hold: hold.start)
        for before, after in itertools.pairwise(ordered):
            # The same owner acquiring again while its lease lives on (a release that did not
            # reach the store) continues that lease: the same fence, by design.
            same_lease = after.family == before.family and after.fence == before.fence
            if before.end <= after.start and after.fence <= before.fence and not same_lease:
                figures["fence order"] += 1
                report_problem(f"lock {directory}: fence {after.fence} of {after.family} after fence "
                               f"{before.fence} of {before.family}")
    # Lost leases: the daemon's `lock_lost` (stamped on receipt) and the owner's own notice.
    with run.lock:
        lost_events = [event for event in run.events if event.get("kind") == "lock_lost"]
    notices: dict[tuple[str, int], float] = {}
    holders: dict[tuple[str, int], Hold] = {}
    for hold in locks:
        holders[(hold.key, hold.fence)] = hold
        if hold.how in ("sigterm", "LockLost"):
            notices[(hold.key, hold.fence)] = hold.end
    for event in lost_events:
        data = event.get("data") or {}
        key = (str(data.get("worker_dir")), int(data.get("fence", 0)))
        notices[key] = min(notices.get(key, float("inf")), float(event["received"]))
    figures["lost"] = len(notices)
    for (directory, fence), noticed in notices.items():
        successors = [hold for hold in locks if hold.key == directory and hold.fence > fence]
        if not successors:
            figures["in time"] += 1
            continue
        successor = min(successors, key=lambda hold: hold.fence)
        if noticed <= successor.start:
            figures["in time"] += 1
            continue
        holder = holders.get((directory, fence))
        host = holder.family[0] if holder is not None else None
        daemon = _daemon_of(run, host) if host is not None else None
        acquired = holder.start if holder is not None else successor.start - run.config.lock_lease
        if daemon is not None and daemon.was_out_between(*_deadline_window(run, acquired, successor.start)):
            figures["late excused"] += 1
            run.note(f"lost lease of {directory} (fence {fence}, {host}) noticed "
                     f"{(noticed - successor.start) * 1000:.0f} ms after fence {successor.fence} was acquired; "
                     f"{host} was frozen or down meanwhile")
        else:
            figures["late"] += 1
            report_problem(f"lost lease of {directory} (fence {fence}, {host}) noticed "
                           f"{(noticed - successor.start) * 1000:.0f} ms after {successor.family} acquired it "
                           f"(fence {successor.fence})")
    return dict(figures)


def _judge_names(run: _Run, names: list[Hold], report_problem: Any) -> tuple[int, int, int]:
    """(duplicates not reported as conflicts, duplicates reported as a zombie's conflicts,
    names the fleet stopped giving their live holder with no conflict reported)."""
    with run.lock:
        conflicts = {(event.get("name"), event.get("host")) for event in run.events
                     if event.get("kind") == "name_conflict"}
    # A daemon finds its conflicts as it joins: a restarted one before its socket serves, so
    # no follower can see that event; its ERROR line (also in `status`) is the report then.
    for daemon in run.daemons:
        if daemon.log_path.exists():
            found = CONFLICT_LINE.findall(daemon.log_path.read_text(errors="replace"))
            conflicts.update((name, daemon.host) for name in found)
    intervals = [(hold.key, hold.family, hold.start, hold.end) for hold in names]
    unreported: set[str] = set()
    reported: set[str] = set()
    for name, first, second, seconds in overlaps(intervals):
        # Reported: the zombie host, one of the two holders' hosts, reported that very name.
        if (name, first[0]) in conflicts or (name, second[0]) in conflicts:
            reported.add(name)
            run.note(f"name {name!r} believed by {first} and {second} at once for {seconds * 1000:.0f} ms: a "
                     "zombie host's name reissued after its quarantine, reported as a conflict on its return")
        else:
            unreported.add(name)
            report_problem(f"name {name!r} believed by {first} and {second} at once for {seconds * 1000:.1f} ms")
    # A holder asks `get_name_by_pid` now and then: an answer other than its name is a
    # forgotten name unless its host reported that name as a conflict.
    forgotten = 0
    for hold in names:
        if hold.how == "lost" and (hold.key, hold.family[0]) not in conflicts:
            forgotten += 1
            report_problem(f"name {hold.key!r} of {hold.family} was no longer its name at {hold.end:.3f} "
                           "and no conflict was reported")
    return len(unreported), len(reported), forgotten


def _lost_names(run: _Run, seen: set[str]) -> tuple[int, list[str]]:
    """After the load: names held by no live owner once reaped, and names neither held nor coming back."""
    import psutil

    from actors import Client, NamePool
    from actors.fleet._connection import FleetSettings

    live = [daemon for daemon in run.daemons if daemon.state == "running"]

    def fleet() -> dict[str, Any] | None:
        for daemon in live:
            try:
                with Client(str(daemon.socket_path), timeout=10.0) as client:
                    status = client.call("tree.status")
                section = status.get("fleet")
                if isinstance(section, dict) and "names_by_host" in section:
                    return section
            except Exception:
                continue
        return None

    def dead_held(section: dict[str, Any]) -> dict[str, Any]:
        found = {}
        for host, held in section.get("names_by_host", {}).items():
            for name, owners in held.items():
                if not any(isinstance(owner, int) and psutil.pid_exists(owner) for owner in owners):
                    found[name] = (host, owners)
        return found

    # The clients are gone: each host reaps its dead pids within a reap interval (or two).
    deadline = now() + 10 * run.config.reap_interval + 2 * run.config.host_lease + 5.0
    section = fleet()
    while (section is None or dead_held(section) or section.get("quarantined")) and now() < deadline:
        time.sleep(0.25)  # a bounded poll on a condition
        section = fleet()
    detail: list[str] = []
    if section is None:
        return len(seen), ["no daemon answered tree.status after the load"]
    held: set[str] = set()
    lost = 0
    for host, names in section.get("names_by_host", {}).items():
        held.update(names)
    for name, (host, owners) in dead_held(section).items():
        lost += 1
        detail.append(f"name {name!r} still held on {host} by no live owner: {owners!r}")
    for name, record in section.get("quarantined", {}).items():
        detail.append(f"name {name!r} still in quarantine after the load: {record!r}")
        held.add(name)
    # Everything else must come back: drain the fleet's free names with fresh owners.
    settings = FleetSettings.parse(run.url, host_id="drain", host_lease=run.config.host_lease,
                                   fleet_timeout=2.0)
    pool = NamePool.start(fleet=settings)
    drained: set[str] = set()
    owners: list[str] = []
    try:
        proxy = pool.proxy()
        available = proxy.pool_stats().get(timeout=30)["available_count"]
        for index in range(available):
            owners.append(f"drain-{index}")
            drained.add(proxy.checkout_name(owners[-1]).get(timeout=30))
        for owner in owners:
            proxy.dissociate(owner).get(timeout=30)
    finally:
        pool.stop()
    for name in sorted(seen - drained - held):
        lost += 1
        detail.append(f"name {name!r} was answered but is neither held nor available")
    return lost, detail


# -- the run ------------------------------------------------------------------------------------------


def _children() -> set[int]:
    import psutil

    return {child.pid for child in psutil.Process().children(recursive=True)}


def run_fleet_chaos(config: FleetChaosConfig, progress: Any = None) -> FleetChaosReport:
    """Run the fleet chaos described in the module docstring; the report's table says what held."""
    say = progress or (lambda text: None)
    own_dir = config.run_dir is None
    run_dir = Path(tempfile.mkdtemp(prefix="chaos-fleet-")) if config.run_dir is None else Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir, 0o700)
    before_children = _children()
    run = _Run(config, run_dir)
    report = FleetChaosReport(run_dir=run_dir, seconds=config.seconds)
    threads: list[threading.Thread] = []
    daemons_unstopped = 0
    end_of_load = now()
    seen: set[str] = set()
    try:
        run.server = RedisServer.start(run_dir / "redis")
        run.url = f"{run.server.url}?namespace=chaos"
        run.daemons = [Daemon(f"h{index}", run_dir / f"h{index}", run_dir / f"h{index}.log")
                       for index in range(config.daemons)]
        for daemon in run.daemons:
            run.launch_daemon(daemon)
        for daemon in run.daemons:
            if not run.start_daemon(daemon, now() + 60.0):
                raise RuntimeError(f"{daemon.host} did not start (see {daemon.log_path})")
            daemon.state = "running"
        say(f"fleet chaos: redis-server pid {run.server.pid}, daemons "
            + ", ".join(f"{d.host} pid {d.process.pid}" for d in run.daemons if d.process is not None))
        for daemon in run.daemons:
            threads.append(threading.Thread(target=_follow_events, args=(run, daemon), daemon=True,
                                            name=f"follow-{daemon.host}"))
        for host_index in range(config.daemons):
            for slot in range(config.clients_per_daemon):
                run.clients.append(run.spawn_client(host_index, slot))
        threads.append(threading.Thread(target=_daemon_watch, args=(run,), daemon=True, name="daemon-watch"))
        keeper = threading.Thread(target=_client_keeper, args=(run,), daemon=True, name="client-keeper")
        faults = threading.Thread(target=_fault_thread, args=(run,), daemon=True, name="faults")
        for thread in [*threads, keeper, faults]:
            thread.start()
        run.load_over.wait(config.seconds)
        run.load_over.set()
        say(f"load over after {config.seconds:g} s; ending faults and letting go")
        faults.join(120)
        keeper.join(10)
        end_of_load = now()
        # Every client lets go and exits; stragglers are killed (their beliefs end then).
        for client in run.clients:
            if client.process.stdin is not None:
                with contextlib.suppress(OSError):
                    client.process.stdin.close()
        for client in run.all_clients:
            try:
                client.process.wait(max(1.0, 20.0 - (now() - end_of_load)))
            except subprocess.TimeoutExpired:
                client.process.kill()
                client.process.wait(10)
                run.counts["clients killed at the end (did not exit)"] += 1
            if client.ended is None:
                client.ended = now()
        names, locks, errors, sigterms = _read_ledgers(run, now())
        with open(run_dir / "outages.json", "w") as timeline:  # for a post-mortem of a kept run
            json.dump({daemon.host: daemon.outages for daemon in run.daemons}, timeline)
        seen = {hold.key for hold in names}
        report_problem = run.problem
        lost, lost_detail = _lost_names(run, seen)
        for line in lost_detail:
            run.problem(line)
        daemons_down = sum(0 if run.serving(daemon) else 1 for daemon in run.daemons)
    finally:
        run.load_over.set()
        run.stopping.set()
        for client in run.all_clients:
            if client.process.poll() is None:
                client.process.kill()
            client.process.wait(10)
            if client.process.stdin is not None:
                with contextlib.suppress(OSError):
                    client.process.stdin.close()
        for daemon in run.daemons:
            process = daemon.process
            if process is None or process.poll() is not None:
                continue
            daemon.expected_exit = True
            os.kill(process.pid, signal.SIGCONT)
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                daemons_unstopped += 1
                process.kill()
                process.wait(10)
        if run.server is not None:
            run.server.stop()  # SIGCONT first, then SIGTERM by pid
        for thread in threads:
            thread.join(5)

    duplicates, conflicts, forgotten = _judge_names(run, names, report_problem)
    lock_figures = _judge_locks(run, locks, report_problem)
    expected_errors = collections.Counter(e["type"] for e in errors if e.get("expected"))
    unexpected_errors = [e for e in errors if not e.get("expected")]
    for error in unexpected_errors[:20]:
        run.problem(f"unexpected error in client {error['family']} ({error['what']}): {error['type']}: "
                    f"{error.get('message')}")
    deadline = now() + 10.0
    while _children() - before_children and now() < deadline:
        time.sleep(0.05)  # a bounded wait for the last processes to be reaped
    leaked = _children() - before_children
    for pid in leaked:
        run.problem(f"child process left running after the run: {pid}")

    report.add("seconds of load", round(config.seconds, 1))
    report.add("daemons (hosts) / clients per daemon", f"{config.daemons}/{config.clients_per_daemon}")
    report.add("client processes started", len(run.all_clients))
    report.add("faults injected", sum(run.faults.values()))
    for kind in [*BASIC_KINDS, DAEMON_ZOMBIE]:
        if kind in run.faults or kind != DAEMON_ZOMBIE:
            report.add(f"  {kind}", run.faults[kind])
    for label in sorted(run.counts):
        report.add(f"  {label}", run.counts[label])
    report.add("client errors while faults lasted (expected)", sum(expected_errors.values()))
    for label, value in sorted(expected_errors.items()):
        report.add(f"  {label}", value)
    with run.lock:
        event_kinds = collections.Counter(event.get("kind") for event in run.events)
    report.add("events seen: lock_lost / name_conflict / storage_failed",
               f"{event_kinds['lock_lost']}/{event_kinds['name_conflict']}/{event_kinds['storage_failed']}")
    report.add("owners SIGTERMed (lost lock)", len(sigterms))
    report.add("names seen", len(seen))
    report.add("name beliefs checked", len(names))
    report.add("lock holds checked", len(locks))
    report.add("duplicate name holders (fleet-wide, not reported)", duplicates, 0)
    report.add("  names held twice after a zombie's return (reported as conflicts)", conflicts)
    report.add("lost answered names", lost, 0)
    report.add("names forgotten while their holder lived (no conflict reported)", forgotten, 0)
    report.add("double lock holders", lock_figures.get("double", 0), 0)
    report.add("  overlaps behind a frozen or dead holder daemon (fence-protected)", lock_figures.get("excused", 0))
    report.add("fences out of order", lock_figures.get("fence order", 0), 0)
    report.add("lost leases", lock_figures.get("lost", 0))
    report.add("  noticed by the holder before its successor acquired", lock_figures.get("in time", 0))
    report.add("  noticed late, holder daemon frozen or dead (fence-protected)", lock_figures.get("late excused", 0))
    report.add("lost leases noticed after the successor acquired", lock_figures.get("late", 0), 0)
    report.add("unexpected client errors", len(unexpected_errors), 0)
    report.add("daemon crashes (exits not injected)", sum(daemon.crashes for daemon in run.daemons), 0)
    report.add("daemons not serving after the faults", daemons_down, 0)
    report.add("daemons that did not stop on SIGTERM", daemons_unstopped, 0)
    report.add("child processes leaked", len(leaked), 0)
    report.problems = run.problems
    report.notes = run.notes
    if own_dir and report.ok and not config.keep_run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
        report.run_dir = None
    return report


# -- command line -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--client":
        socket_path, ledger, dirs, seed, deadline, call_timeout, mode = argv[1:8]
        return client_main(socket_path, ledger, json.loads(dirs), int(seed), float(deadline), float(call_timeout),
                           keeps_name=mode == "keep")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load (default 60)")
    parser.add_argument("--daemons", type=int, default=3, choices=(2, 3, 4))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=2, help="client processes per daemon (default 2)")
    parser.add_argument("--zombie", choices=("auto", "yes", "no"), default="auto",
                        help="freeze one daemon past host lease + quarantine (auto: when --seconds >= 40)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (ledgers, daemon logs)")
    args = parser.parse_args(argv)
    zombie = args.seconds >= 40 if args.zombie == "auto" else args.zombie == "yes"
    config = FleetChaosConfig(seconds=args.seconds, seed=args.seed, daemons=args.daemons,
                              clients_per_daemon=args.clients, zombie=zombie, keep_run_dir=args.keep)
    config.run_dir = Path(tempfile.mkdtemp(prefix="chaos-fleet-"))
    from loguru import logger

    logger.remove()  # this process's own logs (the drain pool) go to a file; the report to stdout
    sink = logger.add(config.run_dir / "chaos-fleet.log", level="INFO")
    try:
        report = run_fleet_chaos(config, progress=lambda text: print(text, flush=True))
    finally:
        logger.remove(sink)
    return finish(report, config.run_dir, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
