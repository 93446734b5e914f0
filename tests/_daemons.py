"""Running the real daemon (`python -m actors serve`) as a subprocess in tests.

Every process started through `spawn` is tracked; `cleanup()` (called by an autouse
fixture in each test module that uses this) kills whatever is still running, so no
daemon, client or sleeper outlives its test.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack

from actors import RemoteError, connect
from supervision.testing import wait_until

ROOT = Path(__file__).resolve().parent.parent

_started: list[subprocess.Popen] = []


def spawn(argv: list[str], **options: Any) -> subprocess.Popen:
    """`subprocess.Popen` in the repository root, tracked for `cleanup`."""
    process = subprocess.Popen(argv, cwd=ROOT, **options)
    _started.append(process)
    return process


def started() -> list[subprocess.Popen]:
    """The processes started through `spawn` that `cleanup` has not ended yet."""
    return list(_started)


def cleanup() -> None:
    while _started:
        process = _started.pop()
        if process.poll() is None:
            process.kill()
        process.wait(10)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def answers(state_dir: Path) -> bool:
    """True once a daemon serves `state_dir`."""
    try:
        with connect(state_dir, timeout=2) as client:
            return client.call("names.default_name") == "Nameless Agent"
    except (OSError, RemoteError):  # not listening yet, or refused this connection
        return False


def start_daemon(
    state_dir: Path, *extra: str, command: list[str] | None = None, **options: Any
) -> subprocess.Popen:
    """Start `serve` on `state_dir` (heartbeat 0.2 s) and wait until it answers.

    `command` replaces ``python -m actors`` (e.g. a launcher that injects a fault first);
    `options` go to `subprocess.Popen` (e.g. `preexec_fn` to lower a resource limit).
    """
    options.setdefault("stdout", subprocess.PIPE)
    options.setdefault("stderr", subprocess.PIPE)
    options.setdefault("text", True)
    command = command or [sys.executable, "-m", "actors"]
    process = spawn([*command, "serve", "--state-dir", str(state_dir), "--heartbeat", "0.2", *extra], **options)
    wait_until(lambda: process.poll() is not None or answers(state_dir), timeout=30)
    if process.poll() is not None:
        stderr = process.stderr.read() if options["stderr"] is subprocess.PIPE else "(not captured)"
        raise AssertionError(f"the daemon exited with {process.returncode}: {stderr}")
    return process


def daemon_state(state_dir: Path) -> dict[str, Any]:
    return msgpack.unpackb((state_dir / "daemon.state").read_bytes(), raw=False)


def stop(process: subprocess.Popen) -> int:
    """SIGTERM, then the exit status (SIGKILL after 30 s)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(10)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "actors", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
