"""Benchmark the worker identity locks (CONTRACT §6, "Locks").

`bench_locks(quick=False)` returns one dict of figures:

- acquire+release cycles/s through a `WorkerLock` actor as a host calls it (cached
  `ref.proxy()`, both calls awaited: two round trips per cycle) vs `filelock.FileLock`
  acquire+release on the same filesystem (a temporary directory: `TMPDIR`), interleaved in short
  rounds, medians, collector on; the caller is pinned to one CPU and the lock actor's
  thread to the other (target: ratio >= 0.3). `core_acquire_s` / `core_release_s` (the
  `LockFile` core alone) and `two_asks_s` (two asks to an actor doing nothing) show
  where a cycle's time goes; `filesystem` names the one measured: on an ext4 without a
  journal (this VM's root) each record's fresh inode costs 10 µs to ~0.7 ms depending on
  how many inodes *any* process freed there in the last 1-6 minutes (docs/design.md, "Worker identity locks");
- growth: the cycle's time with 1,000 live lock actors vs with 10 (target: <= 1.25);
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import filelock  # noqa: E402
import psutil  # noqa: E402
import pykka  # noqa: E402
from _pinning import actor_thread_id, cpu_pair, interleaved, pinned, rate  # noqa: E402

from actors.locks._lock_file import LockFile  # noqa: E402
from actors.locks._record import own_identity  # noqa: E402
from actors.locks._worker_lock import WorkerLock  # noqa: E402
from supervision import ManualClock, SupervisedActor  # noqa: E402

__all__ = ["CYCLES_TARGET", "GROWTH_TARGET", "RSS_TARGET", "bench_locks"]

CYCLES_TARGET = 0.3  # ours / filelock cycles per second, at least (contract §6 v3)
GROWTH_TARGET = 1.25  # cycle time with 1,000 live lock actors / with 10, at most
RSS_TARGET = 1.5  # ours / bare pykka RSS delta, at most
ACTORS = 1_000


def _filesystem(path: str) -> str:
    """The filesystem holding `path`, e.g. "ext4 /dev/vda (no journal)": what a lock
    record's fresh inode costs depends on it (docs/design.md, "Worker identity locks")."""
    resolved = os.path.realpath(path)
    best, found = "", "unknown"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
            for line in mounts:
                fields, _, filesystem_fields = line.partition(" - ")
                point = fields.split()[4]
                is_under = resolved == point or resolved.startswith(point.rstrip("/") + "/")
                if is_under and len(point) >= len(best):
                    best, found = point, " ".join(filesystem_fields.split()[:2])  # type, source
    except (OSError, IndexError):
        return "unknown"
    fs_type, _, source = found.partition(" ")
    journal_task = f"/sys/fs/ext4/{os.path.basename(source)}/journal_task"
    if fs_type == "ext4" and os.path.exists(journal_task):
        with open(journal_task, encoding="utf-8") as task:
            if task.read().strip() == "<none>":
                return f"{found} (no journal)"
    return found


def _worker_dir(scratch: str, name: str) -> Path:
    """A worker directory under `scratch` (the locks never create one)."""
    path = Path(scratch) / name
    path.mkdir(exist_ok=True)
    return path


# -- (a) acquire + release cycles ---------------------------------------------------------------


class _Echo(SupervisedActor):
    """A supervised actor with one trivial method: the cost of two asks, for the breakdown."""

    def ping(self) -> None:
        return None


def _awaited_cycle(lock: Any) -> Callable[[], None]:
    """One cycle as a host calls it: acquire, wait for it; release, wait for it."""

    def cycle() -> None:
        lock.acquire().get()
        lock.release().get()

    return cycle


def bench_cycles(rounds: int = 20, cycles: int = 1_000, warmup: int = 300) -> dict[str, Any]:
    """acquire+release cycles/s: `WorkerLock` through a cached proxy, both calls awaited,
    vs `filelock.FileLock` on the same filesystem, interleaved in short rounds (medians).

    Also measured, to show where a cycle's time goes: the core (`LockFile.acquire` and
    `release` on their own) in the calling thread, and two asks to an actor doing nothing.
    """
    caller_cpu, actor_cpu, layout = cpu_pair("lock actor")
    with tempfile.TemporaryDirectory(prefix="bench-locks-") as scratch:
        filesystem = _filesystem(scratch)  # both sides' files are in it
        ref = WorkerLock.start(_worker_dir(scratch, "worker"), clock=ManualClock())
        echo_ref = _Echo.start()
        try:
            echo = echo_ref.proxy()
            file_lock = filelock.FileLock(str(Path(scratch) / "filelock.lock"))
            core = LockFile(_worker_dir(scratch, "core-worker"))
            me = own_identity() or os.getpid()

            def baseline() -> None:
                file_lock.acquire()
                file_lock.release()

            def two_asks() -> None:
                echo.ping().get()
                echo.ping().get()

            sides: dict[str, Callable[[], None]] = {"ours": _awaited_cycle(ref.proxy()), "filelock": baseline}
            two_asks_rates: list[float] = []
            core_times: dict[str, list[float]] = {"acquire": [], "release": []}

            def where_a_cycle_goes() -> None:  # in the same rounds as the sides
                two_asks_rates.append(rate(two_asks, max(1, cycles // 4)))
                for _ in range(max(1, cycles // 4)):
                    started = time.perf_counter()
                    core.acquire(me, "bench")
                    acquired = time.perf_counter()
                    core.release()
                    core_times["acquire"].append(acquired - started)
                    core_times["release"].append(time.perf_counter() - acquired)

            with pinned(caller_cpu, [actor_thread_id(ref), actor_thread_id(echo_ref)], actor_cpu):
                rate(two_asks, warmup)
                rates, ratios = interleaved(sides, "filelock", rounds=rounds, cycles=cycles, warmup=warmup,
                                            after_each_round=where_a_cycle_goes)
        finally:
            ref.stop()
            echo_ref.stop()
    ours_rate = statistics.median(rates["ours"])
    baseline_rate = statistics.median(rates["filelock"])
    two_asks_rate = statistics.median(two_asks_rates)
    return {
        "lock_cycles_per_s": ours_rate,
        "filelock_cycles_per_s": baseline_rate,
        "lock_cycle_s": 1.0 / ours_rate,
        "filelock_cycle_s": 1.0 / baseline_rate,
        "cycles_ratio": statistics.median(ratios),
        "cycles_ratio_min": min(ratios),
        "cycles_ratio_max": max(ratios),
        "cycles_target": CYCLES_TARGET,
        "release": "awaited (two round trips per cycle)",
        # Where a cycle goes (informational): the core's work and two bare handoffs.
        "core_acquire_s": statistics.median(core_times["acquire"]),
        "core_release_s": statistics.median(core_times["release"]),
        "two_asks_s": 1.0 / two_asks_rate,
        "two_asks_per_s": two_asks_rate,
        "two_asks_vs_filelock_ratio": two_asks_rate / baseline_rate,
        "layout": layout,
        "filesystem": filesystem,
    }


def bench_growth(rounds: int = 6, cycles: int = 400, few: int = 10, many: int = 1_000) -> dict[str, Any]:
    """Awaited cycle time through one lock actor with `few` vs `many` live lock actors
    (each on its own worker directory, idle), alternating in rounds (medians)."""
    caller_cpu, actor_cpu, _layout = cpu_pair("lock actor")
    clock = ManualClock()
    times: dict[int, list[float]] = {few: [], many: []}
    with tempfile.TemporaryDirectory(prefix="bench-locks-growth-") as scratch:
        refs = [WorkerLock.start(_worker_dir(scratch, f"w{index}"), clock=clock) for index in range(few)]
        cycle = _awaited_cycle(refs[0].proxy())
        try:
            with pinned(caller_cpu, [actor_thread_id(refs[0])], actor_cpu):
                rate(cycle, cycles)
                for _ in range(rounds):
                    gc.collect()  # each side starts from a settled heap (the collector stays on)
                    times[few].append(1.0 / rate(cycle, cycles))
                    extra = [WorkerLock.start(_worker_dir(scratch, f"x{index}"), clock=clock)
                             for index in range(many - few)]
                    for ref in extra:
                        ref.proxy().status().get()  # each has run once, as a live lock has
                    try:
                        gc.collect()
                        times[many].append(1.0 / rate(cycle, cycles))
                    finally:
                        for ref in extra:
                            ref.stop()
        finally:
            for ref in refs:
                ref.stop()
    few_s, many_s = statistics.median(times[few]), statistics.median(times[many])
    return {
        f"cycle_{many}_locks_s": many_s,
        f"cycle_{few}_locks_s": few_s,
        f"cycle_{many}_locks_vs_cycle_{few}_locks": many_s / few_s,
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
            return WorkerLock.start(_worker_dir(scratch, f"worker-{index}"), clock=clock)
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
        ref = WorkerLock.start(_worker_dir(scratch, "worker"), clock=ManualClock())
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
        growth = bench_growth(rounds=2, cycles=200)
        memory = bench_memory(repeats=1)
    else:
        cycles = bench_cycles()
        growth = bench_growth()
        memory = bench_memory()
    figures: dict[str, Any] = {**cycles, **growth, **memory, **bench_idle_fds()}
    growth_key = "cycle_1000_locks_vs_cycle_10_locks"
    figures["targets"] = {"cycles_ratio": f">= {CYCLES_TARGET}", "rss_ratio": f"<= {RSS_TARGET}",
                          growth_key: f"<= {GROWTH_TARGET}"}
    figures["passed"] = {
        "cycles_ratio": figures["cycles_ratio"] >= CYCLES_TARGET,
        "rss_ratio": figures["rss_ratio"] <= RSS_TARGET,
        growth_key: figures[growth_key] <= GROWTH_TARGET,
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
