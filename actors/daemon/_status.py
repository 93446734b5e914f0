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
    """The tree (child, state, restarts), name pool stats and holders, locks and agents."""
    status: dict[str, Any] = dict(extra or {})
    status["children"] = _section(
        lambda: [to_wire(info) for info in tree.supervisor.proxy().which_children().get(timeout=timeout)]
    )
    status["names"] = _section(lambda: ask_method(tree.names, "pool_stats", timeout=timeout))
    status["held_names"] = _section(lambda: tree.names.ask(HOLDERS_REQUEST, timeout=timeout))
    status["locks"] = _section(lambda: _lock_statuses(tree, timeout))
    status["agents"] = _section(lambda: ask_method(tree.agents, "health", timeout=timeout))
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


def render_status(status: dict[str, Any]) -> str:
    """The status for people."""
    lines: list[str] = []
    daemon = status.get("daemon")
    if isinstance(daemon, dict):
        lines.append(f"daemon pid {daemon.get('pid')}  state dir {daemon.get('state_dir')}  up since {daemon.get('started_at')}")
    lines.append("tree:")
    children = status.get("children")
    if isinstance(children, list):
        for child in children:
            state = "running" if child.get("running") else "stopped"
            kind = " (supervisor)" if child.get("is_supervisor") else ""
            lines.append(f"  {child.get('id'):<24} {state:<8} restarts={child.get('restarts')}{kind}")
    else:
        lines.append(f"  {children}")
    names = status.get("names")
    lines.append("names:")
    if isinstance(names, dict) and "error" not in names:
        lines.append("  " + "  ".join(f"{key}={value}" for key, value in names.items()))
    else:
        lines.append(f"  {names}")
    held = status.get("held_names")
    if isinstance(held, dict) and "error" not in held:
        for name, owners in sorted(held.items()):
            lines.append(f"  {name:<24} held by {', '.join(str(owner) for owner in owners) or 'nobody'}")
    lines.append("locks:")
    locks = status.get("locks")
    if isinstance(locks, list):
        if not locks:
            lines.append("  (none)")
        for lock in locks:
            lines.append(f"  {lock.get('worker')}: {lock.get('status', 'not running')}")
    else:
        lines.append(f"  {locks}")
    lines.append("agents:")
    agents = status.get("agents")
    if isinstance(agents, dict):
        lines.append("  " + "  ".join(f"{key}={value}" for key, value in agents.items()))
    else:
        lines.append(f"  {agents}")
    return "\n".join(lines)
