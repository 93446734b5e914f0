"""The fault mode of the chaos run (`scripts/chaos.py --faults`), short, in the default suite.

On top of the kills: hostile peers sending every op with wrong owners, bad paths and
oversized frames; descriptor exhaustion; a full state filesystem (a tmpfs, as root); and
wall-clock steps through the clock seam. Every invariant of the plain run must hold, no
hostile request may be served, and each fault must actually have been injected.
"""

from __future__ import annotations

import os

import pytest

from test_chaos import HYGIENE, INVARIANTS, chaos


@pytest.fixture(scope="module")
def fault_report(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    config = chaos.ChaosConfig(
        seconds=6.0,
        seed=5,
        name_threads=2,
        lock_threads=2,
        agent_threads=1,
        clients=2,
        workers=2,
        fault_pause=(0.05, 0.2),
        call_timeout=10.0,
        run_dir=tmp_path_factory.mktemp("chaos-faults"),
        faults=True,
    )
    return chaos.run_chaos(config)


@pytest.mark.slow
def test_a_short_fault_mode_run_keeps_every_invariant(fault_report) -> None:  # type: ignore[no-untyped-def]
    report = fault_report
    for label in (
        *INVARIANTS,
        *HYGIENE,
        "hostile requests served",
        "daemon down after the faults (root failed or socket not answering)",
    ):
        assert report.value(label) == 0, f"{label}\n{report.table()}"
    assert report.value("  hostile requests refused") > 0, report.table()
    for fault in ("descriptor exhaustion", "wall-clock steps"):
        assert report.value(f"  faults: {fault}") > 0, report.table()
    if os.geteuid() == 0:
        assert report.value("  faults: state filesystem full") > 0, report.table()
