"""The fleet under faults: a short `scripts/chaos_fleet.py` run, and its judging rules.

The run (`run_fleet_chaos`) starts its own redis-server and three daemons sharing one
worker tree, client processes taking names and locks over each daemon's socket, and a
fault injector that kills and freezes daemons, clients and the server. Every invariant
of its report must hold and every kind of fault must have been injected. The judging
rules (what counts as a double holder, what the contract's limits excuse) are tested on
hand-made ledgers, so that a rule that would wave a violation through fails here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str) -> Any:
    if name in sys.modules:
        return sys.modules[name]
    scripts = str(ROOT / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


chaos_fleet = _load("chaos_fleet")


def test_a_short_fleet_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    config = chaos_fleet.FleetChaosConfig(seconds=12.0, seed=5, daemons=3, clients_per_daemon=2,
                                          fault_pause=(0.3, 0.9), run_dir=tmp_path / "run")
    report = chaos_fleet.run_fleet_chaos(config)
    table = report.table()
    assert report.ok, table
    for figure in report.figures:
        if figure.limit is not None:
            assert figure.value == 0, table
    for kind in chaos_fleet.BASIC_KINDS:
        assert report.value(f"  {kind}") >= 1, f"{kind} never injected\n{table}"
    # The judged beliefs are not empty: clients did take names and locks.
    assert report.value("name beliefs checked") > 0, table
    assert report.value("lock holds checked") > 0, table


# -- the judging rules, on hand-made ledgers -----------------------------------------------------------


def _run_with(tmp_path: Path, outages: dict[str, list[tuple[float, float]]], events: list[dict[str, Any]]) -> Any:
    run = chaos_fleet._Run(chaos_fleet.FleetChaosConfig(workers=1), tmp_path)
    for host in ("h0", "h1"):
        daemon = chaos_fleet.Daemon(host, tmp_path / host, tmp_path / f"{host}.log")
        daemon.outages = [[start, end] for start, end in outages.get(host, [])]
        run.daemons.append(daemon)
    run.events = events
    return run


def _hold(key: str, host: str, pid: int, start: float, end: float, fence: int, how: str = "release") -> Any:
    return chaos_fleet.Hold(key, (host, pid), start, end, fence, how)


def test_overlapping_lock_holds_of_running_daemons_are_double_holders(tmp_path: Path) -> None:
    run = _run_with(tmp_path, {}, [])
    problems: list[str] = []
    figures = chaos_fleet._judge_locks(run, [_hold("/w", "h0", 1, 10.0, 15.0, 1), _hold("/w", "h1", 2, 14.0, 16.0, 2)],
                                       problems.append)
    assert figures.get("double") == 1 and not figures.get("excused")
    assert "held by ('h0', 1)" in problems[0]


def test_an_overlap_behind_a_frozen_holder_daemon_is_excused_only_with_a_higher_fence(tmp_path: Path) -> None:
    run = _run_with(tmp_path, {"h0": [(11.0, 19.0)]}, [])
    problems: list[str] = []
    fenced = chaos_fleet._judge_locks(run, [_hold("/w", "h0", 1, 10.0, 20.0, 1), _hold("/w", "h1", 2, 18.0, 21.0, 2)],
                                      problems.append)
    assert fenced.get("excused") == 1 and not fenced.get("double")
    stale = chaos_fleet._judge_locks(run, [_hold("/w", "h0", 1, 10.0, 20.0, 3), _hold("/w", "h1", 2, 18.0, 21.0, 2)],
                                     problems.append)
    assert stale.get("double") == 1
    # A freeze only early in the hold (the lease renewed since) excuses nothing, nor one that
    # began less than 2 s before the successor (the holder ran at its deadline).
    holds = [_hold("/w", "h0", 1, 10.0, 20.0, 1), _hold("/w", "h1", 2, 18.0, 21.0, 2)]
    for outage in [(10.5, 11.0), (17.0, 19.0)]:
        figures = chaos_fleet._judge_locks(_run_with(tmp_path, {"h0": [outage]}, []), holds, problems.append)
        assert figures.get("double") == 1, outage


def test_a_lost_lease_noticed_after_its_successor_acquired_is_a_violation(tmp_path: Path) -> None:
    lost = {"kind": "lock_lost", "host": "h0", "received": 18.5, "data": {"worker_dir": "/w", "fence": 1}}
    run = _run_with(tmp_path, {}, [lost])
    problems: list[str] = []
    holds = [_hold("/w", "h0", 1, 10.0, 17.0, 1, how="sigterm"), _hold("/w", "h1", 2, 18.0, 19.0, 2)]
    figures = chaos_fleet._judge_locks(run, holds, problems.append)
    # The owner's own notice (SIGTERM at 17.0) came first: in time, whatever the event's receipt.
    assert figures["lost"] == 1 and figures.get("in time") == 1
    holds = [_hold("/w", "h0", 1, 10.0, 18.2, 1, how="sigterm"), _hold("/w", "h1", 2, 18.0, 19.0, 2)]
    figures = chaos_fleet._judge_locks(run, holds, problems.append)
    assert figures.get("late") == 1 and figures.get("double") == 1


def test_fences_must_grow_between_owners_but_one_owner_may_continue_its_lease(tmp_path: Path) -> None:
    run = _run_with(tmp_path, {}, [])
    problems: list[str] = []
    same_owner = [_hold("/w", "h0", 1, 10.0, 11.0, 2), _hold("/w", "h0", 1, 12.0, 13.0, 2)]
    assert not chaos_fleet._judge_locks(run, same_owner, problems.append).get("fence order")
    other_owner = [_hold("/w", "h0", 1, 10.0, 11.0, 2), _hold("/w", "h1", 2, 12.0, 13.0, 2)]
    assert chaos_fleet._judge_locks(run, other_owner, problems.append).get("fence order") == 1


def test_a_name_held_twice_is_a_duplicate_unless_a_holders_host_reported_the_conflict(tmp_path: Path) -> None:
    names = [_hold("ann", "h0", 1, 10.0, 30.0, 0), _hold("ann", "h1", 2, 25.0, 26.0, 0)]
    problems: list[str] = []
    assert chaos_fleet._judge_names(_run_with(tmp_path, {}, []), names, problems.append) == (1, 0, 0)
    conflict = {"kind": "name_conflict", "host": "h0", "name": "ann", "received": 31.0}
    assert chaos_fleet._judge_names(_run_with(tmp_path, {}, [conflict]), names, problems.append) == (0, 1, 0)
    other_name = {**conflict, "name": "bob"}
    assert chaos_fleet._judge_names(_run_with(tmp_path, {}, [other_name]), names, problems.append) == (1, 0, 0)
    # A restarted daemon finds its conflicts before its socket serves: its ERROR line counts.
    (tmp_path / "h1.log").write_text("06:01:33.864 ERROR   [ann] name 'ann' of this host went to host 'h0' while "
                                     "this host was cut off: owners [2] must take another name\n")
    assert chaos_fleet._judge_names(_run_with(tmp_path, {}, []), names, problems.append) == (0, 1, 0)


def test_a_name_the_fleet_stops_giving_its_live_holder_is_forgotten_unless_a_conflict(tmp_path: Path) -> None:
    names = [_hold("ann", "h0", 1, 10.0, 12.0, 0, how="lost")]
    assert chaos_fleet._judge_names(_run_with(tmp_path, {}, []), names, [].append) == (0, 0, 1)
    conflict = {"kind": "name_conflict", "host": "h0", "name": "ann", "received": 11.0}
    assert chaos_fleet._judge_names(_run_with(tmp_path, {}, [conflict]), names, [].append) == (0, 0, 0)


@pytest.mark.parametrize("same_family", [True, False])
def test_one_clients_successive_beliefs_never_count_as_a_duplicate(tmp_path: Path, same_family: bool) -> None:
    second = ("h0", 1) if same_family else ("h1", 2)
    names = [_hold("ann", "h0", 1, 10.0, 12.0, 0), _hold("ann", second[0], second[1], 12.0, 13.0, 0)]
    assert chaos_fleet._judge_names(_run_with(tmp_path, {}, []), names, [].append) == (0, 0, 0)
