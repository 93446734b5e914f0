"""Host membership in the fleet: a lease with an epoch, renewed on a thread of its own.

    host = FleetHost(settings, token=load_token(state_dir))
    host.start()                  # join: a new epoch; StateDirInUse if this host_id is live elsewhere
    epoch = host.current_epoch()  # FleetUnavailable while cut off: no name change goes out
    ...
    host.stop()                   # leave: the names wait one host lease for this host's return

A daemon holds one lease in the store (`host_lease` seconds on the server's clock), renewed
every third of it. It judges the lease on its own monotonic clock: without a confirmed
renewal by (send time of the last confirmed renewal) + host_lease - 2 s it is cut off,
before the server can let the lease run out. Cut off, `current_epoch()` raises
`FleetUnavailable` at once and `storage_failed` is emitted; when the store answers again
the host joins with a NEW epoch (`storage_recovered`), reclaims the names no one took
meanwhile and reports each name another host got meanwhile as a conflict (an ERROR line,
a `name_conflict` event, `conflicts` in `status`). Every name change carries the epoch,
and the store's scripts refuse an old one (see docs/design-fleet-names.md).

`token` tells a restart of the same daemon (the same state dir, whose kernel lock proves
the previous holder is gone) from a second daemon claiming the same host_id.
"""

from __future__ import annotations

import errno
import math
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger

from actors._errors import FleetUnavailable, StateDirInUse
from actors.fleet._connection import FleetSettings
from actors.fleet._names import FleetNames, StaleEpoch, store_call
from actors.fleet._scripts import as_list
from supervision import _events

__all__ = ["CONFLICT_EVENT", "TOKEN_NAME", "FleetHost", "fleet_status", "load_token"]

#: The event a host emits for each of its names another host got while it was cut off.
#: `Event.name` is the name; `data`: `host`, `held_by`, `owners` (the owners this host
#: had recorded: pids of this host, str owners), `epoch` (this host's new epoch).
CONFLICT_EVENT = "name_conflict"
TOKEN_NAME = "fleet.token"
#: How long before the server's expiry a holder stops trusting its lease (contract §7).
SAFETY_MARGIN = 2.0
_RETRY_DELAY = 0.2  # after a failed renewal: the store may be back any moment
_MAX_CONFLICTS = 100  # the most recent conflicts kept for `status`


def load_token(state_dir: str | os.PathLike[str]) -> str:
    """This state dir's fleet token (created on first use, 0600): the same daemon across restarts."""
    path = Path(state_dir) / TOKEN_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    else:
        try:
            text = os.read(fd, 256).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        if text:
            return text
    token = secrets.token_hex(16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (token + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return token


def renew_interval(host_lease: float) -> float:
    """Every third of the lease, and at least twice before the holder's own deadline."""
    return min(host_lease / 3.0, (host_lease - SAFETY_MARGIN) / 2.0)


class FleetHost:
    """This daemon's membership of the fleet: join, renew, cut off, rejoin (see the module docstring).

    Thread-safe: the name pool reads `current_epoch()` and reports failures with
    `note_failure()` from its thread; the renewal runs on a daemon thread of its own, so
    a busy or blocked pool never delays it. `monotonic` is injectable for tests.
    """

    def __init__(
        self,
        settings: FleetSettings,
        *,
        token: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        event_path: str = "names",
        names: FleetNames | None = None,
    ) -> None:
        self.settings = settings
        self.id = settings.host_id
        self.token = token or secrets.token_hex(16)
        self.names = names if names is not None else FleetNames(settings)
        self._monotonic = monotonic
        self._event_path = event_path
        self._log = logger.bind(component="fleet", host_id=self.id)
        self._lock = threading.Lock()
        self._epoch: int | None = None
        self._deadline = -math.inf  # no renewal confirmed yet
        self._needs_join = True
        self._down: FleetUnavailable | None = None  # set during a storage_failed episode
        self._is_refused = False  # another live daemon holds this host_id (logged once)
        self.conflicts: list[dict[str, Any]] = []
        self.expired_hosts: list[str] = []
        self.on_conflicts: list[Callable[[list[dict[str, Any]]], None]] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.interval = renew_interval(settings.host_lease)

    # -- what the pool asks -------------------------------------------------------------------

    @property
    def epoch(self) -> int | None:
        return self._epoch

    @property
    def deadline(self) -> float:
        """Monotonic time after which this host counts itself cut off (unless renewed)."""
        return self._deadline

    def is_cut_off(self) -> bool:
        return self._needs_join or self._monotonic() > self._deadline

    def current_epoch(self) -> int:
        """The epoch to act with; `FleetUnavailable` at once while cut off or the store fails."""
        with self._lock:
            epoch, down = self._epoch, self._down
            cut_off = self._needs_join or self._monotonic() > self._deadline
        if cut_off:
            error = FleetUnavailable(
                errno.ETIMEDOUT,
                f"host {self.id!r} is cut off from the fleet (no lease renewal confirmed in time); "
                "name changes are refused until it rejoins",
            )
            self._fail(error)
            self._wake.set()
            raise error
        if down is not None:
            raise down
        assert epoch is not None
        return epoch

    def raise_if_down(self) -> None:
        """`FleetUnavailable` at once while a failure of the store is not yet followed by a renewal."""
        down = self._down
        if down is not None:
            raise down

    @property
    def is_down(self) -> bool:
        """True during a `storage_failed` episode (a failed call or renewal, or cut off)."""
        return self._down is not None

    def note_failure(self, error: FleetUnavailable) -> None:
        """A call of the pool failed: refuse the next ones at once until a renewal gets through."""
        if isinstance(error, StaleEpoch):
            with self._lock:
                self._needs_join = True
        self._fail(error)
        self._wake.set()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Join (raising `StateDirInUse` or `FleetUnavailable`), then renew on a thread."""
        self.join()
        self._thread = threading.Thread(target=self._run, name=f"fleet-host-{self.id}", daemon=True)
        self._thread.start()

    def stop(self, *, leave: bool = True) -> None:
        """Stop renewing; with `leave`, end the lease now (the names wait one lease, then are free)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.settings.fleet_timeout * 2 + 1.0)
        epoch = self._epoch
        if leave and epoch is not None and not self._needs_join:
            try:
                store_call(self.settings, lambda: self.names._scripts.run("leave", self.id, epoch))
            except FleetUnavailable as error:
                self._log.warning("could not leave the fleet ({}): the lease runs out by itself", error)
        with self._lock:
            self._needs_join = True
        try:
            self.names.client.close()
        except Exception:  # closing a broken connection: nothing left to do
            pass

    def join(self) -> list[dict[str, Any]]:
        """Take a new epoch (reclaiming this host's names); the conflicts found are returned."""
        sent = self._monotonic()
        result = store_call(
            self.settings,
            lambda: self.names._scripts.run(
                "join", self.id, self.token, int(self.settings.host_lease * 1000), os.getpid()
            ),
        )
        if result["status"] == "IN_USE":
            raise StateDirInUse(
                f"host id {self.id!r} is in use in fleet namespace {self.settings.namespace!r} "
                f"by a live daemon (pid {result.get('pid')}, epoch {result.get('epoch')})"
            )
        conflicts = [dict(conflict) for conflict in as_list(result.get("conflicts"))]
        with self._lock:
            previous = self._epoch
            self._epoch = int(result["epoch"])
            self._deadline = sent + self.settings.host_lease - SAFETY_MARGIN
            self._needs_join = False
            self._is_refused = False
        self._log.info(
            "host {} joined the fleet with epoch {} (was {}); {} names reclaimed",
            self.id, self._epoch, previous, result.get("reclaimed", 0),
        )
        if conflicts:
            self._report(conflicts)
        self._recover()
        return conflicts

    # -- the renewal --------------------------------------------------------------------------

    def _run(self) -> None:
        delay = self.interval
        while not self._stop.is_set():
            until_deadline = self._deadline - self._monotonic()
            self._wake.wait(max(0.0, min(delay, until_deadline if until_deadline > 0 else delay)))
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                delay = self.tick()
            except Exception:  # never let the renewal die: log it and try again soon
                self._log.exception("fleet host renewal failed unexpectedly")
                delay = _RETRY_DELAY

    def tick(self) -> float:
        """One step: renew (or rejoin when cut off); the delay until the next step."""
        if not self._needs_join and self._monotonic() > self._deadline:
            self._fail(FleetUnavailable(errno.ETIMEDOUT, f"host {self.id!r}: no lease renewal confirmed in time"))
            with self._lock:
                self._needs_join = True
        if self._needs_join:
            return self._try_join()
        epoch = self._epoch
        sent = self._monotonic()
        try:
            result = store_call(
                self.settings,
                lambda: self.names._scripts.run("renew", self.id, epoch, int(self.settings.host_lease * 1000)),
            )
        except FleetUnavailable as error:
            self._fail(error)
            return _RETRY_DELAY
        if result["status"] != "OK":
            self._log.error("the fleet refused this host's renewal ({}): joining again", result["status"])
            with self._lock:
                self._needs_join = True
            self._fail(StaleEpoch(errno.ESTALE, f"host {self.id!r}: lease renewal refused ({result['status']})"))
            return self._try_join()
        with self._lock:
            if self._epoch == epoch and not self._needs_join:
                self._deadline = sent + self.settings.host_lease - SAFETY_MARGIN
        expired = as_list(result.get("expired"))
        for host in expired:
            self._log.warning("host {}'s lease ran out: its names are quarantined for one host lease", host)
        self.expired_hosts.extend(expired)
        del self.expired_hosts[:-_MAX_CONFLICTS]
        self._recover()
        return self.interval

    def _try_join(self) -> float:
        try:
            self.join()
        except StateDirInUse as error:
            if not self._is_refused:
                self._is_refused = True
                self._log.error("cannot rejoin the fleet: {}", error)
            return self.interval
        except FleetUnavailable as error:
            self._fail(error)
            return _RETRY_DELAY
        return self.interval

    # -- episodes and conflicts ---------------------------------------------------------------

    def _fail(self, error: FleetUnavailable) -> None:
        with self._lock:
            first = self._down is None
            self._down = error
        if first:
            self._log.error("the fleet store cannot be used ({}): name changes are refused until it can", error)
            _events.emit("storage_failed", self._event_path, error=str(error), fleet=self.id)

    def _recover(self) -> None:
        with self._lock:
            was_down = self._down is not None and not self._needs_join
            if was_down:
                self._down = None
        if was_down:
            self._log.info("the fleet store answers again (epoch {})", self._epoch)
            _events.emit("storage_recovered", self._event_path, fleet=self.id, epoch=self._epoch)

    def _report(self, conflicts: list[dict[str, Any]]) -> None:
        for conflict in conflicts:
            conflict["owners"] = [_owner_of(entry) for entry in as_list(conflict.get("owners"))]
            conflict["host"] = self.id
            conflict["epoch"] = self._epoch
            self._log.bind(agent_name=conflict["name"]).error(
                "name {!r} of this host went to host {!r} while this host was cut off: owners {} must take "
                "another name",
                conflict["name"], conflict["held_by"], conflict["owners"],
            )
            _events.emit(
                CONFLICT_EVENT, self._event_path, conflict["name"],
                host=self.id, held_by=conflict["held_by"], owners=conflict["owners"], epoch=self._epoch,
            )
        self.conflicts.extend(conflicts)
        del self.conflicts[:-_MAX_CONFLICTS]
        for listener in list(self.on_conflicts):
            try:
                listener(conflicts)
            except Exception:
                self._log.exception("a conflict listener failed")


def _owner_of(entry: Any) -> Any:
    if isinstance(entry, list) and entry and entry[0] == "p":
        return int(entry[1])
    if isinstance(entry, list) and entry and entry[0] == "s":
        return str(entry[1])
    return None


def fleet_status(names: FleetNames, host: FleetHost | None = None) -> dict[str, Any]:
    """The fleet for `status`: hosts (epoch, lease left on the server's clock), names by host."""
    result = names.fleet()
    now = int(result["now"])
    hosts = []
    for record in sorted(as_list(result.get("hosts")), key=lambda record: str(record.get("host"))):
        live = record.get("state") == "live" and int(record.get("expires", 0)) > now
        hosts.append({
            "host": record.get("host"),
            "epoch": record.get("epoch"),
            "state": "live" if live else "gone",
            "pid": record.get("pid"),
            "lease": float(record.get("lease", 0)) / 1000.0,
            "lease_left": round(max(0, int(record.get("expires", 0)) - now) / 1000.0, 3),
        })
    by_host: dict[str, dict[str, list[Any]]] = {}
    quarantined: dict[str, dict[str, Any]] = {}
    for name, record in as_list(result.get("held")):
        owners = [_owner_of(entry) for entry in as_list(record.get("o"))]
        if record.get("q"):
            quarantined[name] = {"host": record.get("h"), "until_in": round(max(0, int(record["q"]) - now) / 1000.0, 3)}
        else:
            by_host.setdefault(str(record.get("h")), {})[name] = owners
    status: dict[str, Any] = {
        "namespace": names.settings.namespace,
        "hosts": hosts,
        "names_by_host": {host_id: dict(sorted(names_.items())) for host_id, names_ in sorted(by_host.items())},
        "quarantined": quarantined,
        "available_count": result.get("available"),
        "all_used_count": result.get("known"),
    }
    if host is not None:
        status["this_host"] = {
            "host": host.id,
            "epoch": host.epoch,
            "cut_off": host.is_cut_off(),
            "lease_deadline_in": round(host.deadline - host._monotonic(), 3) if math.isfinite(host.deadline) else None,
        }
        status["conflicts"] = list(host.conflicts)
    return status
