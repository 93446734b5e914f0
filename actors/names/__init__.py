"""The name pool: unique, human-friendly worker names, durable and reaped when owners die.

    from actors.names import NamePool

    pool = NamePool.start(state_path="/var/lib/fleet/names.state").proxy()
    name = pool.checkout_name(os.getpid()).get(timeout=5)   # "furiosa"

Modules: `_source` (themes, the default source, name rules), `_state` (the pure core),
`_journal` (snapshot + journal of changes, written on a thread of its own), `_pool` (the
actor).
"""

from actors.names._source import RESERVED_NAMES, THEMES, ThemedSource, validate_name
from actors.names._pool import NamePool

__all__ = ["NamePool", "RESERVED_NAMES", "THEMES", "ThemedSource", "validate_name"]
