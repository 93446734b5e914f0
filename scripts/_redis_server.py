"""A real `redis-server` of our own, for the fleet tests, chaos and demo: on a Unix socket, stopped by pid.

    server = RedisServer.start(tmp_path)     # appendonly yes, appendfsync always, --save ''
    server.url                               # 'unix:///tmp/.../redis.sock'
    server.pause(); server.resume()          # SIGSTOP / SIGCONT: a partition, as clients see it
    server.kill(); server.restart()          # SIGKILL, then the same data dir again
    server.stop()
    with serving(url_or_none, tmp_path) as (url, pid): ...   # that URL, or a server of our own

The binary is `$ACTORS_TEST_REDIS_SERVER` or `redis-server` (or `valkey-server`) on PATH;
scripts/test.sh and scripts/run.sh install Debian's package when it is missing and they run
as root (scripts/_redis.sh). Never port 6379: no TCP port at all.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

START_TIMEOUT = 10.0


def redis_binary() -> str:
    binary = os.environ.get("ACTORS_TEST_REDIS_SERVER") or shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        raise RuntimeError(
            "no redis-server found: run scripts/test.sh or scripts/run.sh as root (they install Debian's package), "
            "`apt install redis-server`, or set ACTORS_TEST_REDIS_SERVER to a redis-server/valkey-server binary"
        )
    return binary


@dataclass
class RedisServer:
    directory: Path
    process: subprocess.Popen[bytes] | None = field(default=None)

    @property
    def socket_path(self) -> str:
        return str(self.directory / "redis.sock")

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "the server is not running"
        return self.process.pid

    @classmethod
    def start(cls, directory: Path) -> RedisServer:
        directory.mkdir(parents=True, exist_ok=True)
        server = cls(directory)
        server._launch()
        return server

    def _launch(self) -> None:
        argv = [
            redis_binary(),
            "--port", "0",
            "--unixsocket", self.socket_path,
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # a bounded wait on a condition: the server answers PING
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {log}")
            try:
                with redis.Redis(unix_socket_path=self.socket_path, socket_timeout=1.0) as client:
                    if client.ping():
                        return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on {self.socket_path} within {START_TIMEOUT}s")
            time.sleep(0.01)

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=self.socket_path, socket_timeout=5.0)

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, reaped; what `appendfsync always` wrote survives a `restart()`."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait(START_TIMEOUT)

    def restart(self) -> None:
        self.kill()
        self._launch()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(START_TIMEOUT)
        self.process = None


@contextmanager
def serving(url: str | None, directory: Path) -> Iterator[tuple[str, int | None]]:
    """(URL, server pid): `url` itself (pid None) when given, else a server of our own
    started in `directory` and stopped at the end."""
    if url is not None:
        yield url, None
        return
    server = RedisServer.start(directory)
    try:
        yield server.url, server.pid
    finally:
        server.stop()
