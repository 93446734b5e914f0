"""The real daemon as a subprocess, driven only through its socket and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _daemons import ROOT, cleanup, daemon_state, run_cli, start_daemon, stop

from actors import NotPermitted, RemoteError, connect
from supervision.testing import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_daemon_outlives_its_test():
    """Whatever happens in a test, no daemon it started keeps running."""
    yield
    cleanup()


CLIENT_SCRIPT = """
import os, sys, actors
with actors.connect(sys.argv[1]) as client:
    name = client.call("names.checkout_name")
    assert client.call("names.get_name_by_pid") == name
    print(name, os.getpid(), flush=True)
    sys.stdin.readline()   # hold the name until told to go
"""


@pytest.fixture
def daemon(tmp_path):
    state_dir = tmp_path / "state"
    process = start_daemon(state_dir)
    yield state_dir, process
    stop(process)


def test_clients_in_other_processes_own_names_by_their_pids(daemon):
    state_dir, _ = daemon
    clients = [
        subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, str(state_dir)], cwd=ROOT, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    try:
        held = {}
        for client in clients:
            name, pid = client.stdout.readline().split()
            held[int(pid)] = name
        assert len(set(held.values())) == 4
        with connect(state_dir) as me:
            for pid, name in held.items():
                assert me.call("names.get_name_by_pid", pid) == name  # anyone may ask about any pid
            assert me.call("names.checkout_name") not in held.values()
            # v3: a process may not join a name held by a process it does not descend from
            first_pid, first_name = next(iter(held.items()))
            with pytest.raises(NotPermitted):
                me.call("names.associate_name", first_name)
            assert me.call("names.get_name_by_pid", first_pid) == first_name
    finally:
        for client in clients:
            client.stdin.close()
            client.wait(10)


def test_daemon_state_heartbeats_and_a_second_serve_is_refused(daemon):
    state_dir, process = daemon
    state = daemon_state(state_dir)
    assert state["running"] is True and state["pid"] == process.pid
    first = state["heartbeat_count"]
    wait_until(lambda: daemon_state(state_dir)["heartbeat_count"] > first)
    assert (state_dir.stat().st_mode & 0o777) == 0o700
    second = run_cli("serve", "--state-dir", str(state_dir))
    assert second.returncode == 3
    assert str(process.pid) in second.stderr and len(second.stderr.strip().splitlines()) == 1


def test_sigterm_exits_0_and_leaves_running_false(daemon):
    state_dir, process = daemon
    assert stop(process) == 0
    assert daemon_state(state_dir)["running"] is False
    assert not (state_dir / "tree.sock").exists()


def test_shutdown_request_over_the_socket(daemon):
    state_dir, process = daemon
    with connect(state_dir) as client:
        assert client.call("tree.shutdown") == "accepted"
    assert process.wait(30) == 0
    assert daemon_state(state_dir)["running"] is False


def test_sigkill_then_a_new_serve_recovers_held_names(tmp_path):
    state_dir = tmp_path / "state"
    process = start_daemon(state_dir)
    holder = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, str(state_dir)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        name, pid = holder.stdout.readline().split()
        process.kill()
        process.wait(10)
        process = start_daemon(state_dir)
        with connect(state_dir) as client:
            assert client.call("names.get_name_by_pid", int(pid)) == name
            assert client.call("tree.status")["held_names"][name] == [int(pid)]
            assert client.call("names.checkout_name") != name
            assert client.call("names.pool_stats")["checked_out_count"] == 2
    finally:
        holder.stdin.close()
        holder.wait(10)
        stop(process)


def test_status_cli_for_people_and_json(daemon):
    state_dir, process = daemon
    with connect(state_dir) as client:
        name = client.call("names.checkout_name")
    text = run_cli("status", "--state-dir", str(state_dir))
    assert text.returncode == 0, text.stderr
    for expected in ("names", "agents", "locks", "workers", "restarts", name, str(os.getpid()), str(process.pid)):
        assert expected in text.stdout
    as_json = run_cli("status", "--state-dir", str(state_dir), "--json")
    status = json.loads(as_json.stdout)
    assert status["daemon"]["pid"] == process.pid
    assert [child["id"] for child in status["children"]] == ["names", "agents", "locks", "workers"]


def test_status_without_a_daemon_exits_1(tmp_path):
    result = run_cli("status", "--state-dir", str(tmp_path))
    assert result.returncode == 1 and "no daemon" in result.stdout
    assert "none recorded" in result.stdout


def test_status_after_the_daemon_was_killed_says_what_it_last_recorded(tmp_path):
    state_dir = tmp_path / "state"
    process = start_daemon(state_dir)
    process.kill()
    process.wait(10)
    result = run_cli("status", "--state-dir", str(state_dir))
    assert result.returncode == 1 and "no daemon" in result.stdout, result
    assert f"pid={process.pid}" in result.stdout and "running=True" in result.stdout


def test_loose_state_dir_is_tightened_with_a_warning(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o755)
    os.chmod(state_dir, 0o755)
    process = start_daemon(state_dir)
    try:
        assert (state_dir.stat().st_mode & 0o777) == 0o700
    finally:
        stop(process)
    assert "tightened" in process.stderr.read()


def test_bad_flags_are_refused(tmp_path):
    result = run_cli("serve", "--state-dir", str(tmp_path), "--heartbeat", "0")
    assert result.returncode == 2 and "heartbeat" in result.stderr


# The agent pool's health probe is made to raise (a crash, not a ClientError); a root that
# allows no restart fails with it.
CRASHING_LAUNCHER = """
import sys
from actors.agents._pool import AgentPool
def health(self):
    raise RuntimeError("injected crash")
AgentPool.health = health
from actors.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_root_failure_exits_1_with_a_message(tmp_path):
    state_dir = tmp_path / "state"
    process = start_daemon(state_dir, "--max-restarts", "0", command=[sys.executable, "-c", CRASHING_LAUNCHER])
    with connect(state_dir) as client:
        with pytest.raises(RemoteError, match="injected crash"):
            client.call("agents.health")
    assert process.wait(30) == 1
    assert "root supervisor failed" in process.stderr.read()
    assert daemon_state(state_dir)["running"] is False


def test_the_main_job_demo_runs_and_stops_by_itself(tmp_path):
    state_dir = tmp_path / "state"
    result = subprocess.run(
        [sys.executable, "-m", "actors", "serve", "--state-dir", str(state_dir), "--demo", "--demo-seconds", "3",
         "--heartbeat", "0.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for expected in ("worker-1", "worker-3", "locked by pid", "names:", "stopping the daemon"):
        assert expected in result.stdout
    assert daemon_state(state_dir)["running"] is False


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_heartbeat_stops_claiming_running_when_the_accept_loop_is_gone(tmp_path, monkeypatch):
    # The accept loop survives every Exception; should something still end it, the heartbeat
    # must not go on saying the daemon is running.
    from actors.daemon._daemon import Daemon
    from actors.daemon._gateway import Gateway
    from supervision import ManualClock

    clock = ManualClock()
    daemon = Daemon(tmp_path / "state", heartbeat=1.0, clock=clock)
    daemon.start()
    try:
        assert daemon_state(tmp_path / "state")["running"] is True

        def fatal(self, connection):
            connection.close()
            raise SystemExit("the accept thread is gone")

        monkeypatch.setattr(Gateway, "_admit", fatal)
        socket_path = tmp_path / "state" / "tree.sock"
        with pytest.raises(OSError):
            with connect(tmp_path / "state", timeout=5) as client:
                client.call("names.default_name")
        wait_until(lambda: daemon.gateway.has_failed)
        clock.advance(1.0)
        state = daemon_state(tmp_path / "state")
        assert state["running"] is False and state["heartbeat_count"] == 2
        assert socket_path.exists()
    finally:
        daemon.stop()
    assert not socket_path.exists()


def test_the_demo_uses_every_service_and_status_names_each_worker(tmp_path):
    from actors.daemon._daemon import Daemon
    from actors.daemon._status import render_status
    from actors.demo._demo import start_demo_workers

    daemon = Daemon(tmp_path / "state", heartbeat=1.0, tree_options={"idle_ttl": 0.3, "sweep_interval": 0.1})
    daemon.start()
    try:
        keeper = start_demo_workers(daemon, workers=2, status_every=3600.0, keep_every=0.05, pace=0.2)
        agents = daemon.tree.agents.proxy()
        # Each worker's session is created while it works and evicted by TTL once it rests.
        wait_until(lambda: keeper.snapshot()["created"] >= 3, timeout=30)
        wait_until(lambda: agents.health().get(timeout=5)["evictions"]["ttl"] >= 2, timeout=30)
        wait_until(lambda: keeper.snapshot()["disposed"] >= 2, timeout=30)
        status = daemon.status()
        workers = status["workers"]
        assert [worker["id"] for worker in workers] == ["worker-1", "worker-2"]
        text = render_status(status)
        for section in ("tree:", "workers:", "names:", "held names:", "locks:", "agents:"):
            assert f"\n{section}\n" in text
        assert "{" not in text  # tables, no raw dict
        for worker in workers:
            if worker["pid"] is not None:
                assert worker["name"] and f"{worker['name']}" in text and str(worker["pid"]) in text
        for index in (1, 2):
            assert str(daemon.state_dir / "workers" / f"w{index}") in text
    finally:
        daemon.stop()


def test_a_demo_worker_crash_does_not_exit_a_daemon_whose_root_has_no_budget(tmp_path):
    from actors.daemon._daemon import Daemon
    from actors.demo._demo import start_demo_workers

    daemon = Daemon(tmp_path / "state", heartbeat=1.0, tree_options={"max_restarts": 0})
    daemon.start()
    try:
        start_demo_workers(daemon, workers=1, status_every=3600.0, pace=0.1)  # the one worker is flaky
        workers = daemon.tree.workers
        wait_until(lambda: workers.proxy().which_children().get(timeout=5)[0].restarts >= 1, timeout=30)
        assert daemon.tree.supervisor.is_alive()
        assert [info.restarts for info in daemon.tree.supervisor.proxy().which_children().get(timeout=5)] == [0] * 4
    finally:
        daemon.stop()
