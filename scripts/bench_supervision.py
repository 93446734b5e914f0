"""Benchmark the supervision layer (CONTRACT §6, "Handle overhead", "Restart latency", "asyncio").

Each function returns a dict of figures (medians, seconds or calls/s), the ratio against a
baseline measured in the same run, and its target. The two sides are interleaved in short
rounds, alternating which goes first, because a thread handoff on these 2-CPU machines flips
between ~25 µs and ~150 µs depending on where the scheduler puts the threads:

- `bench_handle_overhead`: the calling thread is pinned to one CPU and every actor thread to
  the other (each measured actor pins itself in `on_start`; the threads started while setting
  up inherit the actor CPU too), so one call is one cross-CPU handoff on both sides.
- `bench_restart_latency`: the whole process runs on one CPU.
- `bench_await_vs_get`: sequential `await`s of a trivial `Handle` proxy call from one asyncio
  task vs blocking `.get()` calls from a plain thread, same actor; caller CPU / actor CPU as
  for the handle overhead.
- `bench_loop_stall`: the largest gap of a 1 ms ticker task while 8 tasks await 0.5 s calls
  (8 supervised actors); the same ticker with nothing pending is reported for information.
- `bench_handle_overhead_subscribed`: `bench_handle_overhead` with one idle event subscriber
  attached (a trivial call emits nothing: this guards that a subscriber costs the call path
  nothing; domain rows whose calls emit events measure the emit itself).

On a machine with a single usable CPU everything runs on that CPU (the figures say so).

Run standalone: ``python scripts/bench_supervision.py [--quick]``; `scripts/bench.py` runs
it as its "supervision" section.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import supervision  # noqa: F401
except ImportError:  # run from a checkout without installing: put the repository root first
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pykka

from supervision import ChildSpec, Handle, Supervisor, kill, subscribe

__all__ = [
    "AWAIT_VS_GET_TARGET",
    "HANDLE_OVERHEAD_SUBSCRIBED_TARGET",
    "HANDLE_OVERHEAD_TARGET",
    "LOOP_STALL_TARGET_S",
    "RESTART_LATENCY_TARGET",
    "bench_await_vs_get",
    "bench_handle_overhead",
    "bench_handle_overhead_subscribed",
    "bench_loop_stall",
    "bench_restart_latency",
    "cpu_layout",
]

HANDLE_OVERHEAD_TARGET = 0.95  # ours / bare calls per second, at least (contract §6, v3)
RESTART_LATENCY_TARGET = 2.0  # ours / bare start() + first ref.ask(), at most (contract §6, v3)
AWAIT_VS_GET_TARGET = 0.6  # awaits/s from one task / blocking gets/s from a thread, at least (§6, v3)
LOOP_STALL_TARGET_S = 0.005  # largest ticker gap with 8 slow calls pending, at most (§6, v3)
HANDLE_OVERHEAD_SUBSCRIBED_TARGET = 0.9  # handle overhead with 1 idle subscriber, at least (issue 13)


# -- CPU pinning ----------------------------------------------------------------------------


def cpu_layout() -> dict[str, Any]:
    """Which CPU the caller uses, which the actors use, and a note for the report."""
    if not hasattr(os, "sched_setaffinity"):
        return {"caller_cpu": None, "actor_cpu": None, "pinned": False,
                "note": "no os.sched_setaffinity on this platform: threads are not pinned"}
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        return {"caller_cpu": cpus[0], "actor_cpu": cpus[1], "pinned": True,
                "note": f"caller on CPU {cpus[0]}, actors on CPU {cpus[1]}"}
    return {"caller_cpu": cpus[0], "actor_cpu": cpus[0], "pinned": True,
            "note": f"only 1 CPU available: everything runs on CPU {cpus[0]}"}


def _pin_self(cpu: int | None) -> None:
    """Pin the calling thread (on Linux, pid 0 is the calling thread) to `cpu`."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


@contextmanager
def _thread_on(cpu: int | None) -> Iterator[None]:
    """Run the calling thread on `cpu` (threads it starts inherit that); restore after."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextmanager
def _process_on(cpu: int | None) -> Iterator[None]:
    """Run every thread of the process on `cpu` (new ones inherit it); restore after."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    pinned = []
    for thread in threading.enumerate():
        tid = thread.native_id
        if tid is None or not thread.is_alive():
            continue
        try:
            os.sched_setaffinity(tid, {cpu})
        except OSError:  # ended meanwhile
            continue
        pinned.append(thread)
    try:
        yield
    finally:
        for thread in pinned:
            if thread.is_alive() and thread.native_id is not None:
                try:
                    os.sched_setaffinity(thread.native_id, before)
                except OSError:
                    pass
        os.sched_setaffinity(0, before)


# -- the measured actor ----------------------------------------------------------------------


class Echo(pykka.ThreadingActor):
    """A plain pykka actor with one trivial method; supervised and bare alike."""

    def __init__(self, pin_cpu: int | None = None) -> None:
        super().__init__()
        self.pin_cpu = pin_cpu

    def on_start(self) -> None:
        _pin_self(self.pin_cpu)

    def ping(self) -> str:
        return self.actor_urn

    def slow(self, seconds: float) -> float:
        time.sleep(seconds)  # stands for a slow call (a backend, a disk)
        return seconds

    def on_receive(self, message: Any) -> Any:  # for the bare `ref.ask("ping")` baseline
        return self.actor_urn if message == "ping" else None


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _rate_figures(
    layout: str, rounds: int, calls: int, rates: dict[str, list[float]], ratios: list[float], target: float
) -> dict[str, Any]:
    """The figures of a two-sided rate comparison: each side's median rate and time per call."""
    figures: dict[str, Any] = {"layout": layout, "rounds": rounds, "calls_per_round": calls}
    figures.update({f"{side}_calls_per_s": _median(values) for side, values in rates.items()})
    figures.update({f"{side}_us_per_call": 1e6 / _median(values) for side, values in rates.items()})
    figures.update(ratio=_median(ratios), ratio_min=min(ratios), ratio_max=max(ratios), target=target)
    return figures


def _orders(rounds: int, sides: list[str]) -> Iterator[list[str]]:
    """Rotate which side goes first each round."""
    for index in range(rounds):
        shift = index % len(sides)
        yield sides[shift:] + sides[:shift]


# -- (a) handle overhead ---------------------------------------------------------------------


def bench_handle_overhead(rounds: int = 20, calls: int = 2_000, warmup: int = 500) -> dict[str, Any]:
    """Calls/s through `Handle(sup, "child").proxy()` vs a cached bare pykka proxy.

    The supervised child and the bare actor are the same plain `pykka.ThreadingActor`
    class; the caller runs on one CPU and both actors on the other.
    """
    layout = cpu_layout()
    caller_cpu, actor_cpu = layout["caller_cpu"], layout["actor_cpu"]
    sup: pykka.ActorRef[Any] | None = None
    bare: pykka.ActorRef[Any] | None = None
    try:
        with _thread_on(actor_cpu):  # the supervisor's and actors' threads start on the actor CPU
            sup = Supervisor.start([ChildSpec("child", Echo, kwargs={"pin_cpu": actor_cpu})])
            bare = Echo.start(pin_cpu=actor_cpu)
        with _thread_on(caller_cpu):
            ours_proxy = Handle(sup, "child").proxy()  # built once, like the cached bare proxy
            bare_proxy = bare.proxy()
            sides: dict[str, Callable[[], Any]] = {
                "handle": lambda: ours_proxy.ping().get(),
                "bare": lambda: bare_proxy.ping().get(),
            }
            for call in sides.values():  # both actors have run on_start (pinned) after this
                for _ in range(warmup):
                    call()
            rates: dict[str, list[float]] = {name: [] for name in sides}
            ratios: list[float] = []
            for order in _orders(rounds, list(sides)):
                this_round: dict[str, float] = {}
                for name in order:
                    call = sides[name]
                    gc.collect()
                    start = time.perf_counter()
                    for _ in range(calls):
                        call()
                    this_round[name] = calls / (time.perf_counter() - start)
                    rates[name].append(this_round[name])
                ratios.append(this_round["handle"] / this_round["bare"])
    finally:
        if bare is not None:
            bare.stop()
        if sup is not None:
            sup.stop()
    return _rate_figures(layout["note"], rounds, calls, rates, ratios, HANDLE_OVERHEAD_TARGET)


# -- (b) restart latency ---------------------------------------------------------------------


def bench_restart_latency(rounds: int = 40, warmup: int = 3) -> dict[str, Any]:
    """Median `kill()` → a new incarnation answers through its Handle, vs bare start + first ask.

    Ours: `kill(ref)` then `handle.proxy().ping().get()` (the handle's proxy is built once:
    it outlives incarnations) until the answer comes from a different incarnation.
    Baseline (the contract's): `Echo.start()` then `ref.ask("ping")` — no proxy built.
    `ratio` and `ratio_vs_ask` are ours / that baseline, held against the target. A second
    baseline, `Echo.start()` then `ref.proxy().ping().get()` (a proxy built for the new
    ref, ~150 µs of pykka introspection), is reported as `ratio_vs_proxy`, for information.
    Bare actors are stopped after each round, untimed. The whole process runs on one CPU.
    """
    layout = cpu_layout()
    cpu = layout["caller_cpu"]
    note = f"whole process on CPU {cpu}" if cpu is not None else layout["note"]
    sup: pykka.ActorRef[Any] | None = None
    with _process_on(cpu):
        try:
            sup = Supervisor.start(
                [ChildSpec("child", Echo)], max_restarts=1_000_000, max_seconds=1.0
            )
            handle = Handle(sup, "child")
            handle_proxy = handle.proxy()
            supervisor_proxy = sup.proxy()
            stale: list[int] = []

            def ours() -> float:
                old = handle.ref()
                old_urn = old.actor_urn
                extra = 0
                start = time.perf_counter()
                kill(old)
                while handle_proxy.ping().get(timeout=10) == old_urn:
                    extra += 1
                elapsed = time.perf_counter() - start
                stale.append(extra)
                # Untimed: the supervisor finishes its bookkeeping (the restart's log record)
                # before the next side is timed, so none of it lands in another side.
                supervisor_proxy.count_children().get(timeout=10)
                return elapsed

            def bare_proxy() -> float:
                start = time.perf_counter()
                ref = Echo.start()
                ref.proxy().ping().get(timeout=10)
                elapsed = time.perf_counter() - start
                ref.stop()
                return elapsed

            def bare_ask() -> float:
                start = time.perf_counter()
                ref = Echo.start()
                ref.ask("ping", timeout=10)
                elapsed = time.perf_counter() - start
                ref.stop()
                return elapsed

            sides: dict[str, Callable[[], float]] = {
                "handle": ours, "bare_proxy": bare_proxy, "bare_ask": bare_ask,
            }
            handle_proxy.ping().get(timeout=10)
            for _ in range(warmup):
                for side in sides.values():
                    side()
            stale.clear()
            times: dict[str, list[float]] = {name: [] for name in sides}
            ratios: list[float] = []  # the contract's: vs start + first ask
            proxy_ratios: list[float] = []
            for order in _orders(rounds, list(sides)):
                this_round: dict[str, float] = {}
                for name in order:
                    gc.collect()
                    this_round[name] = sides[name]()
                    times[name].append(this_round[name])
                proxy_ratios.append(this_round["handle"] / this_round["bare_proxy"])
                ratios.append(this_round["handle"] / this_round["bare_ask"])
        finally:
            if sup is not None:
                sup.stop()
    return {
        "layout": note,
        "rounds": rounds,
        "restart_s": _median(times["handle"]),
        "bare_start_proxy_call_s": _median(times["bare_proxy"]),
        "bare_start_ask_s": _median(times["bare_ask"]),
        "ratio": _median(ratios),
        "ratio_vs_ask": _median(ratios),
        "ratio_vs_proxy": _median(proxy_ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "calls_answered_by_old_incarnation": sum(stale),
        "target": RESTART_LATENCY_TARGET,
    }


# -- (c) asyncio: awaits vs blocking gets, and the loop's largest stall -----------------------


def bench_await_vs_get(rounds: int = 20, calls: int = 2_000, warmup: int = 500) -> dict[str, Any]:
    """Calls/s of `await proxy.ping()` in sequence from one task vs `proxy.ping().get()` from a thread.

    Both sides call the same supervised actor through the same `Handle` proxy; the event
    loop (and the plain thread) run on the caller CPU, the actor on the other.
    """
    layout = cpu_layout()
    caller_cpu, actor_cpu = layout["caller_cpu"], layout["actor_cpu"]
    sup: pykka.ActorRef[Any] | None = None
    loop = asyncio.new_event_loop()
    try:
        with _thread_on(actor_cpu):
            sup = Supervisor.start([ChildSpec("child", Echo, kwargs={"pin_cpu": actor_cpu})])
        with _thread_on(caller_cpu):
            proxy = Handle(sup, "child").proxy()

            async def awaits(count: int) -> None:
                for _ in range(count):
                    await proxy.ping()

            def gets(count: int) -> None:
                for _ in range(count):
                    proxy.ping().get()

            sides: dict[str, Callable[[int], Any]] = {
                "await": lambda count: loop.run_until_complete(awaits(count)),
                "get": gets,
            }
            for side in sides.values():
                side(warmup)
            rates: dict[str, list[float]] = {name: [] for name in sides}
            ratios: list[float] = []
            for order in _orders(rounds, list(sides)):
                this_round: dict[str, float] = {}
                for name in order:
                    gc.collect()
                    start = time.perf_counter()
                    sides[name](calls)
                    this_round[name] = calls / (time.perf_counter() - start)
                    rates[name].append(this_round[name])
                ratios.append(this_round["await"] / this_round["get"])
    finally:
        loop.close()
        if sup is not None:
            sup.stop()
    return _rate_figures(layout["note"], rounds, calls, rates, ratios, AWAIT_VS_GET_TARGET)


async def _largest_gap(tick: float, until: asyncio.Event) -> float:
    largest = 0.0
    while not until.is_set():
        before = time.perf_counter()
        await asyncio.sleep(tick)
        largest = max(largest, time.perf_counter() - before - tick)
    return largest


def bench_loop_stall(rounds: int = 3, tasks: int = 8, call_s: float = 0.5, tick: float = 0.001) -> dict[str, Any]:
    """The largest wait of a task ticking every `tick` s while `tasks` tasks await `call_s` calls.

    Each task awaits its own supervised actor through a `Handle` proxy. The gap counted is
    how much later than `tick` the ticker woke. An idle round (the ticker alone, as long)
    is measured before each loaded one, for information: the machine's own jitter.
    """
    layout = cpu_layout()
    caller_cpu, actor_cpu = layout["caller_cpu"], layout["actor_cpu"]
    sup: pykka.ActorRef[Any] | None = None
    loaded: list[float] = []
    idle: list[float] = []
    try:
        with _thread_on(actor_cpu):
            sup = Supervisor.start([ChildSpec(f"w{index}", Echo, kwargs={"pin_cpu": actor_cpu}) for index in range(tasks)])
        with _thread_on(caller_cpu):
            proxies = [Handle(sup, f"w{index}").proxy() for index in range(tasks)]

            async def idle_round() -> float:
                until = asyncio.Event()
                ticker = asyncio.create_task(_largest_gap(tick, until))
                await asyncio.sleep(call_s)
                until.set()
                return await ticker

            async def loaded_round() -> float:
                until = asyncio.Event()
                ticker = asyncio.create_task(_largest_gap(tick, until))
                await asyncio.sleep(0.01)  # the ticker is running before the calls start

                async def call(proxy: Any) -> Any:
                    return await proxy.slow(call_s)

                await asyncio.gather(*(call(proxy) for proxy in proxies))
                until.set()
                return await ticker

            async def main() -> None:
                await asyncio.gather(*(proxy.ping() for proxy in proxies))  # all started
                for _ in range(rounds):
                    gc.collect()
                    idle.append(await idle_round())
                    gc.collect()
                    loaded.append(await loaded_round())

            asyncio.run(main())
    finally:
        if sup is not None:
            sup.stop()
    return {
        "layout": layout["note"],
        "rounds": rounds,
        "pending_calls": tasks,
        "call_s": call_s,
        "tick_s": tick,
        "largest_gap_s": _median(loaded),
        "largest_gap_max_s": max(loaded),
        "idle_largest_gap_s": _median(idle),
        "target": LOOP_STALL_TARGET_S,
    }


def bench_handle_overhead_subscribed(rounds: int = 20, calls: int = 2_000, warmup: int = 500) -> dict[str, Any]:
    """`bench_handle_overhead` with one idle event subscriber attached throughout."""
    with subscribe() as idle:
        figures = bench_handle_overhead(rounds=rounds, calls=calls, warmup=warmup)
        figures["subscriber_buffered"] = len(idle.drain())
        figures["subscriber_dropped"] = idle.dropped
    figures["target"] = HANDLE_OVERHEAD_SUBSCRIBED_TARGET
    return figures


def quiet_logs() -> None:
    """Send loguru's output to a sink that discards it (records are still formatted at INFO+).

    The library logs every kill (ERROR) and restart (WARNING); writing those to a terminal
    would measure the terminal. Call from a script's `main`, never from a library.
    """
    from loguru import logger

    logger.remove()
    logger.add(lambda _message: None, level="INFO")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args(argv)
    quiet_logs()
    overhead = bench_handle_overhead(rounds=6, calls=1_000) if args.quick else bench_handle_overhead()
    restart = bench_restart_latency(rounds=12) if args.quick else bench_restart_latency()
    awaits = bench_await_vs_get(rounds=6, calls=1_000) if args.quick else bench_await_vs_get()
    stall = bench_loop_stall(rounds=2) if args.quick else bench_loop_stall()
    subscribed = (
        bench_handle_overhead_subscribed(rounds=6, calls=1_000) if args.quick else bench_handle_overhead_subscribed()
    )
    for title, figures in (
        ("handle overhead", overhead),
        ("restart latency", restart),
        ("await vs blocking get", awaits),
        ("loop stall, 8 slow calls pending", stall),
        ("handle overhead, 1 idle subscriber", subscribed),
    ):
        print(title)
        for key, value in figures.items():
            print(f"  {key:36s} {value:.6g}" if isinstance(value, float) else f"  {key:36s} {value}")
    print("contract §6 (v3)")
    for label, ratio, target, better in (
        ("handle overhead: Handle proxy calls/s vs cached bare proxy", overhead["ratio"], overhead["target"], ">="),
        ("restart latency: kill→answer via Handle vs start()+first ask", restart["ratio"], restart["target"], "<="),
        ("asyncio: sequential awaits vs blocking gets from a thread", awaits["ratio"], awaits["target"], ">="),
        ("asyncio: largest 1 ms ticker gap, 8 × 0.5 s calls pending (s)", stall["largest_gap_s"], stall["target"], "<="),
        ("handle overhead with 1 idle event subscriber", subscribed["ratio"], subscribed["target"], ">="),
    ):
        passed = ratio >= target if better == ">=" else ratio <= target
        print(f"  {label:62s} {ratio:6.3g}  target {better} {target:<5}  {'PASS' if passed else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
