"""Worker names: validation, reserved role names, themed name lists and `ThemedSource`.

A name source ("nomenclater") is any callable `source(count, used) -> list[str]`; the
name pool calls it off its thread when it runs out of names::

    source = ThemedSource("minerals")
    source(3, frozenset({"quartz"}))          # ['obsidian', 'jasper', 'onyx']
    validate_name("furiosa")                  # 'furiosa'
    validate_name("../etc")                   # raises InvalidName

Everything here is pure: no I/O, no clock, no shared mutable state.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection, Iterable

from actors._errors import InvalidName
from supervision._errors import describe

__all__ = [
    "MAX_NAME_LENGTH",
    "RESERVED_NAMES",
    "THEMES",
    "ThemedSource",
    "is_reserved",
    "is_valid_name",
    "validate_name",
]

#: Names longer than this are refused (they end up in paths, tmux sessions, log lines).
MAX_NAME_LENGTH = 64

#: Role names of the town (gastown); never handed out as a worker's name.
#: Compared case-insensitively (`is_reserved`).
RESERVED_NAMES: frozenset[str] = frozenset({"mayor", "witness", "deacon", "refinery", "crew", "polecats"})

# Categories refused beyond ASCII: controls (Cc), invisible format characters such as
# bidi overrides that make a name display as something else (Cf), line/paragraph
# separators that break log lines (Zl, Zp), and lone surrogates that cannot be
# encoded as UTF-8 and so could never be written to a state file (Cs).
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def validate_name(name: object) -> str:
    """Return `name` (as a plain `str`) if it is a valid worker name, else raise `InvalidName`.

    A valid name is a `str`, 1 to 64 characters long, without `/` or `\\`, without
    control or invisible format characters, and not `.` or `..` (names become paths).
    """
    # Fast path for the common case (plain printable ASCII): this runs on every check-in.
    if (
        type(name) is str
        and 0 < len(name) <= MAX_NAME_LENGTH
        and name.isascii()
        and name.isprintable()
        and "/" not in name
        and "\\" not in name
        and name != "."
        and name != ".."
    ):
        return name
    problem = _name_problem(name)
    if problem is not None:
        raise InvalidName(f"invalid name {describe(name)}: {problem}")
    return str(name)


def is_valid_name(name: object) -> bool:
    """True when `validate_name(name)` would accept `name`."""
    return _name_problem(name) is None


def is_reserved(name: str) -> bool:
    """True when `name` is a reserved role name, ignoring case."""
    return name.casefold() in RESERVED_NAMES


def _name_problem(name: object) -> str | None:
    """The rule `name` breaks, or None if it is valid."""
    if not isinstance(name, str):
        return f"a name must be a str, not {type(name).__name__}"
    if not name:
        return "a name must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"a name must be at most {MAX_NAME_LENGTH} characters long, not {len(name)}"
    if "/" in name or "\\" in name:
        return "a name must not contain '/' or '\\'"
    if name in (".", ".."):
        return "a name must not be '.' or '..'"
    if not (name.isascii() and name.isprintable()):
        for character in name:
            if unicodedata.category(character) in _REFUSED_CATEGORIES:
                return f"a name must not contain control or format characters (found {character!r})"
    return None


#: Built-in name lists, 50 distinct valid, non-reserved lowercase names each.
THEMES: dict[str, tuple[str, ...]] = {
    "mad-max": (
        "furiosa", "nux", "slit", "rictus", "immortan", "max", "capable", "toast", "dag", "cheedo",
        "angharad", "dementus", "valkyrie", "keeper", "morsov", "ace", "warboy", "imperator",
        "organic", "coma", "splendid", "bullet", "toecutter", "goose", "nightrider", "glory",
        "scrotus", "chumbucket", "corpus", "dinki", "prime", "vuvalini", "rockryder", "wretched",
        "buzzard", "citadel", "fury", "interceptor", "blackfinger", "wraith", "chrome", "shiny",
        "mediocre", "guzzoline", "gyro", "jedediah", "feral", "toadie", "pappagallo", "savannah",
    ),
    "minerals": (
        "obsidian", "quartz", "jasper", "onyx", "opal", "topaz", "garnet", "ruby", "amber", "jade",
        "pearl", "flint", "granite", "basalt", "marble", "shale", "slate", "pyrite", "mica",
        "agate", "malachite", "turquoise", "lapis", "emerald", "sapphire", "diamond", "amethyst",
        "citrine", "zircon", "peridot", "coral", "jet", "moonstone", "sunstone", "bloodstone",
        "rhodonite", "sodalite", "hematite", "magnetite", "calcite", "fluorite", "selenite",
        "kyanite", "labradorite", "amazonite", "chalcedony", "carnelian", "aventurine",
        "chrysoprase", "heliodor",
    ),
    "wasteland": (
        "rust", "dust", "scrap", "ash", "cinder", "grit", "husk", "salvage", "drift", "ember",
        "static", "nitro", "thunder", "scavenger", "ghoul", "mutant", "raider", "vault", "crater",
        "ruin", "relic", "tinker", "nomad", "wanderer", "courier", "settler", "drifter",
        "outrider", "sentinel", "ranger", "scout", "hermit", "jackal", "vulture", "coyote",
        "scorpion", "mesa", "dune", "gulch", "canyon", "badland", "rubble", "flare", "mirage",
        "sandstorm", "tumbleweed", "piston", "sprocket", "gauge", "bolt",
    ),
}


class ThemedSource:
    """The default name source: a themed (or custom) list, then numbered overflow names.

    `ThemedSource(theme="mad-max", names=None)`; `names` replaces the theme's list with
    a custom one (non-`str`, invalid, reserved and repeated entries are dropped, order
    kept), and `theme` then only sets the overflow prefix. Reserved names
    (`RESERVED_NAMES`, any case) are removed from every list.

    `source(count, used)` returns up to `count` names not in `used`: first the list's
    names in list order, then overflow names `f"{theme}-{n}"` numbered above the highest
    such number in `used` or in the list, so an overflow name never repeats one the pool
    knows, even after the pool lost its state and learned names back via reconcile.
    Deterministic; one call costs O(len(list) + len(used)).
    """

    def __init__(self, theme: str = "mad-max", names: Iterable[str] | None = None) -> None:
        if not isinstance(theme, str):
            raise ValueError(f"theme must be a str, not {type(theme).__name__}")
        if names is None:
            if theme not in THEMES:
                raise ValueError(f"unknown theme {theme!r} (known: {', '.join(sorted(THEMES))})")
            names = THEMES[theme]
        elif isinstance(names, (str, bytes)):
            raise ValueError("names must be a list of names, not a single string")
        if not is_valid_name(f"{theme}-1"):
            raise ValueError(f"theme {theme!r} does not make valid overflow names like {theme + '-1'!r}")
        self._theme = theme
        self._prefix = f"{theme}-"
        self._names = _usable_names(names)
        # A custom list may itself hold overflow-looking names; numbering starts above them
        # so one call can never yield the same name twice.
        self._list_highest_overflow = _highest_overflow_number(self._prefix, self._names)

    @property
    def theme(self) -> str:
        """The theme; also the prefix of overflow names."""
        return self._theme

    @property
    def names(self) -> tuple[str, ...]:
        """The usable list, in hand-out order."""
        return self._names

    def __call__(self, count: int, used: Collection[str]) -> list[str]:
        """Up to `count` names not in `used`: list names first, then overflow names."""
        if count <= 0:
            return []
        chosen: list[str] = []
        for name in self._names:
            if name not in used:
                chosen.append(name)
                if len(chosen) >= count:
                    return chosen
        # The list is used up: scan `used` once (only now) for the highest overflow number.
        number = max(self._list_highest_overflow, _highest_overflow_number(self._prefix, used)) + 1
        while len(chosen) < count:
            name = f"{self._prefix}{number}"
            if len(name) > MAX_NAME_LENGTH:
                break  # numbers ran past the length limit: yield what is valid
            chosen.append(name)
            number += 1
        return chosen

    def __repr__(self) -> str:
        return f"ThemedSource(theme={self._theme!r}, names={len(self._names)})"


def _usable_names(names: Iterable[object]) -> tuple[str, ...]:
    """Valid, non-reserved, distinct `str` names of `names`, first occurrence kept."""
    seen: dict[str, None] = {}
    for name in names:
        if isinstance(name, str) and is_valid_name(name) and not is_reserved(name):
            seen.setdefault(str(name), None)
    return tuple(seen)


def _highest_overflow_number(prefix: str, names: Iterable[str]) -> int:
    """The highest `n` such that `prefix + str(n)` is in `names` (0 if none)."""
    start = len(prefix)
    highest = ""
    # Compare digit strings by (length, text) instead of calling int() on each: with
    # ~100k overflow names in `used` this is the whole cost of a call. Only canonical
    # numbers (ASCII digits, no leading zero) can equal a name this source writes.
    for suffix in [name[start:] for name in names if name.startswith(prefix)]:
        if (
            (len(suffix) > len(highest) or (len(suffix) == len(highest) and suffix > highest))
            and suffix.isascii()
            and suffix.isdigit()
            and suffix[0] != "0"
        ):
            highest = suffix
    return int(highest) if highest else 0
