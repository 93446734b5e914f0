"""A worker process for test_worker_process: it records itself, then exits or waits.

    python _worker_child.py RECORD_FILE LABEL [--exit CODE] [--exit-first N CODE] [--ignore-term]
                            [--stubborn-child]

Each event is one JSON line appended to RECORD_FILE (one small write with O_APPEND, so
lines from several processes never interleave): `start` (pid, session, cwd, identity
variables), then `term` when SIGTERM arrives (it then exits 0), or `term-ignored` with
`--ignore-term` (it keeps waiting until SIGKILL). `--exit CODE` exits right after
`start`; `--exit-first N CODE` does so only while fewer than N earlier `start`s of
LABEL are recorded. `--stubborn-child` first starts a child of its own, in its process
group, labelled `LABEL-child`, that ignores SIGTERM. Otherwise it waits for a signal.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys


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
    args = parser.parse_args()

    def on_term(signum: int, frame: object) -> None:
        if args.ignore_term:
            record(args.record, "term-ignored", args.label)
            return
        record(args.record, "term", args.label)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)  # before `start`: a test may signal right after it
    if args.stubborn_child:
        subprocess.Popen([sys.executable, __file__, args.record, f"{args.label}-child", "--ignore-term"])
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
    if args.exit_first is not None and previous < args.exit_first[0]:
        return args.exit_first[1]
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
