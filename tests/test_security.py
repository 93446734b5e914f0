"""Security of files and of the socket (contract §1 "Durable state", §4, §5).

- Symlinks planted at every state and lock path are refused, or handled without writing
  through them: the link's target is never changed.
- State dirs with loose permissions are tightened with a WARNING; files are owner-only
  whatever the umask.
- Another user's process cannot connect to the daemon's socket.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors import InvalidLock, InvalidWorkerDir, LockSupervisor, NamePool, WorkerLock, start_tree
from actors.daemon._client import SOCKET_NAME
from actors.daemon._daemon import DAEMON_STATE, LOCK_NAME, Daemon
from actors.daemon._gateway import Gateway
from actors._tree import NAMES_STATE, prepare_state_dir
from supervision import ClientError, StartError

CALL_TIMEOUT = 10.0
HERE = Path(__file__).resolve().parent
NOBODY = 65534

is_root = os.geteuid() == 0
needs_root = pytest.mark.skipif(not is_root, reason="needs root to act as another uid")


# -- helpers ------------------------------------------------------------------------------------


class Target:
    """Something precious a symlink points at: a file (or a directory) that must not change."""

    def __init__(self, base: Path, *, directory: bool = False) -> None:
        self.path = base / ("target-dir" if directory else "target-file")
        if directory:
            self.path.mkdir()
            (self.path / "keep").write_bytes(b"keep")
        else:
            self.path.write_bytes(b"precious\n")
        os.chmod(self.path, 0o755 if directory else 0o644)
        self.before = self.snapshot()

    def snapshot(self) -> Any:
        info = os.lstat(self.path)
        if stat.S_ISDIR(info.st_mode):
            contents = {entry.name: entry.read_bytes() for entry in self.path.iterdir()}
            return stat.S_IMODE(info.st_mode), contents
        return stat.S_IMODE(info.st_mode), self.path.read_bytes()

    def assert_unchanged(self) -> None:
        assert self.snapshot() == self.before, f"{self.path} was written through a symlink"


def stop_quietly(ref: pykka.ActorRef[Any]) -> None:
    if ref.is_alive():
        ref.stop(timeout=CALL_TIMEOUT)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- name pool state ------------------------------------------------------------------------------


@pytest.mark.parametrize("link_name", [NAMES_STATE, NAMES_STATE + ".journal"])
@pytest.mark.parametrize("target_kind", ["file", "dir", "dangling"])
def test_a_symlinked_name_pool_file_is_refused_at_start(tmp_path, link_name, target_kind):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    if target_kind == "dangling":
        target_path = tmp_path / "nothing-here"
        target = None
    else:
        target = Target(tmp_path, directory=target_kind == "dir")
        target_path = target.path
    os.symlink(target_path, state_dir / link_name)
    with pytest.raises(StartError, match="symlink"):
        start_tree(state_dir)
    assert (state_dir / link_name).is_symlink()
    if target is None:
        assert not target_path.exists()
    else:
        target.assert_unchanged()


def test_name_pool_state_swapped_for_a_symlink_while_running_is_never_written_through(tmp_path):
    state_dir = tmp_path / "state"
    tree = start_tree(state_dir, max_restarts=0)
    names = tree.names.proxy()
    names.checkout_name("before").get(timeout=CALL_TIMEOUT)
    target = Target(tmp_path)
    state = state_dir / NAMES_STATE
    state.unlink()
    os.symlink(target.path, state)
    # The next writes go to the journal or fail; none may reach the target, whatever
    # happens to the pool (a crash here is the documented reaction).
    for index in range(20):
        try:
            names.checkout_name(f"after-{index}").get(timeout=CALL_TIMEOUT)
        except Exception:  # noqa: BLE001 - ActorCrashed, ActorDeadError: the pool refused
            break
    tree.stop(timeout=30)
    target.assert_unchanged()
    assert state.is_symlink()


def test_name_pool_journal_swapped_for_a_symlink_while_running_is_never_written_through(tmp_path):
    state_dir = tmp_path / "state"
    tree = start_tree(state_dir)
    names = tree.names.proxy()
    names.checkout_name("before").get(timeout=CALL_TIMEOUT)
    target = Target(tmp_path)
    journal = state_dir / (NAMES_STATE + ".journal")
    journal.unlink()
    os.symlink(target.path, journal)
    for index in range(5):
        names.checkout_name(f"after-{index}").get(timeout=CALL_TIMEOUT)
    tree.stop(timeout=30)
    target.assert_unchanged()
    # The graceful stop removed the journal: the link, never its target.
    assert not os.path.lexists(journal)
    again = NamePool.start(state_path=state_dir / NAMES_STATE)
    try:
        assert again.proxy().get_name_by_pid("after-4").get(timeout=CALL_TIMEOUT) is not None
    finally:
        again.stop()


# -- worker locks --------------------------------------------------------------------------------

LOCK_OPERATIONS = ["acquire", "release", "read", "check", "force_release"]


def _plant(worker: Path, where: str, target: Path) -> Path:
    runtime = worker / ".runtime"
    if where == ".runtime":
        worker.mkdir()
        os.symlink(target, runtime)
        return runtime
    runtime.mkdir(parents=True, mode=0o700)
    link = runtime / where
    os.symlink(target, link)
    return link


@pytest.mark.parametrize("operation", LOCK_OPERATIONS)
@pytest.mark.parametrize("where", [".runtime", "agent.lock", "agent.lock.flock"])
def test_a_symlinked_lock_path_is_refused_and_its_target_untouched(tmp_path, where, operation):
    target = Target(tmp_path, directory=where == ".runtime")
    worker = tmp_path / "worker"
    link = _plant(worker, where, target.path)
    lock = WorkerLock.start(str(worker), check_interval=3600.0)
    try:
        outcome: Any
        try:
            outcome = getattr(lock.proxy(), operation)().get(timeout=CALL_TIMEOUT)
        except ClientError as error:
            outcome = error
        assert lock.is_alive()
        if operation == "force_release" and where == "agent.lock":
            # An operator's act: the link itself goes, never what it points at.
            assert outcome is None and not os.path.lexists(link)
        elif operation in ("read", "check") and where == "agent.lock.flock":
            # Reads never open the guard: nothing goes through it, whatever it is.
            assert outcome is None or isinstance(outcome, InvalidLock), outcome
        else:
            assert isinstance(outcome, InvalidLock), outcome
            assert os.path.islink(link)
        status = lock.proxy().status().get(timeout=CALL_TIMEOUT)
        if where in (".runtime", "agent.lock") and os.path.lexists(link):
            assert status.startswith("corrupt (")
    finally:
        stop_quietly(lock)
    target.assert_unchanged()


def test_a_planted_temporary_record_link_is_replaced_not_followed(tmp_path):
    target = Target(tmp_path)
    worker = tmp_path / "worker"
    _plant(worker, "agent.lock.next", target.path)
    lock = WorkerLock.start(str(worker), check_interval=3600.0)
    try:
        info = lock.proxy().acquire("s").get(timeout=CALL_TIMEOUT)
        assert info.pid == os.getpid()
        lock.proxy().release().get(timeout=CALL_TIMEOUT)
    finally:
        stop_quietly(lock)
    target.assert_unchanged()
    # Stopping the lock removed the temporary file the release kept: the link is long gone.
    assert not os.path.lexists(worker / ".runtime" / "agent.lock.next")


def test_a_loose_runtime_dir_and_guard_are_tightened(tmp_path):
    worker = tmp_path / "worker"
    runtime = worker / ".runtime"
    runtime.mkdir(parents=True)
    os.chmod(runtime, 0o777)
    (runtime / "agent.lock.flock").write_bytes(b"")
    os.chmod(runtime / "agent.lock.flock", 0o666)
    lock = WorkerLock.start(str(worker), check_interval=3600.0)
    try:
        lock.proxy().acquire().get(timeout=CALL_TIMEOUT)
    finally:
        stop_quietly(lock)
    assert mode(runtime) == 0o700
    assert mode(runtime / "agent.lock.flock") == 0o600
    assert mode(runtime / "agent.lock") == 0o600


def test_lock_files_are_owner_only_whatever_the_umask(tmp_path, umask_zero):
    root = tmp_path / "root"
    root.mkdir()
    (root / "worker").mkdir(0o755)  # the caller's directory: its mode is the caller's business
    locks = LockSupervisor.start(root=root, check_interval=3600.0)
    try:
        lock = locks.proxy().lock_for("worker").get(timeout=CALL_TIMEOUT)
        lock.proxy().acquire().get(timeout=CALL_TIMEOUT)
    finally:
        locks.stop()
    runtime = root / "worker" / ".runtime"
    assert mode(root / "worker") == 0o755  # left as it was
    assert mode(runtime) == 0o700
    assert mode(runtime / "agent.lock") == 0o600
    assert mode(runtime / "agent.lock.flock") == 0o600


def test_a_missing_worker_dir_is_refused_and_nothing_is_created(tmp_path):
    # CONTRACT v3: a missing worker directory is unusable (InvalidWorkerDir naming path and
    # errno); the locks never create a worker's directory or its parents.
    root = tmp_path / "root"
    root.mkdir()
    locks = LockSupervisor.start(root=root, check_interval=3600.0)
    try:
        lock = locks.proxy().lock_for("team/worker").get(timeout=CALL_TIMEOUT)
        with pytest.raises(InvalidWorkerDir, match="No such file"):
            lock.proxy().acquire().get(timeout=CALL_TIMEOUT)
        assert lock.proxy().status().get(timeout=CALL_TIMEOUT).startswith("unusable (")
    finally:
        locks.stop()
    assert os.listdir(root) == []


# -- the state dir -----------------------------------------------------------------------------------


def test_start_tree_tightens_a_loose_state_dir_with_a_warning(tmp_path, log_records):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    os.chmod(state_dir, 0o775)
    tree = start_tree(state_dir)
    try:
        assert mode(state_dir) == 0o700
    finally:
        tree.stop(timeout=30)
    warnings = [record for record in log_records if record["level"].name == "WARNING"]
    assert any("tightened" in record["message"] and str(state_dir) in record["message"] for record in warnings)


@pytest.mark.parametrize("loose", [0o701, 0o710, 0o750, 0o755, 0o770, 0o777, 0o1777])
def test_prepare_state_dir_tightens_loose_permissions_with_a_warning(tmp_path, log_records, loose):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    os.chmod(state_dir, loose)
    assert prepare_state_dir(state_dir) == state_dir
    assert mode(state_dir) == 0o700
    assert [record for record in log_records if record["level"].name == "WARNING" and "tightened" in record["message"]]


def test_prepare_state_dir_leaves_a_tight_dir_alone(tmp_path, log_records):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    os.chmod(state_dir, 0o700)
    prepare_state_dir(state_dir)
    assert mode(state_dir) == 0o700
    assert not [record for record in log_records if record["level"].name == "WARNING"]


def test_prepare_state_dir_creates_it_owner_only_whatever_the_umask(tmp_path, umask_zero):
    assert prepare_state_dir(tmp_path / "state") == tmp_path / "state"
    assert mode(tmp_path / "state") == 0o700


def test_prepare_state_dir_creates_no_world_writable_parents(tmp_path, umask_zero):
    # Path.mkdir(mode=0o700, parents=True) gives the parents the umask's mode (0777 here);
    # SnapshotStore._make_directory already makes each missing parent 0700.
    prepare_state_dir(tmp_path / "a" / "b" / "state")
    for parent in (tmp_path / "a", tmp_path / "a" / "b"):
        assert mode(parent) & 0o022 == 0, f"{parent} is {oct(mode(parent))}"


@pytest.mark.parametrize("kind", ["symlink-to-dir", "dangling-symlink", "file", "symlink-to-file"])
def test_a_state_dir_that_is_not_a_plain_directory_is_refused(tmp_path, kind):
    state_dir = tmp_path / "state"
    target: Target | None = None
    if kind == "symlink-to-dir":
        target = Target(tmp_path, directory=True)
        os.symlink(target.path, state_dir)
    elif kind == "symlink-to-file":
        target = Target(tmp_path)
        os.symlink(target.path, state_dir)
    elif kind == "dangling-symlink":
        os.symlink(tmp_path / "nowhere", state_dir)
    else:
        state_dir.write_bytes(b"not a dir")
    with pytest.raises(ValueError):
        prepare_state_dir(state_dir)
    with pytest.raises(ValueError):
        start_tree(state_dir)
    with pytest.raises(ValueError):
        Daemon(state_dir)
    if target is not None:
        target.assert_unchanged()
    assert not (tmp_path / "nowhere").exists()


@needs_root
def test_a_state_dir_owned_by_another_uid_is_refused(tmp_path):
    # Its owner can rename tree.sock and bind an impostor in its place, or rewrite
    # names.state between runs; chmod 0700 (what happens today) does not take it back.
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    os.chown(state_dir, NOBODY, NOBODY)
    with pytest.raises((PermissionError, ValueError)):
        prepare_state_dir(state_dir)


# -- the daemon's files ---------------------------------------------------------------------------------


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


def _start_daemon(state_dir: Path, daemons: list[Daemon]) -> Daemon:
    daemon = Daemon(state_dir, heartbeat=3600.0,
                    tree_options={"reap_interval": 3600.0, "check_interval": 3600.0, "sweep_interval": 3600.0})
    daemons.append(daemon)
    daemon.start()
    return daemon


def test_daemon_files_are_owner_only_whatever_the_umask(tmp_path, umask_zero, daemons):
    state_dir = tmp_path / "state"
    daemon = _start_daemon(state_dir, daemons)
    assert daemon.tree is not None
    daemon.tree.names.proxy().checkout_name("x").get(timeout=CALL_TIMEOUT)
    assert mode(state_dir) == 0o700
    for name in (SOCKET_NAME, DAEMON_STATE, LOCK_NAME, NAMES_STATE, NAMES_STATE + ".journal"):
        assert mode(state_dir / name) == 0o600, name


def test_a_symlinked_daemon_state_is_never_written_through(tmp_path, daemons, log_records):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    target = Target(tmp_path)
    os.symlink(target.path, state_dir / DAEMON_STATE)
    daemon = _start_daemon(state_dir, daemons)
    daemon.stop()  # writes running: false, or tries to
    daemons.clear()
    target.assert_unchanged()
    assert (state_dir / DAEMON_STATE).is_symlink()
    assert any(record["level"].name == "ERROR" and DAEMON_STATE in record["message"] for record in log_records)


@pytest.mark.parametrize("target_kind", ["file", "dir", "dangling"])
def test_a_symlinked_socket_path_is_refused(tmp_path, daemons, target_kind):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    target = None if target_kind == "dangling" else Target(tmp_path, directory=target_kind == "dir")
    target_path = tmp_path / "nowhere" if target is None else target.path
    os.symlink(target_path, state_dir / SOCKET_NAME)
    with pytest.raises(ValueError, match="symlink"):
        _start_daemon(state_dir, daemons)
    assert (state_dir / SOCKET_NAME).is_symlink()
    if target is not None:
        target.assert_unchanged()
    assert not (tmp_path / "nowhere").exists()


def test_a_symlinked_socket_path_is_refused_by_the_gateway(tmp_path):
    state_dir = tmp_path / "state"
    tree = start_tree(state_dir)
    target = Target(tmp_path)
    os.symlink(target.path, state_dir / SOCKET_NAME)
    try:
        with pytest.raises(ValueError, match="symlink"):
            Gateway(tree, state_dir / SOCKET_NAME).start()
    finally:
        tree.stop(timeout=30)
    target.assert_unchanged()


def test_a_symlinked_instance_lock_is_refused(tmp_path, daemons):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    target = Target(tmp_path)
    os.symlink(target.path, state_dir / LOCK_NAME)
    with pytest.raises(OSError):
        _start_daemon(state_dir, daemons)
    target.assert_unchanged()


# -- another user's process cannot connect ------------------------------------------------------------------


def _connect_as_nobody(socket_path: Path) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(HERE / "_hostile_connect.py"), str(socket_path), str(NOBODY), str(NOBODY)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\n", 1)


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A directory another user can traverse (tmp_path's parents are root-only)."""
    base = Path(tempfile.mkdtemp(prefix="hostile-"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@needs_root
@pytest.mark.parametrize(
    ("dir_mode", "socket_mode"),
    [(0o755, 0o600), (0o700, 0o666)],
    ids=["socket-0600-in-open-dir", "open-socket-in-dir-0700"],
)
def test_another_uid_cannot_connect(open_base, dir_mode, socket_mode):
    state_dir = open_base / "state"
    tree = start_tree(state_dir)
    gateway = Gateway(tree, state_dir / SOCKET_NAME)
    gateway.start()
    try:
        assert mode(state_dir / SOCKET_NAME) == 0o600  # as served
        os.chmod(state_dir, dir_mode)
        os.chmod(state_dir / SOCKET_NAME, socket_mode)
        assert _connect_as_nobody(state_dir / SOCKET_NAME)[0] == "EACCES"
        # Control: with both opened up the same user can connect (then SO_PEERCRED refuses it).
        os.chmod(state_dir, 0o755)
        os.chmod(state_dir / SOCKET_NAME, 0o666)
        outcome = _connect_as_nobody(state_dir / SOCKET_NAME)
        assert outcome[0] == "connected" and "PermissionError" in outcome[1]
    finally:
        gateway.stop()
        tree.stop(timeout=30)


@needs_root
def test_another_uid_cannot_connect_to_a_daemon_as_it_serves(open_base, daemons):
    state_dir = open_base / "state"
    _start_daemon(state_dir, daemons)
    assert mode(state_dir) == 0o700 and mode(state_dir / SOCKET_NAME) == 0o600
    assert _connect_as_nobody(state_dir / SOCKET_NAME)[0] == "EACCES"


# -- worker directories named over the socket --------------------------------------------------------------

RELATIVE_LOCK_CLIENT = """
import sys, actors
with actors.Client(sys.argv[1], timeout=10) as client:
    try:
        client.call("locks.acquire", "worker-7", "s")
    except Exception as error:
        print("refused", type(error).__name__, isinstance(error, actors.RemoteError))
    else:
        print("acquired")
"""


def test_a_relative_worker_dir_over_the_socket_never_lands_in_the_daemons_cwd(tmp_path, monkeypatch):
    # The tree's LockSupervisor has no root, so lock_for resolves "worker-7" against
    # os.getcwd() of the daemon (often "/" under a service manager), not of the worker
    # that sent it: the daemon creates <its cwd>/worker-7/.runtime. It should refuse a
    # relative path (BadCall) or resolve it against the peer's own cwd.
    daemon_cwd = tmp_path / "daemon-cwd"
    client_cwd = tmp_path / "client-cwd"
    daemon_cwd.mkdir()
    client_cwd.mkdir()
    monkeypatch.chdir(daemon_cwd)
    tree = start_tree(tmp_path / "state")
    gateway = Gateway(tree, tmp_path / "state" / SOCKET_NAME)
    gateway.start()
    try:
        result = subprocess.run(
            [sys.executable, "-c", RELATIVE_LOCK_CLIENT, str(tmp_path / "state" / SOCKET_NAME)],
            cwd=client_cwd, capture_output=True, text=True, timeout=30, check=False,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent),
                                                                           os.environ.get("PYTHONPATH")]))},
        )
    finally:
        gateway.stop()
        tree.stop(timeout=30)
    assert result.returncode == 0, result.stderr
    outcome = result.stdout.split()
    assert outcome[0] in ("refused", "acquired")
    if outcome[0] == "refused":
        assert outcome[2] == "False", result.stdout  # a ClientError class, not a RemoteError
    else:
        assert (client_cwd / "worker-7" / ".runtime").is_dir()
    assert list(daemon_cwd.iterdir()) == []
