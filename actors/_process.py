"""Process identity: a pid plus its creation time, so a reused pid is not the old process.

Shared by the name pool (owner watching) and the worker locks (stale records).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

__all__ = ["CREATE_TIME_TOLERANCE", "ProcessIdentity", "is_same_process_alive", "process_start_time"]

#: Creation times compared equal within this many seconds (psutil's value is rounded
#: differently across platforms and boot-time adjustments).
CREATE_TIME_TOLERANCE = 1.0


def process_start_time(pid: int) -> float | None:
    """Creation time (epoch seconds) of the live, non-zombie process `pid`, or None."""
    if pid <= 0:
        return None
    if _PROC_STAT:
        return _linux_start_time(pid)
    return _psutil_start_time(pid)


def _psutil_start_time(pid: int) -> float | None:
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ValueError, OverflowError):
        return None


def _linux_start_time(pid: int) -> float | None:
    # /proc/<pid>/stat directly: ~10x cheaper than psutil.Process(), and the same
    # figure psutil computes (boot time + start ticks / clock ticks per second).
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            data = stat_file.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
        return None
    # The command name may contain spaces and parentheses: fields start after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    if not fields or fields[0] in (b"Z", b"X"):  # zombie or dead
        return None
    try:
        ticks = int(fields[19])
    except (IndexError, ValueError):
        return _psutil_start_time(pid)
    return _BOOT_TIME + ticks / _CLOCK_TICKS


_PROC_STAT = os.path.exists(f"/proc/{os.getpid()}/stat") and hasattr(os, "sysconf")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if _PROC_STAT else 100
_BOOT_TIME = psutil.boot_time()


def is_same_process_alive(pid: int, start_time: float | None) -> bool:
    """True when `pid` runs and is the process that started at `start_time`.

    With `start_time` None (unknown), any live process with that pid counts.
    """
    current = process_start_time(pid)
    if current is None:
        return False
    if start_time is None:
        return True
    return abs(current - start_time) <= CREATE_TIME_TOLERANCE


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """A pid pinned to one process lifetime."""

    pid: int
    start_time: float | None

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity:
        """The identity of `pid` now (start_time None if it does not run)."""
        return cls(pid, process_start_time(pid))

    @classmethod
    def current(cls) -> ProcessIdentity:
        return cls.of(os.getpid())

    def is_alive(self) -> bool:
        return self.start_time is not None and is_same_process_alive(self.pid, self.start_time)
