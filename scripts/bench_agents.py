"""Benchmark the agent pool's sweep as a host app calls it (CONTRACT §6, "Agent pool").

Each figure is one `sweep()` call on the proxy of a running `AgentPool` — the actor's
round trip, health probes on every entry, the TTL and LRU decisions, the busy
re-checks, the removals, the reply and the hand-over of the evicted backends to the
disposal thread — with the garbage collector on. Rows:

* sweep of 100,000 entries that evicts about half by idle TTL vs `sorted()` of
  100,000 ``(str, float)`` pairs (target <= 5);
* the same sweep at 100,000 vs 10,000 entries (target <= 15);
* growth (info): the sweep at 10,000, 30,000 and 100,000 entries.

How: one pool per size, each on its own `ManualClock`, kept in a rolling steady state
as a long-running host would have it. Before each timed sweep the clock moves past the
TTL (the live half goes idle) and half the pool's size is registered anew through the
proxy, in random order, four agents to a chat, a fifth of them touched again later (so
recency is not registration order); 1% of backends are busy. The sweep then evicts the
idle half. Before each timed region — the `sorted()` baseline's too — the bench waits
for the disposals to finish, runs `gc.collect()` and reads a buffer larger than the
last-level cache, so each starts from a settled heap and cold caches, as a sweep that
runs once every ``sweep_interval`` finds them (``BENCH_AGENTS_WARM=1`` skips the
buffer; see docs/design.md, "The agent pool"). The collector stays on inside the timed region, and
the collections that run there are counted (``gc_collections_in_sweeps``). The sides are interleaved in each round and the
figures are medians (ratios: medians of the per-round ratios). The calling thread is
pinned to one CPU and the pool's thread (with the disposal threads it starts) to
the other.

Run standalone: ``python scripts/bench_agents.py [rounds]``; `bench_sweep` is what
``scripts/bench.py`` calls.
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(ROOT) not in sys.path:  # import the packages from this checkout without installing
    sys.path.insert(0, str(ROOT))

from loguru import logger  # noqa: E402

from _pinning import cpu_pair, pinned  # noqa: E402
from actors import AgentPool  # noqa: E402
from supervision import ManualClock  # noqa: E402

SIZES = (10_000, 30_000, 100_000)
LARGE, SMALL = SIZES[-1], SIZES[0]
SORTED_PAIRS = 100_000
IDLE_TTL = 1_000.0
BUSY_FRACTION = 0.01
SMALL_REPEATS = 3  # a 10k sweep takes a few ms: the median of several per round
SWEEP_VS_SORTED_TARGET = 5.0
GROWTH_TARGET = 15.0
CALL_TIMEOUT = 60.0


# -- backends ---------------------------------------------------------------------------------

class _DisposalCounter:
    """Counts ``dispose()`` calls; the pool's disposal threads share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self) -> None:
        with self._lock:
            self.count += 1

    def wait_for(self, expected: int) -> None:
        deadline = time.monotonic() + CALL_TIMEOUT
        while self.count < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.count} of {expected} disposals ran within {CALL_TIMEOUT}s")
            time.sleep(0.002)


_disposals = _DisposalCounter()


class _Backend:
    """A backend with both optional probes, as the pool's real ones have."""

    __slots__ = ("busy",)

    def __init__(self, busy: bool) -> None:
        self.busy = busy

    def dispose(self) -> None:
        _disposals.add()

    def is_busy(self) -> bool:
        return self.busy

    def tick_health(self, now: float) -> None:
        pass


class _ThreadSpy(_Backend):
    """Tells which OS thread runs the probes: the pool's own."""

    __slots__ = ("thread_id",)

    def __init__(self) -> None:
        super().__init__(busy=False)
        self.thread_id: int | None = None

    def tick_health(self, now: float) -> None:
        self.thread_id = threading.get_native_id()


# -- one pool in a rolling steady state ---------------------------------------------------------


class _RollingPool:
    """A running `AgentPool` of about ``size`` entries, half of them idle before each sweep."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size = size
        self.rng = rng
        self.clock = ManualClock()
        # max_live above the size: this sweep is the TTL's; the timer never fires.
        self.ref = AgentPool.start(idle_ttl=IDLE_TTL, max_live=2 * size, sweep_interval=1e9, clock=self.clock)
        self.proxy = self.ref.proxy()
        self._next_key = 0
        self.disposals_expected = 0
        spy = _ThreadSpy()
        self.proxy.register("bench", "thread-spy", spy).get(timeout=CALL_TIMEOUT)
        self.proxy.sweep().get(timeout=CALL_TIMEOUT)
        if spy.thread_id is None:
            raise RuntimeError("the pool's health probe never ran")
        self.thread_id = spy.thread_id
        self._register(size // 2)

    def _register(self, count: int) -> None:
        """``count`` new entries through the proxy, as a host registers them."""
        register, touch, rng = self.proxy.register, self.proxy.touch, self.rng
        numbers = list(range(self._next_key, self._next_key + count))
        self._next_key += count
        rng.shuffle(numbers)
        chats = max(1, self.size // 4)
        last = None
        for number in numbers:
            last = register(f"chat-{number % chats}", f"agent-{number}", _Backend(rng.random() < BUSY_FRACTION))
        for number in rng.sample(numbers, count // 5):
            last = touch(f"chat-{number % chats}", f"agent-{number}")
        if last is not None:
            last.get(timeout=CALL_TIMEOUT)

    def prepare(self) -> None:
        """Everything registered so far goes idle; half the size arrives fresh."""
        self.clock.advance(IDLE_TTL + 1.0)
        self._register(self.size // 2)

    def timed_sweep(self) -> tuple[float, int]:
        """One sweep through the proxy: (seconds, evicted)."""
        started = time.perf_counter()
        evicted = self.proxy.sweep().get(timeout=CALL_TIMEOUT)
        seconds = time.perf_counter() - started
        self.disposals_expected += len(evicted)
        return seconds, len(evicted)

    def stop(self) -> None:
        self.ref.stop(timeout=CALL_TIMEOUT)


# -- the benchmark ------------------------------------------------------------------------------


# Larger than the last-level cache (32 MiB here): reading it before each timed region
# starts every side cold, as a sweep that runs every sweep_interval finds the caches.
# Otherwise a 10k pool just filled is swept from cache while a 100k one cannot fit,
# and the growth figure measures the cache, not the pool (see docs/design.md, "The agent pool").
_SCRATCH_BYTES = 96 << 20
COLD = os.environ.get("BENCH_AGENTS_WARM") is None


def _settle(pools: list[_RollingPool], already_disposed: int, scratch: bytearray) -> None:
    """Wait for every disposal, collect, and evict the caches: each timed region starts alike."""
    _disposals.wait_for(already_disposed + sum(pool.disposals_expected for pool in pools))
    gc.collect()
    if COLD:
        scratch.find(b"x")


def bench_sweep(rounds: int = 7) -> dict[str, Any]:
    """Run the benchmark: ``rounds`` interleaved rounds (7 take 30-80 s on the 2-core VM).

    Returns medians in seconds (``sorted_100k_s``, ``sweep_10k_s``, ``sweep_30k_s``,
    ``sweep_100k_s``), the ratios ``sweep_vs_sorted`` and ``sweep_100k_vs_10k``
    (medians of per-round ratios) with ``targets`` {ratio: bound}, growth ratios
    ``sweep_30k_vs_10k``, ``info_rows`` for the growth rows, and what was measured.
    """
    rng = random.Random(20240601)
    pairs = [(f"chat-{rng.randrange(10**9)}:agent-{i}", rng.random() * 1e6) for i in range(SORTED_PAIRS)]
    caller_cpu, pool_cpu, layout = cpu_pair("pool and disposal threads")
    collections = [0]

    def count_collections(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collections[0] += 1

    baseline_disposed = _disposals.count
    scratch = bytearray(_SCRATCH_BYTES)
    pools = {size: _RollingPool(size, rng) for size in SIZES}
    times: dict[str, list[float]] = {name: [] for name in ("sorted", *(f"sweep_{size}" for size in SIZES))}
    ratios: dict[str, list[float]] = {"sweep_vs_sorted": [], "sweep_100k_vs_10k": [], "sweep_30k_vs_10k": []}
    evicted_large: list[int] = []
    sweep_collections = 0

    def timed_sweep(pool: _RollingPool) -> float:
        nonlocal sweep_collections
        pool.prepare()
        _settle(list(pools.values()), baseline_disposed, scratch)
        collections[0] = 0
        seconds, evicted = pool.timed_sweep()
        sweep_collections += collections[0]
        if pool.size == LARGE:
            evicted_large.append(evicted)
        return seconds

    def timed_sorted() -> float:
        gc.collect()
        if COLD:
            scratch.find(b"x")
        started = time.perf_counter()
        sorted(pairs)
        return time.perf_counter() - started

    gc.callbacks.append(count_collections)
    try:
        with pinned(caller_cpu, [pool.thread_id for pool in pools.values()], pool_cpu):
            for _ in range(rounds):
                sorted_s = timed_sorted()
                large_s = timed_sweep(pools[LARGE])
                small_s = statistics.median(timed_sweep(pools[SMALL]) for _ in range(SMALL_REPEATS))
                middle_s = timed_sweep(pools[30_000])
                sorted_s = statistics.median([sorted_s, timed_sorted()])
                for name, seconds in (
                    ("sorted", sorted_s),
                    (f"sweep_{LARGE}", large_s),
                    (f"sweep_{SMALL}", small_s),
                    ("sweep_30000", middle_s),
                ):
                    times[name].append(seconds)
                ratios["sweep_vs_sorted"].append(large_s / sorted_s)
                ratios["sweep_100k_vs_10k"].append(large_s / small_s)
                ratios["sweep_30k_vs_10k"].append(middle_s / small_s)
    finally:
        gc.callbacks.remove(count_collections)
        for pool in pools.values():
            pool.stop()

    def median(name: str) -> float:
        return statistics.median(times[name])

    figures: dict[str, Any] = {
        "entries": LARGE,
        "evicted": int(statistics.median(evicted_large)),
        "rounds": rounds,
        "layout": layout,
        "sorted_100k_s": median("sorted"),
        "sweep_10k_s": median("sweep_10000"),
        "sweep_30k_s": median("sweep_30000"),
        "sweep_100k_s": median("sweep_100000"),
        "gc_collections_in_sweeps": sweep_collections,
        "sweeps_timed": rounds * (SMALL_REPEATS + 2),
    }
    figures.update({name: statistics.median(values) for name, values in ratios.items()})
    figures["targets"] = {"sweep_vs_sorted": SWEEP_VS_SORTED_TARGET, "sweep_100k_vs_10k": GROWTH_TARGET}
    figures["info_rows"] = [
        {
            "name": f"  growth: sweep at {label} entries (info; vs 10k)",
            "ours": figures[f"sweep_{label}_s"],
            "baseline": figures["sweep_10k_s"],
            "unit": "s",
            "ratio": figures[f"sweep_{label}_s"] / figures["sweep_10k_s"] if label != "10k" else 1.0,
        }
        for label in ("10k", "30k", "100k")
    ]
    return figures


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    # The pool logs one INFO line per sweep: formatted, then dropped rather than timing a terminal.
    logger.remove()
    logger.add(lambda _message: None, level="INFO")
    f = bench_sweep(rounds)
    ms = 1e3
    print(f"agent pool sweep() through the proxy, GC on, {f['rounds']} rounds; {f['layout']}")
    print(f"  sorted() of 100k (str, float) pairs       {f['sorted_100k_s'] * ms:8.2f} ms")
    print(f"  sweep 10k entries (~half evicted by TTL)  {f['sweep_10k_s'] * ms:8.2f} ms")
    print(f"  sweep 30k entries                         {f['sweep_30k_s'] * ms:8.2f} ms")
    print(f"  sweep 100k entries ({f['evicted']:,} evicted)     {f['sweep_100k_s'] * ms:8.2f} ms")
    print(f"  GC collections during the {f['sweeps_timed']} timed sweeps: {f['gc_collections_in_sweeps']}")
    print(f"  sweep 100k / sorted()   {f['sweep_vs_sorted']:6.2f}   (target <= {SWEEP_VS_SORTED_TARGET:g})")
    print(f"  sweep 100k / 10k        {f['sweep_100k_vs_10k']:6.2f}   (target <= {GROWTH_TARGET:g})")
    print(f"  sweep  30k / 10k        {f['sweep_30k_vs_10k']:6.2f}   (info)")


if __name__ == "__main__":
    main()
