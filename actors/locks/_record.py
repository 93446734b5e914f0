"""What a worker lock's record says, and what it means: the pure core of the lock.

`LockInfo` is the JSON record `agent.lock` (`parse_record` / `encode_record`), and `judge`
decides what a record found on disk means — unlocked, held, stale, another host's,
corrupt — from the record alone and the owner's liveness (pid + start ticks + boot id,
never the wall clock). No file is touched here; `actors.locks._lock_file` reads and
writes the record under its guard::

    info = parse_record(b'{"pid": 4242, "start_time": 1.7e9, ...}')   # ValueError if malformed
    verdict = judge(data, mtime=mtime, boot_time=boot, this_host="build-3")
    verdict.state          # LockState.HELD while pid 4242 (that very process) runs
    verdict.describe(path)  # "locked by pid 4242 (session %4)"
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import os
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from actors import _process
from actors._errors import InvalidOwner
from actors._process import Liveness, ProcessIdentity, identify, liveness, liveness_by_start_time

__all__ = [
    "MAX_RECORD_BYTES",
    "LockInfo",
    "LockState",
    "Verdict",
    "check_owner",
    "encode_record",
    "is_same_owner",
    "judge",
    "own_identity",
    "parse_record",
    "record_liveness",
    "rfc3339",
    "start_time_of",
]

#: A real record is ~250 bytes; anything larger than this is not one of ours.
MAX_RECORD_BYTES = 64 * 1024
_MAX_PID = 2**31 - 1  # pid_t


@dataclass(frozen=True, slots=True)
class LockInfo:
    """The identity record of a held worker lock (the JSON fields of `agent.lock`).

    The owner is `pid` started at `start_ticks` (kernel clock ticks since boot) in boot
    `boot_id`, which no wall-clock step moves; `start_time` (epoch seconds) is kept for
    v2 readers, and judges records without ticks. `acquired_at`/`refreshed_at` are
    RFC 3339 UTC. `fence` grows strictly with every acquisition of the worker: on this
    host without a fleet (a counter kept in the guard file), fleet-wide with one (the
    store's), so storage the worker writes can refuse a stale holder (contract §7).
    """

    pid: int
    start_time: float
    acquired_at: str
    session_id: str
    hostname: str
    refreshed_at: str | None = None
    start_ticks: int | None = None
    boot_id: str | None = None
    fence: int = 0

    @property
    def has_identity(self) -> bool:
        """True when the record carries start ticks and boot id (v3): judged by them alone."""
        return self.start_ticks is not None and self.boot_id is not None


class LockState(enum.Enum):
    """What a record means: see `judge`."""

    UNLOCKED = "unlocked"  # no record
    HELD = "held"  # a live owner on this host (or one whose liveness cannot be told)
    STALE = "stale"  # owner dead, pid reused, another boot; or a v2/corrupt record from before boot
    FOREIGN = "foreign"  # another host's record: held, and never broken automatically
    CORRUPT = "corrupt"  # unreadable record from this boot: refused until force_release


@dataclass(frozen=True, slots=True)
class Verdict:
    """The judgement of one record: its state, the parsed record if readable, and why.

    `is_unknown`: HELD only because the owner's liveness could not be told (EMFILE,
    ENOMEM, EACCES reading /proc); only proof of death breaks a lock.
    """

    state: LockState
    info: LockInfo | None = None
    reason: str = ""
    is_unknown: bool = False

    @property
    def is_held(self) -> bool:
        """True when nobody but the owner (or `force_release`) may take the lock."""
        return self.state in (LockState.HELD, LockState.FOREIGN)

    def describe(self, record_path: str) -> str:
        """The `status()` line for this verdict (`record_path` is named when corrupt)."""
        info = self.info
        if self.state is LockState.UNLOCKED:
            return "unlocked"
        if self.state is LockState.STALE:
            return "stale (from before boot)" if info is None else f"stale (dead pid {info.pid})"
        if self.state is LockState.CORRUPT or info is None:
            return f"corrupt ({record_path})"
        if self.state is LockState.FOREIGN:
            return f"held on host {info.hostname}"
        return f"locked by pid {info.pid} (session {info.session_id})"


# -- the record ----------------------------------------------------------------------------


def _is_int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_pid(value: object) -> bool:
    return _is_int(value, 1, _MAX_PID)


# Each field's check and what it must be; None is also allowed where `optional`.
_CHECKS: dict[str, tuple[Callable[[object], bool], str, bool]] = {
    "pid": (_is_pid, "a positive int", False),
    "start_time": (lambda v: _is_int(v, -2**63, 2**63) or (isinstance(v, float) and math.isfinite(v)),
                   "a number", False),
    "acquired_at": (lambda v: isinstance(v, str), "a string", False),
    "session_id": (lambda v: isinstance(v, str), "a string", False),
    "hostname": (lambda v: isinstance(v, str) and bool(v), "a non-empty string", False),
    "refreshed_at": (lambda v: isinstance(v, str), "a string", True),
    "start_ticks": (lambda v: _is_int(v, 0, 2**63), "an int >= 0", True),
    "boot_id": (lambda v: isinstance(v, str) and bool(v), "a non-empty string", True),
    "fence": (lambda v: _is_int(v, 0, 2**63), "an int >= 0", True),
}


def parse_record(data: bytes) -> LockInfo:
    """Parse the bytes of `agent.lock`; ValueError (naming the fault) unless well formed.

    Unknown keys are ignored, so a newer writer's extra fields do not corrupt the record.
    """
    if len(data) > MAX_RECORD_BYTES:
        raise ValueError(f"larger than {MAX_RECORD_BYTES} bytes")
    try:
        obj = json.loads(data.decode("utf-8"))  # ours are ASCII: no encoding to detect
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"not JSON ({error})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"not a JSON object but {type(obj).__name__}")
    for key, (check, what, optional) in _CHECKS.items():
        value = obj.get(key)
        if not (check(value) or (optional and value is None)):
            raise ValueError(f"{key} is {reprlib.repr(value)}, not {what}")
    fields = {key: obj.get(key) for key in _CHECKS}
    fields |= {"start_time": float(obj["start_time"]), "fence": obj.get("fence") or 0}
    return LockInfo(**fields)  # type: ignore[arg-type]


_FIELDS = tuple(field.name for field in dataclasses.fields(LockInfo))
_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False)  # json.dumps would build one per call


def encode_record(info: LockInfo) -> bytes:
    """The bytes of `agent.lock` for `info`: one line of ASCII JSON of its fields."""
    fields = {name: getattr(info, name) for name in _FIELDS}
    return (_ENCODER.encode(fields) + "\n").encode("ascii")


@functools.lru_cache(maxsize=256)
def start_time_of(identity: ProcessIdentity) -> float:
    """The v2 epoch start time written beside the ticks (reading the boot time costs ~25 µs)."""
    return identity.start_time


def rfc3339(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- who is alive ----------------------------------------------------------------------------

# This process's identity, read from /proc once (keyed by pid: a forked child reads its own).
_own: ProcessIdentity | None = None


def own_identity() -> ProcessIdentity | None:
    """The calling process's identity; None only if /proc could not be read (retried next call)."""
    global _own
    own = _own
    pid = os.getpid()
    if own is None or own.pid != pid:
        try:
            own = _own = identify(pid)
        except OSError:
            return None
    return own


def record_liveness(info: LockInfo) -> Liveness:
    """Whether the record's owner still runs: by start ticks and boot id when the record
    has them (a record naming this very process needs no /proc read), else by the v2
    `start_time`."""
    if info.start_ticks is None or info.boot_id is None:
        return liveness_by_start_time(info.pid, info.start_time)
    own = own_identity()
    if own is not None and (info.pid, info.start_ticks, info.boot_id) == (own.pid, own.start_ticks, own.boot_id):
        return Liveness.ALIVE
    return liveness(info.pid, info.start_ticks, info.boot_id)


def judge(
    record: bytes | None,
    *,
    mtime: float,
    boot_time: float | Callable[[], float],
    this_host: str,
    liveness_of: Callable[[LockInfo], Liveness] = record_liveness,
) -> Verdict:
    """Decide what the record `record` (None: no file) last modified at `mtime` means.

    - another host's record is FOREIGN, whatever its age: our boot says nothing of theirs;
    - a record with start ticks and boot id is judged by them alone (another boot is
      death), never by its mtime: a wall-clock step cannot make a live holder stale;
    - a record that cannot be judged so — unreadable, or v2 without ticks — is STALE when
      modified before `boot_time` (no lock outlives a reboot, so a record torn by a crash
      never needs a human); otherwise an unreadable one is CORRUPT and a v2 one is judged
      by its start time;
    - only proof of death is STALE: a liveness that cannot be told is HELD (`is_unknown`).
    """
    if record is None:
        return Verdict(LockState.UNLOCKED)

    def is_from_before_boot() -> bool:
        return mtime < (boot_time() if callable(boot_time) else boot_time)

    try:
        info = parse_record(record)
    except ValueError as error:
        if is_from_before_boot():
            return Verdict(LockState.STALE, None, f"unreadable record from before boot ({error})")
        return Verdict(LockState.CORRUPT, None, str(error))
    if info.hostname != this_host:
        return Verdict(LockState.FOREIGN, info, f"held on host {info.hostname}")
    if not info.has_identity and is_from_before_boot():
        return Verdict(LockState.STALE, info, "record from before boot")
    alive = liveness_of(info)
    if alive is Liveness.DEAD:
        return Verdict(LockState.STALE, info, f"pid {info.pid} is dead or now another process")
    if alive is Liveness.UNKNOWN:
        return Verdict(LockState.HELD, info, f"could not tell whether pid {info.pid} lives", is_unknown=True)
    return Verdict(LockState.HELD, info)


def is_same_owner(info: LockInfo, owner: int | ProcessIdentity) -> bool:
    """Whether a held record names `owner` (a bare pid: the process running as it now)."""
    if isinstance(owner, int):
        return info.pid == owner
    if info.pid != owner.pid:
        return False
    if info.has_identity:
        return (info.start_ticks, info.boot_id) == (owner.start_ticks, owner.boot_id)
    return abs(info.start_time - owner.start_time) <= _process.CREATE_TIME_TOLERANCE


def check_owner(owner: object) -> int | ProcessIdentity:
    if isinstance(owner, ProcessIdentity) or _is_pid(owner):
        return owner  # type: ignore[return-value]
    raise InvalidOwner(f"owner must be a positive int pid, not {reprlib.repr(owner)}")
