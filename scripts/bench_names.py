"""Benchmark the name pool (CONTRACT §6, "Name pool").

Three comparisons, each measured in this one process run with the sides interleaved in
short rounds (rotating which side goes first) and reported as medians:

- (a) in memory: checkout+checkin round trips per second through a cached proxy of a
  `NamePool` started without `state_path`, against two cached bare pykka proxy calls to a
  trivial plain pykka actor (target ratio >= 0.9);
- (b) durable: the same round trips from 8 calling threads to a pool with `state_path`
  (group commit: one fsync per group, on the journal's writer thread) against 8 threads
  on an in-memory pool (target >= 0.7);
- (c) growth: durable round trips from one thread with 10,000 names held against 10 held
  (target >= 0.8; 1,000 held is reported too): a change costs the same whatever the size
  of the state. The held names are written as the pool's snapshot before it starts.

The garbage collector stays on, as in a host app. Calling threads run on one CPU and
actor threads (and the threads they start: the name source, the journal's writer and
snapshot threads) on the other, because a thread handoff on a 2-CPU machine otherwise
flips between ~25 µs and ~150 µs with where the scheduler puts the threads.

Run standalone: ``python scripts/bench_names.py [--quick]``; `scripts/bench.py` imports
`bench_names`.
"""

from __future__ import annotations

import itertools
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent
for path in (SCRIPTS, ROOT):  # run from a checkout without installing
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import pykka  # noqa: E402
from _pinning import cpu_pair  # noqa: E402

from actors.names._pool import NamePool  # noqa: E402
from actors.names._state import NameState  # noqa: E402
from supervision import SnapshotStore  # noqa: E402

__all__ = ["DURABLE_TARGET", "GROWTH_TARGET", "IN_MEMORY_TARGET", "bench_names"]

IN_MEMORY_TARGET = 0.9  # pool round trips / two bare proxy calls, at least
DURABLE_TARGET = 0.7  # durable / in-memory round trips with 8 callers, at least
GROWTH_TARGET = 0.8  # durable round trips with 10,000 held / with 10 held, at least
CALLING_THREADS = 8
GROWTH_SIZES = (10, 1_000, 10_000)


# -- CPU pinning ----------------------------------------------------------------------------


def _pin(cpu: int | None) -> None:
    """Pin the calling thread (pid 0 is the calling thread on Linux); threads it starts inherit it."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


class _PinnedNamePool(NamePool):
    """A `NamePool` whose thread runs on the actor CPU (benchmark only)."""

    cpu: int | None = None

    def on_start(self) -> None:
        _pin(self.cpu)
        super().on_start()


class _Trivial(pykka.ThreadingActor):
    """The baseline: a plain pykka actor with a method that does nothing."""

    cpu: int | None = None

    def on_start(self) -> None:
        _pin(self.cpu)

    def touch(self, value: Any = None) -> Any:
        return value


def _plenty_source() -> Callable[[int, frozenset[str]], list[str]]:
    counter = itertools.count()

    def source(count: int, used: frozenset[str]) -> list[str]:
        return [f"bench-{next(counter)}" for _ in range(count)]

    return source


def _seeded_state_path(directory: str, held: int) -> str:
    """A state file in which `held` names are checked out (by `str` owners)."""
    state = NameState(chunk_size=64)
    state.accept_chunk([f"held-{index}" for index in range(held)])
    for index in range(held):
        state.checkout(f"owner-{index}")
    path = os.path.join(directory, f"held-{held}", "names.state")
    os.makedirs(os.path.dirname(path), mode=0o700)
    SnapshotStore(path, version=1).save(state.to_snapshot())
    return path


# -- measuring ------------------------------------------------------------------------------


def _pool_round_trips(proxy: Any, count: int) -> float:
    """Seconds for `count` checkout+checkin round trips from this thread."""
    checkout, checkin = proxy.checkout_name, proxy.checkin_name
    start = time.perf_counter()
    for _ in range(count):
        checkin(checkout().get()).get()
    return time.perf_counter() - start


def _bare_round_trips(proxy: Any, count: int) -> float:
    """Seconds for `count` pairs of bare proxy calls from this thread."""
    touch = proxy.touch
    start = time.perf_counter()
    for _ in range(count):
        touch(touch().get()).get()
    return time.perf_counter() - start


def threads_rate(works: list[Callable[[], object]], per_thread: int) -> float:
    """Round trips per second of one thread per `works` entry, started together, each
    running its work once (`per_thread` round trips); the first error is raised here."""
    barrier = threading.Barrier(len(works) + 1)
    errors: list[BaseException] = []

    def run(work: Callable[[], object]) -> None:
        barrier.wait()
        try:
            work()
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    workers = [threading.Thread(target=run, args=(work,), daemon=True) for work in works]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return len(works) * per_thread / elapsed


def _concurrent_rate(ref: pykka.ActorRef[Any], threads: int, per_thread: int) -> float:
    """Round trips per second of `threads` callers, each with its own cached proxy."""
    proxies = [ref.proxy() for _ in range(threads)]  # built outside the timed region
    return threads_rate([lambda proxy=proxy: _pool_round_trips(proxy, per_thread) for proxy in proxies], per_thread)


def _interleaved(
    first: Callable[[], float], second: Callable[[], float], rounds: int
) -> tuple[float, float]:
    """Median of each side over `rounds`, alternating which side goes first."""
    firsts: list[float] = []
    seconds: list[float] = []
    for index in range(rounds):
        order = [(first, firsts), (second, seconds)]
        if index % 2:
            order.reverse()
        for measure, results in order:
            results.append(measure())
    return statistics.median(firsts), statistics.median(seconds)


def _interleaved_many(measures: list[Callable[[], float]], rounds: int) -> list[float]:
    """Median of each measure over `rounds`, rotating which one goes first."""
    results: list[list[float]] = [[] for _ in measures]
    for index in range(rounds):
        shift = index % len(measures)
        for position in [*range(shift, len(measures)), *range(shift)]:
            results[position].append(measures[position]())
    return [statistics.median(values) for values in results]


def bench_names(rounds: int = 15, quick: bool = False) -> dict[str, Any]:
    """Measure the name pool against its baselines; a dict of figures, ratios and targets.

    Rates are round trips per second (one round trip = a checkout and a checkin, or two
    bare calls). `quick` shortens every round for a smoke run.
    """
    if quick:
        rounds = min(rounds, 5)
    single_calls = 200 if quick else 500
    per_thread = 25 if quick else 60
    growth_calls = 100 if quick else 300
    caller_cpu, actor_cpu, note = cpu_pair("actors")
    state_dir = tempfile.mkdtemp(prefix="bench-names-")
    affinity_before = os.sched_getaffinity(0) if caller_cpu is not None else None
    refs: list[pykka.ActorRef[Any]] = []
    try:
        _PinnedNamePool.cpu = actor_cpu
        _Trivial.cpu = actor_cpu
        _pin(caller_cpu)
        memory_pool = _PinnedNamePool.start(source=_plenty_source(), chunk_size=64)
        durable_pool = _PinnedNamePool.start(
            source=_plenty_source(), chunk_size=64, state_path=os.path.join(state_dir, "names.state")
        )
        trivial = _Trivial.start()
        refs += [memory_pool, durable_pool, trivial]
        grown = {
            held: _PinnedNamePool.start(
                source=_plenty_source(), chunk_size=64, state_path=_seeded_state_path(state_dir, held)
            )
            for held in GROWTH_SIZES
        }
        refs += list(grown.values())
        grown_proxies = {held: ref.proxy() for held, ref in grown.items()}
        memory_proxy, trivial_proxy = memory_pool.proxy(), trivial.proxy()
        # Warm up: the first chunk, the first snapshot, the threads' caches.
        _pool_round_trips(memory_proxy, 50)
        _bare_round_trips(trivial_proxy, 50)
        _concurrent_rate(durable_pool, CALLING_THREADS, 10)
        _concurrent_rate(memory_pool, CALLING_THREADS, 10)
        for proxy in grown_proxies.values():
            _pool_round_trips(proxy, 20)

        pool_rate, bare_rate = _interleaved(
            lambda: single_calls / _pool_round_trips(memory_proxy, single_calls),
            lambda: single_calls / _bare_round_trips(trivial_proxy, single_calls),
            rounds,
        )
        durable_rate, memory_rate = _interleaved(
            lambda: _concurrent_rate(durable_pool, CALLING_THREADS, per_thread),
            lambda: _concurrent_rate(memory_pool, CALLING_THREADS, per_thread),
            rounds,
        )
        growth_rates = _interleaved_many(
            [
                lambda proxy=proxy: growth_calls / _pool_round_trips(proxy, growth_calls)
                for proxy in grown_proxies.values()
            ],
            rounds,
        )
    finally:
        for ref in refs:
            ref.stop(timeout=10)
        if affinity_before is not None:
            os.sched_setaffinity(0, affinity_before)
        shutil.rmtree(state_dir, ignore_errors=True)
    growth = dict(zip(GROWTH_SIZES, growth_rates))
    return {
        **{f"durable_held_{held}_round_trips_per_s": rate for held, rate in growth.items()},
        "growth_ratio": growth[GROWTH_SIZES[-1]] / growth[GROWTH_SIZES[0]],
        "growth_target": GROWTH_TARGET,
        "in_memory_round_trips_per_s": pool_rate,
        "bare_pairs_per_s": bare_rate,
        "in_memory_ratio": pool_rate / bare_rate,
        "in_memory_target": IN_MEMORY_TARGET,
        "durable_8_threads_round_trips_per_s": durable_rate,
        "in_memory_8_threads_round_trips_per_s": memory_rate,
        "durable_ratio": durable_rate / memory_rate,
        "durable_target": DURABLE_TARGET,
        "calling_threads": CALLING_THREADS,
        "rounds": rounds,
        "cpus": note,
    }


def main(argv: list[str]) -> int:
    figures = bench_names(quick="--quick" in argv)
    print(f"name pool benchmark ({figures['cpus']}; {figures['rounds']} rounds, medians)")
    print(
        f"  in memory:   {figures['in_memory_round_trips_per_s']:9.0f} checkout+checkin/s vs "
        f"{figures['bare_pairs_per_s']:9.0f} bare call pairs/s  ratio {figures['in_memory_ratio']:.2f} "
        f"(target >= {figures['in_memory_target']})"
    )
    print(
        f"  durable x{figures['calling_threads']}: {figures['durable_8_threads_round_trips_per_s']:9.0f} "
        f"checkout+checkin/s vs {figures['in_memory_8_threads_round_trips_per_s']:9.0f} in memory      "
        f"ratio {figures['durable_ratio']:.2f} (target >= {figures['durable_target']})"
    )
    rates = "  ".join(f"{held:,} held {figures[f'durable_held_{held}_round_trips_per_s']:.0f}/s" for held in GROWTH_SIZES)
    print(
        f"  growth:      {rates}  ratio {figures['growth_ratio']:.2f} (target >= {figures['growth_target']})"
    )
    return 0


if __name__ == "__main__":
    from loguru import logger

    logger.remove()  # the pool's INFO lines would interleave with the figures
    logger.add(sys.stderr, level="WARNING")
    sys.exit(main(sys.argv[1:]))
