"""Benchmark the worker identity locks (CONTRACT §6, "Locks").

`bench_locks(quick=False)` returns one dict of figures:

- acquire+release cycles/s through a `WorkerLock` actor (cached `ref.proxy()`: acquire
  awaited, release sent on and checked after the next acquire) vs `filelock.FileLock`
  acquire+release on the same filesystem (a temporary directory), interleaved in short
  rounds, medians; the caller is pinned to one CPU and the lock actor's thread to the
  other (target: ratio >= 0.5). `sync_cycles_ratio` is the same with both calls awaited
  (information: two round trips, whose floor `two_asks_s` alone is 1.3-1.5 filelock cycles).
  `core_cycle_in_caller_s` (the `LockFile` core alone) shows where a cycle's time goes;
- resident memory (RSS) of 1,000 live `WorkerLock` actors (each on its own worker
  directory, on a `ManualClock` so no timer fires) vs 1,000 bare `pykka.ThreadingActor`s,
  each side measured as an RSS delta in a fresh subprocess (target: ratio <= 1.5);
- the file descriptors a lock actor keeps open while it holds nothing (expected: 0).

Run standalone: ``python scripts/bench_locks.py [--quick] [--json]``; `scripts/bench.py`
imports `bench_locks` for its "locks" section.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import filelock  # noqa: E402
import psutil  # noqa: E402
import pykka  # noqa: E402

from actors.locks._lock_file import LockFile  # noqa: E402
from actors._process import process_start_time  # noqa: E402
from actors.locks._worker_lock import WorkerLock  # noqa: E402
from supervision import ManualClock, SupervisedActor  # noqa: E402

__all__ = ["CYCLES_TARGET", "RSS_TARGET", "bench_locks"]

CYCLES_TARGET = 0.5  # ours / filelock cycles per second, at least
RSS_TARGET = 1.5  # ours / bare pykka RSS delta, at most
ACTORS = 1_000


# -- CPU pinning ------------------------------------------------------------------------------


def _cpu_layout() -> tuple[int | None, int | None, str]:
    """(caller CPU, actor CPU, note); None when threads cannot be pinned here."""
    if not hasattr(os, "sched_setaffinity"):
        return None, None, "threads not pinned (no sched_setaffinity)"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        return cpus[0], cpus[1], f"caller on CPU {cpus[0]}, lock actor on CPU {cpus[1]}"
    return cpus[0], cpus[0], f"only CPU {cpus[0]} available: caller and actor share it"


@contextmanager
def _pinned(caller_cpu: int | None, thread_ids: list[int], actor_cpu: int | None) -> Iterator[None]:
    """Pin the calling thread to `caller_cpu` and the given native threads to `actor_cpu`."""
    if caller_cpu is None or actor_cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {caller_cpu})  # on Linux, 0 is the calling thread
    for thread_id in thread_ids:
        os.sched_setaffinity(thread_id, {actor_cpu})
    try:
        yield
    finally:
        for thread_id in thread_ids:
            try:
                os.sched_setaffinity(thread_id, before)
            except OSError:
                pass  # the thread ended
        os.sched_setaffinity(0, before)


def _actor_thread_id(ref: pykka.ActorRef[Any]) -> int:
    actor = ref._actor_weakref()
    thread = getattr(actor, "_thread", None)
    if thread is None or thread.native_id is None:
        raise RuntimeError(f"cannot find the thread of {ref}")
    return int(thread.native_id)


# -- (a) acquire + release cycles ---------------------------------------------------------------


def _rate(cycle: Callable[[], None], cycles: int, finish: Callable[[], None] | None = None) -> float:
    """Cycles per second of `cycle` run `cycles` times, `finish` (work left over) included."""
    start = time.perf_counter()
    for _ in range(cycles):
        cycle()
    if finish is not None:
        finish()
    return cycles / (time.perf_counter() - start)


class _Echo(SupervisedActor):
    """A supervised actor with one trivial method: the cost of two asks, for the breakdown."""

    def ping(self) -> None:
        return None


class _PipelinedCycle:
    """One cycle as an actor client writes it: wait for `acquire`, send `release` and go on.

    Each release is checked one cycle later, after the next acquire's reply, which the
    lock sends only once that release is done (an actor handles its messages in order);
    `drain` checks the last one. So every release is confirmed, and none is waited for
    on its own.
    """

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self._release: pykka.Future[None] | None = None

    def __call__(self) -> None:
        self._lock.acquire().get()
        self.drain()
        self._release = self._lock.release()

    def drain(self) -> None:
        if self._release is not None:
            self._release.get(timeout=10)
            self._release = None


def bench_cycles(rounds: int = 20, cycles: int = 1_000, warmup: int = 300) -> dict[str, Any]:
    """acquire+release cycles/s: `WorkerLock` through a cached proxy vs `filelock.FileLock`.

    Two ways to drive the lock, each interleaved with filelock in the same rounds:

    - `cycles_ratio` (the target): acquire awaited, release sent without waiting for its
      reply, which is checked after the next acquire (`_PipelinedCycle`): one thread
      handoff each way per cycle, the way an actor client releases;
    - `sync_cycles_ratio` (information): both awaited, two round trips per cycle. Two
      round trips to an actor that does nothing (`two_asks_s`) take 1.3 to 1.5 filelock
      cycles here with the threads pinned apart, leaving too little of a 0.5 budget for
      the files the contract requires (temp file + rename, removal on release).

    Also measured, to show where a cycle's time goes: the core (`LockFile`
    acquire+release) run in the calling thread.
    """
    caller_cpu, actor_cpu, layout = _cpu_layout()
    with tempfile.TemporaryDirectory(prefix="bench-locks-") as scratch:
        ref = WorkerLock.start(Path(scratch) / "worker", clock=ManualClock())
        sync_ref = WorkerLock.start(Path(scratch) / "sync-worker", clock=ManualClock())
        echo_ref = _Echo.start()
        try:
            sync_lock = sync_ref.proxy()
            echo = echo_ref.proxy()
            pipelined = _PipelinedCycle(ref.proxy())
            file_lock = filelock.FileLock(str(Path(scratch) / "filelock.lock"))
            core = LockFile(Path(scratch) / "core-worker")
            pid = os.getpid()
            start_time = process_start_time(pid)

            def ours_sync() -> None:
                sync_lock.acquire().get()
                sync_lock.release().get()

            def baseline() -> None:
                file_lock.acquire()
                file_lock.release()

            def core_cycle() -> None:
                core.acquire(pid, owner_start_time=start_time)
                core.release()

            def two_asks() -> None:
                echo.ping().get()
                echo.ping().get()

            sides: dict[str, Callable[[], None]] = {"ours": pipelined, "ours_sync": ours_sync, "filelock": baseline}
            parts: dict[str, Callable[[], None]] = {"core": core_cycle, "two_asks": two_asks}
            rates: dict[str, list[float]] = {name: [] for name in [*sides, *parts]}
            ratios: dict[str, list[float]] = {"ours": [], "ours_sync": []}
            actor_threads = [_actor_thread_id(ref), _actor_thread_id(sync_ref), _actor_thread_id(echo_ref)]
            with _pinned(caller_cpu, actor_threads, actor_cpu):
                for cycle in [*sides.values(), *parts.values()]:
                    _rate(cycle, warmup, pipelined.drain)
                gc.collect()
                gc.disable()  # a collection in one side's round would be charged to it alone
                try:
                    names = list(sides)
                    for index in range(rounds):
                        shift = index % len(names)  # each side takes each place in turn
                        measured: dict[str, float] = {}
                        for name in names[shift:] + names[:shift]:
                            finish = pipelined.drain if name == "ours" else None
                            measured[name] = _rate(sides[name], cycles, finish)
                        for name, value in measured.items():
                            rates[name].append(value)
                        for name in ratios:
                            ratios[name].append(measured[name] / measured["filelock"])
                        for name, part in parts.items():
                            rates[name].append(_rate(part, max(1, cycles // 4)))
                finally:
                    gc.enable()
        finally:
            ref.stop()
            sync_ref.stop()
            echo_ref.stop()
    ours_rate = statistics.median(rates["ours"])
    sync_rate = statistics.median(rates["ours_sync"])
    baseline_rate = statistics.median(rates["filelock"])
    two_asks_rate = statistics.median(rates["two_asks"])
    return {
        "lock_cycles_per_s": ours_rate,
        "filelock_cycles_per_s": baseline_rate,
        "lock_cycle_s": 1.0 / ours_rate,
        "filelock_cycle_s": 1.0 / baseline_rate,
        "cycles_ratio": statistics.median(ratios["ours"]),
        "cycles_ratio_min": min(ratios["ours"]),
        "cycles_ratio_max": max(ratios["ours"]),
        "cycles_target": CYCLES_TARGET,
        "release": "sent without waiting; checked after the next acquire",
        # Both calls awaited (information): two round trips per cycle.
        "sync_lock_cycles_per_s": sync_rate,
        "sync_lock_cycle_s": 1.0 / sync_rate,
        "sync_cycles_ratio": statistics.median(ratios["ours_sync"]),
        # Where a cycle goes (informational): the core's work and two bare handoffs.
        "core_cycle_in_caller_s": 1.0 / statistics.median(rates["core"]),
        "two_asks_s": 1.0 / two_asks_rate,
        "two_asks_per_s": two_asks_rate,
        "two_asks_vs_filelock_ratio": two_asks_rate / baseline_rate,
        "layout": layout,
    }


# -- (b) resident memory ------------------------------------------------------------------------


class Bare(pykka.ThreadingActor):
    """The baseline: a plain pykka actor with one trivial method."""

    def ping(self) -> None:
        return None


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def _rss_child(side: str, count: int, scratch: str) -> int:
    """In a fresh process: the RSS grown by starting `count` actors of `side` (bytes)."""
    clock = ManualClock()

    def start(index: int) -> pykka.ActorRef[Any]:
        if side == "lock":
            return WorkerLock.start(os.path.join(scratch, f"worker-{index}"), clock=clock)
        return Bare.start()

    def touch(ref: pykka.ActorRef[Any]) -> None:
        # One message each, so every actor thread has run (its stack touched) on both sides.
        proxy = ref.proxy()
        (proxy.status() if side == "lock" else proxy.ping()).get()

    warm = start(-1)  # first-use allocations (caches, the first thread) are not per actor
    touch(warm)
    warm.stop()
    before = _rss()
    refs = [start(index) for index in range(count)]
    for ref in refs:
        touch(ref)
    grown = _rss() - before
    for ref in refs:
        ref.stop()
    return grown


def bench_memory(count: int = ACTORS, repeats: int = 3) -> dict[str, Any]:
    """RSS delta of `count` live `WorkerLock`s vs `count` bare pykka actors, fresh processes."""
    deltas: dict[str, list[int]] = {"lock": [], "bare": []}
    with tempfile.TemporaryDirectory(prefix="bench-locks-rss-") as scratch:
        for index in range(repeats):
            for side in ("lock", "bare") if index % 2 == 0 else ("bare", "lock"):
                output = subprocess.run(
                    [sys.executable, __file__, "--rss-child", side, str(count), scratch],
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=120,
                ).stdout
                deltas[side].append(int(output.strip().splitlines()[-1]))
    lock_rss = statistics.median(deltas["lock"])
    bare_rss = statistics.median(deltas["bare"])
    return {
        "actors": count,
        "rss_lock_actors_bytes": lock_rss,
        "rss_bare_actors_bytes": bare_rss,
        "rss_per_lock_actor_bytes": lock_rss / count,
        "rss_per_bare_actor_bytes": bare_rss / count,
        "rss_ratio": lock_rss / bare_rss,
        "rss_target": RSS_TARGET,
        "rss_samples": deltas,
    }


# -- (c) descriptors ----------------------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else psutil.Process().num_fds()


def bench_idle_fds(cycles: int = 100) -> dict[str, Any]:
    """Descriptors a lock actor keeps open: after start, while held, and after release."""
    with tempfile.TemporaryDirectory(prefix="bench-locks-fd-") as scratch:
        before = _open_fds()
        ref = WorkerLock.start(Path(scratch) / "worker", clock=ManualClock())
        try:
            lock = ref.proxy()
            started = _open_fds() - before
            for _ in range(cycles):
                lock.acquire().get()
                lock.status().get()
                lock.release().get()
            lock.acquire().get()
            holding = _open_fds() - before
            lock.release().get()
            idle = _open_fds() - before
        finally:
            ref.stop()
    return {"idle_fd_delta": idle, "holding_fd_delta": holding, "started_fd_delta": started}


# -- all of it ------------------------------------------------------------------------------------


def bench_locks(quick: bool = False) -> dict[str, Any]:
    """Every lock figure of CONTRACT §6 in one dict (see the module docstring)."""
    if quick:
        cycles = bench_cycles(rounds=6, cycles=300, warmup=100)
        memory = bench_memory(repeats=1)
    else:
        cycles = bench_cycles()
        memory = bench_memory()
    figures: dict[str, Any] = {**cycles, **memory, **bench_idle_fds()}
    figures["targets"] = {"cycles_ratio": f">= {CYCLES_TARGET}", "rss_ratio": f"<= {RSS_TARGET}"}
    figures["passed"] = {
        "cycles_ratio": figures["cycles_ratio"] >= CYCLES_TARGET,
        "rss_ratio": figures["rss_ratio"] <= RSS_TARGET,
        "idle_fd_delta": figures["idle_fd_delta"] == 0,
    }
    return figures


def _quiet_logs() -> None:
    # Stop messages are DEBUG; a terminal sink would be measured too.
    from loguru import logger

    logger.remove()
    logger.add(lambda _message: None, level="WARNING")


def main(argv: list[str]) -> int:
    _quiet_logs()
    if argv[:1] == ["--rss-child"]:
        side, count, scratch = argv[1], int(argv[2]), argv[3]
        print(_rss_child(side, count, scratch), flush=True)
        return 0
    figures = bench_locks(quick="--quick" in argv)
    if "--json" in argv:
        print(json.dumps(figures, indent=2))
        return 0
    for key, value in figures.items():
        shown = f"{value:.6g}" if isinstance(value, float) else value
        print(f"  {key:28s} {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
