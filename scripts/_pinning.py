"""CPU pinning for the benchmarks: the caller on one CPU, the threads it measures on the other.

    caller_cpu, other_cpu, layout = cpu_pair("lock actor")
    with pinned(caller_cpu, [actor_thread_id], other_cpu):
        ...  # timed

A thread handoff on these 2-CPU machines otherwise flips between ~25 µs and ~150 µs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


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
