"""Hostile input: every public proxy method, and the socket's request maps, fuzzed.

The rule under test (contract §1, "Crash semantics"): a call either succeeds or raises a
`ClientError`; the actor keeps running (the same incarnation, and its supervisor counts
no restart). Every actor runs under a root supervisor that allows many restarts, so a
crash shows up as a restart instead of taking the test down with it.

The triggers of the bugs this file found (nesting deeper than repr can go, owners the
state file cannot hold, unencodable paths) have tests of their own below.
"""

from __future__ import annotations

import inspect
import math
import os
import socket
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any
from unittest import mock

import msgpack
import pykka
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pykka.messages import ProxyCall

from actors import (
    AgentPool,
    Client,
    InvalidName,
    InvalidWorkerDir,
    LockSupervisor,
    NamePool,
    WorkerLock,
    start_tree,
)
from actors.daemon._gateway import (
    AGENT_METHODS,
    LOCK_METHODS,
    NAME_METHODS,
    TREE_METHODS,
    Gateway,
)
from supervision import ChildSpec, ClientError, Restart, StartError, Supervisor

CALL_TIMEOUT = 10.0


def fuzz(max_examples: int) -> Any:
    """Deterministic, bounded hypothesis settings for a loop inside one test."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- values -------------------------------------------------------------------------------------

HOSTILE_TEXT = [
    "", " ", ".", "..", "...", "/", "//", "a/b", "a\\b", "../..", "../../../../etc/passwd", "\x00", "a\x00b",
    "\n", "\r\n", "\t", "\x7f", "\u202e", "\u2028", "\u2029", "\ufeff", "\u200b", "ａ", "é", "🦀",
    "x" * 64, "x" * 65, "y" * 10_000, "mayor", "MAYOR", "Nameless Agent", "names", "agents", "locks",
    "furiosa", "nux", "slit", "%2F", "%25", "boom", "chat-1", "urn:worker:1", "mad-max-1", "mad-max-0",
]
EDGE_INTS = [
    0, 1, -1, 2, os.getpid(), os.getppid(), 2**15, 2**31 - 1, 2**31, -(2**31), 2**32, 2**53, 2**63 - 1,
    -(2**63), 2**64 - 1, 4_194_304, 4_194_305,
]
EDGE_FLOATS = [math.nan, -math.nan, math.inf, -math.inf, -0.0, 0.0, 1e-300, 1e308, 5.0, -5.0, 0.5]

_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)

#: What msgpack can carry (the socket's values), within its int range, no lone surrogates.
WIRE_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from(EDGE_INTS),
    st.floats(),
    st.sampled_from(EDGE_FLOATS),
    _text,
    st.sampled_from(HOSTILE_TEXT),
    st.binary(max_size=24),
)
EXT_VALUES = st.one_of(
    st.builds(msgpack.ExtType, st.integers(min_value=0, max_value=127), st.binary(max_size=16)),
    st.builds(msgpack.Timestamp, st.integers(min_value=0, max_value=2**32 - 1), st.integers(0, 999_999_999)),
)


class StrSub(str):
    pass


class IntSub(int):
    pass


class Opaque:
    """An object of no known kind, with an unremarkable repr."""


IN_PROCESS_ODDITIES = st.sampled_from(
    [
        Ellipsis, NotImplemented, complex(1, 2), frozenset({1, 2}), bytearray(b"ab"), memoryview(b"ab"),
        Path("."), Path("/"), Path("x/../.."), int, str, object, Decimal("NaN"), Decimal("sNaN"),
        Decimal("1e999"), Fraction(1, 3), StrSub("furiosa"), StrSub("a/b"), IntSub(5), IntSub(-5),
        range(3), iter([1, 2]), (x for x in ["furiosa"]), {"furiosa": 1}, {"furiosa"}, lambda: None,
        Opaque(), mock.sentinel.thing,
    ]
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(_text, st.integers(min_value=-(2**63), max_value=2**64 - 1)), children, max_size=3),
        st.tuples(children, children),
    )


#: Values for the socket: nested a few levels, never deeper than repr can handle.
WIRE_VALUES = st.recursive(st.one_of(WIRE_SCALARS, EXT_VALUES), _containers, max_leaves=10)
#: Values for in-process calls: the wire's, plus Python objects no socket can carry.
VALUES = st.recursive(st.one_of(WIRE_SCALARS, EXT_VALUES, IN_PROCESS_ODDITIES), _containers, max_leaves=10)


def parameters(actor_class: type, method: str) -> tuple[list[str], int]:
    """The method's parameter names (without self) and how many of them are required."""
    signature = inspect.signature(getattr(actor_class, method))
    names = [name for name in signature.parameters if name != "self"]
    required = sum(
        1 for name in names
        if signature.parameters[name].default is inspect.Parameter.empty
        and signature.parameters[name].kind is not inspect.Parameter.KEYWORD_ONLY
    )
    return names, required


@st.composite
def calls(draw: Any, actor_class: type, methods: list[str], values: st.SearchStrategy[Any] = VALUES,
          special: dict[str, st.SearchStrategy[Any]] | None = None) -> tuple[str, list[Any], dict[str, Any]]:
    """`(method, args, kwargs)`: mostly calls that fit the signature, with any values in them;
    one in five does not fit (wrong arity, unknown or repeated keywords, `self`).

    `special` maps a parameter name to a strategy mixed into its values (e.g. backends).
    """
    method = draw(st.sampled_from(methods))
    names, required = parameters(actor_class, method)
    special = special or {}

    def value_for(name: str | None) -> Any:
        if name in special:
            return draw(st.one_of(special[name], special[name], values))
        return draw(values)

    shape = draw(st.integers(min_value=0, max_value=9))
    if shape <= 7:  # fits: the first `positional` parameters by position, some of the rest by keyword
        positional = draw(st.integers(min_value=0, max_value=len(names)))
        args = [value_for(name) for name in names[:positional]]
        kwargs = {
            name: value_for(name)
            for index, name in enumerate(names[positional:], start=positional)
            if index < required or draw(st.booleans())
        }
        return method, args, kwargs
    count = draw(st.integers(min_value=0, max_value=len(names) + 2))
    args = [value_for(names[index] if index < len(names) else None) for index in range(count)]
    keywords = draw(
        st.lists(st.one_of(st.sampled_from([*names, "owner", "self", "name", "timeout"]), _text), max_size=2)
    )
    kwargs = {keyword: value_for(keyword) for keyword in keywords}
    return method, args, kwargs


def call_refused_or_ok(ref: pykka.ActorRef[Any], method: str, args: list[Any], kwargs: dict[str, Any],
                       allowed: tuple[type[BaseException], ...] = (ClientError,)) -> Any:
    """Call `ref`'s `method(*args, **kwargs)`; a ClientError (or `allowed`) is a fine answer.

    The proxy call message is built by hand, as the gateway does, so that any keyword
    (even `self`) reaches the actor.
    """
    message = ProxyCall(attr_path=(method,), args=tuple(args), kwargs=kwargs)
    try:
        return ref.ask(message, block=False).get(timeout=CALL_TIMEOUT)
    except allowed as error:
        return error


class Harness:
    """The actors under test as children of one lenient root supervisor."""

    def __init__(self, specs: list[ChildSpec]) -> None:
        self.root = Supervisor.start(specs, max_restarts=1000, max_seconds=3600.0)

    def ref(self, child_id: str) -> pykka.ActorRef[Any]:
        ref = self.root.proxy().whereis(child_id).get(timeout=CALL_TIMEOUT)
        assert ref is not None
        return ref

    def restarts(self) -> dict[str, int]:
        return {child.id: child.restarts for child in self.root.proxy().which_children().get(timeout=CALL_TIMEOUT)}

    def stop(self) -> None:
        self.root.stop(timeout=30)


def deep(depth: int, leaf: Any = "x") -> Any:
    """A list nested `depth` levels deep."""
    value: Any = leaf
    for _ in range(depth):
        value = [value]
    return value


# -- NamePool -----------------------------------------------------------------------------------

NAME_POOL_METHODS = list(NAME_METHODS)


def test_name_pool_methods_are_the_ones_fuzzed():
    public = {name for name, member in vars(NamePool).items() if callable(member) and not name.startswith("_")}
    assert set(NAME_POOL_METHODS) <= public
    assert public - set(NAME_POOL_METHODS) <= {"on_start", "on_stop", "on_failure", "on_receive"}


def test_fuzz_name_pool_methods_refuse_or_answer(tmp_path):
    state = tmp_path / "names.state"
    harness = Harness(
        [ChildSpec("names", NamePool, kwargs={"state_path": state, "reap_interval": 3600.0, "source_timeout": 10.0})]
    )
    ref = harness.ref("names")
    proxy = ref.proxy()

    names = st.sampled_from(["furiosa", "nux", "slit", "rictus", "mad-max-1", "Nameless Agent", "mayor", "a/b", ""])
    owners = st.sampled_from([None, os.getpid(), 1, 2**31 - 1, "urn:worker:1", "urn:worker:2", StrSub("s"), IntSub(7)])
    special = {"owner": owners, "name": names, "names_in_use": st.lists(names, max_size=4)}

    @fuzz(250)
    @given(call=calls(NamePool, NAME_POOL_METHODS, special=special))
    def check(call: tuple[str, list[Any], dict[str, Any]]) -> None:
        method, args, kwargs = call
        call_refused_or_ok(ref, method, args, kwargs)
        assert ref.is_alive(), f"{method}(*{args!r}, **{kwargs!r}) crashed the name pool"

    check()
    # Still the same incarnation, still consistent: a checkout works and the state reloads.
    assert isinstance(proxy.checkout_name("after-the-fuzz").get(timeout=CALL_TIMEOUT), str)
    assert harness.restarts() == {"names": 0}
    held = proxy.get_name_by_pid("after-the-fuzz").get(timeout=CALL_TIMEOUT)
    harness.stop()
    again = NamePool.start(state_path=state)
    try:
        assert again.proxy().get_name_by_pid("after-the-fuzz").get(timeout=CALL_TIMEOUT) == held
    finally:
        again.stop()
    assert not [path.name for path in tmp_path.iterdir() if ".corrupt-" in path.name]


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "a/b", "/", "a\\b", "\x00", "a\x00b", "\n", "\u202e", "x" * 65, "x" * 100_000, b"furiosa",
     None, 5, ["furiosa"]],
)
def test_invalid_names_raise_invalid_name_and_change_nothing(tmp_path, name):
    pool = NamePool.start(state_path=tmp_path / "names.state", reap_interval=3600.0)
    proxy = pool.proxy()
    held = proxy.checkout_name("holder").get(timeout=CALL_TIMEOUT)
    before = proxy.pool_stats().get(timeout=CALL_TIMEOUT)
    if name is not None:  # checkin_name(None) is not a name either, but associate_name(None) is a no-op
        with pytest.raises(InvalidName):
            proxy.checkin_name(name).get(timeout=CALL_TIMEOUT)
        with pytest.raises(InvalidName):
            proxy.associate_name(name, "someone").get(timeout=CALL_TIMEOUT)
    with pytest.raises(InvalidName):
        proxy.reconcile([held, name] if name is not None else [held, 5]).get(timeout=CALL_TIMEOUT)
    assert proxy.pool_stats().get(timeout=CALL_TIMEOUT) == before
    assert proxy.get_name_by_pid("holder").get(timeout=CALL_TIMEOUT) == held
    assert pool.is_alive()
    pool.stop()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["names.state"]


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("checkout_name", (2**64,)),
        ("checkout_name", (10**30,)),
        ("checkout_name", ("\ud800",)),
        ("associate_name", ("furiosa", "lone \udfff surrogate")),
        ("associate_name", ("furiosa", 2**70)),
    ],
    ids=["pid-2**64", "pid-10**30", "str-lone-surrogate", "associate-surrogate", "associate-2**70"],
)
def test_durable_pool_refuses_owners_it_cannot_store(tmp_path, method, args):
    # An owner is "an int pid > 0 or a str"; these pass validate_owner, then the durable
    # write (msgpack) raises OverflowError / UnicodeEncodeError in _on_flush: a crash, and
    # the caller gets ActorCrashed instead of InvalidOwner.
    harness = Harness([ChildSpec("names", NamePool, kwargs={"state_path": tmp_path / "names.state"})])
    ref = harness.ref("names")
    with pytest.raises(ClientError):
        getattr(ref.proxy(), method)(*args).get(timeout=CALL_TIMEOUT)
    assert ref.is_alive()
    assert harness.restarts() == {"names": 0}


# -- AgentPool ----------------------------------------------------------------------------------


class GoodBackend:
    def dispose(self) -> None:
        pass


class BusyBackend(GoodBackend):
    def is_busy(self) -> bool:
        return True


class FaultyBackend:
    def dispose(self) -> None:
        raise RuntimeError("dispose failed")

    def is_busy(self) -> bool:
        raise RuntimeError("is_busy failed")

    def tick_health(self, now: float) -> None:
        raise RuntimeError("probe failed")


class OddBusyBackend(GoodBackend):
    def is_busy(self) -> Any:
        return "yes"

    tick_health = 5  # not callable


class DisposeNotCallable:
    dispose = 3


class DisposePropertyRaises:
    @property
    def dispose(self) -> Any:
        raise RuntimeError("no dispose for you")


BACKENDS = st.sampled_from(
    [GoodBackend(), BusyBackend(), FaultyBackend(), OddBusyBackend(), DisposeNotCallable(), DisposePropertyRaises(),
     mock.Mock(), object(), None, GoodBackend]
)
AGENT_POOL_METHODS = ["get", "register", "touch", "peek", "health", "sweep", "close_chat", "dispose"]


def _factory(primary: str, agent: str) -> Any:
    if primary == "boom":
        raise RuntimeError("factory failed")
    if primary == "none":
        return None
    return GoodBackend()


def test_agent_pool_methods_are_the_ones_fuzzed():
    public = {name for name, member in vars(AgentPool).items() if callable(member) and not name.startswith("_")}
    assert public - set(AGENT_POOL_METHODS) <= {"on_start", "on_stop", "on_failure", "on_receive"}


def test_fuzz_agent_pool_methods_refuse_or_answer():
    harness = Harness(
        [ChildSpec("agents", AgentPool, kwargs={"factory": _factory, "sweep_interval": 3600.0, "max_live": 4,
                                                "idle_ttl": 30.0})]
    )
    ref = harness.ref("agents")
    proxy = ref.proxy()
    keys = st.sampled_from(["chat-1", "chat-2", "boom", "none", "", ":", "a:b"])

    @fuzz(250)
    @given(call=calls(AgentPool, AGENT_POOL_METHODS,
                      special={"backend": BACKENDS, "primary": keys, "agent": keys, "chat_id": keys}))
    def check(call: tuple[str, list[Any], dict[str, Any]]) -> None:
        method, args, kwargs = call
        call_refused_or_ok(ref, method, args, kwargs)
        assert ref.is_alive(), f"{method}(*{args!r}, **{kwargs!r}) crashed the agent pool"

    check()
    health = proxy.health().get(timeout=CALL_TIMEOUT)
    assert {"size", "busy"} <= set(health)
    assert harness.restarts() == {"agents": 0}
    harness.stop()


# -- WorkerLock and LockSupervisor ----------------------------------------------------------------

WORKER_LOCK_METHODS = ["acquire", "release", "read", "check", "status", "force_release"]


def test_worker_lock_methods_are_the_ones_fuzzed():
    public = {name for name, member in vars(WorkerLock).items() if callable(member) and not name.startswith("_")}
    assert public - set(WORKER_LOCK_METHODS) <= {"on_start", "on_stop", "on_failure", "on_receive"}


def tree_listing(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def test_fuzz_worker_lock_methods_refuse_or_answer(tmp_path):
    worker = tmp_path / "worker"
    worker.mkdir()  # the locks never create a worker's directory
    harness = Harness([ChildSpec("lock", WorkerLock, args=(str(worker),), kwargs={"check_interval": 3600.0})])
    ref = harness.ref("lock")
    owners = st.sampled_from([None, os.getpid(), 1, os.getppid(), 2**31 - 1, 0, -1, True, 1.0, "1"])

    @fuzz(250)
    @given(call=calls(WorkerLock, WORKER_LOCK_METHODS, special={"owner": owners}))
    def check(call: tuple[str, list[Any], dict[str, Any]]) -> None:
        method, args, kwargs = call
        result = call_refused_or_ok(ref, method, args, kwargs)
        assert ref.is_alive(), f"{method}(*{args!r}, **{kwargs!r}) crashed the lock"
        if method == "status" and not isinstance(result, ClientError):
            assert isinstance(result, str)

    check()
    assert harness.restarts() == {"lock": 0}
    harness.stop()
    # Only the lock's own files, owner-only, and nothing anywhere else.
    assert tree_listing(tmp_path) <= {"worker", "worker/.runtime", "worker/.runtime/agent.lock",
                                      "worker/.runtime/agent.lock.flock"}
    assert (worker / ".runtime").stat().st_mode & 0o777 == 0o700
    for name in ("agent.lock", "agent.lock.flock"):
        path = worker / ".runtime" / name
        if path.exists():
            assert path.stat().st_mode & 0o777 == 0o600


def _decode_child_id(child_id: str) -> str:
    return child_id.replace("%2F", "/").replace("%25", "%")


HOSTILE_PATHS = [
    "", ".", "..", "../..", "../outside", "a/../../outside", "a/./b/../../../outside", "/", "/etc", "/tmp",
    "\x00", "a\x00b", "w\n", "x" * 300, "x" * 5000, "/".join(["d" * 200] * 30), "escape", "escape/inner",
    "alias", "real", "real/../real", "./real", "real/", "%2F", "%25", "a%2F..%2F..", "\\..\\..",
]


def _lock_root(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    os.symlink(outside, root / "escape")  # a link out of the root is outside the root
    os.symlink(root / "real", root / "alias")  # a link within it is the same worker
    return root, outside


def test_fuzz_lock_for_refuses_or_answers_inside_the_root(tmp_path):
    root, _ = _lock_root(tmp_path)
    before = tree_listing(tmp_path)
    harness = Harness([ChildSpec("locks", LockSupervisor, kwargs={"root": root, "check_interval": 3600.0})])
    ref = harness.ref("locks")
    proxy = ref.proxy()
    paths = st.one_of(st.sampled_from(HOSTILE_PATHS), st.sampled_from(HOSTILE_PATHS).map(Path),
                      st.sampled_from(HOSTILE_PATHS).map(os.fsencode))

    @fuzz(200)
    @given(call=calls(LockSupervisor, ["lock_for"], special={"worker_dir": paths}))
    def check(call: tuple[str, list[Any], dict[str, Any]]) -> None:
        method, args, kwargs = call
        result = call_refused_or_ok(ref, method, args, kwargs)
        assert ref.is_alive(), f"lock_for(*{args!r}, **{kwargs!r}) crashed the lock supervisor"
        if not isinstance(result, ClientError):
            assert isinstance(result, pykka.ActorRef) and result.is_alive()

    check()
    children = proxy.which_children().get(timeout=CALL_TIMEOUT)
    for child in children:
        worker_dir = _decode_child_id(child.id)
        assert os.path.commonpath([str(root), worker_dir]) == str(root), worker_dir
        assert child.restarts == 0
    assert harness.restarts() == {"locks": 0}
    harness.stop()
    assert tree_listing(tmp_path) == before  # lock_for itself creates nothing


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_hostile_worker_paths_create_nothing_outside_the_root(tmp_path, path):
    root, outside = _lock_root(tmp_path)
    before = tree_listing(tmp_path)
    harness = Harness([ChildSpec("locks", LockSupervisor, kwargs={"root": root, "check_interval": 3600.0})])
    locks = harness.ref("locks").proxy()
    try:
        lock = locks.lock_for(path).get(timeout=CALL_TIMEOUT)
    except ClientError:
        lock = None
    if lock is not None:
        for method in ("acquire", "read", "status", "check", "release", "force_release"):
            try:
                getattr(lock.proxy(), method)().get(timeout=CALL_TIMEOUT)
            except ClientError:
                pass
            assert lock.is_alive()
    assert harness.restarts() == {"locks": 0}
    assert all(child.restarts == 0 for child in locks.which_children().get(timeout=CALL_TIMEOUT))
    harness.stop()
    created = tree_listing(tmp_path) - before
    assert all(entry.startswith("root/") for entry in created), created
    assert not any(outside.iterdir())
    if path in ("..", "../outside", "a/../../outside", "/", "/etc", "escape", "escape/inner", "\x00"):
        assert lock is None, f"{path!r} must be refused"


def test_alias_and_dot_dot_name_the_same_worker(tmp_path):
    root, _ = _lock_root(tmp_path)
    locks = LockSupervisor.start(root=root, check_interval=3600.0)
    try:
        first = locks.proxy().lock_for("real").get(timeout=CALL_TIMEOUT)
        for alias in ("alias", "real/../real", "./real", str(root / "real"), "real/"):
            assert locks.proxy().lock_for(alias).get(timeout=CALL_TIMEOUT) is first
    finally:
        locks.stop()


def test_unencodable_worker_path_is_a_client_error_from_lock_for(tmp_path):
    # "\ud800" (a lone surrogate) cannot reach the OS: os.lstat would raise
    # UnicodeEncodeError (not an OSError). It must be refused as a ClientError, no crash.
    path = str(tmp_path / "w\ud800")
    harness = Harness([ChildSpec("actor", LockSupervisor, kwargs={"check_interval": 3600.0})])
    ref = harness.ref("actor")
    try:
        with pytest.raises(InvalidWorkerDir):
            ref.proxy().lock_for(path).get(timeout=CALL_TIMEOUT)
        assert ref.is_alive()
        assert harness.restarts() == {"actor": 0}
    finally:
        harness.stop()


def test_a_lock_actor_on_an_unencodable_path_is_refused_at_start(tmp_path):
    path = str(tmp_path / "w\ud800")
    with pytest.raises(InvalidWorkerDir):  # from the constructor, before any thread or file
        WorkerLock.start(path, check_interval=3600.0)
    assert os.listdir(tmp_path) == []


# -- Supervisor -----------------------------------------------------------------------------------


class Worker(pykka.ThreadingActor):
    def ping(self) -> str:
        return "pong"


class InitFails(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        raise ValueError("cannot construct")


class StartFails(pykka.ThreadingActor):
    def on_start(self) -> None:
        raise RuntimeError("cannot start")


class InitRaises(pykka.ThreadingActor):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        raise error


SUPERVISOR_METHODS = ["which_children", "count_children", "start_child", "terminate_child", "restart_child",
                      "delete_child", "whereis"]
SPECS = st.sampled_from(
    [
        *[ChildSpec(f"new-{index}", Worker) for index in range(4)],
        ChildSpec("temp", Worker, restart=Restart.TEMPORARY),
        ChildSpec("w1", Worker),
        ChildSpec("bad-init", InitFails),
        ChildSpec("bad-start", StartFails),
        ChildSpec("bad-kwargs", Worker, kwargs={"nope": 1}),
        ChildSpec("bad-args", Worker, args=(1, 2, 3)),
        ChildSpec("sub", Supervisor, kwargs={"children": [ChildSpec("inner", Worker)]}),
        ChildSpec("bad-sub", Supervisor, kwargs={"children": "not a list"}),
        ChildSpec("bad-strategy", Supervisor, kwargs={"strategy": "no_such_strategy"}),
        ChildSpec("slow-stop", Worker, shutdown=0.0),
    ]
)
CHILD_IDS = st.sampled_from(["w1", "w2", "w3", "new-0", "temp", "sub", "nope", "", "/", "\x00", "x" * 10_000])


def test_supervisor_methods_are_the_ones_fuzzed():
    public = {name for name, member in vars(Supervisor).items() if callable(member) and not name.startswith("_")}
    assert public - set(SUPERVISOR_METHODS) <= {"on_start", "on_stop", "on_failure", "on_receive", "child_ids",
                                                "default_shutdown"}


def test_fuzz_supervisor_methods_refuse_or_answer():
    children = [
        ChildSpec("w1", Worker),
        ChildSpec("w2", Worker, restart=Restart.TEMPORARY),
        ChildSpec("w3", Worker, restart=Restart.TRANSIENT),
    ]
    harness = Harness([ChildSpec("sup", Supervisor, kwargs={"children": children})])
    ref = harness.ref("sup")
    proxy = ref.proxy()

    @fuzz(200)
    @given(call=calls(Supervisor, SUPERVISOR_METHODS, special={"spec": SPECS, "child_id": CHILD_IDS}))
    def check(call: tuple[str, list[Any], dict[str, Any]]) -> None:
        method, args, kwargs = call
        # StartError is the contract's answer to a child that fails to start.
        call_refused_or_ok(ref, method, args, kwargs, allowed=(ClientError, StartError))
        assert ref.is_alive(), f"{method}(*{args!r}, **{kwargs!r}) crashed the supervisor"

    check()
    counts = proxy.count_children().get(timeout=CALL_TIMEOUT)
    assert counts["specs"] == len(proxy.which_children().get(timeout=CALL_TIMEOUT))
    assert harness.restarts() == {"sup": 0}
    harness.stop()


@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt()], ids=["SystemExit", "KeyboardInterrupt"])
def test_start_child_whose_constructor_raises_a_base_exception_is_a_start_error(error):
    # Contract: start_child raises StartError if the child fails to start, and a
    # BaseException inside an actor is that actor's crash only. Here the BaseException
    # escapes Supervisor._start (`except Exception`) into the supervisor's own handler:
    # the supervisor crashes, and its parent restarts the whole subtree.
    harness = Harness([ChildSpec("sup", Supervisor, kwargs={"children": [ChildSpec("w1", Worker)]})])
    ref = harness.ref("sup")
    try:
        try:
            outcome: Any = ref.proxy().start_child(ChildSpec("doomed", InitRaises, args=(error,))).get(
                timeout=CALL_TIMEOUT
            )
        except BaseException as raised:  # noqa: BLE001 - today the caller gets the KeyboardInterrupt itself
            outcome = raised
        assert isinstance(outcome, StartError), repr(outcome)
        assert ref.is_alive()
        assert harness.restarts() == {"sup": 0}
    finally:
        harness.stop()


# -- deep nesting: repr in error messages ------------------------------------------------------------

DEEP_CALLS = [
    (NamePool, "checkout_name", lambda d: (d,)),
    (NamePool, "checkin_name", lambda d: (d,)),
    (NamePool, "associate_name", lambda d: (d, "owner")),
    (NamePool, "associate_name", lambda d: ("furiosa", d)),
    (NamePool, "dissociate", lambda d: (d,)),
    (NamePool, "get_name_by_pid", lambda d: (d,)),
    (NamePool, "reconcile", lambda d: ([d],)),
    (AgentPool, "get", lambda d: (d, "agent")),
    (AgentPool, "register", lambda d: ("chat", d, GoodBackend())),
    (AgentPool, "touch", lambda d: (d, "agent")),
    (AgentPool, "peek", lambda d: ("chat", d)),
    (AgentPool, "sweep", lambda d: (d,)),
]


@pytest.mark.parametrize(("actor_class", "method", "make_args"), DEEP_CALLS,
                         ids=[f"{cls.__name__}.{method}-{index}" for index, (cls, method, _) in enumerate(DEEP_CALLS)])
def test_deeply_nested_argument_is_refused_not_a_crash(actor_class, method, make_args):
    # validate_name / validate_owner (actors/names/_source.py, _name_state.py) and
    # _agent_registry._describe format the rejected value with {!r}; repr of a list nested
    # ~1000 deep raises RecursionError, which is not a ClientError: the actor crashes.
    harness = Harness([ChildSpec("actor", actor_class, kwargs={})])
    ref = harness.ref("actor")
    try:
        with pytest.raises(ClientError):
            getattr(ref.proxy(), method)(*make_args(deep(5000))).get(timeout=CALL_TIMEOUT)
        assert ref.is_alive()
        assert harness.restarts() == {"actor": 0}
    finally:
        harness.stop()


# -- the socket: structured fuzz of request maps -------------------------------------------------------

REAL_OPS = sorted(
    [f"names.{method}" for method in NAME_METHODS]
    + [f"locks.{method}" for method in LOCK_METHODS]
    + [f"agents.{method}" for method in AGENT_METHODS]
    + [f"tree.{method}" for method in TREE_METHODS]
)
NEAR_MISS_OPS = [
    "names.__init__", "names._flush", "names._on_flush", "names._state", "names._files", "names.holders",
    "names.on_receive", "names.on_stop", "names.on_start", "names.on_failure", "names.actor_ref", "names.stop",
    "names.__class__", "names.__dict__", "names.__getattribute__", "names.checkout_name.__call__",
    "names.checkout_name.", "names..checkout_name", "NAMES.checkout_name", " names.checkout_name",
    "names.checkout_name ", "names.checkout_name\x00", "names", "names.", ".", "", "..", "names.__reduce__",
    "locks.force_release", "locks.lock_for", "locks._lock_file", "locks.__init__", "locks.on_receive",
    "locks.start_child", "locks.which_children", "locks.release_if_stale",
    "agents.register", "agents.get", "agents.dispose", "agents.peek", "agents.touch", "agents._registry",
    "agents.__dict__", "agents.on_stop",
    "tree.__class__", "tree._tree_status", "tree._dispatch", "tree._call", "tree.start_child", "tree.delete_child",
    "tree.whereis", "tree.count_children", "tree.__init__", "tree.stop", "tree.status.__globals__",
    "tree._tree_shutdown", "gateway.stop", "os.system", "__import__", "supervisor.stop", "daemon.stop",
]
SERVICE_PREFIXES = ["names.", "locks.", "agents.", "tree.", "names._", "tree._"]
OPS = st.one_of(
    st.sampled_from(REAL_OPS),
    st.sampled_from(NEAR_MISS_OPS),
    st.tuples(st.sampled_from(SERVICE_PREFIXES), _text).map("".join),
    _text,
)
LIFECYCLE_OPS = {"tree.restart_child", "tree.terminate_child"}
#: Error types that mean an actor broke, not that the request was refused.
BROKEN_TYPES = {"ActorCrashed", "ActorDeadError", "Undelivered", "RecursionError", "Timeout", "AssertionError",
                "RestartIntensityExceeded", "StartError"}


def _sanitised(op: str, args: Any, kwargs: Any, safe_dir: str) -> tuple[Any, Any]:
    """Keep lock requests inside the test's directory and lifecycle requests off real children."""
    if op.startswith("locks.") and op.removeprefix("locks.") in LOCK_METHODS:
        if isinstance(args, list) and args and isinstance(args[0], str):
            args = [safe_dir, *args[1:]]
        if isinstance(kwargs, dict) and isinstance(kwargs.get("worker_dir"), str):
            kwargs = {**kwargs, "worker_dir": safe_dir}
    if op in LIFECYCLE_OPS:
        def harmless(value: Any) -> Any:
            return "nope/not-a-child" if isinstance(value, str) else value
        if isinstance(args, list):
            args = [harmless(value) for value in args]
        if isinstance(kwargs, dict):
            kwargs = {key: harmless(value) for key, value in kwargs.items()}
    return args, kwargs


@st.composite
def requests(draw: Any, safe_dirs: list[str]) -> dict[Any, Any]:
    """A request map: mostly well formed (a list and a map of str keys) with any values in them."""
    op = draw(st.one_of(st.sampled_from(REAL_OPS), st.sampled_from(REAL_OPS), OPS))
    if draw(st.integers(min_value=0, max_value=9)) <= 7:
        args: Any = draw(st.lists(WIRE_VALUES, max_size=3))
        kwargs: Any = draw(
            st.dictionaries(st.sampled_from(["owner", "name", "worker_dir", "path", "session_id", "now", "chat_id",
                                             "names_in_use", "self", "peer"]) | _text, WIRE_VALUES, max_size=2)
        )
    else:
        args = draw(st.one_of(st.lists(WIRE_VALUES, max_size=4), st.none(), WIRE_SCALARS))
        kwargs = draw(
            st.one_of(
                st.dictionaries(st.one_of(st.integers(min_value=-(2**63), max_value=2**64 - 1), st.binary(max_size=4),
                                          st.none()), WIRE_VALUES, min_size=1, max_size=2),
                st.none(),
                WIRE_SCALARS,
            )
        )
    safe_dir = draw(st.sampled_from(safe_dirs))
    if op.removeprefix("locks.") in LOCK_METHODS and isinstance(args, list) and draw(st.booleans()):
        args = [safe_dir, *args[:2]]  # reach the lock, not only the gateway's argument check
    args, kwargs = _sanitised(op, args, kwargs, safe_dir)
    request: dict[Any, Any] = {"id": draw(st.integers(min_value=-(2**63), max_value=2**64 - 1)), "op": op}
    if draw(st.booleans()) or args:
        request["args"] = args
    if draw(st.booleans()) or kwargs:
        request["kwargs"] = kwargs
    for key, value in draw(st.dictionaries(st.sampled_from(["extra", "ID", "Op", 7, "error", "ok"]), WIRE_VALUES,
                                           max_size=2)).items():
        request.setdefault(key, value)
    return request


class RawConnection:
    """One socket kept across examples; reopened when the daemon closes it (a bad frame)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket: socket.socket | None = None
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)

    def exchange(self, payload: bytes) -> dict[str, Any]:
        if self.socket is None:
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.socket.settimeout(30)
            self.socket.connect(str(self.path))
            self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.socket.sendall(payload)
        while True:
            for frame in self.unpacker:
                if frame.get("id") is None:  # the daemon closes the connection after this
                    self.close()
                return frame
            data = self.socket.recv(65536)
            assert data, "the daemon closed the connection without a reply"
            self.unpacker.feed(data)

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A tree and its gateway; the process's cwd is a scratch dir (relative lock paths land there)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    tree = start_tree(tmp_path / "state", reap_interval=3600, check_interval=3600, sweep_interval=3600)
    shutdowns: list[int] = []
    gateway = Gateway(tree, tmp_path / "state" / "tree.sock", on_shutdown=lambda: shutdowns.append(1))
    gateway.start()
    yield tree, gateway, tmp_path / "state" / "tree.sock"
    gateway.stop()
    tree.stop()


def root_restarts(tree: Any) -> dict[str, int]:
    return {child.id: child.restarts for child in tree.supervisor.proxy().which_children().get(timeout=CALL_TIMEOUT)}


def test_fuzz_request_maps_get_one_reply_each_and_the_daemon_keeps_serving(served, tmp_path):
    tree, _, path = served
    safe_dirs = [str(tmp_path / "workers" / "w1"), "w2", "w3/../w4", str(tmp_path / "workers" / ("y" * 300)),
                 "x" * 5000, "bad\x00dir", ""]
    connection = RawConnection(path)
    seen_types: set[str] = set()

    @fuzz(300)
    @given(request=requests(safe_dirs))
    def check(request: dict[Any, Any]) -> None:
        reply = connection.exchange(msgpack.packb(request, use_bin_type=True))
        assert set(reply) in ({"id", "ok"}, {"id", "error"}), reply
        if reply["id"] is None:
            assert reply["error"]["type"] == "FrameError"  # an ext the decoder cannot read
        else:
            assert reply["id"] == request["id"]
        if "error" in reply:
            assert isinstance(reply["error"]["type"], str) and isinstance(reply["error"]["message"], str)
            assert reply["error"]["type"] not in BROKEN_TYPES, (request, reply)
            seen_types.add(reply["error"]["type"])
        assert tree.supervisor.is_alive()
        assert root_restarts(tree) == {"names": 0, "agents": 0, "locks": 0, "workers": 0}, request

    try:
        check()
    finally:
        connection.close()
    assert {"UnknownMessage", "BadCall"} <= seen_types
    with Client(path, timeout=10) as fresh:
        assert fresh.call("names.default_name") == "Nameless Agent"
    locks = tree.locks.proxy().which_children().get(timeout=CALL_TIMEOUT)
    assert all(child.restarts == 0 for child in locks)
    # Lock requests touched only the scratch dirs.
    outside = {entry for entry in tree_listing(tmp_path) if not entry.startswith(("state", "cwd", "workers"))}
    assert outside == set()


@pytest.mark.parametrize(
    "op",
    ["names.__init__", "names._flush", "names._on_flush", "names.on_stop", "names.holders", "locks.force_release",
     "locks.lock_for", "tree.__class__", "tree._tree_status", "tree._dispatch", "tree.start_child",
     "agents.register", "agents.dispose", "agents.get"],
)
def test_private_and_unserved_ops_are_unknown(served, op):
    tree, _, path = served
    connection = RawConnection(path)
    try:
        reply = connection.exchange(msgpack.packb({"id": 1, "op": op, "args": [str(path.parent)], "kwargs": {}}))
    finally:
        connection.close()
    assert reply["id"] == 1 and reply["error"]["type"] == "UnknownMessage"
    assert root_restarts(tree) == {"names": 0, "agents": 0, "locks": 0, "workers": 0}


@pytest.mark.parametrize(("op", "depth"), [("names.checkin_name", 1000), ("names.reconcile", 1000),
                                           ("agents.sweep", 1000)])
def test_deeply_nested_request_is_refused_without_a_restart(served, op, depth):
    # msgpack decodes up to 1023 levels; a list ~1000 deep reaches the actor, whose error
    # message repr()s it: RecursionError, a crash and a restart, for one request.
    tree, _, path = served
    connection = RawConnection(path)
    try:
        reply = connection.exchange(msgpack.packb({"id": 1, "op": op, "args": [deep(depth)]}))
    finally:
        connection.close()
    assert reply["id"] == 1 and reply["error"]["type"] not in BROKEN_TYPES
    assert root_restarts(tree) == {"names": 0, "agents": 0, "locks": 0, "workers": 0}


def test_a_few_deep_requests_cannot_stop_the_tree(served):
    # The same bug as above, as a denial of service: every request costs the name pool a
    # restart, and the root (max_restarts=3 in 5 s, the defaults) gives up on the fourth,
    # stopping the whole tree (under `serve`, the daemon exits 1).
    tree, _, path = served
    for request_id in range(5):
        connection = RawConnection(path)
        try:
            connection.exchange(msgpack.packb({"id": request_id, "op": "names.checkin_name", "args": [deep(1000)]}))
        finally:
            connection.close()
    with Client(path, timeout=10) as fresh:
        assert fresh.call("names.default_name") == "Nameless Agent"
    assert tree.supervisor.is_alive()


def test_a_huge_invalid_name_is_answered_as_invalid_name(served):
    # 300,000 NULs is a 300 kB request; InvalidName's message is `{name!r}` in full, 1.2 MB
    # of "\x00" escapes, so the reply exceeds MAX_FRAME and the client gets
    # RemoteError("EncodeError") instead of InvalidName.
    _, _, path = served
    with Client(path, timeout=10) as client, pytest.raises(InvalidName):
        client.call("names.checkin_name", "\x00" * 300_000)
