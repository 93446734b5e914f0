"""The fleet tests' redis-server: the one `scripts/_redis_server.py` defines (chaos and the demo use it too)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parent.parent / "scripts" / "_redis_server.py"
_spec = importlib.util.spec_from_file_location("_redis_server", _PATH)
assert _spec is not None and _spec.loader is not None
_module = sys.modules.get("_redis_server") or importlib.util.module_from_spec(_spec)
if "_redis_server" not in sys.modules:
    sys.modules["_redis_server"] = _module
    _spec.loader.exec_module(_module)

RedisServer = _module.RedisServer
redis_binary = _module.redis_binary

__all__ = ["RedisServer", "redis_binary"]
