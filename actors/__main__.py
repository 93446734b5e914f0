"""Command line: `python -m actors serve | status | events | demo`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn


LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


class _Parser(argparse.ArgumentParser):
    """A bad command line is one line on stderr (`actors: ...`) and exit 2, no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"actors: {message}\n")


def _seconds(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """A number of seconds within [low, high] (or (low, high]); nan and inf are refused."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        inside = (low < value if low_open else low <= value) and value <= high  # False for nan
        if not inside:
            opening = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"must lie within {opening}{low:g}, {high:g}] seconds, got {text}")
        return value

    return parse


def _count(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must lie within [{low}, {high}], got {text}")
        return value

    return parse


def _log_level(text: str) -> str:
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return text.upper()


DAY = 86_400.0


def _log_format(record: Any) -> str:
    """A line per record; a record about a named worker says whose it is."""
    who = "[{extra[agent_name]}] " if record["extra"].get("agent_name") else ""
    return "{time:HH:mm:ss.SSS} {level:<7} " + who + "{message}\n{exception}"


def _configure_logging(level: str) -> None:
    from loguru import logger

    # The CLI owns the process's log output (the library adds no sink and removes none):
    # one sink on stderr, no variable values in tracebacks.
    logger.remove()
    logger.add(sys.stderr, level=level, format=_log_format, backtrace=False, diagnose=False)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m actors", description="Supervised actor tree for agent fleets.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the tree and its socket in the foreground")
    serve.add_argument("--state-dir", required=True)
    serve.add_argument("--heartbeat", type=_seconds(0.1, 3600.0), default=5.0,
                       help="seconds between daemon.state writes, within [0.1, 3600]")
    serve.add_argument("--reap-interval", type=_seconds(0.01, DAY), default=5.0)
    serve.add_argument("--check-interval", type=_seconds(0.01, DAY), default=5.0)
    serve.add_argument("--max-restarts", type=_count(0, 1_000_000), default=3)
    serve.add_argument("--max-seconds", type=_seconds(0.0, DAY), default=5.0)
    serve.add_argument("--demo", action="store_true", help="also run a few demo worker processes")
    serve.add_argument("--demo-seconds", type=_seconds(0.0, DAY), default=0.0,
                       help="with --demo: stop after this long (0: run until signalled)")
    serve.add_argument("--log-level", type=_log_level, default="INFO")
    serve.add_argument("--fleet", default=None, metavar="URL",
                       help="share names and worker locks through this Redis (redis://host:port/db or unix:///path)")
    serve.add_argument("--host-id", default=None, help="this daemon's id in the fleet (default: the hostname)")
    serve.add_argument("--host-lease", type=_seconds(3.0, DAY), default=15.0)
    serve.add_argument("--lock-lease", type=_seconds(3.0, DAY), default=15.0)
    serve.add_argument("--fleet-timeout", type=_seconds(0.05, 60.0), default=2.0)
    serve.add_argument("--on-lock-lost", choices=("terminate", "notify"), default="terminate")
    # For tests: how long a connection may hold a partial frame (default 10 s).
    serve.add_argument("--frame-timeout", type=_seconds(0.0, 3600.0, low_open=True), default=None,
                       help=argparse.SUPPRESS)

    status = commands.add_parser("status", help="print the running daemon's tree, names, locks and agents")
    status.add_argument("--state-dir", required=True)
    status.add_argument("--json", action="store_true")

    events = commands.add_parser("events", help="follow the running daemon's events until interrupted")
    events.add_argument("--state-dir", required=True)
    events.add_argument("--kinds", type=_kinds, default=None, help="comma-separated event kinds (default: all)")
    events.add_argument("--json", action="store_true", help="one JSON object per line")

    demo = commands.add_parser("demo", help="an in-process supervised tree whose child crashes and restarts")
    demo.add_argument("--rounds", type=int, default=3)

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "status":
        return _status(args)
    if args.command == "events":
        return _events(args)
    _configure_logging("WARNING")
    from actors.demo._demo import run_demo

    return run_demo(args.rounds)


def _serve(args: Any) -> int:
    from actors.daemon._daemon import serve

    _configure_logging(args.log_level)
    options = {
        "reap_interval": args.reap_interval,
        "check_interval": args.check_interval,
        "max_restarts": args.max_restarts,
        "max_seconds": args.max_seconds,
    }
    fleet_flags = ("host_id", "host_lease", "lock_lease", "fleet_timeout", "on_lock_lost")
    if args.fleet is not None:
        from actors.fleet._connection import FleetSettings

        fleet = {flag: getattr(args, flag) for flag in fleet_flags}
        try:
            FleetSettings.parse(args.fleet, **fleet)
        except ValueError as error:
            sys.stderr.write(f"actors: --fleet: {error}\n")
            return 2
        options.update(fleet, fleet=args.fleet)
    elif args.host_id is not None:
        sys.stderr.write("actors: --host-id needs --fleet\n")
        return 2
    on_started = None
    if args.demo:
        from actors.demo._demo import DEMO_TREE_OPTIONS, start_demo_workers

        options.update(DEMO_TREE_OPTIONS)

        def on_started(daemon: Any) -> None:
            start_demo_workers(daemon, seconds=args.demo_seconds)
    gateway_options = {} if args.frame_timeout is None else {"frame_timeout": args.frame_timeout}
    return serve(args.state_dir, heartbeat=args.heartbeat, tree_options=options, gateway_options=gateway_options,
                 on_started=on_started)


def _status(args: Any) -> int:
    from actors.daemon._client import connect
    from actors.daemon._status import render_status

    try:
        with connect(args.state_dir, timeout=10.0) as client:
            status = client.call("tree.status")
    except OSError as error:
        sys.stdout.write(f"no daemon answers at {args.state_dir}: {error}\n{_last_recorded(args.state_dir)}\n")
        return 1
    if args.json:
        sys.stdout.write(json.dumps(status, indent=2, sort_keys=True, default=str) + "\n")
    else:
        sys.stdout.write(render_status(status) + "\n")
    return 0


def _kinds(text: str) -> list[str]:
    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    if not kinds:
        raise argparse.ArgumentTypeError(f"no event kind in {text!r}")
    return kinds


def _events(args: Any) -> int:
    """Print each event as it comes (JSON lines with --json) until Ctrl-C or the daemon stops."""
    import asyncio

    from actors.daemon._async_client import AsyncClient
    from actors.daemon._client import SOCKET_NAME

    async def follow() -> int:
        import signal
        from pathlib import Path

        # Ctrl-C or SIGTERM ends the stream from inside the loop: the wait is cancelled at
        # once, whatever the task is doing when the signal arrives.
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        client = AsyncClient(Path(args.state_dir) / SOCKET_NAME, timeout=10.0)
        try:
            stream = await client.events(kinds=args.kinds).start()
        except OSError as error:
            sys.stdout.write(f"no daemon answers at {args.state_dir}: {error}\n")
            return 1
        reported = 0
        try:
            async for event in stream:
                if stream.dropped > reported:
                    _print_event({"dropped": stream.dropped - reported}, args.json)
                    reported = stream.dropped
                _print_event(event, args.json)
        except asyncio.CancelledError:
            pass  # asked to stop
        finally:
            await stream.aclose()
            await client.close()
        return 0

    try:
        return asyncio.run(follow())
    except KeyboardInterrupt:
        return 0


def _print_event(event: Any, as_json: bool) -> None:
    if isinstance(event, dict):  # a count of events the daemon dropped for us
        line = json.dumps(event) if as_json else f"... {event['dropped']} events dropped (this reader fell behind)"
    elif as_json:
        fields = {"seq": event.seq, "time": event.time, "kind": event.kind, "path": event.path, "name": event.name,
                  "data": event.data}
        line = json.dumps(fields, sort_keys=True, default=str)
    else:
        from datetime import datetime

        when = datetime.fromtimestamp(event.time).strftime("%H:%M:%S.%f")[:-3]
        name = f" {event.name}" if event.name else ""
        data = " ".join(f"{key}={value}" for key, value in event.data.items())
        line = f"{when} {event.kind:<18} {event.path or '/'}{name} {data}".rstrip()
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _last_recorded(state_dir: str) -> str:
    """What daemon.state last said, for people."""
    from pathlib import Path

    from actors.daemon._daemon import DAEMON_STATE, DaemonStateFile

    try:
        state = DaemonStateFile(Path(state_dir) / DAEMON_STATE).load()
    except Exception as error:  # unreadable: say so, this is only a hint
        return f"daemon.state: unreadable ({error})"
    if not isinstance(state, dict):
        return "daemon.state: none recorded"
    fields = ("running", "pid", "started_at", "last_heartbeat", "heartbeat_count")
    return "daemon.state last recorded: " + ", ".join(f"{field}={state.get(field)}" for field in fields)


if __name__ == "__main__":
    sys.exit(main())
