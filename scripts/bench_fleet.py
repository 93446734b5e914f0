#!/usr/bin/env python
"""Benchmark the fleet (CONTRACT §7, "Benchmarks"): the two rows of scripts/bench.py's fleet section.

    .venv/bin/python scripts/bench_fleet.py [--quick] [--json] [--url URL]

- **Names**: checkout+checkin round trips/s through the public API — the `NamePool` proxy
  of a tree started with `start_tree(..., fleet=URL)`, as a host app calls it (one Lua
  script per call, applied and fsynced before it is answered) — vs two bare redis-py `SET`
  round trips to the same server with the same client settings (target >= 0.5).
- **Locks**: fleet `WorkerLock` acquire+release vs redis-py's own `Lock` acquire+release:
  `scripts/bench_fleet_locks.py`'s `bench_fleet_locks`, called as it is (target >= 0.5).

Both sides of a comparison run interleaved in short rounds (each side takes each place in
turn), medians, garbage collector on, the caller pinned to one CPU and the pool's actor
thread and the redis-server to the other (`scripts/_pinning.py`). Without `--url` a
redis-server of its own is started (Unix socket, `appendfsync always`, as the fleet must
run) and stopped by pid. `fleet_rows(quick=...)` returns the rows as dicts with
`scripts/bench.py`'s `Row` fields: `[Row(**row) for row in fleet_rows(quick)]`.
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
SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from _pinning import actor_thread_id, cpu_pair, interleaved, pinned  # noqa: E402
from _redis_server import serving  # noqa: E402
from bench_fleet_locks import FLEET_LOCKS_TARGET, bench_fleet_locks  # noqa: E402

__all__ = ["FLEET_NAMES_TARGET", "bench_fleet_names", "fleet_rows"]

FLEET_NAMES_TARGET = 0.5  # fleet checkout+checkin / two bare redis-py SETs, at least (contract §7)


def _measure_names(url: str, server_pid: int | None, scratch: str, rounds: int, cycles: int,
                   warmup: int) -> dict[str, Any]:
    from actors import start_tree
    from actors.fleet._connection import FleetSettings

    fleet_url = url + ("&" if "?" in url else "?") + "namespace=bench-names"
    tree = start_tree(Path(scratch) / "state", fleet=fleet_url, host_id="bench-host")
    client = FleetSettings.parse(fleet_url, host_id="bench-host").connect()  # the same timeouts, no retries
    try:
        names = tree.names.proxy()
        checkout, checkin = names.checkout_name, names.checkin_name
        key = "bench-names:bare"

        def ours() -> None:
            checkin(checkout("bench").get()).get()

        def baseline() -> None:
            client.set(key, "a")
            client.set(key, "b")

        sides: dict[str, Callable[[], None]] = {"ours": ours, "two_sets": baseline}
        caller_cpu, other_cpu, layout = cpu_pair("name pool actor and redis-server")
        ref = tree.names.current()
        assert ref is not None, "the name pool is not running"
        others = [actor_thread_id(ref)] + ([server_pid] if server_pid is not None else [])
        with pinned(caller_cpu, others, other_cpu):
            rates, ratios = interleaved(sides, "two_sets", rounds=rounds, cycles=cycles, warmup=warmup)
    finally:
        client.close()
        tree.stop()
    ours_rate, baseline_rate = statistics.median(rates["ours"]), statistics.median(rates["two_sets"])
    ratio = statistics.median(ratios)
    return {
        "fleet_names_round_trips_per_s": ours_rate,
        "two_redis_sets_per_s": baseline_rate,
        "fleet_names_ratio": ratio,
        "fleet_names_ratio_min": min(ratios),
        "fleet_names_ratio_max": max(ratios),
        "fleet_names_target": FLEET_NAMES_TARGET,
        "fleet_names_pass": ratio >= FLEET_NAMES_TARGET,
        "names_layout": layout,
    }


def bench_fleet_names(url: str | None = None, quick: bool = False) -> dict[str, Any]:
    """The names figures; `url` is an existing fleet server, else one is started here."""
    rounds, cycles, warmup = (6, 100, 50) if quick else (16, 250, 150)
    assert gc.isenabled()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as scratch, \
            serving(url, Path(scratch) / "redis") as (server_url, server_pid):
        return _measure_names(server_url, server_pid, scratch, rounds, cycles, warmup)


def bench_fleet(url: str | None = None, quick: bool = False) -> dict[str, Any]:
    """Both sets of figures, names then locks (the locks' from `bench_fleet_locks`)."""
    return {**bench_fleet_names(url, quick=quick), **bench_fleet_locks(url, quick=quick)}


def fleet_rows(
    quick: bool = False, url: str | None = None, figures: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The fleet section's two rows, with `scripts/bench.py`'s `Row` fields."""
    figures = bench_fleet(url, quick=quick) if figures is None else figures
    return [
        {"name": "fleet checkout+checkin vs two bare redis-py SETs (round trips/s)",
         "ours": figures["fleet_names_round_trips_per_s"], "baseline": figures["two_redis_sets_per_s"],
         "unit": "/s", "ratio": figures["fleet_names_ratio"], "target": FLEET_NAMES_TARGET, "better": ">=",
         "note": f"rounds {figures['fleet_names_ratio_min']:.2f}-{figures['fleet_names_ratio_max']:.2f}"},
        {"name": "fleet lock acquire+release vs redis-py Lock (cycles/s)",
         "ours": figures["fleet_lock_cycles_per_s"], "baseline": figures["redis_py_lock_cycles_per_s"],
         "unit": "/s", "ratio": figures["fleet_locks_ratio"], "target": FLEET_LOCKS_TARGET, "better": ">=",
         "note": f"rounds {figures['fleet_locks_ratio_min']:.2f}-{figures['fleet_locks_ratio_max']:.2f}"},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--url", help="an existing fleet server (default: start one)")
    args = parser.parse_args(argv)
    from loguru import logger

    logger.remove()  # the tree's INFO lines are not the report
    logger.add(sys.stderr, level="WARNING")
    figures = bench_fleet(args.url, quick=args.quick)
    rows = fleet_rows(figures=figures)
    if args.json:
        print(json.dumps({"figures": figures, "rows": rows}, indent=2))
    else:
        for row in rows:
            verdict = "PASS" if row["ratio"] >= row["target"] else "FAIL"
            print(f"{row['name']}: {row['ours']:.0f}/s vs {row['baseline']:.0f}/s, ratio {row['ratio']:.2f} "
                  f"({row['note']}), target >= {row['target']}: {verdict}")
        print(f"[{figures['names_layout']}; {figures['layout']}]")
    return 0 if all(row["ratio"] >= row["target"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
