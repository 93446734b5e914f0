"""`python -m actors serve --fleet URL --host-id ID` (contract §7): daemons as hosts of one fleet.

Two daemons (subprocesses) with different host ids share one real redis-server; their
socket clients get names unique across both; `status` shows the fleet.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import connect
from actors._errors import FleetUnavailable, StateDirInUse
from actors.names._pool import HOLDERS_REQUEST
from actors.names._source import ThemedSource
from tests import _daemons
from tests._daemons import run_cli, start_daemon, stop
from tests._redis import RedisServer

CLIENT = (
    "import sys, time\n"
    "from actors import connect\n"
    "with connect(sys.argv[1]) as client:\n"
    "    print(client.call('names.checkout_name'), flush=True)\n"
    "    sys.stdin.read()\n"  # holds its name until the test closes stdin
)


@pytest.fixture(autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    _daemons.cleanup()


def _fleet_daemon(state_dir: Path, url: str, host_id: str) -> subprocess.Popen:
    return start_daemon(state_dir, "--fleet", url, "--host-id", host_id, "--log-level", "WARNING")


def _client_name(state_dir: Path) -> tuple[subprocess.Popen, str]:
    """A client process that checks out a name over the socket and keeps it until stdin closes."""
    process = _daemons.spawn(
        [sys.executable, "-c", CLIENT, str(state_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def test_two_daemons_share_one_fleet_with_names_unique_across_both(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    dir_a, dir_b = tmp_path / "a", tmp_path / "b"
    daemon_a = _fleet_daemon(dir_a, redis_server.url, "host-a")
    daemon_b = _fleet_daemon(dir_b, redis_server.url, "host-b")
    holders = [_client_name(state_dir) for state_dir in (dir_a, dir_b, dir_a, dir_b)]
    names = [name for _, name in holders]
    assert all(names) and len(set(names)) == 4, names
    with connect(dir_a) as client_a, connect(dir_b) as client_b:
        first_pid = holders[0][0].pid
        assert client_a.call("names.get_name_by_pid", first_pid) == names[0]
        assert client_b.call("names.get_name_by_pid", first_pid) is None  # a pid of host-a, not of host-b
    result = run_cli("status", "--state-dir", str(dir_a), "--json")
    assert result.returncode == 0, result.stderr
    fleet = json.loads(result.stdout)["fleet"]
    assert {(host["host"], host["state"]) for host in fleet["hosts"]} == {("host-a", "live"), ("host-b", "live")}
    assert all(0 < host["lease_left"] <= 15.0 and host["epoch"] >= 1 for host in fleet["hosts"])
    assert set(fleet["names_by_host"]["host-a"]) == {names[0], names[2]}
    assert set(fleet["names_by_host"]["host-b"]) == {names[1], names[3]}
    assert fleet["this_host"]["host"] == "host-a" and fleet["this_host"]["cut_off"] is False
    text = run_cli("status", "--state-dir", str(dir_b)).stdout
    assert "fleet:" in text and "host-a" in text and names[1] in text

    # A graceful restart of host-a: same state dir, same host id, its live clients' names back.
    assert stop(daemon_a) == 0
    daemon_a = _fleet_daemon(dir_a, redis_server.url, "host-a")
    with connect(dir_a) as client_a:
        assert client_a.call("names.get_name_by_pid", holders[0][0].pid) == names[0]
        assert client_a.call("names.get_name_by_pid", holders[2][0].pid) == names[2]
    for process, _ in holders:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(10)
    assert stop(daemon_a) == 0 and stop(daemon_b) == 0


def test_a_second_live_daemon_with_the_same_host_id_exits_3(tmp_path: Path, redis_server: RedisServer) -> None:
    first = _fleet_daemon(tmp_path / "a", redis_server.url, "host-a")
    other = str(tmp_path / "other")
    result = run_cli("serve", "--state-dir", other, "--fleet", redis_server.url, "--host-id", "host-a")
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1 and "host id 'host-a' is in use" in result.stderr
    assert first.poll() is None
    assert stop(first) == 0


def test_an_unreachable_fleet_store_exits_2_with_one_line(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/no-such-redis.sock"
    result = run_cli("serve", "--state-dir", str(tmp_path / "a"), "--fleet", url, "--fleet-timeout", "0.5")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("actors: cannot join the fleet at")
    bad = run_cli("serve", "--state-dir", str(tmp_path / "a"), "--fleet", "http://nowhere")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--fleet" in bad.stderr


def test_three_trees_in_one_fleet_hammering_checkout_never_hand_out_a_name_twice(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    from actors import start_tree

    source = ThemedSource("minerals", names=["jade", "onyx"])
    trees = [
        start_tree(tmp_path / f"tree-{index}", fleet=redis_server.url, host_id=f"host-{index}", name_source=source,
                   chunk_size=3, fleet_timeout=1.0)
        for index in range(3)
    ]
    try:
        got: list[str] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def hammer(index: int) -> None:
            names = trees[index % 3].names.proxy()
            try:
                for round_ in range(10):
                    name = names.checkout_name(f"urn:{index}:{round_}").get(timeout=10)
                    with lock:
                        got.append(name)
            except BaseException as error:  # reported below
                errors.append(error)

        threads = [threading.Thread(target=hammer, args=(index,)) for index in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors
        assert len(got) == 60 and len(set(got)) == 60, "a name was handed to two holders"
        assert trees[0].fleet is not None and trees[0].fleet.id == "host-0"
        with pytest.raises(StateDirInUse, match="host-1"):  # a second live tree with that host id
            start_tree(tmp_path / "again", fleet=redis_server.url, host_id="host-1")
    finally:
        for tree in trees:
            tree.stop()
    restarted = start_tree(tmp_path / "tree-1", fleet=redis_server.url, host_id="host-1")  # left: free again
    try:
        held = restarted.names.ask(HOLDERS_REQUEST, timeout=10)
        assert len(held) == 20 and "urn:1:0" in {owner for owners in held.values() for owner in owners}
    finally:
        restarted.stop()


def test_start_tree_refuses_a_bad_or_unreachable_fleet(tmp_path: Path) -> None:
    from actors import start_tree

    with pytest.raises(ValueError, match="fleet URL"):
        start_tree(tmp_path / "a", fleet="http://nowhere")
    with pytest.raises(FleetUnavailable):
        start_tree(tmp_path / "a", fleet=f"unix://{tmp_path}/none.sock", fleet_timeout=0.2)
    start_tree(tmp_path / "a").stop()  # the state dir was let go
