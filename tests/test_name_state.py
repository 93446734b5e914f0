"""The name pool's rules (`NameState`): pure, so no actors, threads or clocks here."""

from __future__ import annotations

import enum
from collections.abc import Callable

import msgpack
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from actors._errors import InvalidName, InvalidOwner
from actors.names._state import SNAPSHOT_VERSION, CheckinOutcome, NameState, validate_owner
from actors.names._source import ThemedSource
from supervision import ClientError

DEFAULT = "Nameless Agent"


def pool(*names: str, chunk_size: int = 12) -> NameState:
    """A state whose stack was filled by one chunk of `names` (handed out in that order)."""
    state = NameState(chunk_size=chunk_size)
    if names:
        assert state.accept_chunk(list(names)) == list(names)
    return state


def everyone_alive(pid: int, start_time: float | None) -> bool:
    return True


def nobody_alive(pid: int, start_time: float | None) -> bool:
    return False


def unchanged(state: NameState) -> Callable[[], None]:
    """Snapshot `state` now; the returned check asserts nothing changed since."""
    before = (state.to_snapshot(), state.revision)

    def check() -> None:
        assert (state.to_snapshot(), state.revision) == before

    return check


# -- construction ------------------------------------------------------------------------


def test_defaults() -> None:
    state = NameState()
    assert state.chunk_size == 12
    assert state.default_name == DEFAULT
    assert state.stats() == {
        "available_count": 0,
        "checked_out_count": 0,
        "all_used_count": 0,
        "chunk_size": 12,
        "owner_count": 0,
    }


@pytest.mark.parametrize("chunk_size", [0, -1, True, 1.5, "12", None])
def test_bad_chunk_size_raises(chunk_size: object) -> None:
    with pytest.raises(ValueError):
        NameState(chunk_size=chunk_size)  # type: ignore[arg-type]


def test_invalid_default_name_raises() -> None:
    with pytest.raises(InvalidName):
        NameState(default_name="a/b")


# -- owners ------------------------------------------------------------------------------


class Pid(enum.IntEnum):
    INIT = 7


class Urn(str):
    pass


@pytest.mark.parametrize("owner", [None, 1, 4_194_304, 2**31 - 1, "urn:actor:1", ""])
def test_valid_owners(owner: object) -> None:
    assert validate_owner(owner) == owner


@pytest.mark.parametrize("owner", [2**31, 2**40, 2**64, "lone \ud800 surrogate"])
def test_owners_no_process_or_state_file_could_hold_are_invalid(owner: object) -> None:
    with pytest.raises(InvalidOwner):
        validate_owner(owner)


def test_int_and_str_subclasses_are_normalised() -> None:
    assert type(validate_owner(Pid.INIT)) is int
    assert type(validate_owner(Urn("u"))) is str


BAD_OWNERS = [True, False, 1.5, b"x", 0, -1, [], {}, (1,), object(), 1.0]


@pytest.mark.parametrize("owner", BAD_OWNERS)
def test_bad_owners_raise_invalid_owner(owner: object) -> None:
    with pytest.raises(InvalidOwner) as caught:
        validate_owner(owner)
    assert isinstance(caught.value, ClientError)
    assert isinstance(caught.value, TypeError)
    assert repr(owner) in str(caught.value)


@pytest.mark.parametrize("owner", BAD_OWNERS)
def test_every_owner_taking_method_validates(owner: object) -> None:
    state = pool("a", "b")
    check = unchanged(state)
    with pytest.raises(InvalidOwner):
        state.checkout(owner)
    with pytest.raises(InvalidOwner):
        state.associate("a", owner)
    with pytest.raises(InvalidOwner):
        state.dissociate(owner)
    with pytest.raises(InvalidOwner):
        state.name_of(owner)
    check()


# -- checkout and chunks -----------------------------------------------------------------


def test_empty_pool_asks_for_a_chunk_of_chunk_size() -> None:
    state = NameState(chunk_size=5)
    check = unchanged(state)
    assert state.needs_chunk()
    assert state.checkout("u") is None
    assert state.checkout(None) is None
    assert state.chunk_request() == 5
    check()


def test_chunk_is_handed_out_in_source_order_and_requested_only_when_empty() -> None:
    state = NameState(chunk_size=3)
    assert state.accept_chunk(["a", "b", "c"]) == ["a", "b", "c"]
    handed = []
    for _ in range(3):
        assert not state.needs_chunk()
        handed.append(state.checkout(None))
    assert handed == ["a", "b", "c"]
    assert state.needs_chunk()
    assert state.checkout(None) is None


def test_with_themed_source() -> None:
    state = NameState(chunk_size=2)
    source = ThemedSource()
    names = []
    for _ in range(5):
        name = state.checkout(None)
        if name is None:
            state.accept_chunk(source(state.chunk_request(), state.used_names()))
            name = state.checkout(None)
        names.append(name)
    assert names == ["furiosa", "nux", "slit", "rictus", "immortan"]
    assert state.stats()["all_used_count"] == 6


def test_checkout_is_idempotent_for_an_owner_that_holds_a_name() -> None:
    state = pool("a", "b")
    assert state.checkout("urn") == "a"
    assert state.checkout("urn") == "a"
    assert state.checkout(42) == "b"
    assert state.checkout(42) == "b"
    assert state.stats()["available_count"] == 0
    # Even with the pool empty, an owner with a name needs no chunk.
    assert state.checkout("urn") == "a"


def test_anonymous_checkout_always_gets_a_new_name() -> None:
    state = pool("a", "b", "c")
    assert [state.checkout(None), state.checkout(None), state.checkout()] == ["a", "b", "c"]
    assert state.checkout(None) is None
    assert state.holders() == {"a": [None], "b": [None], "c": [None]}
    assert state.stats()["owner_count"] == 0


def test_distinct_owners_get_distinct_names() -> None:
    state = pool("a", "b", "c")
    assert {state.checkout(1), state.checkout("1"), state.checkout(2)} == {"a", "b", "c"}


def test_checked_in_names_are_reused_last_in_first_out() -> None:
    state = pool("a", "b", "c", "d")
    for _ in range(3):
        state.checkout(None)
    state.checkin("a")
    state.checkin("c")
    assert state.available_names() == ["d", "a", "c"]
    assert [state.checkout(None), state.checkout(None), state.checkout(None)] == ["c", "a", "d"]


def test_checkout_records_the_process_start_time() -> None:
    state = pool("a", "b")
    state.checkout(42, start_time=100)
    assert state.int_owners() == {42: 100.0}
    state.checkout("urn", start_time=5.0)  # ignored for str owners
    assert state.int_owners() == {42: 100.0}


def test_checkout_learns_an_unknown_start_time() -> None:
    state = pool("a")
    state.checkout(42)
    assert state.int_owners() == {42: None}
    assert state.checkout(42, start_time=7.0) == "a"
    assert state.int_owners() == {42: 7.0}


def test_checkout_within_the_start_time_tolerance_is_the_same_process() -> None:
    state = pool("a", "b")
    assert state.checkout(42, start_time=100.0) == "a"
    assert state.checkout(42, start_time=100.9) == "a"
    assert state.int_owners() == {42: 100.0}


def test_checkout_by_a_reused_pid_ends_the_dead_process_names() -> None:
    state = pool("a", "b", "c")
    assert state.checkout(42, start_time=100.0) == "a"
    state.associate("a", "urn:other")  # shared: the other owner keeps "a"
    name = state.checkout(42, start_time=500.0)
    assert name == "b"
    assert state.holders() == {"a": ["urn:other"], "b": [42]}
    assert state.int_owners() == {42: 500.0}


def test_reused_pid_gets_the_freed_name_back_lifo() -> None:
    state = pool("a", "b")
    assert state.checkout(42, start_time=100.0) == "a"
    assert state.checkout(42, start_time=500.0) == "a"  # freed, then reused last in first out
    assert state.int_owners() == {42: 500.0}
    assert state.available_names() == ["b"]



@pytest.mark.parametrize("start_time", ["now", True, [1.0]])
def test_a_bad_start_time_raises_before_any_change(start_time: object) -> None:
    state = pool("a", "b")
    state.checkout(5, start_time=1.0)
    check = unchanged(state)
    for owner in (6, 5, "u", None):
        with pytest.raises(TypeError):
            state.checkout(owner, start_time=start_time)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        state.associate("b", 6, start_time=start_time)  # type: ignore[arg-type]
    check()

# -- accept_chunk ------------------------------------------------------------------------


def test_accept_chunk_keeps_every_new_valid_name_and_drops_the_rest() -> None:
    state = pool("known")
    state.checkout("u")  # "known" is checked out now
    garbage = [
        "x", "y", "x",  # duplicate within the chunk
        "known",  # already used
        "", "a/b", "..", "bad\n", "z" * 65,  # invalid
        7, None, b"bytes", ["list"], 1.5,  # not str
        DEFAULT,  # the default name is never a pool name
        "w", "v", "u",  # more than any count
    ]
    assert state.accept_chunk(garbage) == ["x", "y", "w", "v", "u"]
    assert [state.checkout(None) for _ in range(5)] == ["x", "y", "w", "v", "u"]
    assert state.stats()["all_used_count"] == 6


def test_accept_chunk_drops_names_already_available() -> None:
    state = pool("a", "b")
    assert state.accept_chunk(["b", "c"]) == ["c"]


@pytest.mark.parametrize("result", [None, 5, "abc", b"ab", {"a": 1}, object(), [], ()])
def test_accept_chunk_of_nothing_usable_returns_empty_and_changes_nothing(result: object) -> None:
    state = pool("a")
    check = unchanged(state)
    assert state.accept_chunk(result) == []
    check()


def test_accept_chunk_takes_any_iterable() -> None:
    state = NameState()
    assert state.accept_chunk(("a", "b")) == ["a", "b"]
    assert state.accept_chunk(name for name in ["c"]) == ["c"]


def test_accept_chunk_of_only_used_names_returns_empty() -> None:
    state = pool("a", "b")
    state.checkout(None)
    assert state.accept_chunk(["a", "b", "a"]) == []


def test_chunk_names_go_under_names_checked_in_meanwhile() -> None:
    state = pool("a")
    state.checkout(None)
    state.checkin("a")  # e.g. checked in while the source was running
    state.accept_chunk(["b", "c"])
    assert [state.checkout(None) for _ in range(3)] == ["a", "b", "c"]


def test_accept_chunk_normalises_str_subclasses() -> None:
    state = NameState()
    (name,) = state.accept_chunk([Urn("fancy")])
    assert type(name) is str
    assert type(state.checkout(None)) is str


# -- checkin -----------------------------------------------------------------------------


def test_checkin_returns_the_name_and_ends_every_owner() -> None:
    state = pool("a", "b")
    state.checkout(42, start_time=1.0)
    state.associate("a", "urn")
    state.associate("a", 43)
    state.associate("a", None)
    assert state.checkin("a") is CheckinOutcome.RETURNED
    assert state.name_of(42) is None
    assert state.name_of("urn") is None
    assert state.name_of(43) is None
    assert state.int_owners() == {}
    assert state.holders() == {}
    assert state.available_names() == ["b", "a"]
    assert state.stats()["all_used_count"] == 2


@pytest.mark.parametrize("name", ["", "x" * 65, "a/b", "a\\b", "a\x00", "a\nb", ".", "..", None, 3, b"a"])
def test_checkin_validates_the_name(name: object) -> None:
    state = pool("a")
    state.checkout(None)
    check = unchanged(state)
    with pytest.raises(InvalidName):
        state.checkin(name)
    check()


@pytest.mark.parametrize("name", ["a", "never-seen"])
def test_checkin_of_a_name_not_checked_out_changes_nothing(name: str) -> None:
    state = pool("a")
    check = unchanged(state)
    assert state.checkin(name) is CheckinOutcome.NOT_CHECKED_OUT
    check()


def test_checkin_of_the_default_name_is_ignored() -> None:
    state = pool("a")
    check = unchanged(state)
    assert state.checkin(DEFAULT) is CheckinOutcome.DEFAULT_NAME
    check()


def test_checkin_twice() -> None:
    state = pool("a")
    state.checkout("u")
    assert state.checkin("a") is CheckinOutcome.RETURNED
    assert state.checkin("a") is CheckinOutcome.NOT_CHECKED_OUT
    assert state.available_names() == ["a"]


def test_owner_gets_a_new_checkout_after_checkin() -> None:
    state = pool("a", "b")
    assert state.checkout("u") == "a"
    state.checkin("a")
    assert state.checkout("v") == "a"
    assert state.checkout("u") == "b"


# -- associate ---------------------------------------------------------------------------


def test_associate_shares_a_checked_out_name() -> None:
    state = pool("a", "b")
    assert state.checkout("parent") == "a"
    state.associate("a", 4242, start_time=9.0)
    assert state.name_of("parent") == "a"
    assert state.name_of(4242) == "a"
    assert state.holders() == {"a": ["parent", 4242]}
    assert state.int_owners() == {4242: 9.0}
    assert state.checkout(4242) == "a"  # an associated owner checks out its name
    assert state.stats()["checked_out_count"] == 1


def test_associate_checks_out_an_available_name_from_the_middle_of_the_stack() -> None:
    state = pool("a", "b", "c")
    state.associate("b", "restored")
    assert state.available_names() == ["c", "a"]
    assert state.holders() == {"b": ["restored"]}
    assert [state.checkout(None), state.checkout(None)] == ["a", "c"]


def test_associate_learns_an_unknown_name() -> None:
    state = pool("a")
    state.associate("restored", 7)
    assert state.name_of(7) == "restored"
    assert state.stats()["all_used_count"] == 2
    assert "restored" in state.used_names()
    assert state.accept_chunk(["restored", "new"]) == ["new"]


def test_associate_ends_the_previous_association_first() -> None:
    state = pool("a", "b", "c")
    assert state.checkout("u") == "a"
    state.associate("b", "u")
    assert state.name_of("u") == "b"
    assert state.available_names() == ["c", "a"]  # "a" lost its only owner: back on top
    assert state.holders() == {"b": ["u"]}


def test_associate_moving_away_from_a_shared_name_leaves_it_held() -> None:
    state = pool("a", "b")
    state.checkout("parent")
    state.associate("a", "child")
    state.associate("b", "child")
    assert state.holders() == {"a": ["parent"], "b": ["child"]}


def test_associate_with_the_same_name_again_is_a_no_op_but_pins_the_process() -> None:
    state = pool("a")
    state.associate("a", 5)
    revision = state.revision
    state.associate("a", 5)
    assert state.revision == revision
    state.associate("a", 5, start_time=3.0)
    assert state.int_owners() == {5: 3.0}
    assert state.holders() == {"a": [5]}


def test_associate_none_name_does_nothing() -> None:
    state = pool("a")
    state.checkout("u")
    check = unchanged(state)
    state.associate(None, "u")
    state.associate(None, 9)
    state.associate(None, None)
    check()


def test_associate_default_name_does_nothing() -> None:
    state = pool("a")
    state.checkout("u")
    check = unchanged(state)
    state.associate(DEFAULT, "u")
    state.associate(DEFAULT, "v")
    check()


@pytest.mark.parametrize("name", ["", "a/b", "..", "x\x00", 5])
def test_associate_validates_the_name(name: object) -> None:
    state = pool("a")
    check = unchanged(state)
    with pytest.raises(InvalidName):
        state.associate(name, "u")
    check()


def test_associate_anonymous_holds_until_checkin() -> None:
    state = pool("a", "b")
    state.associate("a", None)
    assert state.holders() == {"a": [None]}
    state.checkout(5)
    state.associate("b", None)
    assert state.holders() == {"a": [None], "b": [5, None]}
    assert state.reap(nobody_alive) == []
    assert state.holders() == {"a": [None], "b": [None]}
    assert state.checkin("b") is CheckinOutcome.RETURNED



def test_associate_anonymous_twice_changes_nothing_the_second_time() -> None:
    state = pool("a")
    state.associate("a", None)
    check = unchanged(state)
    state.associate("a", None)
    check()

# -- dissociate --------------------------------------------------------------------------


def test_dissociate_returns_the_name_when_no_owner_is_left() -> None:
    state = pool("a", "b")
    state.checkout("parent")
    state.associate("a", 99)
    assert state.dissociate("parent") is None
    assert state.holders() == {"a": [99]}
    assert state.dissociate(99) == "a"
    assert state.holders() == {}
    assert state.available_names() == ["b", "a"]
    assert state.checkout("next") == "a"


@pytest.mark.parametrize("owner", [None, 12345, "nobody"])
def test_dissociate_of_an_unknown_owner_does_nothing(owner: object) -> None:
    state = pool("a")
    state.checkout(None)
    check = unchanged(state)
    assert state.dissociate(owner) is None
    check()


def test_dissociate_leaves_an_anonymous_holder_in_place() -> None:
    state = pool("a")
    state.checkout(None)
    state.associate("a", "u")
    assert state.dissociate("u") is None
    assert state.holders() == {"a": [None]}


# -- name_of -----------------------------------------------------------------------------


def test_name_of() -> None:
    state = pool("a", "b")
    state.checkout(10, start_time=50.0)
    state.checkout("urn")
    assert state.name_of(None) is None
    assert state.name_of(11) is None
    assert state.name_of("10") is None  # a str and an int owner are different owners
    assert state.name_of(10) == "a"
    assert state.name_of(10, start_time=50.5) == "a"
    assert state.name_of(10, start_time=80.0) is None  # pid reused by another process
    assert state.name_of("urn", start_time=80.0) == "b"


def test_name_of_with_unknown_recorded_start_time() -> None:
    state = pool("a")
    state.checkout(10)
    assert state.name_of(10, start_time=1.0) == "a"


# -- reap --------------------------------------------------------------------------------


def test_reap_removes_dead_int_owners_only() -> None:
    state = pool("a", "b", "c", "d")
    state.checkout(1, start_time=1.0)  # a: dead pid, sole owner
    state.checkout(2, start_time=2.0)  # b: live pid
    state.checkout("urn")  # c: str owner
    state.associate("c", 3, start_time=3.0)  # c: shared with a dead pid
    state.checkout(None)  # d: anonymous
    calls: list[tuple[int, float | None]] = []

    def is_alive(pid: int, start_time: float | None) -> bool:
        calls.append((pid, start_time))
        return pid == 2

    assert state.reap(is_alive) == ["a"]
    assert sorted(calls) == [(1, 1.0), (2, 2.0), (3, 3.0)]  # str and anonymous never asked
    assert state.holders() == {"b": [2], "c": ["urn"], "d": [None]}
    assert state.int_owners() == {2: 2.0}
    assert state.available_names() == ["a"]


def test_reap_detects_pid_reuse_through_the_start_time() -> None:
    state = pool("a")
    state.checkout(500, start_time=1000.0)
    running = {500: 2000.0}  # pid 500 runs, but it is a younger process

    def is_alive(pid: int, start_time: float | None) -> bool:
        return pid in running and start_time == running[pid]

    assert state.reap(is_alive) == ["a"]
    assert state.name_of(500) is None


def test_reap_of_a_name_shared_by_dead_pids_returns_it_once() -> None:
    state = pool("a")
    state.checkout(1)
    state.associate("a", 2)
    assert state.reap(nobody_alive) == ["a"]
    assert state.available_names() == ["a"]


def test_reap_with_everyone_alive_changes_nothing() -> None:
    state = pool("a", "b")
    state.checkout(1, start_time=1.0)
    check = unchanged(state)
    assert state.reap(everyone_alive) == []
    check()


def test_remove_dead_owners_skips_a_pid_that_re_registered_meanwhile() -> None:
    state = pool("a", "b")
    state.checkout(7, start_time=1.0)
    found_dead = list(state.int_owners().items())  # the shell checks these off-thread ...
    state.checkout(7, start_time=9.0)  # ... while pid 7, a new process, checks out
    assert state.remove_dead_owners(found_dead) == []
    assert state.name_of(7) == "a"
    assert state.remove_dead_owners([(7, 9.0), (8, None)]) == ["a"]


# -- reset -------------------------------------------------------------------------------


def test_reset_forgets_everything() -> None:
    state = pool("a", "b", "c", chunk_size=3)
    state.checkout(1)
    state.checkout("u")
    revision = state.revision
    state.reset()
    assert state.revision > revision
    assert state.stats() == {
        "available_count": 0,
        "checked_out_count": 0,
        "all_used_count": 0,
        "chunk_size": 3,
        "owner_count": 0,
    }
    assert state.used_names() == frozenset()
    assert state.int_owners() == {}
    assert state.name_of(1) is None
    assert state.needs_chunk()


# -- reconcile ---------------------------------------------------------------------------


def test_reconcile_checks_out_exactly_the_listed_names() -> None:
    state = pool("a", "b", "c", "d")
    state.checkout("u")  # a: not listed -> back to the pool
    state.checkout(None)  # b: listed, already held -> stays, owners kept
    kept = state.reconcile(["b", "c", "new"], everyone_alive)
    assert kept == []
    assert state.holders() == {"b": [None], "c": [None], "new": [None]}
    assert state.name_of("u") is None
    assert state.available_names() == ["d", "a"]
    assert state.stats()["all_used_count"] == 5


def test_reconcile_keeps_owners_of_a_listed_name_and_adds_an_anonymous_holder() -> None:
    state = pool("a")
    state.checkout(5, start_time=5.0)
    state.reconcile(["a"], everyone_alive)
    assert state.holders() == {"a": [5, None]}
    # The directory exists: the name stays held even when its process is gone.
    assert state.reap(nobody_alive) == []
    assert state.holders() == {"a": [None]}
    assert state.checkin("a") is CheckinOutcome.RETURNED


def test_reconcile_keeps_a_name_held_by_a_live_int_owner() -> None:
    state = pool("a", "b", "c")
    state.checkout(10, start_time=1.0)  # a: live pid
    state.associate("a", "urn")  # ... shared with a str owner
    state.checkout(11, start_time=2.0)  # b: dead pid
    asked: list[tuple[int, float | None]] = []

    def is_live(pid: int, start_time: float | None) -> bool:
        asked.append((pid, start_time))
        return pid == 10

    assert state.reconcile(["c"], is_live) == ["a"]
    assert set(asked) == {(10, 1.0), (11, 2.0)}
    assert state.holders() == {"a": [10], "c": [None]}
    assert state.name_of("urn") is None
    assert state.name_of(11) is None
    assert state.available_names() == ["b"]


def test_reconcile_validates_every_name_before_changing_anything() -> None:
    state = pool("a", "b")
    state.checkout("u")
    check = unchanged(state)
    with pytest.raises(InvalidName):
        state.reconcile(["b", "ok", "a/b"], everyone_alive)
    with pytest.raises(InvalidName):
        state.reconcile(["b", None], everyone_alive)  # type: ignore[list-item]
    check()


@pytest.mark.parametrize("names", ["furiosa", b"furiosa", None, 5])
def test_reconcile_refuses_something_that_is_not_a_list_of_names(names: object) -> None:
    state = pool("a")
    check = unchanged(state)
    with pytest.raises(InvalidName):
        state.reconcile(names, everyone_alive)  # type: ignore[arg-type]
    check()


def test_reconcile_ignores_the_default_name_and_duplicates() -> None:
    state = NameState()
    assert state.reconcile([DEFAULT, "a", "a"], everyone_alive) == []
    assert state.holders() == {"a": [None]}


def test_reconcile_with_nothing_returns_everything() -> None:
    state = pool("a", "b")
    state.checkout(None)
    state.checkout("u")
    state.reconcile([], everyone_alive)
    assert state.holders() == {}
    assert sorted(state.available_names()) == ["a", "b"]


def test_reconciled_names_are_used_for_the_source() -> None:
    state = NameState(chunk_size=2)
    state.reconcile(["furiosa", "mad-max-9"], everyone_alive)
    assert state.accept_chunk(ThemedSource(names=["furiosa"])(2, state.used_names())) == [
        "mad-max-10",
        "mad-max-11",
    ]


def test_reconcile_whose_liveness_check_fails_changes_nothing() -> None:
    state = pool("a", "b")
    state.checkout(1, start_time=1.0)
    state.checkout(2, start_time=2.0)
    check = unchanged(state)

    def is_live(pid: int, start_time: float | None) -> bool:
        if pid == 2:
            raise RuntimeError("psutil failed")
        return True

    with pytest.raises(RuntimeError):
        state.reconcile([], is_live)
    check()


def test_reap_whose_liveness_check_fails_changes_nothing() -> None:
    state = pool("a", "b")
    state.checkout(1, start_time=1.0)
    state.checkout(2, start_time=2.0)
    check = unchanged(state)

    def is_alive(pid: int, start_time: float | None) -> bool:
        if pid == 2:
            raise RuntimeError("psutil failed")
        return False

    with pytest.raises(RuntimeError):
        state.reap(is_alive)
    check()


# -- stats and views ---------------------------------------------------------------------


def test_stats_counts() -> None:
    state = pool("a", "b", "c", chunk_size=4)
    state.checkout(1)
    state.associate("a", "u")
    state.checkout(None)
    state.checkin("b")
    assert state.stats() == {
        "available_count": 2,
        "checked_out_count": 1,
        "all_used_count": 3,
        "chunk_size": 4,
        "owner_count": 2,
    }


def test_views_are_copies() -> None:
    state = pool("a", "b")
    state.checkout(1)
    state.available_names().clear()
    state.holders()["a"].append("x")
    state.int_owners().clear()
    assert state.available_names() == ["b"]
    assert state.holders() == {"a": [1]}
    assert state.int_owners() == {1: None}


def test_revision_grows_on_changes_only() -> None:
    state = NameState()
    revisions = [state.revision]
    state.checkout(None)  # nothing to hand out
    revisions.append(state.revision)
    state.accept_chunk(["a"])
    revisions.append(state.revision)
    state.checkout("u")
    revisions.append(state.revision)
    state.checkout("u")  # already holds
    revisions.append(state.revision)
    state.checkin("a")
    revisions.append(state.revision)
    grew = [later > earlier for earlier, later in zip(revisions, revisions[1:])]
    assert grew == [False, True, True, False, True]
    assert revisions[1:] == sorted(revisions[1:])


# -- snapshots ---------------------------------------------------------------------------


def busy_state() -> NameState:
    state = pool("a", "b", "c", "d", "e", "f", chunk_size=6)
    state.checkout(None)  # a
    state.checkout(4242, start_time=1700000000.25)  # b
    state.associate("b", "urn:worker")
    state.associate("b", 4243)
    state.checkout("urn:solo")  # c
    state.checkin("a")
    state.associate("q", 77, start_time=3.0)
    return state


def test_snapshot_format() -> None:
    assert busy_state().to_snapshot() == {
        "version": SNAPSHOT_VERSION,
        "available": ["f", "e", "d", "a"],
        "holders": [
            ["b", [["pid", 4242, 1700000000.25], ["str", "urn:worker"], ["pid", 4243, None]]],
            ["c", [["str", "urn:solo"]]],
            ["q", [["pid", 77, 3.0]]],
        ],
    }


def assert_same_state(left: NameState, right: NameState) -> None:
    assert left.to_snapshot() == right.to_snapshot()
    assert left.available_names() == right.available_names()
    assert left.holders() == right.holders()
    assert left.int_owners() == right.int_owners()
    assert left.stats() == right.stats()
    assert left.used_names() == right.used_names()


def test_snapshot_round_trip_is_exact_through_msgpack() -> None:
    state = busy_state()
    restored = NameState.from_snapshot(
        msgpack.unpackb(msgpack.packb(state.to_snapshot())), chunk_size=6, default_name=DEFAULT
    )
    assert_same_state(state, restored)
    for owner in (4242, 4243, 77, "urn:worker", "urn:solo"):
        assert restored.name_of(owner) == state.name_of(owner)
    # The restored pool behaves the same from here on.
    assert [restored.checkout(None) for _ in range(3)] == [state.checkout(None) for _ in range(3)]


def test_snapshot_round_trip_with_tuples() -> None:
    state = busy_state()
    data = msgpack.unpackb(msgpack.packb(state.to_snapshot()), use_list=False)
    assert_same_state(state, NameState.from_snapshot(data, 6))


def test_from_snapshot_takes_configuration_from_the_caller() -> None:
    restored = NameState.from_snapshot(busy_state().to_snapshot(), chunk_size=3, default_name="anon")
    assert restored.chunk_size == 3
    assert restored.default_name == "anon"


def test_from_snapshot_drops_a_changed_default_name() -> None:
    state = pool("a", "b", "c")
    state.checkout(5)
    restored = NameState.from_snapshot(state.to_snapshot(), default_name="a")
    assert restored.holders() == {}
    assert restored.name_of(5) is None
    assert restored.int_owners() == {}
    restored = NameState.from_snapshot(state.to_snapshot(), default_name="c")
    assert restored.available_names() == ["b"]


def test_empty_snapshot_round_trip() -> None:
    assert_same_state(NameState(), NameState.from_snapshot(NameState().to_snapshot()))


def snapshot_with(**changes: object) -> dict[str, object]:
    data: dict[str, object] = {
        "version": SNAPSHOT_VERSION,
        "available": ["a"],
        "holders": [["b", [["anon"]]]],
    }
    data.update(changes)
    return data


MALFORMED_SNAPSHOTS = [
    None,
    [],
    "snapshot",
    {},
    snapshot_with(version=3),
    snapshot_with(version=True),
    snapshot_with(version="1"),
    snapshot_with(available=None),
    snapshot_with(available="ab"),
    snapshot_with(available={"a": None}),
    snapshot_with(available=["a", "a"]),
    snapshot_with(available=["a/b"]),
    snapshot_with(available=[""]),
    snapshot_with(available=[3]),
    snapshot_with(holders=None),
    snapshot_with(holders={"b": [["anon"]]}),
    snapshot_with(holders=[["a", [["anon"]]]]),  # both available and held
    snapshot_with(holders=[["b", [["anon"]]], ["b", [["str", "u"]]]]),
    snapshot_with(holders=[["b"]]),
    snapshot_with(holders=[["b", [["anon"]], "extra"]]),
    snapshot_with(holders=[["..", [["anon"]]]]),
    snapshot_with(holders=[["b", []]]),
    snapshot_with(holders=[["b", "anon"]]),
    snapshot_with(holders=[["b", [["anon"], ["anon"]]]]),
    snapshot_with(holders=[["b", [["str", "u"], ["str", "u"]]]]),
    snapshot_with(holders=[["b", [["str", "u"]]], ["c", [["str", "u"]]]]),  # one owner, two names
    snapshot_with(holders=[["b", [["pid", 5, None]]], ["c", [["pid", 5, 1.0]]]]),
    snapshot_with(holders=[["b", [["anon", 1]]]]),
    snapshot_with(holders=[["b", [["str"]]]]),
    snapshot_with(holders=[["b", [["str", 5]]]]),
    snapshot_with(holders=[["b", [["pid", 0, None]]]]),
    snapshot_with(holders=[["b", [["pid", -3, None]]]]),
    snapshot_with(holders=[["b", [["pid", True, None]]]]),
    snapshot_with(holders=[["b", [["pid", "5", None]]]]),
    snapshot_with(holders=[["b", [["pid", 5, "now"]]]]),
    snapshot_with(holders=[["b", [["pid", 5, False]]]]),
    snapshot_with(holders=[["b", [["pid", 5]]]]),
    snapshot_with(holders=[["b", [["who", 5]]]]),
    snapshot_with(holders=[["b", [[]]]]),
    snapshot_with(holders=[["b", [None]]]),
    snapshot_with(holders=[["b", ["anon"]]]),
]


@pytest.mark.parametrize("data", MALFORMED_SNAPSHOTS)
def test_malformed_snapshots_raise_value_error(data: object) -> None:
    with pytest.raises(ValueError):
        NameState.from_snapshot(data)


def test_well_formed_sample_snapshot_loads() -> None:
    state = NameState.from_snapshot(snapshot_with())
    assert state.holders() == {"b": [None]}
    assert state.available_names() == ["a"]


def test_snapshot_start_time_may_be_an_int() -> None:
    data = snapshot_with(holders=[["b", [["pid", 5, 100]]]])
    assert NameState.from_snapshot(data).int_owners() == {5: 100.0}


# -- property: random operation sequences ------------------------------------------------

NAMES = ["a", "b", "c", "d", "e", "f", DEFAULT]
OWNERS: list[int | str | None] = [None, 1, 2, 3, "u1", "u2", "1"]
START_TIMES = [None, 10.0, 20.0]


class NamePoolMachine(RuleBasedStateMachine):
    """Random operations never break the pool's invariants; snapshots always round-trip."""

    def __init__(self) -> None:
        super().__init__()
        self.state = NameState(chunk_size=3)
        self.known: set[str] = set()

    @rule(owner=st.sampled_from(OWNERS), start_time=st.sampled_from(START_TIMES))
    def checkout(self, owner: int | str | None, start_time: float | None) -> None:
        held_before = self.state.holders()
        top = self.state.available_names()[-1:] or [None]
        previous = self.state.name_of(owner, start_time)
        name = self.state.checkout(owner, start_time)
        if previous is not None:
            assert name == previous
            return
        if name is None:
            assert self.state.needs_chunk()
            return
        # A fresh name: never one that another holder had (the freed name of a reused
        # pid is the only exception, and it went back to the pool first).
        if name in held_before:
            assert type(owner) is int and held_before[name] == [owner]
        elif top != [None]:
            assert name == top[0]  # last in, first out
        assert self.state.holders()[name] == [owner]

    @rule(names=st.lists(st.sampled_from(NAMES + ["", "x/y", 5]), max_size=5))  # type: ignore[operator]
    def accept_chunk(self, names: list[object]) -> None:
        used_before = self.state.used_names()
        accepted = self.state.accept_chunk(names)
        assert not set(accepted) & used_before
        assert DEFAULT not in accepted
        self.known |= set(accepted)

    @rule(name=st.sampled_from(NAMES))
    def checkin(self, name: str) -> None:
        was_held = self.state.is_checked_out(name)
        outcome = self.state.checkin(name)
        if name == DEFAULT:
            assert outcome is CheckinOutcome.DEFAULT_NAME
        elif was_held:
            assert outcome is CheckinOutcome.RETURNED
            assert self.state.available_names()[-1] == name
        else:
            assert outcome is CheckinOutcome.NOT_CHECKED_OUT

    @rule(
        name=st.sampled_from(NAMES + [None]),  # type: ignore[operator]
        owner=st.sampled_from(OWNERS),
        start_time=st.sampled_from(START_TIMES),
    )
    def associate(self, name: str | None, owner: int | str | None, start_time: float | None) -> None:
        held_before = self.state.holders()
        self.state.associate(name, owner, start_time)
        if name is None or name == DEFAULT:
            return
        assert owner in self.state.holders()[name]
        if owner is not None:
            assert self.state.name_of(owner) == name
        for other in held_before.get(name, []):
            if other is not None and other != owner:
                assert self.state.name_of(other) == name  # shared, not moved

    @rule(owner=st.sampled_from(OWNERS))
    def dissociate(self, owner: int | str | None) -> None:
        self.state.dissociate(owner)
        if owner is not None:
            assert self.state.name_of(owner) is None

    @rule(dead=st.sets(st.sampled_from([1, 2, 3])))
    def reap(self, dead: set[int]) -> None:
        returned = self.state.reap(lambda pid, start_time: pid not in dead)
        assert not set(self.state.int_owners()) & dead
        for name in returned:
            assert not self.state.is_checked_out(name)

    @rule(names=st.lists(st.sampled_from(NAMES), max_size=4), live=st.sets(st.sampled_from([1, 2, 3])))
    def reconcile(self, names: list[str], live: set[int]) -> None:
        kept = self.state.reconcile(names, lambda pid, start_time: pid in live)
        listed = set(names) - {DEFAULT}
        assert set(self.state.holders()) == listed | set(kept)
        for name in kept:
            assert all(type(owner) is int and owner in live for owner in self.state.holders()[name])

    @rule()
    def reset(self) -> None:
        self.state.reset()
        self.known = set()

    @invariant()
    def names_are_either_available_or_held(self) -> None:
        available = self.state.available_names()
        held = self.state.holders()
        assert len(available) == len(set(available))
        assert not set(available) & set(held)
        assert DEFAULT not in available and DEFAULT not in held
        assert self.state.used_names() == frozenset(available) | frozenset(held)
        assert self.known <= self.state.used_names()
        stats = self.state.stats()
        assert stats["available_count"] == len(available)
        assert stats["checked_out_count"] == len(held)
        assert stats["all_used_count"] == len(self.state.used_names())

    @invariant()
    def every_owner_holds_at_most_one_name(self) -> None:
        seen: dict[int | str, str] = {}
        for name, owners in self.state.holders().items():
            assert owners
            assert len(owners) == len(set(owners))
            for owner in owners:
                if owner is not None:
                    assert owner not in seen, f"{owner!r} holds {seen.get(owner)!r} and {name!r}"
                    seen[owner] = name
                    assert self.state.name_of(owner) == name
        assert self.state.stats()["owner_count"] == len(seen)
        assert set(self.state.int_owners()) == {owner for owner in seen if type(owner) is int}

    @invariant()
    def snapshot_round_trips(self) -> None:
        data = msgpack.unpackb(msgpack.packb(self.state.to_snapshot()))
        assert_same_state(self.state, NameState.from_snapshot(data, chunk_size=3))


NamePoolMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_random_operations = NamePoolMachine.TestCase

