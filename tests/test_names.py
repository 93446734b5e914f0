"""Name validation, reserved names, themes and `ThemedSource` (pure functions, no actors)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors._errors import InvalidName
from actors.names._source import (
    MAX_NAME_LENGTH,
    RESERVED_NAMES,
    THEMES,
    ThemedSource,
    is_reserved,
    is_valid_name,
    validate_name,
)
from supervision import ClientError

# -- validate_name -----------------------------------------------------------------------

VALID_NAMES = [
    "furiosa",
    "Nameless Agent",
    "a",
    "x" * MAX_NAME_LENGTH,
    "mad-max-12",
    "café",
    "日本",
    "...",
    ".hidden",
    "a.b",
    "with space",
]

INVALID_NAMES = [
    ("", "empty"),
    ("x" * (MAX_NAME_LENGTH + 1), "at most 64"),
    ("a/b", "'/'"),
    ("/", "'/'"),
    ("a\\b", "or '\\'"),
    ("a\x00b", "control"),
    ("a\nb", "control"),
    ("\t", "control"),
    ("a\rb", "control"),
    ("a\x7fb", "control"),  # DEL
    ("a\x85b", "control"),  # C1 NEL
    ("a\u202eb", "control"),  # bidi override (Cf) would make the name display reversed
    ("a\u200bb", "control"),  # zero-width space (Cf)
    ("a\u2028b", "control"),  # line separator
    ("a\ud800b", "control"),  # lone surrogate: not encodable as UTF-8
    (".", "'.'"),
    ("..", "'..'"),
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_names_are_returned(name: str) -> None:
    assert validate_name(name) == name
    assert is_valid_name(name)


@pytest.mark.parametrize(("name", "rule"), INVALID_NAMES)
def test_invalid_names_raise_naming_value_and_rule(name: str, rule: str) -> None:
    with pytest.raises(InvalidName) as caught:
        validate_name(name)
    message = str(caught.value)
    assert repr(name) in message
    assert rule in message
    assert not is_valid_name(name)


@pytest.mark.parametrize("name", [None, 1, 1.5, b"furiosa", ["furiosa"], object(), True])
def test_non_str_names_raise(name: object) -> None:
    with pytest.raises(InvalidName, match="must be a str"):
        validate_name(name)
    assert not is_valid_name(name)


def test_invalid_name_is_a_client_error_and_value_error() -> None:
    with pytest.raises(ClientError):
        validate_name("")
    with pytest.raises(ValueError):
        validate_name("")


def test_str_subclass_is_returned_as_plain_str() -> None:
    class Fancy(str):
        pass

    result = validate_name(Fancy("nux"))
    assert result == "nux"
    assert type(result) is str


@given(st.text(max_size=80))
def test_is_valid_name_agrees_with_validate_name(name: str) -> None:
    try:
        validate_name(name)
    except InvalidName:
        assert not is_valid_name(name)
    else:
        assert is_valid_name(name)


# -- reserved names and themes -----------------------------------------------------------


def test_reserved_names_are_the_town_roles() -> None:
    assert RESERVED_NAMES == frozenset({"mayor", "witness", "deacon", "refinery", "crew", "polecats"})
    assert isinstance(RESERVED_NAMES, frozenset)


@pytest.mark.parametrize("name", ["mayor", "MAYOR", "Witness", "cReW", "PoleCats", "deacon", "Refinery"])
def test_is_reserved_ignores_case(name: str) -> None:
    assert is_reserved(name)


@pytest.mark.parametrize("name", ["furiosa", "mayors", "crew1", "crew-1", "the mayor"])
def test_is_reserved_is_exact(name: str) -> None:
    assert not is_reserved(name)


def test_themes_are_the_three_gastown_themes() -> None:
    assert set(THEMES) == {"mad-max", "minerals", "wasteland"}


@pytest.mark.parametrize("theme", sorted(THEMES))
def test_each_theme_has_50_distinct_valid_unreserved_lowercase_words(theme: str) -> None:
    names = THEMES[theme]
    assert len(names) == 50
    assert len(set(names)) == 50
    for name in names:
        assert is_valid_name(name), name
        assert not is_reserved(name), name
        assert name == name.lower() and name.isalpha() and name.isascii(), name
    assert ThemedSource(theme).names == names


def test_mad_max_starts_like_gastown() -> None:
    assert THEMES["mad-max"][:4] == ("furiosa", "nux", "slit", "rictus")
    assert {"immortan", "max", "capable", "toast", "dag", "cheedo", "angharad"} <= set(THEMES["mad-max"])
    assert {"obsidian", "quartz", "jasper"} <= set(THEMES["minerals"])
    assert {"rust", "dust", "scrap"} <= set(THEMES["wasteland"])


# -- ThemedSource: the list --------------------------------------------------------------


def test_default_source_is_mad_max_in_list_order() -> None:
    source = ThemedSource()
    assert source.theme == "mad-max"
    assert source(3, frozenset()) == ["furiosa", "nux", "slit"]


@pytest.mark.parametrize("count", [0, -1, -100])
def test_non_positive_count_returns_nothing(count: int) -> None:
    assert ThemedSource()(count, frozenset()) == []


def test_used_names_are_skipped_keeping_list_order() -> None:
    source = ThemedSource("minerals")
    assert source(3, frozenset({"obsidian", "jasper"})) == ["quartz", "onyx", "opal"]


def test_a_plain_set_or_list_as_used_works_too() -> None:
    source = ThemedSource("wasteland")
    assert source(2, {"rust"}) == ["dust", "scrap"]
    assert source(2, ["rust", "dust"]) == ["scrap", "ash"]


def test_source_is_deterministic() -> None:
    used = frozenset({"nux", "mad-max-3", "toast"})
    assert ThemedSource()(60, used) == ThemedSource()(60, used)


@pytest.mark.parametrize("theme", ["Mad-Max", "gastown", "", "mad max"])
def test_unknown_theme_raises_value_error(theme: str) -> None:
    with pytest.raises(ValueError, match="unknown theme"):
        ThemedSource(theme)


def test_non_str_theme_raises_value_error() -> None:
    with pytest.raises(ValueError):
        ThemedSource(3)  # type: ignore[arg-type]


def test_custom_list_replaces_the_theme_and_is_cleaned() -> None:
    names = ["alpha", "MAYOR", "beta", "alpha", "", "a/b", 7, None, "Crew", "gamma\n", "delta", "beta"]
    source = ThemedSource(names=names)  # type: ignore[arg-type]
    assert source.names == ("alpha", "beta", "delta")
    assert source(10, frozenset({"beta"}))[:2] == ["alpha", "delta"]


def test_reserved_names_are_removed_from_a_custom_list_case_insensitively() -> None:
    source = ThemedSource(names=["Mayor", "WITNESS", "deacon", "Refinery", "crew", "PoleCats", "ok"])
    assert source.names == ("ok",)


def test_custom_list_accepts_any_iterable_but_not_a_single_string() -> None:
    assert ThemedSource(names=(n for n in ["x", "y"])).names == ("x", "y")
    with pytest.raises(ValueError):
        ThemedSource(names="furiosa")  # type: ignore[arg-type]


def test_empty_custom_list_goes_straight_to_overflow() -> None:
    assert ThemedSource("minerals", names=[])(2, frozenset()) == ["minerals-1", "minerals-2"]


def test_theme_that_cannot_prefix_a_valid_name_is_refused() -> None:
    with pytest.raises(ValueError):
        ThemedSource("a/b", names=["x"])
    with pytest.raises(ValueError):
        ThemedSource("x" * 63, names=["x"])  # "xxx…-1" would be 65 characters


# -- ThemedSource: overflow --------------------------------------------------------------


def test_overflow_after_the_list_is_used_up() -> None:
    source = ThemedSource()
    used = frozenset(THEMES["mad-max"][:-1])
    assert source(3, used) == [THEMES["mad-max"][-1], "mad-max-1", "mad-max-2"]


def test_overflow_numbers_start_above_the_highest_overflow_in_used() -> None:
    used = frozenset(THEMES["mad-max"]) | {"mad-max-1", "mad-max-7", "mad-max-3"}
    assert ThemedSource()(3, used) == ["mad-max-8", "mad-max-9", "mad-max-10"]


def test_overflow_is_above_highest_even_with_gaps_and_without_the_list_used() -> None:
    # A pool that lost its state learns a high overflow name back (reconcile): never repeat it.
    used = frozenset({"mad-max-41"})
    result = ThemedSource(names=["solo"])(3, used)
    assert result == ["solo", "mad-max-42", "mad-max-43"]


def test_overflow_numbers_compare_numerically_not_as_text() -> None:
    used = frozenset({"mad-max-9", "mad-max-10", "mad-max-100", "mad-max-99"})
    assert ThemedSource(names=[])(1, used) == ["mad-max-101"]


@pytest.mark.parametrize(
    "noise",
    ["mad-max-", "mad-max-x1", "mad-max-1x", "mad-max--5", "mad-max-+5", "mad-max-٣٣", "mad-max-²", "mad-max-07"],
)
def test_names_that_are_not_overflow_names_do_not_move_the_numbering(noise: str) -> None:
    used = frozenset({noise, "mad-max-2"})
    result = ThemedSource(names=[])(2, used)
    assert result == ["mad-max-3", "mad-max-4"]
    assert not set(result) & used


def test_other_theme_overflow_names_do_not_count() -> None:
    used = frozenset({"minerals-50", "mad-max-2"})
    assert ThemedSource(names=[])(1, used) == ["mad-max-3"]
    assert ThemedSource("minerals", names=[])(1, used) == ["minerals-51"]


def test_custom_prefix_is_the_theme_argument() -> None:
    source = ThemedSource("crew-of-the-war-rig", names=["a"])
    assert source(3, frozenset()) == ["a", "crew-of-the-war-rig-1", "crew-of-the-war-rig-2"]


def test_overflow_looking_names_in_the_custom_list_are_never_repeated_in_one_call() -> None:
    source = ThemedSource(names=["mad-max-1", "mad-max-2"])
    result = source(4, frozenset())
    assert result == ["mad-max-1", "mad-max-2", "mad-max-3", "mad-max-4"]


def test_overflow_stops_at_the_name_length_limit() -> None:
    theme = "t" * 60  # "t…t-9" is 62 characters, "t…t-1000" would be 65
    source = ThemedSource(theme, names=[])
    used = frozenset({f"{theme}-998"})
    result = source(5, used)
    assert result == [f"{theme}-999"]
    assert all(is_valid_name(name) for name in result)


def test_overflow_with_100k_used_names_is_fast() -> None:
    used = frozenset(THEMES["mad-max"]) | frozenset(f"mad-max-{n}" for n in range(1, 100_001))
    source = ThemedSource()
    started = time.perf_counter()
    result = source(12, used)
    elapsed = time.perf_counter() - started
    assert result == [f"mad-max-{n}" for n in range(100_001, 100_013)]
    assert elapsed < 1.0  # linear in len(used); a quadratic scan would take minutes


@given(
    theme=st.sampled_from(sorted(THEMES)),
    count=st.integers(min_value=-2, max_value=120),
    used_list=st.lists(st.integers(min_value=0, max_value=60), max_size=40),
    used_overflow=st.lists(st.integers(min_value=0, max_value=500), max_size=10),
)
def test_source_yields_distinct_valid_unused_names(
    theme: str, count: int, used_list: list[int], used_overflow: list[int]
) -> None:
    names = THEMES[theme]
    used = frozenset(names[i] for i in used_list if i < len(names)) | {f"{theme}-{n}" for n in used_overflow}
    result = ThemedSource(theme)(count, used)
    assert len(result) == max(count, 0)
    assert len(set(result)) == len(result)
    assert not set(result) & used
    assert all(is_valid_name(name) and not is_reserved(name) for name in result)
    fresh_list_names = [name for name in names if name not in used]
    assert result[: len(fresh_list_names)] == fresh_list_names[: len(result)]
