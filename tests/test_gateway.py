"""The socket gateway in-process: ops, owners, errors, and hostile input."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors import Client, InvalidName, Locked, NotLocked, NotPermitted, RemoteError, start_tree
from actors.daemon._gateway import Gateway
from actors.daemon._protocol import MAX_FRAME
from supervision import BadCall, ChildNotFound, UnknownMessage
from supervision.testing import wait_until


@pytest.fixture
def served(tmp_path):
    """A tree and its gateway on tmp_path/tree.sock; yields (tree, gateway, socket path, shutdowns)."""
    tree = start_tree(tmp_path / "state", reap_interval=3600, check_interval=3600, sweep_interval=3600)
    shutdowns: list[int] = []
    gateway = Gateway(tree, tmp_path / "state" / "tree.sock", on_shutdown=lambda: shutdowns.append(1))
    gateway.start()
    yield tree, gateway, tmp_path / "state" / "tree.sock", shutdowns
    gateway.stop()
    tree.stop()


@pytest.fixture
def client(served):
    with Client(served[2], timeout=10) as connection:
        yield connection


def raw_connection(path: Path) -> socket.socket:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(10)
    connection.connect(str(path))
    return connection


def read_frames(connection: socket.socket) -> list:
    """Everything the daemon sends until it closes the connection."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    frames = []
    while True:
        try:
            data = connection.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        unpacker.feed(data)
        frames.extend(unpacker)
    return frames


def assert_still_serving(path: Path) -> None:
    with Client(path, timeout=10) as fresh:
        assert fresh.call("names.default_name") == "Nameless Agent"


# -- ops ------------------------------------------------------------------------------------------


def test_socket_is_owner_only(served):
    assert (os.stat(served[2]).st_mode & 0o777) == 0o600


def test_names_owner_defaults_to_the_peer_pid(served, client):
    tree = served[0]
    name = client.call("names.checkout_name")
    assert tree.names.proxy().get_name_by_pid(os.getpid()).get(timeout=5) == name
    assert client.call("names.get_name_by_pid") == name
    assert client.call("names.checkout_name", None) == name  # nil owner: still the peer
    with pytest.raises(NotPermitted):  # v3: a peer acts only for itself
        client.call("names.checkout_name", owner="urn:worker:1")
    stats = client.call("names.pool_stats")
    assert stats["checked_out_count"] == 1


def test_associate_with_omitted_owner_is_the_peer(served, client):
    client.call("names.associate_name", "furiosa")  # not checked out: restored for the peer
    assert client.call("names.get_name_by_pid", os.getpid()) == "furiosa"
    client.call("names.checkin_name", "furiosa")
    # Held by an ancestor of the peer (this process's parent): the peer may inherit it.
    name = served[0].names.proxy().checkout_name(os.getppid()).get(timeout=5)
    client.call("names.associate_name", name)
    assert client.call("names.get_name_by_pid", os.getpid()) == name


def test_locks_act_for_the_peer_only(served, client, tmp_path):
    worker = tmp_path / "worker-1"
    worker.mkdir()
    info = client.call("locks.acquire", str(worker), "session-9")
    assert info["pid"] == os.getpid() and info["session_id"] == "session-9"
    assert client.call("locks.status", str(worker)) == f"locked by pid {os.getpid()} (session session-9)"
    with pytest.raises(NotPermitted):
        client.call("locks.acquire", str(worker), owner=1)
    with pytest.raises(NotPermitted):
        client.call("locks.release", str(worker), 1)
    client.call("locks.check", str(worker))
    client.call("locks.release", str(worker))
    with pytest.raises(NotLocked):
        client.call("locks.release", str(worker))
    assert client.call("locks.read", str(worker)) is None


def test_force_release_is_never_served(client, tmp_path):
    with pytest.raises(UnknownMessage):
        client.call("locks.force_release", str(tmp_path))


def test_agents_ops(client):
    health = client.call("agents.health")
    assert health["size"] == 0
    assert client.call("agents.sweep") == []
    assert client.call("agents.close_chat", "chat-1") == []
    with pytest.raises(UnknownMessage):
        client.call("agents.register", "a", "b", None)


def test_tree_which_children_and_status(client):
    children = client.call("tree.which_children")
    assert [child["id"] for child in children] == ["names", "agents", "locks", "workers"]
    assert set(children[0]) == {"id", "running", "restarts", "is_supervisor"}
    status = client.call("tree.status")
    assert status["names"]["chunk_size"] == 12
    assert [child["id"] for child in status["children"]] == ["names", "agents", "locks", "workers"]


def test_tree_restart_and_terminate_child(served, client):
    tree = served[0]
    before = tree.agents.ref().actor_urn
    urn = client.call("tree.restart_child", "agents")
    assert urn != before and tree.agents.ref().actor_urn == urn
    assert client.call("tree.terminate_child", "agents") is None
    assert tree.supervisor.proxy().whereis("agents").get(timeout=5) is None
    client.call("tree.restart_child", "agents")
    with pytest.raises(ChildNotFound):
        client.call("tree.restart_child", "nope")
    with pytest.raises(ChildNotFound):
        client.call("tree.terminate_child", "names/deeper")
    with pytest.raises(BadCall):
        client.call("tree.restart_child", 42)


def test_tree_shutdown_is_accepted_then_acted_on(served, client):
    assert client.call("tree.shutdown") == "accepted"
    wait_until(lambda: served[3] == [1])


def test_errors_map_back_to_the_same_classes(client):
    with pytest.raises(InvalidName):
        client.call("names.checkin_name", "a/b")
    with pytest.raises(BadCall):
        client.call("names.checkin_name", "x", "y", "z")
    with pytest.raises(UnknownMessage):
        client.call("names.no_such_method")
    with pytest.raises(UnknownMessage):
        client.call("nothing")
    with pytest.raises(BadCall):
        client.call("tree.which_children", 1, 2)


def test_unknown_error_types_become_remote_error():
    from actors.daemon._client import raise_remote

    with pytest.raises(RemoteError) as raised:
        raise_remote({"type": "WeirdThing", "message": "odd"})
    assert raised.value.type_name == "WeirdThing"
    with pytest.raises(Locked):
        raise_remote({"type": "Locked", "message": "by pid 1"})


def test_many_concurrent_connections_of_one_process_share_its_one_name(served):
    # A socket peer acts only for itself: every connection of this process gets its name.
    names: list[str] = []
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            with Client(served[2], timeout=20) as connection:
                for step in range(10):
                    names.append(connection.call("names.checkout_name"))
                    connection.call("names.pool_stats")
        except BaseException as error:  # noqa: BLE001 - collected for the assertion
            errors.append(error)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert len(names) == 120 and len(set(names)) == 1
    with Client(served[2], timeout=10) as connection:
        assert connection.call("names.pool_stats")["checked_out_count"] == 1


# -- hostile input ------------------------------------------------------------------------------------


def test_malformed_bytes_get_an_error_with_nil_id_and_close(served):
    connection = raw_connection(served[2])
    connection.sendall(b"\xc1\xc1\xc1 definitely not msgpack")
    frames = read_frames(connection)
    assert frames and frames[0]["id"] is None and frames[0]["error"]["type"] == "FrameError"
    assert_still_serving(served[2])


@pytest.mark.parametrize(
    "frame",
    [
        [1, 2, 3],
        "a string",
        {"op": "names.pool_stats"},
        {"id": "seven", "op": "names.pool_stats"},
        {"id": 1.5, "op": "names.pool_stats"},
    ],
)
def test_requests_without_a_readable_id_close_the_connection(served, frame):
    connection = raw_connection(served[2])
    connection.sendall(msgpack.packb(frame))
    frames = read_frames(connection)
    assert frames == [{"id": None, "error": {"type": "FrameError", "message": "a request is a map with an int 'id'"}}]
    assert_still_serving(served[2])


@pytest.mark.parametrize(
    ("request_fields", "error_type"),
    [
        ({"op": 5}, "BadCall"),
        ({"op": "names.pool_stats", "args": "x"}, "BadCall"),
        ({"op": "names.pool_stats", "kwargs": [1]}, "BadCall"),
        ({"op": "names.pool_stats", "kwargs": {1: 2}}, "BadCall"),
        ({"op": "names.checkout_name", "args": [[1, 2]]}, "InvalidOwner"),
        ({"op": "locks.acquire", "args": [7]}, "BadCall"),
        ({"op": "locks.acquire"}, "BadCall"),
        ({"op": "zzz"}, "UnknownMessage"),
    ],
)
def test_bad_requests_with_an_id_are_answered_and_the_connection_stays(served, request_fields, error_type):
    connection = raw_connection(served[2])
    connection.sendall(msgpack.packb({"id": 7, **request_fields}))
    connection.sendall(msgpack.packb({"id": 8, "op": "names.default_name"}))
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    replies: list = []
    while len(replies) < 2:
        unpacker.feed(connection.recv(65536))
        replies.extend(unpacker)
    assert replies[0]["id"] == 7 and replies[0]["error"]["type"] == error_type
    assert replies[1] == {"id": 8, "ok": "Nameless Agent"}
    connection.close()


def test_an_oversized_frame_is_refused_and_closes_only_that_connection(served):
    connection = raw_connection(served[2])
    payload = msgpack.packb({"id": 1, "op": "names.checkin_name", "args": ["x" * (10 * 1024 * 1024)]})
    try:
        connection.sendall(payload)
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed by the daemon while we were still sending: that is the point
    frames = read_frames(connection)
    if frames:
        assert frames[0]["id"] is None and "limit" in frames[0]["error"]["message"]
    assert_still_serving(served[2])


def test_a_frame_just_under_the_limit_is_served(client):
    with pytest.raises(InvalidName):
        client.call("names.checkin_name", "x" * (MAX_FRAME - 200))


def test_a_client_vanishing_mid_frame_loses_nothing(served):
    connection = raw_connection(served[2])
    frame = msgpack.packb({"id": 1, "op": "names.checkout_name", "kwargs": {"owner": "half"}})
    connection.sendall(frame[: len(frame) // 2])
    connection.close()
    wait_until(lambda: served[1].connection_count == 0)
    with Client(served[2], timeout=10) as fresh:
        assert fresh.call("names.get_name_by_pid", "half") is None
        assert fresh.call("names.pool_stats")["checked_out_count"] == 0


def test_a_client_vanishing_after_a_request_leaves_its_answered_state(served):
    connection = raw_connection(served[2])
    connection.sendall(msgpack.packb({"id": 1, "op": "names.checkout_name"}))
    connection.close()
    with Client(served[2], timeout=10) as fresh:  # the same process: the name is this pid's
        wait_until(lambda: fresh.call("names.get_name_by_pid") is not None)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(junk=st.binary(min_size=1, max_size=2048))
def test_fuzz_random_bytes_never_hurt_the_daemon(served, junk):
    connection = raw_connection(served[2])
    try:
        connection.sendall(junk)
        connection.shutdown(socket.SHUT_WR)
        for frame in read_frames(connection):
            assert isinstance(frame, dict) and ("error" in frame or "ok" in frame)
    finally:
        connection.close()
    assert_still_serving(served[2])


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    op=st.sampled_from(["names.checkout_name", "names.checkin_name", "names.associate_name", "names.reconcile",
                        "names.dissociate", "locks.status", "agents.sweep", "agents.close_chat", "tree.status"]),
    args=st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=80), st.binary(max_size=20),
                            st.floats(), st.lists(st.integers(), max_size=3)), max_size=3),
)
def test_fuzz_requests_are_answered_or_refused_never_crash(served, op, args):
    tree = served[0]
    with Client(served[2], timeout=10) as connection:
        try:
            connection.call(op, *args)
        except Exception as error:  # noqa: BLE001 - any error reply is fine; a crash is not
            assert not isinstance(error, ConnectionError)
    assert tree.supervisor.is_alive()
    restarts = {child.id: child.restarts for child in tree.supervisor.proxy().which_children().get(timeout=5)}
    assert restarts == {"names": 0, "agents": 0, "locks": 0, "workers": 0}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a peer as another uid")
def test_a_peer_of_another_uid_is_refused(served):
    # The state dir (0700) already keeps other users out; to test the SO_PEERCRED check
    # itself, serve the same tree on a socket they can reach.
    open_dir = Path(tempfile.mkdtemp(prefix="gateway-uid-"))
    os.chmod(open_dir, 0o755)
    gateway = Gateway(served[0], open_dir / "tree.sock")
    gateway.start()
    os.chmod(open_dir / "tree.sock", 0o666)
    script = (
        "import os, socket, msgpack;"
        "os.setgid(65534); os.setuid(65534);"
        f"s = socket.socket(socket.AF_UNIX); s.connect({str(open_dir / 'tree.sock')!r});"
        # The refusal comes at once, before any request: read it rather than write first.
        "u = msgpack.Unpacker(raw=False); u.feed(s.recv(65536)); print(next(u)['error']['type'])"
    )
    try:
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
        assert result.stdout.strip() == "PermissionError", result.stderr
    finally:
        gateway.stop()
        shutil.rmtree(open_dir, ignore_errors=True)
    assert_still_serving(served[2])


def test_peer_credentials_struct_matches_the_kernel(served):
    connection = raw_connection(served[2])
    pid, uid, gid = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    assert uid == os.geteuid() and pid > 0
    connection.close()


# -- frames, slots and threads (issue 11) ---------------------------------------------------------------


def test_frame_reader_refuses_an_endless_frame_after_one_frame_of_bytes():
    from actors.daemon._protocol import FrameError, FrameReader

    reader = FrameReader()
    # {"id": 1, "op": "names.reconcile", "args": [[2,048 strings of 512 KiB]]}, fed 64 KiB at a time.
    head = b"\x83" + b"".join(msgpack.packb(item) for item in ("id", 1, "op", "names.reconcile", "args"))
    reader.feed(head + b"\x91\xdd" + (2048).to_bytes(4, "big"))
    piece = msgpack.packb("x" * (512 * 1024))
    fed = 0
    with pytest.raises(FrameError, match="limit"):
        while True:
            for start in range(0, len(piece), 65536):
                reader.feed(piece[start:start + 65536])
                fed += 65536
                list(reader.frames())
    assert fed <= MAX_FRAME + 65536


def test_frame_reader_hands_out_frames_in_order_across_chunks_and_stops_at_garbage():
    from actors.daemon._protocol import FrameError, FrameReader

    frames = [{"id": index, "op": "x" * index} for index in range(50)]
    data = b"".join(msgpack.packb(frame) for frame in frames) + b"\xc1"
    reader = FrameReader()
    got: list = []
    with pytest.raises(FrameError, match="malformed"):
        for start in range(0, len(data), 7):
            reader.feed(data[start:start + 7])
            got.extend(reader.frames())
    assert got == frames  # every whole frame before the garbage was handed out
    assert not FrameReader().has_partial


def test_a_complete_frame_over_the_limit_is_refused():
    from actors.daemon._protocol import FrameError, FrameReader

    reader = FrameReader(max_frame=1000)
    reader.feed(msgpack.packb({"id": 1, "op": "y" * 1500}) + msgpack.packb({"id": 2}))
    with pytest.raises(FrameError, match="frame of 15.. bytes exceeds"):
        list(reader.frames())


def test_encode_keeps_frames_intact_across_threads_large_frames_and_failures():
    # encode() reuses one msgpack Packer per thread: what it packs must never leak from one
    # frame into the next, whichever thread packs, after a large frame or a failed one.
    from actors.daemon._protocol import FrameError, encode

    big = {"id": 1, "ok": "x" * (200 * 1024)}
    assert msgpack.unpackb(encode(big)) == big
    with pytest.raises(TypeError):
        encode({"id": 2, "ok": object()})
    with pytest.raises(FrameError, match="exceeds"):
        encode({"id": 3, "ok": "y" * (MAX_FRAME + 1)})
    assert msgpack.unpackb(encode({"id": 4, "ok": [1, 2]})) == {"id": 4, "ok": [1, 2]}
    mismatches: list[int] = []

    def work(worker: int) -> None:
        for index in range(2000):
            frame = {"id": index, "ok": {"worker": worker, "pad": "z" * (index % 7) * 100}}
            if msgpack.unpackb(encode(frame), strict_map_key=False) != frame:
                mismatches.append(index)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not mismatches


def test_frame_reader_hands_out_a_frame_that_fills_the_chunk_and_then_the_next_ones():
    from actors.daemon._protocol import FrameError, FrameReader

    reader = FrameReader()
    one, two = {"id": 1, "op": "a"}, {"id": 2, "op": "b"}
    reader.feed(msgpack.packb(one))
    assert list(reader.frames()) == [one] and not reader.has_partial
    data = msgpack.packb(two) + msgpack.packb(one)
    reader.feed(data[:3])
    assert list(reader.frames()) == [] and reader.has_partial
    reader.feed(data[3:])
    assert list(reader.frames()) == [two, one] and not reader.has_partial
    # A frame and the start of the next in one feed: the first now, the rest when whole.
    reader.feed(msgpack.packb(one) + msgpack.packb(two)[:2])
    assert list(reader.frames()) == [one] and reader.has_partial
    reader.feed(msgpack.packb(two)[2:])
    assert list(reader.frames()) == [two] and not reader.has_partial
    # Two feeds before anyone asks for frames: nothing is lost or reordered.
    reader.feed(msgpack.packb(one))
    reader.feed(msgpack.packb(two))
    assert list(reader.frames()) == [one, two]
    with pytest.raises(FrameError, match="malformed"):
        reader.feed(b"\xc1")
        list(reader.frames())


def test_pool_stats_follow_every_change_through_the_socket(client):
    # Served from the stats the pool publishes (no hop to its actor), copied once per publication.
    for _ in range(3):
        name = client.call("names.checkout_name")
        assert client.call("names.pool_stats")["checked_out_count"] == 1
        client.call("names.checkin_name", name)
        stats = client.call("names.pool_stats")
        assert stats["checked_out_count"] == 0 and stats["available_count"] >= 1
    assert client.call("names.pool_stats") == client.call("names.pool_stats")


@pytest.fixture
def gateway_factory(tmp_path):
    """Gateways with options of the test's choosing on one tree."""
    tree = start_tree(tmp_path / "state", reap_interval=3600, check_interval=3600, sweep_interval=3600)
    gateways: list[Gateway] = []

    def make(**options) -> tuple[Gateway, Path]:
        path = tmp_path / "state" / f"g{len(gateways)}.sock"
        gateway = Gateway(tree, path, **options)
        gateways.append(gateway)
        gateway.start()
        return gateway, path

    yield make
    for gateway in gateways:
        gateway.stop()
    tree.stop()


def test_a_partial_frame_held_past_the_frame_timeout_is_closed(gateway_factory):
    from supervision import ManualClock

    clock = ManualClock()
    gateway, path = gateway_factory(clock=clock, frame_timeout=10.0)
    stalled = raw_connection(path)
    idle = raw_connection(path)
    frame = msgpack.packb({"id": 1, "op": "names.default_name"})
    stalled.sendall(frame[:4])
    wait_until(lambda: any(slot.partial_since is not None for slot in list(gateway._slots.values())))
    clock.advance(9.0)
    stalled.settimeout(1.0)
    with pytest.raises(TimeoutError):  # not yet: 9 s of the 10
        stalled.recv(1)
    clock.advance(1.5)
    stalled.settimeout(10)
    assert [reply["error"]["type"] for reply in read_frames(stalled)] == ["FrameTimeout"]
    idle.sendall(frame)  # a connection with nothing half sent is not closed by the timeout
    assert msgpack.unpackb(idle.recv(65536), raw=False) == {"id": 1, "ok": "Nameless Agent"}
    idle.close()
    stalled.close()


def test_when_every_slot_is_taken_the_longest_idle_connection_makes_room(gateway_factory):
    from supervision import ManualClock

    clock = ManualClock()
    gateway, path = gateway_factory(clock=clock, max_connections=3)
    oldest = raw_connection(path)
    wait_until(lambda: gateway.connection_count == 1)
    clock.advance(1)
    middle = raw_connection(path)
    wait_until(lambda: gateway.connection_count == 2)
    clock.advance(1)
    newest = raw_connection(path)
    wait_until(lambda: gateway.connection_count == 3)
    clock.advance(1)
    # The oldest answers a request now, so the middle one has been idle the longest.
    oldest.sendall(msgpack.packb({"id": 1, "op": "names.default_name"}))
    assert msgpack.unpackb(oldest.recv(65536), raw=False)["ok"] == "Nameless Agent"
    with Client(path, timeout=10) as client:
        assert client.call("names.default_name") == "Nameless Agent"
    assert read_frames(middle) == []  # closed quietly, no request lost
    for connection in (oldest, newest):
        connection.sendall(msgpack.packb({"id": 2, "op": "names.default_name"}))
        assert msgpack.unpackb(connection.recv(65536), raw=False)["id"] == 2
        connection.close()
    middle.close()


def test_a_connection_thread_that_cannot_start_is_answered_and_accepting_goes_on(gateway_factory, monkeypatch):
    gateway, path = gateway_factory()
    real_start = threading.Thread.start
    failures = {"left": 2}

    def start(thread: threading.Thread) -> None:
        if thread.name.startswith("gateway-conn") and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    for _ in range(2):
        connection = raw_connection(path)
        frames = read_frames(connection)
        connection.close()
        assert [(frame["id"], frame["error"]["type"]) for frame in frames] == [(None, "RuntimeError")]
    assert_still_serving(path)
    assert not gateway.has_failed
    wait_until(lambda: gateway.connection_count == 0)  # no slot kept by the refused ones


def test_a_lifecycle_request_without_a_thread_is_still_acted_on(served, client, monkeypatch):
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name == "gateway-lifecycle":
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    assert client.call("tree.shutdown") == "accepted"
    wait_until(lambda: served[3] == [1])


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    frames=st.lists(st.dictionaries(st.text(max_size=5), st.one_of(st.integers(min_value=-(2**63), max_value=2**64 - 1),
                                                                     st.text(max_size=300), st.none(),
                                                                     st.lists(st.binary(max_size=50), max_size=4)),
                                    max_size=4), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=10),
)
def test_frame_reader_yields_the_same_frames_however_the_bytes_are_cut(frames, cuts):
    from actors.daemon._protocol import FrameReader

    data = b"".join(msgpack.packb(frame, use_bin_type=True) for frame in frames)
    points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    reader = FrameReader()
    got: list = []
    for start, end in zip(points, points[1:]):
        reader.feed(data[start:end])
        got.extend(reader.frames())
    assert got == frames and not reader.has_partial


# -- events.follow --------------------------------------------------------------------------------


def follow(path: Path, kinds=None, request_id: int = 7) -> tuple[socket.socket, msgpack.Unpacker]:
    """A raw connection turned into an event stream; its "following" reply already read."""
    connection = raw_connection(path)
    connection.sendall(msgpack.packb({"id": request_id, "op": "events.follow", "args": [kinds], "kwargs": {}}))
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    assert next_frame(connection, unpacker) == {"id": request_id, "ok": "following"}
    return connection, unpacker


def next_frame(connection: socket.socket, unpacker: msgpack.Unpacker) -> dict:
    while True:
        for frame in unpacker:
            return frame
        data = connection.recv(65536)
        assert data, "the daemon closed the stream"
        unpacker.feed(data)


def test_events_follow_streams_the_events_of_the_chosen_kinds(served, client):
    connection, unpacker = follow(served[2], ["name_checked_out", "name_checked_in"])
    with connection:
        name = client.call("names.checkout_name")
        client.call("names.pool_stats")
        client.call("names.checkin_name", name)
        out, back = next_frame(connection, unpacker), next_frame(connection, unpacker)
    assert set(out) == {"event"} and set(out["event"]) == {"seq", "time", "kind", "path", "name", "data"}
    assert (out["event"]["kind"], out["event"]["path"], out["event"]["name"]) == ("name_checked_out", "names", name)
    assert out["event"]["data"] == {"owner": os.getpid()}
    assert (back["event"]["kind"], back["event"]["name"]) == ("name_checked_in", name)
    assert back["event"]["seq"] > out["event"]["seq"]


def test_events_follow_with_bad_kinds_is_refused_and_the_connection_closes(served):
    connection = raw_connection(served[2])
    with connection:
        connection.sendall(msgpack.packb({"id": 3, "op": "events.follow", "args": ["child_started"], "kwargs": {}}))
        frames = read_frames(connection)
    assert frames[0]["id"] == 3 and frames[0]["error"]["type"] == "BadCall"
    assert_still_serving(served[2])


def test_a_follower_that_never_reads_loses_the_oldest_and_never_slows_the_tree(served, client, monkeypatch):
    import actors.daemon._gateway as gateway_module

    monkeypatch.setattr(gateway_module, "FOLLOW_BUFFER", 50)
    connection, unpacker = follow(served[2], ["name_checked_out", "name_checked_in"])
    with connection:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # Thousands of events while the follower reads nothing: every call is still answered.
        for _ in range(1500):
            client.call("names.checkin_name", client.call("names.checkout_name"))
        frames = []
        dropped = 0
        connection.settimeout(2)
        while True:
            try:
                frame = next_frame(connection, unpacker)
            except (TimeoutError, socket.timeout):
                break
            if "dropped" in frame:
                dropped += frame["dropped"]
            else:
                frames.append(frame["event"])
    assert dropped > 0
    assert len(frames) + dropped == 3000
    seqs = [event["seq"] for event in frames]
    assert seqs == sorted(seqs)
    assert frames[-1]["kind"] == "name_checked_in"  # the newest are kept


def test_a_follower_closing_frees_its_connection(served):
    tree, gateway, path, _ = served
    connection, _ = follow(path)
    wait_until(lambda: gateway.connection_count == 1)
    connection.close()
    wait_until(lambda: gateway.connection_count == 0)
    assert_still_serving(path)


def test_stopping_the_gateway_ends_a_stream(tmp_path):
    tree = start_tree(tmp_path / "state", reap_interval=3600, check_interval=3600, sweep_interval=3600)
    gateway = Gateway(tree, tmp_path / "state" / "tree.sock")
    gateway.start()
    try:
        connection, _ = follow(tmp_path / "state" / "tree.sock")
        gateway.stop()
        with connection:
            assert read_frames(connection) == []
        assert gateway.connection_count == 0
    finally:
        gateway.stop()
        tree.stop()
