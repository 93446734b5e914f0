"""Idle child processes for the tests that need a live pid, and ending them on purpose.

    owner = sleeper()     # a live process (it sleeps for a minute)
    ...                   # names or locks owned by owner.pid
    end(owner)            # killed and reaped: from now on its pid is a dead owner
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

END_TIMEOUT = 10.0


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def end(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=END_TIMEOUT)
