"""Power-cut safety: the daemon SIGKILLed at random moments under a write-heavy load.

Client processes (`_chaos_power_client.py`) check names out and in for themselves as
fast as they can (over the socket a worker acts only for itself). The daemon runs with
a tiny snapshot threshold, so its journal is folded into a background snapshot many
times a run and kills land before, during and after those rewrites. Round after round
the daemon is killed at a random moment, the clients are paused (they acknowledge, so
their ledgers stand still), the state files are copied as the kill left them, and a new
daemon is started on the same state dir. Then:

- it answers (it loaded its state without crash-looping, and quarantined nothing);
- every name a client's ledger says its owner holds (its checkout was answered and no
  checkin was sent since) is still that owner's, and the ballast (names held by
  `str` owners, written before the first start) is intact;
- a pool loaded from the copy hands out, from its whole available stack, no name that
  an owner holds;
- and after the last round a graceful stop leaves no temporary or quarantined file.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from _daemons import answers, cleanup, spawn, started

from actors import connect
from actors.names._pool import NamePool
from actors.names._state import NameState
from supervision import SnapshotStore
from supervision.testing import wait_until

CLIENT = Path(__file__).resolve().parent / "_chaos_power_client.py"
pytestmark = pytest.mark.slow

KILLS = 20
BALLAST = 20
CLIENTS = 6
SNAPSHOT_AFTER_BYTES = 1024  # (or twice the snapshot's size: about every 30 changes here)
DAEMON = (
    "import sys\n"
    "import actors.names._journal as journal\n"
    f"journal.SNAPSHOT_AFTER_BYTES = {SNAPSHOT_AFTER_BYTES}\n"
    "from actors.__main__ import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.fixture(autouse=True)
def _nothing_outlives_its_test():
    """Whatever happens in a test, no daemon, client or sleeper it started keeps running."""
    yield
    cleanup()


def start_daemon(state_dir: Path) -> subprocess.Popen:
    """`serve` on `state_dir` with a tiny snapshot threshold; waits until it answers."""
    with open(state_dir.parent / "daemon.log", "ab") as log:
        process = spawn(
            [sys.executable, "-c", DAEMON, "serve", "--state-dir", str(state_dir), "--heartbeat", "0.2",
             "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL, stderr=log,
        )
    wait_until(lambda: process.poll() is not None or answers(state_dir), timeout=30)
    assert process.poll() is None, f"the daemon exited with {process.returncode}"
    return process


def seed_ballast(state_dir: Path) -> dict[str, str]:
    """A snapshot in which `BALLAST` names are held by `str` owners: {owner: name}."""
    state = NameState()
    state.accept_chunk([f"ballast-name-{index}" for index in range(BALLAST)])
    ballast = {f"ballast-{index}": state.checkout(f"ballast-{index}") for index in range(BALLAST)}
    state_dir.mkdir(mode=0o700)
    SnapshotStore(state_dir / "names.state", version=1).save(state.to_snapshot())
    return ballast  # type: ignore[return-value]


def snapshot_sequence(state_dir: Path) -> int:
    """The newest journal frame the snapshot on disk includes."""
    data = SnapshotStore(state_dir / "names.state", version=1).load()
    return data["journal_sequence"]


def names_handed_out_next(state_dir: Path, scratch: Path) -> list[str]:
    """Every available name of a pool loaded from a copy of the state files, checked out."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o700)
    for name in ("names.state", "names.state.journal"):
        if (state_dir / name).exists():
            shutil.copy2(state_dir / name, scratch / name)
    ref = NamePool.start(state_path=scratch / "names.state", source=lambda count, used: [], reap_interval=3600.0)
    try:
        pool = ref.proxy()
        available = pool.pool_stats().get(timeout=10)["available_count"]
        return [pool.checkout_name().get(timeout=10) for _ in range(available)]
    finally:
        ref.stop()


def owner_states(ledger: Path) -> dict[int, tuple[str, str | None]]:
    """Each owner's state by the ledger: ("held", name), ("free", None) or ("unknown", None)."""
    states: dict[int, tuple[str, str | None]] = {}
    for line in ledger.read_text().splitlines():
        record = json.loads(line)
        owner, op = record["o"], record["op"]
        if op in ("out", "sync"):
            states[owner] = ("held", record["n"]) if record["n"] is not None else ("free", None)
        elif op == "in":
            states[owner] = ("free", None)
        else:  # out-send, in-send, lost: the outcome is not known until the next sync
            states[owner] = ("unknown", None)
    return states


def count_ops(ledgers: list[Path]) -> int:
    return sum(ledger.read_text().count('"op": "out"') for ledger in ledgers if ledger.exists())


def test_sigkilled_daemon_never_hands_a_live_owners_name_out_twice(tmp_path):
    children_before = {child.pid for child in psutil.Process().children(recursive=True)}
    rng = random.Random(7)
    state_dir = tmp_path / "state"
    pause = tmp_path / "pause"
    ballast = seed_ballast(state_dir)
    daemon = start_daemon(state_dir)
    clients = []
    ledgers = []
    for index in range(CLIENTS):
        ledger = tmp_path / f"client-{index}.jsonl"
        ledgers.append(ledger)
        clients.append(
            spawn(
                [sys.executable, str(CLIENT), str(state_dir), str(ledger), str(pause), "", str(rng.randrange(1 << 30))],
                stdin=subprocess.PIPE,
            )
        )
    checked_holds = 0
    checked_owners = 0  # owners whose state the ledger knows (held or free), checked
    probed = 0
    rewrites = 0  # rounds in which a background snapshot replaced the one written at start
    started_at = snapshot_sequence(state_dir)
    for round_number in range(1, KILLS + 1):
        # Load until some checkouts were answered, then a little more: the moment of the kill.
        floor = count_ops(ledgers) + 5
        wait_until(lambda floor=floor: count_ops(ledgers) >= floor, timeout=20)
        time.sleep(rng.uniform(0.0, 0.25))  # a random moment, not a synchronisation
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)

        # Freeze the clients' ledgers, keep the files as the kill left them, then bring
        # the daemon back on the same state.
        pause.write_text(str(round_number))
        for client in clients:
            assert client.poll() is None, f"client {client.pid} died (exit {client.returncode})"
        wait_until(
            lambda expected=str(round_number): all(
                Path(f"{pause}.ack-{client.pid}").exists()
                and Path(f"{pause}.ack-{client.pid}").read_text() == expected
                for client in clients
            ),
            timeout=20,
        )
        rewrites += snapshot_sequence(state_dir) > started_at
        fresh = names_handed_out_next(state_dir, tmp_path / "copy")
        daemon = start_daemon(state_dir)
        started_at = snapshot_sequence(state_dir)
        assert not list(state_dir.glob("*.corrupt-*")), "a state file was torn by the kill"

        with connect(state_dir, timeout=10) as me:
            holders = me.call("tree.status")["held_names"]
        owner_of = {}
        for name, owners in holders.items():
            # Nobody in this test associates: a name with two owners was handed out twice.
            assert len(owners) == 1, f"round {round_number}: {name!r} has owners {owners}"
            owner_of[name] = owners[0]
        name_of = {owner: name for name, owner in owner_of.items()}
        for owner, name in ballast.items():
            assert owner_of.get(name) == owner, f"round {round_number}: ballast {name!r} is {owner_of.get(name)!r}'s"
        held_by_ledger: dict[str, int] = {}
        for client, ledger in zip(clients, ledgers):
            for owner, (state, name) in owner_states(ledger).items():
                if state == "held":
                    assert name_of.get(owner) == name, (
                        f"round {round_number}: owner {owner} (client {client.pid}) was answered {name!r} "
                        f"and never checked it in, but after the restart it holds {name_of.get(owner)!r}"
                    )
                    held_by_ledger[name] = owner
                    checked_holds += 1
                    checked_owners += 1
                elif state == "free":
                    checked_owners += 1
                    assert owner not in name_of, f"round {round_number}: {owner} holds {name_of[owner]!r} unasked"
        # None of the names the state would hand out next is one somebody holds.
        assert len(set(fresh)) == len(fresh), fresh
        taken = {name: owner_of[name] for name in fresh if name in owner_of}
        assert not taken, f"round {round_number}: fresh checkouts got names that are held: {taken}"
        assert not set(fresh) & set(held_by_ledger)
        probed += len(fresh)
        pause.unlink()  # the clients carry on

    assert checked_owners > KILLS and checked_holds > 0  # the check was not vacuous
    assert probed > 0
    assert rewrites >= 3, f"only {rewrites} rounds saw a background snapshot"
    for process in started():
        if process.stdin is not None:
            process.stdin.close()  # clients stop
    for client in clients:
        assert client.wait(20) == 0
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    left = [path.name for path in state_dir.iterdir() if ".tmp" in path.name or ".corrupt-" in path.name
            or path.name.endswith(".new")]
    assert not left, f"temporary or quarantined files left in the state dir: {left}"
    for process in started():
        process.wait(10)
    left = {child.pid for child in psutil.Process().children(recursive=True)} - children_before
    assert not left, f"processes of the test outlived it: {left}"
