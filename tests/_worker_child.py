"""A worker process for test_worker_process: it records itself, then exits or waits.

    python _worker_child.py RECORD_FILE LABEL [--exit CODE] [--exit-first N CODE] [--ignore-term]
                            [--stubborn-child] [--child] [--detached-child] [--print]

Each event is one JSON line appended to RECORD_FILE (one small write with O_APPEND, so
lines from several processes never interleave): `start` (pid, session, cwd, identity
variables), then `term` when SIGTERM arrives (it then exits 0), or `term-ignored` with
`--ignore-term` (it keeps waiting until SIGKILL). `--exit CODE` exits right after
`start`; `--exit-first N CODE` does so only while fewer than N earlier `start`s of
LABEL are recorded. `--stubborn-child` first starts a child of its own, in its process
group, labelled `LABEL-child`, that ignores SIGTERM; `--child` starts one that does not
ignore it; `--detached-child` one that leaves the group on purpose (`os.setsid()`),
labelled `LABEL-detached`. `--print` writes a line to stdout and one to stderr before
`start`. Otherwise it waits for a signal.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time


def record(path: str, event: str, label: str, **fields: object) -> None:
    line = json.dumps({"event": event, "label": label, "pid": os.getpid(), **fields}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def earlier_starts(path: str, label: str) -> int:
    try:
        with open(path) as file:
            lines = [json.loads(line) for line in file if line.strip()]
    except FileNotFoundError:
        return 0
    return sum(1 for line in lines if line["event"] == "start" and line["label"] == label)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("record")
    parser.add_argument("label")
    parser.add_argument("--exit", type=int)
    parser.add_argument("--exit-first", type=int, nargs=2)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--stubborn-child", action="store_true")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--detached-child", action="store_true")
    parser.add_argument("--detach", action="store_true")  # internal: the detached child itself
    parser.add_argument("--print", action="store_true")
    parser.add_argument("--wait-socket", action="store_true")  # exit 0 once ACTORS_SOCKET closes
    args = parser.parse_args()
    if args.detach:
        os.setsid()

    def on_term(signum: int, frame: object) -> None:
        if args.ignore_term:
            record(args.record, "term-ignored", args.label)
            return
        record(args.record, "term", args.label)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)  # before `start`: a test may signal right after it
    if args.stubborn_child or args.child:
        children = earlier_starts(args.record, f"{args.label}-child")
        options = ["--ignore-term"] if args.stubborn_child else []
        subprocess.Popen([sys.executable, __file__, args.record, f"{args.label}-child", *options])
        # Its child has recorded itself (and set up its signals) before it does.
        deadline = time.monotonic() + 10.0
        while earlier_starts(args.record, f"{args.label}-child") == children and time.monotonic() < deadline:
            time.sleep(0.01)
    if args.detached_child:
        subprocess.Popen(
            [sys.executable, __file__, args.record, f"{args.label}-detached", "--detach"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    if args.print:
        sys.stdout.write(f"hello from {args.label} on stdout\n")
        sys.stdout.flush()
        sys.stderr.write(f"hello from {args.label} on stderr\n")
        sys.stderr.flush()
    if args.wait_socket:  # connected before `start`: a test may kill the daemon right after it
        import socket

        connection = socket.socket(socket.AF_UNIX)
        connection.connect(os.environ["ACTORS_SOCKET"])
    previous = earlier_starts(args.record, args.label)
    record(
        args.record,
        "start",
        args.label,
        sid=os.getsid(0),
        cwd=os.getcwd(),
        env={key: os.environ.get(key) for key in ("AGENT_NAME", "ACTORS_SOCKET", "WORKER_TEST_VAR")},
    )
    if args.exit is not None:
        return args.exit
    if args.wait_socket:
        try:
            connection.recv(1)  # the daemon never speaks first: this returns when it closes
        except OSError:
            pass  # reset: closed before it was even accepted
        record(args.record, "socket-closed", args.label)
        return 0
    if args.exit_first is not None and previous < args.exit_first[0]:
        return args.exit_first[1]
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
