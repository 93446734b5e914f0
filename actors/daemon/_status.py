"""What `tree.status` and `python -m actors status` report: one plain dict."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from actors.names._pool import HOLDERS_REQUEST
from actors.daemon._protocol import ask_method, to_wire
from actors._tree import Tree

__all__ = ["collect_status", "render_status"]


def _section(fetch: Any) -> Any:
    """One part of the status; an error there is reported in place, never raised."""
    try:
        return fetch()
    except Exception as error:
        return {"error": f"{type(error).__name__}: {error}"}


def collect_status(tree: Tree, *, timeout: float = 5.0, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The tree (child, state, restarts), its workers (name, pid), name pool stats and
    holders, locks (by directory) and agents."""
    status: dict[str, Any] = dict(extra or {})
    status["children"] = _section(
        lambda: [to_wire(info) for info in tree.supervisor.proxy().which_children().get(timeout=timeout)]
    )
    status["names"] = _section(lambda: ask_method(tree.names, "pool_stats", timeout=timeout))
    status["held_names"] = _section(lambda: tree.names.ask(HOLDERS_REQUEST, timeout=timeout))
    status["workers"] = _section(lambda: _worker_statuses(tree, timeout))
    status["locks"] = _section(lambda: _lock_statuses(tree, timeout))
    status["agents"] = _section(lambda: ask_method(tree.agents, "health", timeout=timeout))
    if getattr(tree, "fleet", None) is not None:
        status["fleet"] = _section(lambda: _fleet_status(tree))
    return status


def _fleet_status(tree: Tree) -> dict[str, Any]:
    """Hosts (epochs, leases on the server's clock), names by host, quarantine, conflicts, and
    the worker leases with their fences (when the fleet's lock leases are built in)."""
    from actors.fleet._hosts import fleet_status

    host = tree.fleet
    status = fleet_status(host.names, host)
    try:
        from actors.fleet._leases import list_worker_leases  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return status
    status["worker_leases"] = _section(lambda: list_worker_leases(host.settings))
    return status


def _lock_statuses(tree: Tree, timeout: float) -> list[dict[str, Any]]:
    locks = tree.locks.ref(timeout=timeout)
    rows = []
    for info in locks.proxy().which_children().get(timeout=timeout):
        row = {"worker": unquote(info.id), "running": info.ref is not None, "restarts": info.restarts}
        if info.ref is not None:
            row["status"] = _section(lambda ref=info.ref: ask_method(ref, "status", timeout=timeout))
        rows.append(row)
    return rows


def _worker_statuses(tree: Tree, timeout: float) -> list[dict[str, Any]]:
    """Each worker under "workers": its child id, state, restarts, name, pid and name key."""
    workers = tree.workers.ref(timeout=timeout)
    rows = []
    for info in workers.proxy().which_children().get(timeout=timeout):
        row: dict[str, Any] = {"id": info.id, "running": info.ref is not None, "restarts": info.restarts}
        if info.ref is not None:
            details = _section(lambda ref=info.ref: ask_method(ref, "info", timeout=timeout))
            if isinstance(details, dict):
                for field in ("name", "pid", "name_key", "state", "exit_status", "consecutive_crashes"):
                    row[field] = details.get(field)
            else:
                row["error"] = details
        rows.append(row)
    return rows


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    """Rows under their headers, each column as wide as its widest cell, indented by two."""
    cells = [[str(cell) for cell in headers]] + [[_cell(cell) for cell in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _error_of(section: Any) -> str | None:
    if isinstance(section, dict) and set(section) == {"error"}:
        return str(section["error"])
    return None


def _pairs(values: dict[str, Any]) -> list[list[Any]]:
    """A flat map as (key, value) rows; a nested map's entries become `key.sub` rows."""
    rows: list[list[Any]] = []
    for key, value in values.items():
        if isinstance(value, dict):
            if not value:
                rows.append([key, "-"])
            for sub, item in value.items():
                rows.append([f"{key}.{sub}", item])
        else:
            rows.append([key, value])
    return rows


def _render_fleet(fleet: dict[str, Any]) -> list[str]:
    """Hosts and their leases, this host, names by host, quarantine, conflicts, worker leases."""
    lines: list[str] = []
    this = fleet.get("this_host") or {}
    if this:
        state = "CUT OFF" if this.get("cut_off") else "member"
        lines.append(
            f"  namespace {fleet.get('namespace')}  this host {this.get('host')}  epoch {this.get('epoch')}  {state}"
        )
    lines.extend(
        _table(
            ["host", "state", "epoch", "pid", "lease", "lease left"],
            [[host.get("host"), host.get("state"), host.get("epoch"), host.get("pid"), host.get("lease"),
              host.get("lease_left")] for host in fleet.get("hosts", [])],
        )
    )
    rows = [
        [host_id, name, ", ".join("anonymous" if owner is None else str(owner) for owner in owners)]
        for host_id, names in fleet.get("names_by_host", {}).items()
        for name, owners in names.items()
    ]
    lines.append("  names by host:")
    lines.extend(_table(["host", "name", "held by"], rows) if rows else ["  (none)"])
    quarantined = fleet.get("quarantined") or {}
    if quarantined:
        lines.append("  quarantined (a gone host's names, kept from everyone for one host lease):")
        lines.extend(_table(["name", "host", "free in"],
                            [[name, entry.get("host"), entry.get("until_in")] for name, entry in quarantined.items()]))
    conflicts = fleet.get("conflicts") or []
    if conflicts:
        lines.append("  CONFLICTS (names of this host another host got while it was cut off):")
        lines.extend(_table(["name", "held by", "owners here", "epoch"],
                            [[c.get("name"), c.get("held_by"), c.get("owners"), c.get("epoch")] for c in conflicts]))
    leases = fleet.get("worker_leases")
    if isinstance(leases, list) and leases:
        lines.append("  worker leases:")
        columns = list(dict.fromkeys(key for lease in leases for key in lease))
        lines.extend(_table(columns, [[lease.get(column) for column in columns] for lease in leases]))
    elif _error_of(leases):
        lines.append(f"  worker leases unavailable: {_error_of(leases)}")
    return lines


def render_status(status: dict[str, Any]) -> str:
    """The status for people: a section per service, each a table with aligned columns."""
    lines: list[str] = []
    daemon = status.get("daemon")
    if isinstance(daemon, dict):
        lines.append(
            f"daemon pid {daemon.get('pid')}  state dir {daemon.get('state_dir')}  up since {daemon.get('started_at')}"
        )

    def section(title: str, value: Any, render: Any) -> None:
        lines.append("")
        lines.append(f"{title}:")
        error = _error_of(value)
        if error is not None or value is None:
            lines.append(f"  unavailable: {error}")
            return
        try:
            rendered = render(value)
        except Exception as failure:  # a malformed section is shown, never raised
            rendered = [f"  unreadable: {type(failure).__name__}: {failure}"]
        lines.extend(rendered or ["  (none)"])

    section(
        "tree",
        status.get("children"),
        lambda children: _table(
            ["child", "state", "restarts", "kind"],
            [
                [
                    child.get("id"),
                    "running" if child.get("running") else "stopped",
                    child.get("restarts"),
                    "supervisor" if child.get("is_supervisor") else "actor",
                ]
                for child in children
            ],
        ),
    )
    if "workers" in status:
        section(
            "workers",
            status.get("workers"),
            lambda workers: _table(
                ["worker", "name", "pid", "state", "restarts", "last exit"],
                [
                    [
                        worker.get("id"),
                        worker.get("name"),
                        worker.get("pid"),
                        worker.get("state") if worker.get("running") else "stopped",
                        worker.get("restarts"),
                        worker.get("exit_status"),
                    ]
                    for worker in workers
                ],
            )
            if workers
            else [],
        )
    section("names", status.get("names"), lambda names: _table(["stat", "value"], _pairs(names)))
    section(
        "held names",
        status.get("held_names"),
        lambda held: _table(
            ["name", "held by"],
            [[name, ", ".join("anonymous" if owner is None else str(owner) for owner in owners) or "nobody"]
             for name, owners in sorted(held.items())],
        )
        if held
        else [],
    )
    section(
        "locks",
        status.get("locks"),
        lambda locks: _table(
            ["directory", "status", "restarts"],
            [[lock.get("worker"), lock.get("status", "not running"), lock.get("restarts")] for lock in locks],
        )
        if locks
        else [],
    )
    section("agents", status.get("agents"), lambda agents: _table(["stat", "value"], _pairs(agents)))
    if "fleet" in status:
        section("fleet", status.get("fleet"), _render_fleet)
    if "sessions" in status:
        section("demo sessions", status.get("sessions"), lambda sessions: _table(["stat", "value"], _pairs(sessions)))
    return "\n".join(lines)
