"""Benchmark the agent pool's sweep (CONTRACT §6, "Agent pool").

Times the core of what the `AgentPool` actor does per sweep — decide
(`AgentRegistry.plan_sweep`), then re-check busy and remove (`AgentRegistry.evict`) —
over 100,000 entries of which about half are past the TTL, against `sorted()` of
100,000 ``(str, float)`` pairs (target <= 5), and the same sweep at 100,000 vs 10,000
entries (target <= 15). Also reported: the one-walk `AgentRegistry.sweep`, the route
through snapshots and the pure selectors, and a sweep where the cap bites too.

The sides are interleaved in short rounds and figures are medians. Registries are
built fresh each round outside the timed regions; each timed region starts with the
CPU caches flushed and the garbage collector paused.

Run standalone: ``python scripts/bench_agents.py``; `bench_sweep` is what
``scripts/bench.py`` calls.
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # import the packages from this checkout without installing
    sys.path.insert(0, str(ROOT))

from actors.agents._registry import (  # noqa: E402
    AgentKey,
    AgentRegistry,
    is_busy,
    select_idle_eviction_targets,
    select_lru_eviction_targets,
)

LARGE = 100_000
SMALL = 10_000
BUSY_FRACTION = 0.01
SMALL_REPEATS = 5  # a 10k sweep takes a few ms: the median of several per round


class _Backend:
    """A backend with the optional probes, like the pool's real ones."""

    __slots__ = ("busy",)

    def __init__(self, busy: bool) -> None:
        self.busy = busy

    def dispose(self) -> None:
        pass

    def is_busy(self) -> bool:
        return self.busy

    def tick_health(self, now: float) -> None:
        pass


def _report_busy_error(exc: Exception) -> None:
    pass


def _busy(key: AgentKey, backend: Any) -> bool:
    # What the actor passes: the safe helper, with a callback that would log.
    return is_busy(backend, _report_busy_error)


def _build(count: int, rng: random.Random) -> tuple[AgentRegistry, float, float]:
    """A registry of ``count`` entries, about half idle past the TTL; (registry, now, ttl).

    As in a running pool: keys arrive in random order, each key and backend is created
    when it is registered (the factory runs on a miss), four agents share a chat, and a
    fifth of the entries are used again later, so recency order is not creation order.
    """
    registry = AgentRegistry()
    order = list(range(count))
    rng.shuffle(order)
    chats = count // 4
    now = 0.0
    for i in order:
        now += 1.0
        registry.register((f"chat-{i % chats}", f"agent-{i}"), _Backend(rng.random() < BUSY_FRACTION), now)
    for i in rng.sample(order, count // 5):
        now += 1.0
        registry.get((f"chat-{i % chats}", f"agent-{i}"), now)
    # Half of the activity stamps lie before now - ttl.
    idle_ttl = now / 2
    return registry, now, idle_ttl


def _plan_and_evict(registry: AgentRegistry, now: float, idle_ttl: float, max_live: int) -> int:
    """The actor's per-sweep core work: decide, then re-check busy and remove."""
    plan = registry.plan_sweep(now, idle_ttl, max_live, _busy)
    return len(registry.evict(plan.keys, _busy))


def _fused(registry: AgentRegistry, now: float, idle_ttl: float, max_live: int) -> int:
    """The same in one walk, busy asked once per entry (`AgentRegistry.sweep`)."""
    return len(registry.sweep(now, idle_ttl, max_live, _busy).evicted)


def _pure(registry: AgentRegistry, now: float, idle_ttl: float, max_live: int) -> int:
    """The same through snapshots of every entry and the pure selectors."""
    snapshots = registry.snapshots(_busy)
    ttl_keys = select_idle_eviction_targets(snapshots, now, idle_ttl)
    lru_keys = select_lru_eviction_targets(snapshots, max_live, ttl_keys)
    return len(registry.evict(ttl_keys + lru_keys, _busy))


_Sweep = Callable[[AgentRegistry, float, float, int], int]

# Larger than the last-level cache (32 MiB here): reading it before each timed region
# starts every side cold. Otherwise a 10k registry just built is timed from cache while
# a 100k one cannot fit, and the scaling figure measures the cache, not the algorithm.
_SCRATCH_BYTES = 96 << 20


def _timed(scratch: bytearray, action: Callable[[], object]) -> tuple[float, object]:
    scratch.find(b"x")  # read it all: evicts whatever the fixtures left in cache
    # A collection set off by garbage from building the fixtures is noise, not sweep work.
    gc.disable()
    try:
        start = time.perf_counter()
        result = action()
        return time.perf_counter() - start, result
    finally:
        gc.enable()


def _timed_sweep(
    scratch: bytearray, sweep: _Sweep, fixture: tuple[AgentRegistry, float, float], max_live: int
) -> tuple[float, int]:
    registry, now, idle_ttl = fixture
    seconds, evicted = _timed(scratch, lambda: sweep(registry, now, idle_ttl, max_live))
    return seconds, int(evicted)  # type: ignore[call-overload]


def bench_sweep(rounds: int = 7) -> dict[str, Any]:
    """Run the sweep benchmark (about 3 s a round).

    Returns medians in seconds (``*_s``), ratios as medians of the per-round ratios,
    and ``targets`` {ratio: bound}. The targeted figures time `plan_sweep` + `evict`;
    ``fused_*`` time `AgentRegistry.sweep`, ``pure_*`` the snapshot + selector route.
    """
    rng = random.Random(20240601)
    pairs = [(f"chat-{rng.randrange(10**9)}:agent-{i}", rng.random() * 1e6) for i in range(LARGE)]
    scratch = bytearray(_SCRATCH_BYTES)
    times: dict[str, list[float]] = {
        name: [] for name in ("sorted", "plan_evict", "fused", "pure", "with_cap", "small", "small_fused")
    }
    evicted = evicted_with_cap = 0
    for _ in range(rounds):
        fixtures = {name: _build(LARGE, rng) for name in ("plan_evict", "fused", "pure", "with_cap")}
        smalls = [_build(SMALL, rng) for _ in range(SMALL_REPEATS)]
        smalls_fused = [_build(SMALL, rng) for _ in range(SMALL_REPEATS)]
        gc.collect()

        times["sorted"].append(_timed(scratch, lambda: sorted(pairs))[0])
        seconds, evicted = _timed_sweep(scratch, _plan_and_evict, fixtures["plan_evict"], LARGE)
        times["plan_evict"].append(seconds)
        times["fused"].append(_timed_sweep(scratch, _fused, fixtures["fused"], LARGE)[0])
        times["pure"].append(_timed_sweep(scratch, _pure, fixtures["pure"], LARGE)[0])
        # A cap that bites after the TTL pass: another quarter goes as least recently used.
        seconds, evicted_with_cap = _timed_sweep(scratch, _plan_and_evict, fixtures["with_cap"], LARGE // 4)
        times["with_cap"].append(seconds)
        times["small"].append(
            statistics.median(_timed_sweep(scratch, _plan_and_evict, f, SMALL)[0] for f in smalls)
        )
        times["small_fused"].append(
            statistics.median(_timed_sweep(scratch, _fused, f, SMALL)[0] for f in smalls_fused)
        )
        del fixtures, smalls, smalls_fused

    def ratio(ours: str, baseline: str) -> float:
        return statistics.median(a / b for a, b in zip(times[ours], times[baseline]))

    figures: dict[str, Any] = {"entries": LARGE, "evicted": evicted, "evicted_with_cap": evicted_with_cap}
    figures.update({f"{name}_s": statistics.median(values) for name, values in times.items()})
    figures.update(
        sweep_vs_sorted=ratio("plan_evict", "sorted"),
        fused_vs_sorted=ratio("fused", "sorted"),
        pure_vs_sorted=ratio("pure", "sorted"),
        with_cap_vs_sorted=ratio("with_cap", "sorted"),
        sweep_100k_vs_10k=ratio("plan_evict", "small"),
        fused_100k_vs_10k=ratio("fused", "small_fused"),
        targets={"sweep_vs_sorted": 5.0, "sweep_100k_vs_10k": 15.0},
    )
    return figures


def main() -> None:
    f = bench_sweep()
    ms = 1e3
    print(f"agent pool sweep over {f['entries']:,} entries, {f['evicted']:,} evicted by TTL")
    print(f"  sorted() of 100k (str, float) pairs    {f['sorted_s'] * ms:8.2f} ms")
    print(f"  plan_sweep + evict                     {f['plan_evict_s'] * ms:8.2f} ms")
    print(f"  sweep (one walk, busy asked once)      {f['fused_s'] * ms:8.2f} ms")
    print(f"  snapshots + pure selectors + evict     {f['pure_s'] * ms:8.2f} ms")
    print(f"  plan + evict, cap bites ({f['evicted_with_cap']:,} out) {f['with_cap_s'] * ms:8.2f} ms")
    print(f"  plan + evict over 10k entries          {f['small_s'] * ms:8.2f} ms")
    print(f"  sweep over 10k entries                 {f['small_fused_s'] * ms:8.2f} ms")
    print(f"  plan + evict / sorted     {f['sweep_vs_sorted']:6.2f}   (target <= 5)")
    print(f"  sweep / sorted            {f['fused_vs_sorted']:6.2f}")
    print(f"  pure route / sorted       {f['pure_vs_sorted']:6.2f}")
    print(f"  cap biting / sorted       {f['with_cap_vs_sorted']:6.2f}")
    print(f"  plan + evict 100k / 10k   {f['sweep_100k_vs_10k']:6.2f}   (target <= 15)")
    print(f"  sweep 100k / 10k          {f['fused_100k_vs_10k']:6.2f}")


if __name__ == "__main__":
    main()
