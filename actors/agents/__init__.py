"""The agent pool: live backends kept warm, evicted on idle TTL and an LRU cap, never while busy.

    from actors.agents import AgentPool

    pool = AgentPool.start(idle_ttl=600, max_live=8).proxy()
    pool.register("chat-1", "coder", session).get(timeout=5)

Modules: `_registry` (the pure core and sweep decisions), `_pool` (the actor).
"""

from actors.agents._registry import InvalidBackend, InvalidKey, InvalidSetting
from actors.agents._pool import AgentPool

__all__ = ["AgentPool", "InvalidBackend", "InvalidKey", "InvalidSetting"]
