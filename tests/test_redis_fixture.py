"""The fleet tests' own redis-server: durable across SIGKILL, pausable, never on port 6379."""

from __future__ import annotations

import redis

from tests._redis import RedisServer


def test_the_server_keeps_writes_across_sigkill_and_answers_nothing_while_paused(redis_server: RedisServer) -> None:
    with redis_server.client() as client:
        client.set("k", "v")
        assert client.config_get("appendfsync")["appendfsync"] == "always"
        assert client.config_get("port")["port"] == "0"
    redis_server.restart()
    with redis_server.client() as client:
        assert client.get("k") == b"v"
    redis_server.pause()
    try:
        with redis.Redis(unix_socket_path=redis_server.socket_path, socket_timeout=0.2) as client:
            try:
                client.ping()
                answered = True
            except redis.TimeoutError:
                answered = False
        assert not answered
    finally:
        redis_server.resume()
