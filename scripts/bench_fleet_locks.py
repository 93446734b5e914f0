"""Benchmark fleet worker locks (CONTRACT §7, "Benchmarks"): ours vs redis-py's own `Lock`.

`bench_fleet_locks(url=None, quick=False)` returns one dict of figures: acquire+release
cycles/s of a fleet `WorkerLock` through a cached proxy (both calls awaited, as a host
calls it: the local record and guard, the actor hops, one Lua script per call) vs
redis-py's `Lock` acquire+release (SET NX PX, then its Lua release) on the same server
with the same client settings, interleaved in short rounds, medians, collector on; the
caller is pinned to one CPU, the lock actor's thread and the redis-server to the other
(target: ratio >= 0.5).

Run standalone: ``python scripts/bench_fleet_locks.py [--quick] [--json] [--url URL]``;
without `--url` it starts a redis-server of its own (Unix socket, appendfsync always, as
the fleet must run) in a temporary directory and stops it afterwards.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from _pinning import actor_thread_id, cpu_pair, interleaved, pinned  # noqa: E402
from _redis_server import serving  # noqa: E402

from actors.fleet._connection import FleetSettings  # noqa: E402
from actors.locks._worker_lock import WorkerLock  # noqa: E402
from supervision import ManualClock  # noqa: E402

__all__ = ["FLEET_LOCKS_TARGET", "bench_fleet_locks"]

FLEET_LOCKS_TARGET = 0.5  # ours / redis-py Lock cycles per second, at least (contract §7)


def _measure(url: str, server_pid: int | None, scratch: str, rounds: int, cycles: int, warmup: int) -> dict[str, Any]:
    settings = FleetSettings.parse(url + ("&" if "?" in url else "?") + "namespace=bench", host_id="bench-host")
    worker = Path(scratch) / "worker"
    worker.mkdir()
    # A ManualClock: no renewal fires during the rounds, so both sides do the same two calls.
    ref = WorkerLock.start(worker, clock=ManualClock(), fleet=settings)
    client = settings.connect()
    try:
        lock = ref.proxy()
        redis_lock = client.lock(settings.key("bench-redis-py-lock"), timeout=settings.lock_lease)

        def ours() -> None:
            lock.acquire().get()
            lock.release().get()

        def baseline() -> None:
            if not redis_lock.acquire(blocking=False):
                raise RuntimeError("redis-py Lock not acquired: the bench key is taken")
            redis_lock.release()

        sides: dict[str, Callable[[], None]] = {"ours": ours, "redis_py_lock": baseline}
        caller_cpu, other_cpu, layout = cpu_pair("lock actor and redis-server")
        others = [actor_thread_id(ref)] + ([server_pid] if server_pid is not None else [])
        with pinned(caller_cpu, others, other_cpu):
            rates, ratios = interleaved(sides, "redis_py_lock", rounds=rounds, cycles=cycles, warmup=warmup)
    finally:
        ref.stop()
        client.close()
    ours_rate, baseline_rate = statistics.median(rates["ours"]), statistics.median(rates["redis_py_lock"])
    ratio = statistics.median(ratios)
    return {
        "fleet_lock_cycles_per_s": ours_rate,
        "redis_py_lock_cycles_per_s": baseline_rate,
        "fleet_lock_cycle_s": 1.0 / ours_rate,
        "redis_py_lock_cycle_s": 1.0 / baseline_rate,
        "fleet_locks_ratio": ratio,
        "fleet_locks_ratio_min": min(ratios),
        "fleet_locks_ratio_max": max(ratios),
        "fleet_locks_target": FLEET_LOCKS_TARGET,
        "fleet_locks_pass": ratio >= FLEET_LOCKS_TARGET,
        "layout": layout,
        "server": url if server_pid is None else "own redis-server (unix socket, appendfsync always)",
    }


def bench_fleet_locks(url: str | None = None, quick: bool = False) -> dict[str, Any]:
    """The figures above; `url` is an existing fleet server, else one is started here."""
    rounds, cycles, warmup = (6, 200, 100) if quick else (16, 500, 300)
    assert gc.isenabled()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-locks-") as scratch, \
            serving(url, Path(scratch) / "redis") as (server_url, server_pid):
        return _measure(server_url, server_pid, scratch, rounds, cycles, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--url", help="an existing fleet server (default: start one)")
    args = parser.parse_args()
    figures = bench_fleet_locks(args.url, quick=args.quick)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    verdict = "PASS" if figures["fleet_locks_pass"] else "FAIL"
    print(f"fleet lock acquire+release: {figures['fleet_lock_cycles_per_s']:.0f}/s "
          f"({figures['fleet_lock_cycle_s'] * 1e6:.0f} µs) vs "
          f"redis-py Lock {figures['redis_py_lock_cycles_per_s']:.0f}/s "
          f"({figures['redis_py_lock_cycle_s'] * 1e6:.0f} µs)")
    print(f"ratio {figures['fleet_locks_ratio']:.2f} (rounds {figures['fleet_locks_ratio_min']:.2f}-"
          f"{figures['fleet_locks_ratio_max']:.2f}), target >= {FLEET_LOCKS_TARGET}: {verdict}  [{figures['layout']}]")
    sys.exit(0 if figures["fleet_locks_pass"] else 1)


if __name__ == "__main__":
    main()
