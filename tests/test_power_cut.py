"""Power-cut safety: the daemon SIGKILLed at random moments under a write-heavy load.

Client processes (`_chaos_power_client.py`) check names out and in as fast as they can
for owners that stay alive (themselves and sleeper processes). Round after round the
daemon is killed at a random moment, the clients are paused (they acknowledge, so their
ledgers stand still), and a new daemon is started on the same state dir. Then:

- it answers (it loaded its state without crash-looping, and quarantined nothing);
- every name a client's ledger says an owner holds (its checkout was answered and no
  checkin was sent since) is still that owner's (`names.get_name_by_pid`);
- fresh checkouts (the whole available stack) never return a name that a live owner holds;
- and after the last round a graceful stop leaves no temporary or quarantined file.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from _daemons import cleanup, spawn, started
from _daemons import start_daemon as start_quiet_daemon

from actors import connect
from supervision.testing import wait_until

CLIENT = Path(__file__).resolve().parent / "_chaos_power_client.py"
pytestmark = pytest.mark.slow

KILLS = 20
BALLAST = 300
CLIENTS = 3
SLEEPERS_PER_CLIENT = 2
PROBES = 4

@pytest.fixture(autouse=True)
def _nothing_outlives_its_test():
    """Whatever happens in a test, no daemon, client or sleeper it started keeps running."""
    yield
    cleanup()


def start_daemon(state_dir: Path) -> subprocess.Popen:
    with open(state_dir.parent / "daemon.log", "ab") as log:
        return start_quiet_daemon(state_dir, "--log-level", "WARNING", stdout=subprocess.DEVNULL, stderr=log, text=False)


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
    daemon = start_daemon(state_dir)
    with connect(state_dir, timeout=10) as me:
        # Held all along by owners that never go: they make every journal frame bigger,
        # so the journal fills and is folded into the snapshot several times per run.
        ballast = {f"ballast-{index}": me.call("names.checkout_name", f"ballast-{index}") for index in range(BALLAST)}
    clients = []
    ledgers = []
    for index in range(CLIENTS):
        sleepers = [
            spawn([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
            for _ in range(SLEEPERS_PER_CLIENT)
        ]
        ledger = tmp_path / f"client-{index}.jsonl"
        ledgers.append(ledger)
        clients.append(
            spawn(
                [sys.executable, str(CLIENT), str(state_dir), str(ledger), str(pause),
                 ",".join(str(sleeper.pid) for sleeper in sleepers), str(rng.randrange(1 << 30))],
                stdin=subprocess.PIPE,
            )
        )
    checked_holds = 0
    for round_number in range(1, KILLS + 1):
        # Load until some checkouts were answered, then a little more: the moment of the kill.
        floor = count_ops(ledgers) + 5
        wait_until(lambda floor=floor: count_ops(ledgers) >= floor, timeout=20)
        time.sleep(rng.uniform(0.0, 0.25))  # a random moment, not a synchronisation
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)

        # Freeze the clients' ledgers, then bring the daemon back on the same state.
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
        daemon = start_daemon(state_dir)
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
            for client, ledger in zip(clients, ledgers):
                for owner, (state, name) in owner_states(ledger).items():
                    if state == "held":
                        assert name_of.get(owner) == name, (
                            f"round {round_number}: owner {owner} (client {client.pid}) was answered {name!r} "
                            f"and never checked it in, but after the restart it holds {name_of.get(owner)!r}"
                        )
                        checked_holds += 1
                    elif state == "free":
                        assert owner not in name_of, f"round {round_number}: {owner} holds {name_of[owner]!r} unasked"
            # Drain every available name (at least a few): none may be one somebody holds.
            available = me.call("names.pool_stats")["available_count"]
            probes = [f"probe-{round_number}-{index}" for index in range(max(PROBES, available))]
            fresh = [me.call("names.checkout_name", probe) for probe in probes]
            assert len(set(fresh)) == len(probes), fresh
            taken = {name: owner_of[name] for name in fresh if name in owner_of}
            assert not taken, f"round {round_number}: fresh checkouts got names that are held: {taken}"
            for probe in probes:
                me.call("names.dissociate", probe)
        pause.unlink()  # the clients carry on

    assert checked_holds > KILLS  # the check was not vacuous
    for process in started():
        if process.stdin is not None:
            process.stdin.close()  # clients stop, sleepers exit
    for client in clients:
        assert client.wait(20) == 0
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    left = [path.name for path in state_dir.iterdir() if ".tmp" in path.name or ".corrupt-" in path.name]
    assert not left, f"temporary or quarantined files left in the state dir: {left}"
    for process in started():
        process.wait(10)
    left = {child.pid for child in psutil.Process().children(recursive=True)} - children_before
    assert not left, f"processes of the test outlived it: {left}"
