"""The name pool's state in the fleet's store: each change is one Lua script, applied before it is answered.

    names = FleetNames(settings)                       # its own client: every call within fleet_timeout
    host = FleetHost(settings, token="...")            # actors.fleet._hosts: the lease and the epoch
    host.join()
    names.checkout(host.id, host.epoch, 4242, start)   # 'furiosa' (None: a chunk is needed first)
    names.accept(host.id, host.epoch, ["nux", "slit"]) # the source's chunk, deduplicated fleet-wide
    names.checkin(host.id, host.epoch, "furiosa")

This module only speaks to the store: `NamePool(fleet=...)` (actors/names/_pool.py) keeps
the rules of contract §2 around it (validation, the source off the thread, events), and
`FleetHost` decides when this host may act. Every redis failure becomes
`FleetUnavailable`; a script that finds the caller's epoch stale or its lease expired
raises `StaleEpoch` (a `FleetUnavailable` too), so the host joins again.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from typing import Any, TypeVar, cast

import redis

from actors._errors import FleetUnavailable, NotPermitted
from actors.fleet._connection import FleetSettings
from actors.fleet._scripts import Scripts, as_list
from actors.names._state import Owner, ProcessStart, Start

__all__ = ["FleetNames", "StaleEpoch", "encode_owner", "encode_start", "store_call"]

_T = TypeVar("_T")


class StaleEpoch(FleetUnavailable):
    """The store refused a request of an old epoch (or of a host whose lease ran out)."""


def store_call(settings: FleetSettings, call: Callable[[], _T]) -> _T:
    """`call()`, with every redis failure turned into `FleetUnavailable` naming the budget."""
    try:
        return call()
    except FleetUnavailable:
        raise
    except (redis.TimeoutError, TimeoutError) as error:
        raise FleetUnavailable(
            errno.ETIMEDOUT, f"the fleet store did not answer within {settings.fleet_timeout:g}s: {error}"
        ) from None
    except (redis.RedisError, OSError, ValueError) as error:
        raise FleetUnavailable(
            errno.EHOSTUNREACH, f"the fleet store cannot be used ({type(error).__name__}: {error})"
        ) from None


def encode_start(start: Start) -> str:
    """A process start as the store keeps it: "ticks:boot_id" ('' when unknown)."""
    if type(start) is ProcessStart:
        return f"{start.start_ticks}:{start.boot_id or ''}"
    return ""


def decode_start(text: str) -> ProcessStart | None:
    ticks, _, boot = text.partition(":")
    if not ticks.isdigit():
        return None
    return ProcessStart(int(ticks), boot or None)


def encode_owner(owner: Owner) -> tuple[str, str]:
    """(kind, value): ('a', '') anonymous, ('p', pid) or ('s', text)."""
    if owner is None:
        return "a", ""
    if type(owner) is int:
        return "p", str(owner)
    return "s", str(owner)


def decode_owner(entry: Any) -> Owner:
    """An owner entry of the store (["a"], ["s", text], ["p", pid, start]) as the pool's owner."""
    if entry[0] == "p":
        return int(entry[1])
    if entry[0] == "s":
        return str(entry[1])
    return None


class FleetNames:
    """The store side of a fleet name pool: one method per script, answers as plain values."""

    def __init__(self, settings: FleetSettings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.client = client if client is not None else settings.connect()
        self._scripts = Scripts(self.client, settings)

    def _run(self, script: str, *argv: Any) -> dict[str, Any]:
        result = store_call(self.settings, lambda: self._scripts.run(script, *argv))
        status = result["status"]
        if status in ("STALE", "EXPIRED"):
            what = "is no longer current" if status == "STALE" else "belongs to a lease that ran out"
            raise StaleEpoch(errno.ESTALE, f"the fleet refused this host's request: its epoch {what}; rejoining")
        return result

    # -- changes ----------------------------------------------------------------------------

    def checkout(self, host: str, epoch: int, owner: Owner, start: Start) -> tuple[str | None, bool]:
        """(name, is_new): the name `owner` holds, or a fresh one; (None, False) when none is free."""
        kind, value = encode_owner(owner)
        result = self._run("checkout", host, epoch, kind, value, encode_start(start))
        if result["status"] == "EMPTY":
            return None, False
        return result["name"], bool(result.get("new"))

    def key_checkout(
        self, host: str, epoch: int, key: str, owner: Owner, start: Start, dead: list[tuple[int, Start]]
    ) -> str | None:
        """The last name of worker `key` when no live process outside it holds it, else a fresh one."""
        kind, value = encode_owner(owner)
        dead_json = json.dumps([[pid, encode_start(recorded)] for pid, recorded in dead])
        result = self._run("key_checkout", host, epoch, key, kind, value, encode_start(start), dead_json)
        return None if result["status"] == "EMPTY" else result["name"]

    def checkin(self, host: str, epoch: int, name: str) -> bool:
        """True when `name` was checked out (it is free now, on top of the stack)."""
        return self._run("checkin", host, epoch, name)["status"] == "RETURNED"

    def associate(self, host: str, epoch: int, name: str, owner: Owner, start: Start) -> bool:
        """`owner` joins `name` (or checks it out); True when the name was not checked out before.

        Raises `NotPermitted` when another host holds `name`, or keeps it in quarantine."""
        kind, value = encode_owner(owner)
        result = self._run("associate", host, epoch, name, kind, value, encode_start(start))
        if result["status"] == "ACROSS":
            raise NotPermitted(f"associate_name: {name!r} is held on host {result['holder']!r}, not on {host!r}")
        if result["status"] == "QUARANTINED":
            raise NotPermitted(
                f"associate_name: {name!r} belonged to host {result['holder']!r}, whose lease ran out; "
                "it is kept from everyone for one more host lease"
            )
        return bool(result.get("restored"))

    def dissociate(self, host: str, epoch: int, owner: Owner) -> tuple[str | None, bool]:
        """(name the owner left or None, whether that name went back to the pool)."""
        kind, value = encode_owner(owner)
        result = self._run("dissociate", host, epoch, kind, value)
        return result.get("name"), bool(result.get("returned"))

    def drop_dead(self, host: str, epoch: int, dead: list[tuple[int, Start]]) -> list[str]:
        """Remove this host's int owners proven dead (when still recorded with that start)."""
        dead_json = json.dumps([[pid, encode_start(start)] for pid, start in dead])
        return as_list(self._run("drop_dead", host, epoch, dead_json).get("returned"))

    def accept(self, host: str, epoch: int, names: list[str]) -> list[str]:
        """Add the names no one in the fleet knows under the free stack; return them."""
        if not names:
            return []
        return as_list(self._run("accept", host, epoch, *names).get("accepted"))

    def reset(self, host: str, epoch: int) -> None:
        self._run("reset", host, epoch)

    def reconcile(
        self, host: str, epoch: int, listed: list[str], live: dict[str, list[int]]
    ) -> tuple[list[str], list[str]]:
        """(names kept for live owners, listed names another host holds)."""
        result = self._run("reconcile", host, epoch, json.dumps(listed), json.dumps(live))
        return as_list(result.get("kept")), as_list(result.get("refused"))

    # -- reads ------------------------------------------------------------------------------

    def name_of(self, host: str, owner: Owner, start: Start) -> str | None:
        """The name `owner` holds or is associated with (an int owner: of this host, same process)."""
        if owner is None:
            return None
        kind, value = encode_owner(owner)
        return self._run("name_of", host, kind, value, encode_start(start)).get("name")

    def host_names(self, host: str) -> dict[str, list[tuple[Owner, ProcessStart | None]]]:
        """This host's held names: name -> [(owner, recorded start), ...]."""
        result = self._run("host_names", host)
        names: dict[str, list[tuple[Owner, ProcessStart | None]]] = {}
        for name, owners in as_list(result.get("names")):
            names[name] = [
                (decode_owner(entry), decode_start(entry[2]) if entry[0] == "p" else None) for entry in as_list(owners)
            ]
        return names

    def _held_record(self, name: str) -> dict[str, Any] | None:
        raw = store_call(self.settings, lambda: self.client.hget(self.settings.key("names", "held"), name))
        return json.loads(cast("bytes", raw)) if raw else None

    def is_held(self, name: str) -> bool:
        """True when some host holds `name` (or keeps it in quarantine)."""
        return self._held_record(name) is not None

    def key_holders(self, host: str, key: str) -> list[tuple[int, ProcessStart | None]]:
        """The int owners (this host's pids, with their recorded starts) of worker `key`'s last name."""
        name = store_call(self.settings, lambda: self.client.hget(self.settings.key("names", "keys"), f"{host}:{key}"))
        if not name:
            return []
        record = self._held_record(name.decode() if isinstance(name, bytes) else cast("str", name))
        if record is None or record.get("h") != host:
            return []
        return [(int(entry[1]), decode_start(entry[2])) for entry in as_list(record.get("o")) if entry[0] == "p"]

    def stats(self) -> dict[str, int]:
        result = self._run("stats")
        return {
            "available_count": int(result["available"]),
            "checked_out_count": int(result["held"]) - int(result["quarantined"]),
            "quarantined_count": int(result["quarantined"]),
            "all_used_count": int(result["known"]),
        }

    def known(self) -> frozenset[str]:
        """Every name the fleet ever accepted (the source's `used`). O(n): per chunk only."""
        key = self.settings.key("names", "known")
        members = cast("set[bytes]", store_call(self.settings, lambda: self.client.smembers(key)))
        return frozenset(member.decode() if isinstance(member, bytes) else member for member in members)

    def fleet(self) -> dict[str, Any]:
        """Hosts, their leases (server time), held names by host: for `status`."""
        return self._run("fleet")
