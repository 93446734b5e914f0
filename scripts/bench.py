"""Benchmark runner (CONTRACT §6): every section measured against a baseline in the same run.

    python scripts/bench.py                    # every section, full rounds
    python scripts/bench.py --quick            # a smoke run (~20 s)
    python scripts/bench.py --section supervision --section agent_pool
    python scripts/bench.py --json             # machine-readable, on stdout

Each row prints ours, the baseline, their ratio and the target; a missed target prints FAIL
but the exit status stays 0 (this is a benchmark, not a test). A section that raises prints
ERROR and makes the exit status 1. Sections not built yet, or unknown, print "skipped".

Adding a section: write `def section_x(quick: bool) -> SectionResult` (raise `Skipped` when
it cannot run) and add one line `("x", section_x)` to `SECTIONS`.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import importlib.util
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
if str(ROOT) not in sys.path:  # `import supervision` without installing
    sys.path.insert(0, str(ROOT))


# -- what a section returns -----------------------------------------------------------------


class Skipped(Exception):
    """A section that cannot run here; its message says why."""


@dataclass
class Row:
    """One measured comparison: `ratio` = ours / baseline, held against `target`."""

    name: str
    ours: float | None
    baseline: float | None
    unit: str  # how ours/baseline read: "s" (durations) or "/s" (rates) or "" (plain numbers)
    ratio: float | None
    target: float | None
    better: str = ">="  # ">=": the ratio must be at least the target; "<=": at most
    note: str = ""

    @property
    def passed(self) -> bool | None:
        if self.ratio is None or self.target is None or math.isnan(self.ratio):
            return None
        return self.ratio >= self.target if self.better == ">=" else self.ratio <= self.target


@dataclass
class SectionResult:
    rows: list[Row]
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def load_script(name: str) -> ModuleType:
    """Import `scripts/<name>.py` by path, however this runner was started."""
    if name in sys.modules:
        return sys.modules[name]
    path = SCRIPTS / f"{name}.py"
    if not path.exists():
        raise Skipped("not built yet")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise Skipped(f"{path.name} does not import: {error!r}") from error
    return module


def script_function(module_name: str, function_name: str) -> Callable[..., Any]:
    function = getattr(load_script(module_name), function_name, None)
    if not callable(function):
        raise Skipped(f"{module_name}.py has no {function_name}() yet")
    return function


# -- sections -------------------------------------------------------------------------------


def section_supervision(quick: bool) -> SectionResult:
    bench = load_script("bench_supervision")
    if quick:
        overhead = bench.bench_handle_overhead(rounds=6, calls=1_000, warmup=300)
        restart = bench.bench_restart_latency(rounds=12, warmup=2)
        awaited = bench.bench_await_vs_get(rounds=6, calls=1_000, warmup=300)
        stall = bench.bench_loop_stall(rounds=2)
        subscribed = bench.bench_handle_overhead_subscribed(rounds=6, calls=1_000, warmup=300)
    else:
        overhead = bench.bench_handle_overhead()
        restart = bench.bench_restart_latency()
        awaited = bench.bench_await_vs_get()
        stall = bench.bench_loop_stall()
        subscribed = bench.bench_handle_overhead_subscribed()
    rows = [
        Row("handle overhead (calls/s)", overhead["handle_calls_per_s"], overhead["bare_calls_per_s"],
            "/s", overhead["ratio"], overhead["target"], ">=", overhead["layout"]),
        Row("restart latency (kill→answer vs start+first ask)", restart["restart_s"],
            restart["bare_start_ask_s"], "s", restart["ratio"], restart["target"], "<=", restart["layout"]),
        Row("  same, vs start+proxy call (info)", restart["restart_s"], restart["bare_start_proxy_call_s"], "s",
            restart["ratio_vs_proxy"], None, "<=", restart["layout"]),
        Row("handle overhead, 1 idle event subscriber (calls/s)", subscribed["handle_calls_per_s"],
            subscribed["bare_calls_per_s"], "/s", subscribed["ratio"], subscribed["target"], ">=", subscribed["layout"]),
        Row("asyncio: sequential awaits vs blocking gets (calls/s)", awaited["await_calls_per_s"],
            awaited["get_calls_per_s"], "/s", awaited["ratio"], awaited["target"], ">=", awaited["layout"]),
        # Not a ratio: the largest gap itself (baseline: the ticker alone), held against 5 ms.
        Row("asyncio: largest 1 ms ticker gap, 8 × 0.5 s calls pending", stall["largest_gap_s"],
            stall["idle_largest_gap_s"], "s", stall["largest_gap_s"], stall["target"], "<=", stall["layout"]),
    ]
    return SectionResult(rows, details={"handle_overhead": overhead, "restart_latency": restart,
                                        "handle_overhead_subscribed": subscribed, "await_vs_get": awaited,
                                        "loop_stall": stall})


# How the agent pool's figures map onto rows: ratio key -> (label, ours keys, baseline keys,
# unit); the first key present in the figures is shown (bench_agents.py is still changing).
_AGENT_ROWS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], str]] = {
    "sweep_vs_sorted": ("sweep 100k (TTL evicts ~half) vs sorted()",
                        ("sweep_100k_s", "plan_evict_s", "sweep_s"), ("sorted_100k_s", "sorted_s"), "s"),
    "sweep_100k_vs_10k": ("sweep 100k vs sweep 10k",
                          ("sweep_100k_s", "plan_evict_s", "sweep_s"), ("sweep_10k_s", "small_s"), "s"),
}


def section_agent_pool(quick: bool) -> SectionResult:
    bench_sweep = script_function("bench_agents", "bench_sweep")
    figures = bench_sweep(rounds=2) if quick else bench_sweep()
    if not isinstance(figures, dict):
        raise TypeError(f"bench_sweep() returned {type(figures).__name__}, not a dict")
    rows = rows_from_figures(figures, _AGENT_ROWS)
    for info in figures.get("info_rows") or []:
        rows.append(Row(info["name"], info["ours"], info["baseline"], info["unit"], info["ratio"], None))
    return SectionResult(rows, details={key: value for key, value in figures.items() if key != "info_rows"})


def rows_from_figures(
    figures: dict[str, Any], known: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], str]]
) -> list[Row]:
    """Rows for a section that returns a dict with `targets` {ratio key: target}.

    A target may be a number (the ratio must be at most it), or a string ">= x" / "<= x".
    For a ratio key not in `known`, "a_vs_b" shows the figures "a_s" and "b_s" if present.
    """

    def first(keys: tuple[str, ...]) -> float | None:
        for key in keys:
            value = figures.get(key)
            if isinstance(value, int | float):
                return float(value)
        return None

    rows = []
    for key, target in dict(figures.get("targets") or {}).items():
        better = "<="
        if isinstance(target, str):
            text = target.replace(" ", "")
            better, target = (text[:2], float(text[2:])) if text[:2] in (">=", "<=") else ("<=", float(text))
        if key in known:
            label, ours_keys, base_keys, unit = known[key]
        else:
            a, _, b = key.partition("_vs_")
            label, ours_keys, base_keys, unit = key, (f"{a}_s",), (f"{b}_s",), "s"
        ratio = figures.get(key)
        rows.append(Row(label, first(ours_keys), first(base_keys), unit,
                        float(ratio) if isinstance(ratio, int | float) else None, float(target), better))
    return rows


def section_name_pool(quick: bool) -> SectionResult:
    bench_names = script_function("bench_names", "bench_names")
    figures = bench_names(quick=True) if quick else bench_names()
    if not isinstance(figures, dict):
        raise TypeError(f"bench_names() returned {type(figures).__name__}, not a dict")
    threads = figures.get("calling_threads", 8)
    ceiling = durable_ceiling(threads, rounds=5 if quick else 11, per_thread=25 if quick else 60)
    figures["disk_ceiling"] = ceiling
    rows = [
        Row("checkout+checkin vs two bare proxy calls (round trips/s)", figures.get("in_memory_round_trips_per_s"),
            figures.get("bare_pairs_per_s"), "/s", figures.get("in_memory_ratio"),
            figures.get("in_memory_target"), ">=", str(figures.get("cpus", ""))),
        Row(f"durable vs in memory, {threads} calling threads (round trips/s)",
            figures.get(f"durable_{threads}_threads_round_trips_per_s"),
            figures.get(f"in_memory_{threads}_threads_round_trips_per_s"), "/s", figures.get("durable_ratio"),
            figures.get("durable_target"), ">=", str(figures.get("cpus", ""))),
        Row(f"  ceiling: what this disk allows {threads} durable callers (info)", ceiling["ceiling_round_trips_per_s"],
            ceiling["memory_round_trips_per_s"], "/s", ceiling["ratio"], None),
        Row("growth: durable, 10,000 names held vs 10 held (round trips/s)",
            figures.get("durable_held_10000_round_trips_per_s"), figures.get("durable_held_10_round_trips_per_s"),
            "/s", figures.get("growth_ratio"), figures.get("growth_target"), ">="),
    ]
    return SectionResult(rows, details=figures)


def durable_ceiling(threads: int, rounds: int, per_thread: int) -> dict[str, Any]:
    """The most round trips/s this disk allows a durable pool with `threads` callers, any design.

    Each caller has one change in flight and the disk runs one flush at a time (a write
    cache without FUA: every durable write ends in a cache flush), and a change can ride
    only a flush begun after it was handled. So either the flushes run back to back, and
    each carries at most the callers not waiting on the one before (half of them), or they
    leave gaps in which the callers just answered are handled again (at best at the
    in-memory rate M): `threads` changes per flush + 1/M each. Both are measured here,
    interleaved with the in-memory pool's `threads`-caller round trips (the durable row's
    baseline):

    - back to back: `threads` callers that do nothing but make each of their two changes
      per round trip durable by leader/follower group commit (the first caller to find no
      flush running appends one frame for everyone waiting and syncs once; the others wait
      for a flush begun after their change): no pool work, no message hops;
    - with gaps (a commit delay that waits for every caller): `threads` changes per
      (`fdatasync` median + `threads` / M), the best case of that strategy.

    The ceiling is the better of the two; a durable pool can only be slower.
    """
    import statistics
    import tempfile
    import threading

    bench = load_script("bench_names")
    caller_cpu, actor_cpu, _ = bench.cpu_pair("actors")
    scratch = tempfile.mkdtemp(prefix="bench-ceiling-")
    path = os.path.join(scratch, "frames")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    affinity_before = os.sched_getaffinity(0) if caller_cpu is not None else None
    memory_pool = None
    condition = threading.Condition()
    state = {"next": 1, "done": 0, "flushing": False, "offset": 0, "flushes": 0, "changes": 0}
    frame = b"\x01" * 64  # about one checkout's journal frame

    def durable_change() -> None:
        with condition:
            batch = state["next"]
            state["changes"] += 1
            while state["done"] < batch:
                if not state["flushing"]:
                    state["flushing"], state["next"] = True, batch + 1
                    offset = state["offset"]
                    state["offset"] += len(frame)
                    break
                condition.wait()
            else:
                return
        os.pwrite(fd, frame, offset)
        os.fdatasync(fd)
        with condition:
            state["done"], state["flushing"] = batch, False
            state["flushes"] += 1
            condition.notify_all()

    def round_trips() -> None:
        for _ in range(per_thread):
            durable_change()
            durable_change()

    def group_rate() -> float:
        return bench.threads_rate([round_trips] * threads, per_thread)

    try:
        os.pwrite(fd, bytes(1 << 24), 0)  # preallocated, as the journal is: a flush writes data only
        os.fsync(fd)
        bench._PinnedNamePool.cpu = actor_cpu
        bench._pin(caller_cpu)
        memory_pool = bench._PinnedNamePool.start(source=bench._plenty_source(), chunk_size=64)
        pool = memory_pool

        def memory_rate() -> float:
            return bench._concurrent_rate(pool, threads, per_thread)

        memory_rate()
        group_rate()
        state["flushes"] = state["changes"] = 0
        group, memory = bench._interleaved(group_rate, memory_rate, rounds)
        syncs = []
        for _ in range(50 if rounds < 8 else 200):
            started = time.perf_counter()
            os.pwrite(fd, frame, 0)
            os.fdatasync(fd)
            syncs.append(time.perf_counter() - started)
    finally:
        if memory_pool is not None:
            memory_pool.stop(timeout=10)
        os.close(fd)
        if affinity_before is not None:
            os.sched_setaffinity(0, affinity_before)
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    sync = statistics.median(syncs)
    changes_per_s = 2 * memory  # in memory, with `threads` callers
    delayed = threads / (sync + threads / changes_per_s) / 2  # round trips/s
    ceiling = max(group, delayed)
    return {
        "ceiling_round_trips_per_s": ceiling,
        "memory_round_trips_per_s": memory,
        "ratio": ceiling / memory,
        "back_to_back_round_trips_per_s": group,
        "back_to_back_changes_per_flush": state["changes"] / max(1, state["flushes"]),
        "with_gaps_round_trips_per_s": delayed,
        "fdatasync_median_s": sync,
    }


_LOCK_ROWS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], str]] = {
    "cycles_ratio": ("acquire+release, both awaited, vs filelock (cycles/s)", ("lock_cycles_per_s",),
                     ("filelock_cycles_per_s",), "/s"),
    "rss_ratio": ("RSS of 1,000 WorkerLocks vs 1,000 bare actors (MB)", ("rss_lock_actors_mb",),
                  ("rss_bare_actors_mb",), " MB"),
    "cycle_1000_locks_vs_cycle_10_locks": ("growth: cycle with 1,000 vs 10 live lock actors",
                                           ("cycle_1000_locks_s",), ("cycle_10_locks_s",), "s"),
}


def section_locks(quick: bool) -> SectionResult:
    bench_locks = script_function("bench_locks", "bench_locks")
    figures = bench_locks(quick=quick)
    if not isinstance(figures, dict):
        raise TypeError(f"bench_locks() returned {type(figures).__name__}, not a dict")
    shown = dict(figures)
    for key in ("rss_lock_actors_bytes", "rss_bare_actors_bytes"):
        if isinstance(shown.get(key), int | float):
            shown[key.replace("_bytes", "_mb")] = shown[key] / 1e6
    rows = rows_from_figures(shown, _LOCK_ROWS)
    two_asks = figures.get("two_asks_per_s")
    if isinstance(two_asks, int | float):
        rows.insert(1, Row("  two asks to an actor doing nothing (info: the floor of a cycle)", float(two_asks),
                           figures.get("filelock_cycles_per_s"), "/s", figures.get("two_asks_vs_filelock_ratio"), None))
    idle = figures.get("idle_fd_delta")
    if isinstance(idle, int | float):
        # Not a ratio: the count itself, which must be 0.
        rows.append(Row("fds kept open by an idle lock actor (count)", float(idle), None, "",
                        float(idle), 0.0, "<=", f"while holding: {figures.get('holding_fd_delta')}"))
    return SectionResult(rows, details=figures)


_GATEWAY_ROWS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], str]] = {
    "gateway_vs_echo": ("names.pool_stats via Client→serve vs msgpack echo (calls/s)",
                        ("gateway_calls_per_s",), ("echo_calls_per_s",), "/s"),
}


def section_gateway(quick: bool) -> SectionResult:
    bench_gateway = script_function("bench_gateway", "bench_gateway")
    figures = bench_gateway(quick=quick)
    if not isinstance(figures, dict):
        raise TypeError(f"bench_gateway() returned {type(figures).__name__}, not a dict")
    rows = rows_from_figures(figures, _GATEWAY_ROWS)
    blocking = figures.get("echo_blocking_calls_per_s")
    if isinstance(blocking, int | float):
        rows.append(Row("  same, vs echo from a blocking socket (info)", figures.get("gateway_calls_per_s"),
                        float(blocking), "/s", figures.get("gateway_vs_echo_blocking"), None))
    actor_op = figures.get("gateway_actor_op_calls_per_s")
    if isinstance(actor_op, int | float):
        rows.append(Row("  names.get_name_by_pid (through the pool actor; info)", float(actor_op),
                        figures.get("echo_calls_per_s"), "/s", figures.get("gateway_actor_op_vs_echo"), None))
    return SectionResult(rows, details=figures)


def section_fleet(quick: bool) -> SectionResult:
    """Contract §7: fleet names and locks against bare redis-py on a redis-server of our own."""
    fleet_rows = script_function("bench_fleet", "fleet_rows")
    try:
        rows = [Row(**row) for row in fleet_rows(quick=quick)]
    except RuntimeError as error:  # no redis-server binary here
        raise Skipped(str(error)) from error
    return SectionResult(rows)


SECTIONS: list[tuple[str, Callable[[bool], SectionResult]]] = [
    ("supervision", section_supervision),
    ("agent_pool", section_agent_pool),
    ("name_pool", section_name_pool),
    ("locks", section_locks),
    ("gateway", section_gateway),
    ("fleet", section_fleet),
]


# -- running and printing -------------------------------------------------------------------


def _key(name: str) -> str:
    return name.lower().replace("-", "_").replace(" ", "_")


def run_sections(names: list[str] | None, quick: bool, progress: Callable[[str], None]) -> list[dict[str, Any]]:
    known = dict(SECTIONS)
    wanted = [name for name, _ in SECTIONS] if not names else [_key(name) for name in names]
    results = []
    for name in wanted:
        entry: dict[str, Any] = {"name": name}
        function = known.get(name)
        if function is None:
            entry.update(status="skipped", reason=f"unknown section (known: {', '.join(known)})")
            results.append(entry)
            continue
        progress(f"running {name}{' (quick)' if quick else ''} ...")
        gc.collect()
        started = time.perf_counter()
        try:
            result = function(quick)
        except Skipped as why:
            entry.update(status="skipped", reason=str(why))
        except Exception as error:
            entry.update(status="error", reason=repr(error), traceback=traceback.format_exc())
        else:
            entry.update(status="ok", rows=[_row_json(row) for row in result.rows],
                         details=result.details, notes=result.notes)
            entry["_rows"] = result.rows
        entry["seconds"] = round(time.perf_counter() - started, 2)
        results.append(entry)
    return results


def _row_json(row: Row) -> dict[str, Any]:
    data = asdict(row)
    data["result"] = {True: "PASS", False: "FAIL", None: "info"}[row.passed]
    return data


def _amount(value: float | None, unit: str) -> str:
    if value is None or not isinstance(value, int | float) or math.isnan(value):
        return "-"
    if unit == "s":
        for scale, suffix in ((1, "s"), (1e-3, "ms"), (1e-6, "µs")):
            if abs(value) >= scale:
                return f"{value / scale:.3g} {suffix}"
        return f"{value * 1e9:.3g} ns"
    if unit == "/s":
        return f"{value:,.0f}/s"
    return f"{value:.4g}{unit}"


def load_average() -> str:
    """The 1-minute load average: other work on these 2-CPU machines moves every figure."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):
        return "?"


def print_report(results: list[dict[str, Any]], quick: bool, layout: str, load: str = "?") -> None:
    print(f"benchmarks{' (quick)' if quick else ''}: {os.cpu_count()} CPUs online, "
          f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} usable; {layout}; "
          f"load average {load} before, {load_average()} after")
    header = ("benchmark", "ours", "baseline", "ratio", "target", "result")
    lines: list[tuple[str, ...]] = []
    for entry in results:
        lines.append((f"[{entry['name']}]", "", "", "", "", ""))
        if entry["status"] == "skipped":
            lines.append((f"  skipped ({entry['reason']})", "", "", "", "", ""))
            continue
        if entry["status"] == "error":
            lines.append((f"  ERROR: {entry['reason']}", "", "", "", "", ""))
            continue
        for row in entry["_rows"]:
            ratio = "-" if row.ratio is None else f"{row.ratio:.3f}"
            target = "-" if row.target is None else f"{row.better} {row.target:g}"
            result = {True: "PASS", False: "FAIL  <<<", None: "(info)"}[row.passed]
            lines.append((f"  {row.name}", _amount(row.ours, row.unit), _amount(row.baseline, row.unit),
                           ratio, target, result))
    measured = [header, *(line for line in lines if any(line[1:]))]
    widths = [max(len(line[i]) for line in measured) for i in range(6)]
    rule = "  ".join("-" * width for width in widths)
    print(rule)
    print("  ".join(text.ljust(widths[i]) for i, text in enumerate(header)).rstrip())
    print(rule)
    for line in lines:
        if not any(line[1:]):
            print(line[0])
        else:
            print("  ".join(text.ljust(widths[i]) if i == 0 else text.rjust(widths[i])
                            for i, text in enumerate(line)).rstrip())
    print(rule)
    for entry in results:
        if entry["status"] == "error":
            print(f"\n[{entry['name']}] ERROR\n{entry['traceback']}")
        if entry["status"] != "ok":
            continue
        print(f"\n[{entry['name']}] figures ({entry['seconds']} s)")
        for note in entry["notes"]:
            print(f"  {note}")
        _print_details(entry["details"], indent="  ")
    failed = [row.name.strip() for entry in results if entry["status"] == "ok"
              for row in entry["_rows"] if row.passed is False]
    print()
    print(f"FAIL: {len(failed)} target(s) missed: {'; '.join(failed)}" if failed else "all targets met")


def _print_details(details: dict[str, Any], indent: str) -> None:
    for key, value in details.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print_details(value, indent + "  ")
        elif isinstance(value, float):
            print(f"{indent}{key:34s} {value:.6g}")
        else:
            print(f"{indent}{key:34s} {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the benchmarks of CONTRACT §6 and print ratios.")
    parser.add_argument("--quick", action="store_true", help="fewer rounds: a smoke run (~20 s)")
    parser.add_argument("--section", action="append", metavar="NAME",
                        help=f"run only this section (repeatable): {', '.join(name for name, _ in SECTIONS)}")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout instead of the table")
    parser.add_argument("--logs", action="store_true", help="keep the library's log output (default: discarded)")
    args = parser.parse_args(argv)

    faulthandler.dump_traceback_later(1800, exit=True)  # a hung benchmark must not hang CI forever
    if not args.logs:  # kill/restart log lines would measure the terminal
        try:
            load_script("bench_supervision").quiet_logs()
        except Skipped:
            pass
    try:
        layout = load_script("bench_supervision").cpu_layout()["note"]
    except Skipped:
        layout = "no CPU pinning"
    progress = (lambda text: print(text, file=sys.stderr, flush=True))
    load = load_average()
    results = run_sections(args.section, args.quick, progress)
    faulthandler.cancel_dump_traceback_later()
    if args.json:
        for entry in results:
            entry.pop("_rows", None)
        print(json.dumps({"quick": args.quick, "cpus": os.cpu_count(), "layout": layout,
                          "load_average_before": load, "load_average_after": load_average(),
                          "sections": results}, indent=2, default=str))
    else:
        print_report(results, args.quick, layout, load)
    return 1 if any(entry["status"] == "error" for entry in results) else 0


if __name__ == "__main__":
    sys.exit(main())
