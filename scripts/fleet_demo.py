"""The main job's fleet mode: one redis-server, two daemons as two hosts, demo workers on both.

    bash scripts/run.sh --fleet                  # 30 s, then everything stops
    bash scripts/run.sh --fleet --demo-seconds 0 # until Ctrl-C

It starts a `redis-server` of its own (Unix socket under `state-fleet/redis`, `appendonly
yes`, `appendfsync always`), then `python -m actors serve --fleet ... --demo` twice, as
`host-a` and `host-b`, each on its own state dir, their logs in `state-fleet/<host>.log`.
Every few seconds it prints the fleet as `host-a`'s `status` shows it (hosts, leases,
epochs, names by host, worker leases with their fences) and checks that no name is held
on both hosts at once. Exit 0 when every check held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _redis_server import RedisServer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HOSTS = ("host-a", "host-b")
STATUS_EVERY = 5.0


def _status(state_dir: Path, *, as_json: bool) -> tuple[int, str]:
    argv = [sys.executable, "-m", "actors", "status", "--state-dir", str(state_dir), *(["--json"] if as_json else [])]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=ROOT)
    return done.returncode, done.stdout if done.returncode == 0 else done.stderr


def _held_names(state_dir: Path) -> set[str] | None:
    code, text = _status(state_dir, as_json=True)
    if code != 0:
        return None
    held: Any = json.loads(text).get("held_names")
    return set(held) if isinstance(held, dict) and "error" not in held else None


def _wait_until_serving(state_dir: Path, process: subprocess.Popen[bytes], deadline: float) -> bool:
    while time.monotonic() < deadline:  # a bounded wait on a condition: the daemon answers
        if process.poll() is not None:
            return False
        if _status(state_dir, as_json=True)[0] == 0:
            return True
        time.sleep(0.2)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", default=str(ROOT / "state-fleet"))
    parser.add_argument("--demo-seconds", type=float, default=30.0, help="0: until Ctrl-C")
    options = parser.parse_args(argv)
    base = Path(options.state_dir).resolve()
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o700)
    print(f"fleet demo: a redis-server and two daemons ({', '.join(HOSTS)}) under {base}", flush=True)
    server = RedisServer.start(base / "redis")
    url = f"{server.url}?namespace=demo"
    daemons: dict[str, subprocess.Popen[bytes]] = {}
    failures: list[str] = []
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for host in HOSTS:
            log = open(base / f"{host}.log", "ab")  # noqa: SIM115 -- the daemon's stdout and stderr
            daemons[host] = subprocess.Popen(
                [sys.executable, "-m", "actors", "serve", "--state-dir", str(base / host), "--fleet", url,
                 "--host-id", host, "--demo", "--demo-seconds", "0"],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            log.close()
        for host, process in daemons.items():
            if not _wait_until_serving(base / host, process, time.monotonic() + 30):
                failures.append(f"{host} did not start (see {base / host}.log)")
        end = time.monotonic() + options.demo_seconds if options.demo_seconds > 0 else float("inf")
        while not failures and not stopping and time.monotonic() < end:
            time.sleep(min(STATUS_EVERY, max(0.0, end - time.monotonic())))
            code, text = _status(base / HOSTS[0], as_json=False)
            print(f"\n--- {time.strftime('%H:%M:%S')} the fleet as {HOSTS[0]} sees it ---\n{text}", flush=True)
            held = {host: _held_names(base / host) for host in HOSTS}
            if all(names is not None for names in held.values()):
                both = set.intersection(*(names for names in held.values() if names is not None))
                counts = ", ".join(f"{host} {len(names or ())}" for host, names in held.items())
                print(f"names held: {counts}; on both hosts at once: {sorted(both) or 'none'}", flush=True)
                if both:
                    failures.append(f"names held on both hosts: {sorted(both)}")
            for host, process in daemons.items():
                if process.poll() is not None:
                    failures.append(f"{host} exited with {process.returncode} (see {base / host}.log)")
    finally:
        for process in daemons.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for host, process in daemons.items():
            try:
                code = process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait(10)
            if code != 0 and not failures:
                failures.append(f"{host} stopped with exit {code} (see {base / host}.log)")
        server.stop()
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr, flush=True)
    print("fleet demo done: " + ("every check held" if not failures else f"{len(failures)} problem(s)"), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
