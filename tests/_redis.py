"""The fleet tests' redis-server: the one `scripts/_redis_server.py` defines (chaos and the demo use it too)."""

from __future__ import annotations

import sys
from pathlib import Path

_SCRIPTS = str(Path(__file__).resolve().parent.parent / "scripts")
if _SCRIPTS not in sys.path:
    sys.path.insert(0, _SCRIPTS)  # as chaos_fleet.py and fleet_demo.py import it

from _redis_server import RedisServer, redis_binary  # noqa: E402

__all__ = ["RedisServer", "redis_binary"]
