"""Worker leases in the fleet's store: one Lua script per decision, fenced (contract §7).

A worker lock held fleet-wide is a hash `ns:lock:<resolved worker dir>` that expires on the
server's clock (`PEXPIRE`), plus a counter `ns:fence:<dir>` that is `INCR`ed on every new
acquisition and never expires, so the fence grows strictly across the whole fleet::

    leases = WorkerLeases(FleetSettings.parse("unix:///run/redis.sock", host_id="host-a"))
    owner = owner_key("host-a", 4242, 123456, "b00t")
    lease = leases.acquire("/srv/tree/w1", owner, pid=4242, session_id="%4")   # Locked if taken
    leases.renew("/srv/tree/w1", owner, lease.fence)     # False once it ran out or was taken
    leases.release("/srv/tree/w1", owner, lease.fence)   # LockLost after expiry, Locked if not ours
    list_worker_leases(settings)                         # for `status`: path, host, pid, fence, ...

An acquire by the lease's own owner is idempotent: a retry whose reply was lost gets the same
lease and fence (and the expiry set anew). A renewal *sets* the expiry to now + lease on the
server's clock, never adds. Every call fails within `fleet_timeout` as `FleetUnavailable`.
Why the holder's deadline is safe: docs/design-fleet-locks.md.
"""

from __future__ import annotations

import json
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from loguru import logger

from actors._errors import FleetUnavailable, Locked, LockLost
from actors.fleet._connection import FleetSettings
from supervision import BadCall

__all__ = ["Lease", "RenewalJob", "Renewer", "WorkerLeases", "list_worker_leases", "owner_key"]

# KEYS[1] lease, KEYS[2] fence; ARGV owner, lease_ms, host, pid, session, acquired_at.
# A taken lease answers {0, host, pid, session, fence, pttl}; ours {1, fence, session}.
_ACQUIRE = """
local held = redis.call('HMGET', KEYS[1], 'owner', 'host', 'pid', 'session', 'fence')
if held[1] and held[1] ~= ARGV[1] then
  return {0, held[2], held[3], held[4], held[5], redis.call('PTTL', KEYS[1])}
end
local fence = held[5]
local session = held[4]
if not held[1] then
  fence = redis.call('INCR', KEYS[2])
  session = ARGV[5]
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'host', ARGV[3], 'pid', ARGV[4], 'session', session,
             'fence', fence, 'acquired_at', ARGV[6])
elseif ARGV[5] ~= '' then
  session = ARGV[5]
  redis.call('HSET', KEYS[1], 'session', session)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, tonumber(fence), session}
"""

# KEYS[1] lease; ARGV owner, fence, lease_ms. {1} renewed, {0} gone, {2, host, pid, session, fence} taken.
_RENEW = """
local held = redis.call('HMGET', KEYS[1], 'owner', 'fence', 'host', 'pid', 'session')
if held[1] == ARGV[1] and held[2] == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1}
end
if not held[1] then return {0} end
return {2, held[3], held[4], held[5], held[2]}
"""

# KEYS[1] lease; ARGV owner, fence. {1} released, {0} gone, {2, host, pid, session, fence} another's.
_RELEASE = """
local held = redis.call('HMGET', KEYS[1], 'owner', 'fence', 'host', 'pid', 'session')
if held[1] == ARGV[1] and held[2] == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return {1}
end
if not held[1] then return {0} end
return {2, held[3], held[4], held[5], held[2]}
"""

# KEYS[1] lease. The fields of the lease removed (flat), or {}.
_FORCE_RELEASE = """
local held = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return held
"""

# KEYS[1] lease. {pttl, field, value, ...} of a live lease, or {}.
_READ = """
local held = redis.call('HGETALL', KEYS[1])
if #held == 0 then return {} end
local reply = {redis.call('PTTL', KEYS[1])}
for _, item in ipairs(held) do reply[#reply + 1] = item end
return reply
"""

_MAX_SESSION_ID_LENGTH = 1024


def owner_key(host_id: str, pid: int, start_ticks: int | None, boot_id: str | None) -> str:
    """Who holds a lease: one lifetime of one process on one host (the idempotency key)."""
    return json.dumps([host_id, pid, start_ticks, boot_id], separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker lease as the store holds it; `expires_in` in seconds on the server's clock."""

    path: str
    host: str
    pid: int
    session_id: str
    fence: int
    expires_in: float
    owner: str = ""
    acquired_at: str = ""

    def describe(self) -> str:
        return f"host {self.host} by pid {self.pid} (session {self.session_id}), fence {self.fence}"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _path_key(settings: FleetSettings, kind: str, path: str) -> bytes:
    """`ns:kind:<path>` with the path's bytes as the filesystem has them (a name that is not
    UTF-8 is still one worker, and one key)."""
    return settings.key(kind, "").encode() + os.fsencode(path)


def _check_path(path: object) -> str:
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise BadCall(f"a worker lease is keyed by a resolved absolute path, not {path!r}")
    return path


def _check_owner(owner: object) -> str:
    if not isinstance(owner, str) or not owner:
        raise BadCall(f"a lease owner is a non-empty str (see owner_key), not {owner!r}")
    return owner


def _check_fence(fence: object) -> int:
    if isinstance(fence, bool) or not isinstance(fence, int) or fence < 1:
        raise BadCall(f"a fence is an int >= 1, not {fence!r}")
    return fence


@contextmanager
def _answered(settings: FleetSettings, what: str) -> Iterator[None]:
    """Any failure of the store (no answer, refused, loading) is `FleetUnavailable`."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as error:
        raise FleetUnavailable(f"the fleet store did not answer within {settings.fleet_timeout}s "
                               f"({what}): {error}") from error
    except redis.RedisError as error:
        raise FleetUnavailable(f"the fleet store refused {what}: {error}") from error


class WorkerLeases:
    """The store's side of one daemon's worker locks: scripts registered once on one client.

    Thread-safe (redis-py's pool hands each thread its own connection). Every method fails
    within `settings.fleet_timeout` with `FleetUnavailable`; bad arguments are `BadCall`.
    """

    def __init__(self, settings: FleetSettings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.client = settings.connect() if client is None else client
        # register_script's __call__ loads the script again after NOSCRIPT (a restarted server).
        self._acquire = self.client.register_script(_ACQUIRE)
        self._renew = self.client.register_script(_RENEW)
        self._release = self.client.register_script(_RELEASE)
        self._force_release = self.client.register_script(_FORCE_RELEASE)
        self._read = self.client.register_script(_READ)
        self._lease_ms = int(settings.lock_lease * 1000)

    def close(self) -> None:
        self.client.close()

    def lease_key(self, path: str) -> bytes:
        return _path_key(self.settings, "lock", path)

    def fence_key(self, path: str) -> bytes:
        return _path_key(self.settings, "fence", path)

    def acquire(self, path: str, owner: str, *, pid: int, session_id: str = "", acquired_at: str = "") -> Lease:
        """Take (or, for its own owner, take again) the lease of `path`; `Locked` if another holds it."""
        path, owner = _check_path(path), _check_owner(owner)
        if isinstance(pid, bool) or not isinstance(pid, int) or pid < 1:
            raise BadCall(f"pid must be a positive int, not {pid!r}")
        if not isinstance(session_id, str) or len(session_id) > _MAX_SESSION_ID_LENGTH:
            raise BadCall(f"session_id must be a str of at most {_MAX_SESSION_ID_LENGTH} characters")
        try:
            session_id.encode()
        except UnicodeEncodeError:
            raise BadCall(f"session_id {session_id!r} cannot be encoded as UTF-8") from None
        with _answered(self.settings, f"the acquire of {path}"):
            reply = self._acquire(
                keys=[self.lease_key(path), self.fence_key(path)],
                args=[owner, self._lease_ms, self.settings.host_id, pid, session_id, acquired_at],
            )
        if reply[0] == 1:
            return Lease(path, self.settings.host_id, pid, _text(reply[2]), int(reply[1]),
                         self.settings.lock_lease, owner, acquired_at)
        _, host, held_pid, session, fence, pttl = reply
        held = Lease(path, _text(host), _int(held_pid), _text(session), _int(fence), max(_int(pttl), 0) / 1000)
        raise Locked(f"held on host {held.host} by pid {held.pid} (session {held.session_id}), "
                     f"fence {held.fence}, for {held.expires_in:.1f}s more unless renewed: {path}")

    def renew(self, path: str, owner: str, fence: int) -> tuple[bool, str]:
        """Set the expiry of `owner`'s lease (under `fence`) to now + lock_lease on the server.

        (True, "") when renewed; (False, why) when the lease ran out or is now another's.
        """
        path, owner, fence = _check_path(path), _check_owner(owner), _check_fence(fence)
        with _answered(self.settings, f"the renewal of {path}"):
            reply = self._renew(keys=[self.lease_key(path)], args=[owner, fence, self._lease_ms])
        if reply[0] == 1:
            return True, ""
        return False, self._refusal(path, fence, reply)

    def renew_many(self, renewals: list[tuple[str, str, int]]) -> list[tuple[str, str]]:
        """`renew` each (path, owner, fence) in one pipeline: per renewal ("renewed", ""),
        ("refused", why) or ("unavailable", why); `FleetUnavailable` if the store does not
        answer at all."""
        for path, owner, fence in renewals:
            _check_path(path), _check_owner(owner), _check_fence(fence)
        with _answered(self.settings, f"the renewal of {len(renewals)} worker leases"):
            pipeline = self.client.pipeline(transaction=False)
            for path, owner, fence in renewals:
                self._renew(keys=[self.lease_key(path)], args=[owner, fence, self._lease_ms], client=pipeline)
            replies = pipeline.execute(raise_on_error=False)
        outcomes: list[tuple[str, str]] = []
        for (path, _owner, fence), reply in zip(renewals, replies, strict=True):
            if isinstance(reply, Exception):
                outcomes.append(("unavailable", f"the fleet store refused the renewal of {path}: {reply}"))
            elif reply[0] == 1:
                outcomes.append(("renewed", ""))
            else:
                outcomes.append(("refused", self._refusal(path, fence, reply)))
        return outcomes

    def release(self, path: str, owner: str, fence: int) -> None:
        """Remove `owner`'s lease under `fence`. `LockLost` if it ran out (or was taken after),
        `Locked` if another owner holds it; nothing is removed then."""
        path, owner, fence = _check_path(path), _check_owner(owner), _check_fence(fence)
        with _answered(self.settings, f"the release of {path}"):
            reply = self._release(keys=[self.lease_key(path)], args=[owner, fence])
        if reply[0] == 1:
            return
        why = self._refusal(path, fence, reply)
        if reply[0] == 0 or _int(reply[4]) > fence:  # ran out (and perhaps was taken since)
            raise LockLost(f"release refused: {why}")
        raise Locked(f"release refused: {why}")

    def _refusal(self, path: str, fence: int, reply: Any) -> str:
        if reply[0] == 0:
            return f"the lease of {path} under fence {fence} has run out (no lease is held now)"
        _, host, pid, session, held_fence = reply
        return (f"the lease of {path} is held on host {_text(host)} by pid {_text(pid)} "
                f"(session {_text(session)}) under fence {_text(held_fence)}, not under fence {fence} by this owner")

    def force_release(self, path: str) -> Lease | None:
        """Remove any lease of `path` (an operator's act); the lease removed, or None."""
        path = _check_path(path)
        with _answered(self.settings, f"the forced release of {path}"):
            reply = self._force_release(keys=[self.lease_key(path)])
        return _lease_from_fields(path, reply, 0) if reply else None

    def read(self, path: str) -> Lease | None:
        """The live lease of `path`, or None."""
        path = _check_path(path)
        with _answered(self.settings, f"the read of {path}"):
            reply = self._read(keys=[self.lease_key(path)])
        return _lease_from_fields(path, reply[1:], _int(reply[0])) if reply else None


def _lease_from_fields(path: str, flat: list[Any], pttl_ms: int) -> Lease:
    fields = {_text(flat[index]): _text(flat[index + 1]) for index in range(0, len(flat) - 1, 2)}
    return Lease(path, fields.get("host", ""), _int(fields.get("pid")), fields.get("session", ""),
                 _int(fields.get("fence")), max(pttl_ms, 0) / 1000, fields.get("owner", ""),
                 fields.get("acquired_at", ""))


def list_worker_leases(settings: FleetSettings, client: redis.Redis | None = None) -> list[dict[str, Any]]:
    """Every live worker lease of the fleet, by path: `path`, `host`, `pid`, `session`,
    `fence`, `expires_in` (seconds). For `python -m actors status`; FleetUnavailable if the
    store does not answer."""
    own_client = client is None
    store = settings.connect() if client is None else client
    prefix = settings.key("lock", "").encode()
    pattern = re.sub(rb"([*?\[\]\\])", rb"\\\1", prefix) + b"*"
    leases: list[dict[str, Any]] = []
    try:
        with _answered(settings, "the list of worker leases"):
            keys = sorted(store.scan_iter(match=pattern, count=1000))
            pipeline = store.pipeline(transaction=False)
            for key in keys:
                pipeline.hgetall(key)
                pipeline.pttl(key)
            replies = pipeline.execute()
        for index, key in enumerate(keys):
            fields, pttl = replies[2 * index], replies[2 * index + 1]
            if not fields or pttl == -2:
                continue  # expired between the scan and the read
            flat = [item for pair in fields.items() for item in pair]
            lease = _lease_from_fields(os.fsdecode(key[len(prefix):]), flat,
                                       _int(pttl))
            leases.append({"path": lease.path, "host": lease.host, "pid": lease.pid, "session": lease.session_id,
                           "fence": lease.fence, "expires_in": lease.expires_in})
    finally:
        if own_client:
            store.close()
    return leases


@dataclass(frozen=True, slots=True)
class RenewalJob:
    """One renewal asked of the `Renewer`: `done(sent_at, outcome, detail)` is called on its
    thread with `sent_at` read from `monotonic` just before the renewal left, `outcome` one
    of "renewed", "refused" (`detail` says why) or "unavailable"."""

    path: str
    owner: str
    fence: int
    monotonic: Callable[[], float]
    done: Callable[[float, str, str], None]


class Renewer:
    """One thread that sends one daemon's lease renewals, in the order they were asked for.

    The lock actors never wait for the store on a timer tick: a renewal runs here and its
    outcome comes back to the actor (`RenewalJob.done`), so a paused store cannot delay the
    actor's own deadline. Renewals waiting together go in one pipeline: one round trip and
    one fsync of the store for all of them, so a thousand leases cost milliseconds.
    """

    MAX_BATCH = 1000

    def __init__(self, leases: WorkerLeases, name: str = "lease-renewer") -> None:
        self._leases = leases
        self._name = name
        self._jobs: queue.SimpleQueue[RenewalJob | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, job: RenewalJob) -> None:
        """Queue `job` (the thread starts on first use); RuntimeError if closed or if no
        thread can be started."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the lease renewer is closed")
            if self._thread is None:
                thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                thread.start()  # RuntimeError when out of threads: the caller reports it
                self._thread = thread
        self._jobs.put(job)

    def close(self) -> None:
        """Stop after the jobs already submitted (never waits for them)."""
        with self._lock:
            self._closed = True
            if self._thread is not None:
                self._jobs.put(None)

    def _run(self) -> None:
        is_closing = False
        while not is_closing:
            first = self._jobs.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.MAX_BATCH:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    is_closing = True
                    break
                batch.append(job)
            self._renew(batch)

    def _renew(self, batch: list[RenewalJob]) -> None:
        sent = [job.monotonic() for job in batch]
        try:
            outcomes = self._leases.renew_many([(job.path, job.owner, job.fence) for job in batch])
        except FleetUnavailable as error:
            outcomes = [("unavailable", str(error))] * len(batch)
        except Exception as error:  # a bug must not silence renewals: reported as unavailable
            logger.exception("lease renewal failed")
            outcomes = [("unavailable", repr(error))] * len(batch)
        for job, sent_at, (outcome, detail) in zip(batch, sent, outcomes, strict=True):
            try:
                job.done(sent_at, outcome, detail)
            except Exception:
                logger.exception("lease renewal outcome not delivered")
