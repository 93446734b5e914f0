"""How a daemon reaches the fleet's store: the URL, the settings, one client with hard timeouts.

    settings = FleetSettings.parse("redis://127.0.0.1:7000/0?namespace=ci", host_id="host-a")
    client = settings.connect()          # redis.Redis: explicit timeouts, no retries
    settings.key("names", "free")        # 'ci:names:free' -- every key lives under the namespace

redis-py's default retry policy can turn one call to a paused server into ten seconds; a
lease deadline cannot wait that long, so every call here fails within `fleet_timeout`
and the caller decides what a failure means (contract §7).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["DEFAULT_NAMESPACE", "SAFETY_MARGIN", "FleetSettings", "OnLockLost", "renew_interval"]

DEFAULT_NAMESPACE = "actors"
OnLockLost = Literal["terminate", "notify"]
#: How long before the server's expiry a holder stops trusting its lease (contract §7).
SAFETY_MARGIN = 2.0


def renew_interval(lease: float) -> float:
    """Every third of a lease, and at least twice before the holder's own deadline."""
    return min(lease / 3.0, (lease - SAFETY_MARGIN) / 2.0)


@dataclass(frozen=True)
class FleetSettings:
    """What `start_tree(fleet=URL, ...)` / `serve --fleet URL` configure (contract §7)."""

    url: str
    host_id: str
    namespace: str = DEFAULT_NAMESPACE
    host_lease: float = 15.0
    lock_lease: float = 15.0
    fleet_timeout: float = 2.0
    on_lock_lost: OnLockLost = "terminate"

    @classmethod
    def parse(
        cls,
        url: str,
        *,
        host_id: str | None = None,
        host_lease: float = 15.0,
        lock_lease: float = 15.0,
        fleet_timeout: float = 2.0,
        on_lock_lost: str = "terminate",
    ) -> FleetSettings:
        """Check every setting now, with a message that names it; the URL is not dialled."""
        if not isinstance(url, str) or not url:
            raise ValueError(f"fleet URL must be a non-empty string, not {url!r}")
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "unix"):
            raise ValueError(f"fleet URL {url!r}: expected redis://host:port/db or unix:///path/to/redis.sock")
        if parts.scheme == "unix" and not parts.path:
            raise ValueError(f"fleet URL {url!r}: a unix:// URL needs the socket's path")
        query = parse_qs(parts.query)
        namespace = query.get("namespace", [DEFAULT_NAMESPACE])[-1]
        if not namespace or any(character in namespace for character in ":{} \t\n"):
            raise ValueError(f"fleet namespace {namespace!r} must be non-empty, without ':', braces or spaces")
        host = socket.gethostname() if host_id is None else host_id
        if not isinstance(host, str) or not host or len(host) > 255 or any(c in host for c in ":\n\0"):
            raise ValueError(f"host_id must be 1-255 characters without ':' or newlines, not {host!r}")
        for label, value in (("host_lease", host_lease), ("lock_lease", lock_lease)):
            if not isinstance(value, int | float) or not 3.0 <= value <= 86_400.0:
                raise ValueError(f"{label} must be between 3 and 86400 seconds, not {value!r}")
        if not isinstance(fleet_timeout, int | float) or not 0.05 <= fleet_timeout <= 60.0:
            raise ValueError(f"fleet_timeout must be between 0.05 and 60 seconds, not {fleet_timeout!r}")
        if on_lock_lost not in ("terminate", "notify"):
            raise ValueError(f"on_lock_lost must be 'terminate' or 'notify', not {on_lock_lost!r}")
        return cls(
            url=url,
            host_id=host,
            namespace=namespace,
            host_lease=float(host_lease),
            lock_lease=float(lock_lease),
            fleet_timeout=float(fleet_timeout),
            on_lock_lost=on_lock_lost,  # type: ignore[arg-type]
        )

    def key(self, *parts: str) -> str:
        """A key of this fleet: `namespace:part:part`."""
        return ":".join((self.namespace, *parts))

    def connect(self) -> redis.Redis:
        """A client whose every call fails within `fleet_timeout`: no retries, no backoff."""
        parts = urlsplit(self.url)
        common = {
            "socket_timeout": self.fleet_timeout,
            "socket_connect_timeout": self.fleet_timeout,
            "retry": Retry(NoBackoff(), 0),
            "retry_on_timeout": False,
            "health_check_interval": 0,
            "client_name": f"actors:{self.host_id}",
        }
        if parts.scheme == "unix":
            return redis.Redis(
                unix_socket_path=unquote(parts.path),
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
                **common,  # type: ignore[arg-type]
            )
        database = parts.path.lstrip("/")
        return redis.Redis(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=int(database) if database else 0,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            **common,  # type: ignore[arg-type]
        )
