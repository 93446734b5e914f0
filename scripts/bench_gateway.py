"""Benchmark the daemon's socket (CONTRACT §6, "Gateway").

`bench_gateway(quick=False)` returns one dict of figures:

- ours: `names.pool_stats` round trips per second through `actors.connect(state_dir)` (a
  `Client`) to a running ``python -m actors serve --state-dir <tmp>`` subprocess;
- baseline: a bare msgpack echo over a Unix socket, served by a thread of this process
  (it reads frames with `msgpack.Unpacker` and writes each frame back packed); the calling
  side does per call what `Client.call` does: pack a request map, sendall, recv, unpack;
- target: ours / baseline >= 0.8 (contract §6, v3).

The baseline's socket waits the way the real `Client`'s does (its Python timeout and its
kernel SO_RCVTIMEO/SO_SNDTIMEO are copied): a Python timeout makes every recv poll()
first, which alone costs ~18 µs a round trip on these VMs. For information, the same echo
from a plainly blocking socket is measured too (`echo_blocking_*`).

Both sides are interleaved in short rounds (rotating which goes first), medians, with the
garbage collector on (as a user's process runs). The
calling thread runs on one CPU; the echo thread and the whole daemon process (its threads
inherit the affinity it gets right after it starts) on the other. With one usable CPU
everything shares it (the figures say so). The daemon is always stopped with SIGTERM at
the end, also when a measurement fails.

Run standalone: ``python scripts/bench_gateway.py [--quick] [--json]``; `scripts/bench.py`
imports `bench_gateway` for its "gateway" section.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import msgpack

import actors
from _pinning import cpu_pair  # noqa: E402
from actors.daemon._protocol import MAX_FRAME

__all__ = ["GATEWAY_TARGET", "bench_gateway"]

GATEWAY_TARGET = 0.8  # ours / bare echo round trips per second, at least
OP = "names.pool_stats"
ACTOR_OP = "names.get_name_by_pid"
START_TIMEOUT = 30.0  # seconds for the daemon to answer its first call
STOP_TIMEOUT = 20.0  # seconds for the daemon to exit after SIGTERM (then SIGKILL)


# -- CPU pinning ------------------------------------------------------------------------------


def _pin_thread(cpu: int | None) -> None:
    """Pin the calling thread (pid 0 is the calling thread on Linux)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _pin_process(pid: int, cpu: int | None) -> int:
    """Pin every thread `pid` has now (threads it starts later inherit); how many were pinned."""
    if cpu is None:
        return 0
    task_dir = f"/proc/{pid}/task"
    tids = [int(tid) for tid in os.listdir(task_dir)] if os.path.isdir(task_dir) else [pid]
    pinned = 0
    for tid in tids:
        try:
            os.sched_setaffinity(tid, {cpu})
            pinned += 1
        except (ProcessLookupError, OSError):
            pass  # that thread ended meanwhile
    return pinned


def _process_affinities(pid: int) -> set[frozenset[int]]:
    """The distinct affinities of the threads of `pid` (to check the daemon stayed pinned)."""
    task_dir = f"/proc/{pid}/task"
    found: set[frozenset[int]] = set()
    if not hasattr(os, "sched_getaffinity") or not os.path.isdir(task_dir):
        return found
    for tid in os.listdir(task_dir):
        try:
            found.add(frozenset(os.sched_getaffinity(int(tid))))
        except OSError:
            pass
    return found


# -- the baseline: a bare msgpack echo ----------------------------------------------------------


class EchoServer:
    """A Unix-socket msgpack echo served by one thread: each frame read is packed back."""

    def __init__(self, socket_path: str, cpu: int | None) -> None:
        self.socket_path = socket_path
        self._cpu = cpu
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(socket_path)
        self._listener.listen(4)
        self._thread = threading.Thread(target=self._run, name="bench-echo", daemon=True)
        self._connection: socket.socket | None = None
        self.error: BaseException | None = None

    def start(self) -> EchoServer:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            _pin_thread(self._cpu)
            connection, _ = self._listener.accept()
            self._connection = connection
            unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=MAX_FRAME, use_list=True)
            packb = msgpack.packb
            while True:
                data = connection.recv(65536)
                if not data:
                    return
                unpacker.feed(data)
                for frame in unpacker:
                    connection.sendall(packb(frame, use_bin_type=True))
        except OSError:
            pass  # closed by stop()
        except BaseException as error:  # noqa: BLE001 - reported by the caller
            self.error = error

    def stop(self) -> None:
        for sock in (self._connection, self._listener):
            if sock is None:
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._thread.join(5)


_KERNEL_TIMEOUTS = tuple(getattr(socket, name) for name in ("SO_RCVTIMEO", "SO_SNDTIMEO") if hasattr(socket, name))


def socket_setup(sock: socket.socket | None) -> dict[str, Any]:
    """How `sock` waits: its Python timeout and its kernel timeouts (raw `struct timeval`s).

    A Python timeout makes every recv/send poll() first, which costs a syscall (and ~18 µs
    per round trip on these VMs), so the baseline copies whatever `Client` does.
    """
    if sock is None:
        return {"timeout": 30.0, "kernel": {}}
    kernel = {}
    for option in _KERNEL_TIMEOUTS:
        try:
            kernel[option] = sock.getsockopt(socket.SOL_SOCKET, option, 16)
        except OSError:
            pass
    return {"timeout": sock.gettimeout(), "kernel": kernel}


class EchoClient:
    """The calling side of the baseline: per call what `Client.call` does on the wire.

    `setup` (from `socket_setup`) makes its socket wait the way the real client's does;
    `setup=None` leaves it plainly blocking.
    """

    def __init__(self, socket_path: str, setup: dict[str, Any] | None = None) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if setup is not None:
            self._socket.settimeout(setup["timeout"])
            for option, value in setup["kernel"].items():
                self._socket.setsockopt(socket.SOL_SOCKET, option, value)
        self._socket.connect(socket_path)
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=MAX_FRAME, use_list=True)
        self._ids = itertools.count(1)
        self._pending: list[Any] = []

    def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        request_id = next(self._ids)
        self._socket.sendall(msgpack.packb({"id": request_id, "op": op, "args": list(args), "kwargs": kwargs},
                                           use_bin_type=True))
        while not self._pending:
            data = self._socket.recv(65536)
            if not data:
                raise ConnectionError("the echo server closed the connection")
            self._unpacker.feed(data)
            self._pending.extend(self._unpacker)
        reply = self._pending.pop(0)
        if reply.get("id") != request_id:
            raise RuntimeError(f"echo out of order: {reply!r}")
        return reply

    def close(self) -> None:
        self._socket.close()


# -- the daemon ---------------------------------------------------------------------------------


class DaemonProcess:
    """``python -m actors serve`` in a subprocess, pinned, stopped with SIGTERM."""

    def __init__(self, state_dir: str, cpu: int | None, log_path: str) -> None:
        self.state_dir = state_dir
        self._cpu = cpu
        self._log_path = log_path
        self._log: Any = None
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_status: int | None = None
        self.startup_s: float | None = None

    def start(self) -> DaemonProcess:
        self._log = open(self._log_path, "wb")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "actors", "serve", "--state-dir", self.state_dir,
                   "--heartbeat", "3600", "--log-level", "WARNING"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        started = time.perf_counter()
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log,
                                        stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        # Pinned right after start, taskset-like: the threads it starts later inherit this.
        _pin_process(self.process.pid, self._cpu)
        self._wait_until_serving(started)
        return self

    def _wait_until_serving(self, started: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the daemon exited with status {self.process.returncode} before serving: "
                                   f"{self.log_tail()}")
            try:
                with actors.connect(self.state_dir, timeout=5.0) as client:
                    client.call(OP)
            except (OSError, ConnectionError) as error:
                last_error = error
                time.sleep(0.02)
                continue
            self.startup_s = time.perf_counter() - started
            return
        raise RuntimeError(f"the daemon did not answer within {START_TIMEOUT}s ({last_error!r}): {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = Path(self._log_path).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            try:
                process.send_signal(signal.SIGTERM)
                self.exit_status = process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
                self.exit_status = None  # did not stop on SIGTERM
            except BaseException:
                process.kill()  # e.g. interrupted while waiting: never leave the daemon behind
                process.wait(timeout=10)
                raise
        elif process is not None:
            self.exit_status = process.returncode
        if self._log is not None:
            self._log.close()
            self._log = None


def setup_note(setup: dict[str, Any]) -> str:
    """`socket_setup` for people: "python timeout 30.0 s; SO_RCVTIMEO 0 s"."""
    if not setup:
        return "unknown"
    parts = [f"python timeout {setup.get('timeout')} s"]
    for option, raw in setup.get("kernel", {}).items():
        seconds, micros = struct.unpack("ll", raw[: struct.calcsize("ll")]) if len(raw) >= struct.calcsize("ll") else (0, 0)
        label = {getattr(socket, "SO_RCVTIMEO", -1): "SO_RCVTIMEO", getattr(socket, "SO_SNDTIMEO", -1): "SO_SNDTIMEO"}
        parts.append(f"{label.get(option, option)} {seconds + micros / 1e6:g} s")
    return "; ".join(parts)


# -- measuring ----------------------------------------------------------------------------------


def _rate(call: Callable[[str], Any], calls: int) -> float:
    """Round trips per second of `calls` sequential calls from this thread."""
    start = time.perf_counter()
    for _ in range(calls):
        call(OP)
    return calls / (time.perf_counter() - start)


def bench_gateway(quick: bool = False, rounds: int | None = None, calls: int | None = None,
                  warmup: int | None = None) -> dict[str, Any]:
    """`names.pool_stats` round trips/s through a `Client` to `serve` vs a bare msgpack echo."""
    rounds = rounds if rounds is not None else (8 if quick else 25)
    calls = calls if calls is not None else (300 if quick else 1_000)
    warmup = warmup if warmup is not None else (200 if quick else 500)
    caller_cpu, server_cpu, layout = cpu_pair("echo thread and daemon process")
    scratch = tempfile.mkdtemp(prefix="bench-gw-")  # short: a Unix socket path has ~100 bytes
    state_dir = os.path.join(scratch, "state")
    affinity_before = os.sched_getaffinity(0) if caller_cpu is not None else None
    daemon = DaemonProcess(state_dir, server_cpu, os.path.join(scratch, "daemon.log"))
    echo_servers: list[EchoServer] = []
    echo: EchoClient | None = None
    blocking_echo: EchoClient | None = None
    client: actors.Client | None = None
    rates: dict[str, list[float]] = {"gateway": [], "echo": [], "echo_blocking": [], "gateway_actor_op": []}
    ratios: list[float] = []
    setup: dict[str, Any] = {}
    daemon_affinities: set[frozenset[int]] = set()
    try:
        daemon.start()  # before this thread is pinned: the daemon's interpreter starts anywhere
        _pin_thread(caller_cpu)
        client = actors.connect(state_dir)
        setup = socket_setup(getattr(client, "_socket", None))
        for name in ("echo.sock", "echo-blocking.sock"):  # each serves one connection
            echo_servers.append(EchoServer(os.path.join(scratch, name), server_cpu).start())
        echo = EchoClient(echo_servers[0].socket_path, setup)
        blocking_echo = EchoClient(echo_servers[1].socket_path, None)
        # The third side is for information: the same echo from a plainly blocking socket.
        # And one more for information: an op that goes through the name pool's actor
        # (pool_stats is served from the stats the pool publishes, without that hop).
        connected = client
        sides: dict[str, Callable[[str], Any]] = {
            "gateway": client.call, "echo": echo.call, "echo_blocking": blocking_echo.call,
            "gateway_actor_op": lambda _op: connected.call(ACTOR_OP),
        }
        reply = client.call(OP)
        if not isinstance(reply, dict):
            raise TypeError(f"{OP} answered {reply!r}, not a map")
        for call in sides.values():
            _rate(call, warmup)
        daemon_affinities = _process_affinities(daemon.process.pid)  # type: ignore[union-attr]
        gc.collect()  # start every run from the same heap; the collector stays on
        names = list(sides)
        for index in range(rounds):
            shift = index % len(names)  # rotate which side goes first
            measured = {name: _rate(sides[name], calls) for name in names[shift:] + names[:shift]}
            for name, value in measured.items():
                rates[name].append(value)
            ratios.append(measured["gateway"] / measured["echo"])
        for server in echo_servers:
            if server.error is not None:
                raise RuntimeError(f"the echo server failed: {server.error!r}")
    finally:
        for closable in (client, echo, blocking_echo):
            if closable is not None:
                closable.close()
        for server in echo_servers:
            server.stop()
        try:
            daemon.stop()
        finally:
            if affinity_before is not None:
                os.sched_setaffinity(0, affinity_before)
            shutil.rmtree(scratch, ignore_errors=True)
    gateway_rate = statistics.median(rates["gateway"])
    echo_rate = statistics.median(rates["echo"])
    blocking_rate = statistics.median(rates["echo_blocking"])
    actor_op_rate = statistics.median(rates["gateway_actor_op"])
    return {
        "gateway_calls_per_s": gateway_rate,
        "echo_calls_per_s": echo_rate,
        "gateway_call_s": 1.0 / gateway_rate,
        "echo_call_s": 1.0 / echo_rate,
        "gateway_vs_echo": gateway_rate / echo_rate,
        "gateway_vs_echo_round_median": statistics.median(ratios),
        "gateway_vs_echo_round_min": min(ratios),
        "gateway_vs_echo_round_max": max(ratios),
        "targets": {"gateway_vs_echo": f">= {GATEWAY_TARGET}"},
        "echo_blocking_calls_per_s": blocking_rate,
        "echo_blocking_call_s": 1.0 / blocking_rate,
        "gateway_vs_echo_blocking": gateway_rate / blocking_rate,
        "gateway_actor_op_calls_per_s": actor_op_rate,
        "gateway_actor_op_vs_echo": actor_op_rate / echo_rate,
        "client_socket_setup": setup_note(setup),
        "rounds": rounds,
        "calls_per_round": calls,
        "daemon_startup_s": daemon.startup_s,
        "daemon_exit_status": daemon.exit_status,
        "daemon_thread_affinities": sorted(sorted(cpus) for cpus in daemon_affinities),
        "layout": layout,
    }


def main(argv: list[str]) -> int:
    figures = bench_gateway(quick="--quick" in argv)
    if "--json" in argv:
        print(json.dumps(figures, indent=2))
        return 0
    for key, value in figures.items():
        shown = f"{value:.6g}" if isinstance(value, float) else value
        print(f"  {key:32s} {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
