"""Process identity: pid + start ticks since boot + boot id, and a three-way liveness.

Shared by the name pool (owner watching) and the worker locks (stale records). Nothing
here reads the wall clock: a wall-clock step of any size never makes a live process look
dead or another process look like it::

    me = identify(os.getpid())                # ProcessIdentity(pid, start_ticks, boot_id)
    me.liveness()                             # Liveness.ALIVE
    liveness(pid, start_ticks=..., boot_id=...)   # ALIVE, DEAD, or UNKNOWN

Only proof of death (no such process, a zombie, another start, another boot) is `DEAD`.
An error while looking (out of descriptors or memory, permission) is `UNKNOWN`: callers
free nothing on it and look again later.
"""

from __future__ import annotations

import enum
import errno
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

__all__ = [
    "BOOT_ID",
    "CREATE_TIME_TOLERANCE",
    "Liveness",
    "ProcessIdentity",
    "boot_time",
    "forget_spawned",
    "identify",
    "liveness",
    "liveness_by_start_time",
    "note_spawned",
    "spawned_name",
    "ticks_to_epoch",
]

#: v2 records carry only an epoch `start_time`; they are compared within this tolerance.
CREATE_TIME_TOLERANCE = 1.0


class Liveness(enum.Enum):
    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"


def _read_boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as boot_file:
            return boot_file.read().strip() or None
    except OSError:
        return None


#: This boot's id (`/proc/sys/kernel/random/boot_id`), or None where the kernel has none.
BOOT_ID: str | None = _read_boot_id()
_CLOCK_TICKS: int = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# errnos that prove there is no such process; anything else means "could not look".
_GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESRCH})


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """One process lifetime: pid, kernel start ticks since boot, and the boot's id."""

    pid: int
    start_ticks: int
    boot_id: str | None

    @property
    def start_time(self) -> float:
        """The v2 epoch start time (for records read by older code only; moves with the wall clock)."""
        return ticks_to_epoch(self.start_ticks)

    def liveness(self) -> Liveness:
        return liveness(self.pid, self.start_ticks, self.boot_id)


def identify(pid: int) -> ProcessIdentity | None:
    """The identity of the live, non-zombie process `pid`; None when there is none.

    Raises `OSError` when it cannot tell (EMFILE, ENOMEM, EACCES, ...): that is not death.
    """
    if type(pid) is not int or pid <= 0:
        return None
    ticks = _start_ticks(pid)
    return None if ticks is None else ProcessIdentity(pid, ticks, BOOT_ID)


def liveness(pid: int, start_ticks: int, boot_id: str | None) -> Liveness:
    """Whether the process that started at `start_ticks` in boot `boot_id` still runs as `pid`."""
    if boot_id is not None and BOOT_ID is not None and boot_id != BOOT_ID:
        return Liveness.DEAD
    try:
        current = identify(pid)
    except OSError:
        return Liveness.UNKNOWN
    if current is None or current.start_ticks != start_ticks:
        return Liveness.DEAD
    return Liveness.ALIVE


def liveness_by_start_time(pid: int, start_time: float | None) -> Liveness:
    """v2 judgement for records without start ticks: epoch start time within a tolerance.

    `start_time` None accepts any live process with that pid.
    """
    try:
        current = identify(pid)
    except OSError:
        return Liveness.UNKNOWN
    if current is None:
        return Liveness.DEAD
    if start_time is None or abs(current.start_time - start_time) <= CREATE_TIME_TOLERANCE:
        return Liveness.ALIVE
    return Liveness.DEAD


def boot_time() -> float:
    """The boot's epoch time as the kernel reports it now (moves with wall-clock steps)."""
    return float(psutil.boot_time())


def ticks_to_epoch(start_ticks: int) -> float:
    return boot_time() + start_ticks / _CLOCK_TICKS


def _start_ticks(pid: int) -> int | None:
    """Start ticks of live, non-zombie `pid`; None if gone; OSError if it cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            data = stat_file.read()
    except FileNotFoundError:
        if not os.path.isdir("/proc/self"):
            return _psutil_start_ticks(pid)
        return None
    except ProcessLookupError:
        return None
    except OSError as error:
        if error.errno in _GONE_ERRNOS:
            return None
        raise
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    if not fields:
        return None  # the process went away while the kernel produced the file
    if fields[0] in (b"Z", b"X"):
        return None  # zombie or dead
    try:
        return int(fields[19])
    except (IndexError, ValueError) as error:
        raise OSError(errno.EIO, f"unreadable /proc/{pid}/stat") from error


def _psutil_start_ticks(pid: int) -> int | None:
    # No /proc: psutil's creation time, scaled to ticks (only equal to itself, which is all we need).
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return round((process.create_time() - boot_time()) * _CLOCK_TICKS)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied as error:
        raise PermissionError(errno.EACCES, f"cannot inspect pid {pid}") from error


# -- children this daemon spawned with a name --------------------------------------------------

_spawned_lock = threading.Lock()
_spawned: dict[int, str] = {}


def note_spawned(pid: int, name: str) -> None:
    """Child `pid` was started by this process as `name` (a `WorkerProcess`); until reaped.

    Its pid cannot be reused before `forget_spawned` (the child is not reaped yet), so the
    entry names that very process.
    """
    with _spawned_lock:
        _spawned[pid] = name


def forget_spawned(pid: int) -> None:
    """Child `pid` was reaped: its pid may now name another process."""
    with _spawned_lock:
        _spawned.pop(pid, None)


def spawned_name(pids: Iterable[int]) -> str | None:
    """The name this process gave the first of `pids` it spawned and has not reaped, or None."""
    with _spawned_lock:
        for pid in pids:
            name = _spawned.get(pid)
            if name is not None:
                return name
    return None
