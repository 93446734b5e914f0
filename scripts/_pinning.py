"""CPU pinning for the benchmarks: the caller on one CPU, the threads it measures on the other.

    caller_cpu, other_cpu, layout = cpu_pair("lock actor")
    with pinned(caller_cpu, [actor_thread_id(lock_ref)], other_cpu):
        ...  # timed

A thread handoff on these 2-CPU machines otherwise flips between ~25 µs and ~150 µs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def actor_thread_id(ref: Any) -> int:
    """The native id of the thread running the actor behind `ref` (a pykka `ActorRef`), to pin it."""
    thread = getattr(ref._actor_weakref(), "_thread", None)
    if thread is None or thread.native_id is None:
        raise RuntimeError(f"cannot find the thread of {ref}")
    return int(thread.native_id)


def cpu_pair(other: str) -> tuple[int | None, int | None, str]:
    """(caller CPU, CPU for `other`, a note saying so); None when nothing can be pinned here."""
    if not hasattr(os, "sched_setaffinity"):
        return None, None, "threads not pinned (no sched_setaffinity)"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        return cpus[0], cpus[1], f"caller on CPU {cpus[0]}, {other} on CPU {cpus[1]}"
    return cpus[0], cpus[0], f"only CPU {cpus[0]} available: caller and {other} share it"


@contextmanager
def pinned(caller_cpu: int | None, thread_ids: list[int], other_cpu: int | None) -> Iterator[None]:
    """Pin the calling thread to `caller_cpu` and the given native threads to `other_cpu`."""
    if caller_cpu is None or other_cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {caller_cpu})  # on Linux, 0 is the calling thread
    for thread_id in thread_ids:
        os.sched_setaffinity(thread_id, {other_cpu})
    try:
        yield
    finally:
        for thread_id in thread_ids:
            try:
                os.sched_setaffinity(thread_id, before)
            except OSError:
                pass  # the thread ended
        os.sched_setaffinity(0, before)


def rate(cycle: Callable[[], None], cycles: int) -> float:
    """Cycles per second of `cycle`, run `cycles` times back to back."""
    start = time.perf_counter()
    for _ in range(cycles):
        cycle()
    return cycles / (time.perf_counter() - start)


def interleaved(
    sides: dict[str, Callable[[], None]], baseline: str, *, rounds: int, cycles: int, warmup: int,
    after_each_round: Callable[[], None] | None = None,
) -> tuple[dict[str, list[float]], list[float]]:
    """Each side's rate per round, taking each place in turn, and `ours / baseline` per round.

    Call it inside `pinned(...)`: the sides share one machine, so only rates measured in the
    same short rounds compare. `after_each_round` measures something else in the same rounds.
    """
    rates: dict[str, list[float]] = {name: [] for name in sides}
    ratios: list[float] = []
    for cycle in sides.values():
        rate(cycle, warmup)
    names = list(sides)
    for index in range(rounds):
        shift = index % len(names)  # each side takes each place in turn
        measured = {name: rate(sides[name], cycles) for name in names[shift:] + names[:shift]}
        for name, value in measured.items():
            rates[name].append(value)
        ratios.append(measured["ours"] / measured[baseline])
        if after_each_round is not None:
            after_each_round()
    return rates, ratios
