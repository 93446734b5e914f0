from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests._redis import RedisServer

pytest_plugins = ["supervision.testing"]


@pytest.fixture(autouse=True)
def _cleanup_actors(actor_cleanup):
    """Every test of ours stops what it started, and fails if something will not stop."""
    yield


@pytest.fixture
def spawn_sleeper() -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Start idle child processes (live pids to own names and locks); all are reaped afterwards."""
    children: list[subprocess.Popen[bytes]] = []

    def spawn() -> subprocess.Popen[bytes]:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        children.append(child)
        return child

    yield spawn
    for child in children:
        child.kill()
        child.wait()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator["RedisServer"]:
    """A real redis-server of this test's own (Unix socket, appendfsync always), stopped by pid."""
    from tests._redis import RedisServer

    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()
