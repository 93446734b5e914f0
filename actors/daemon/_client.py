"""Talking to the daemon from another process.

    with actors.connect("/var/lib/fleet") as client:
        name = client.call("names.checkout_name")          # owner: this process
        client.call("locks.acquire", "/work/agents/w3", session_id="%4")
        client.call("names.pool_stats")

Errors come back as the same classes (`Locked`, `InvalidName`, `ChildNotFound`, ...)
when this package or `supervision` exports them, `RemoteError` otherwise.
"""

from __future__ import annotations

import collections
import itertools
import os
import socket
import threading
from pathlib import Path
from typing import Any

from actors._errors import ConnectionLost, RemoteError
from actors.daemon._protocol import (
    FrameError,
    FrameReader,
    connect_error,
    raise_remote,
    request_frame,
    result_of,
    set_kernel_timeouts,
)

__all__ = ["SOCKET_NAME", "Client", "connect", "raise_remote"]

SOCKET_NAME = "tree.sock"


class Client:
    """A connection to a running daemon's socket (thread-safe; also a context manager).

    Connecting waits (within `timeout`) while the daemon's listen backlog is full. When the
    connection breaks with a call in flight, that call raises `ConnectionLost` (its effect
    is unknown); the next call reconnects by itself.
    """

    def __init__(self, socket_path: str | os.PathLike[str], *, timeout: float | None = 30.0) -> None:
        self.socket_path = os.fspath(socket_path)
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._reader = FrameReader()
        self._replies: collections.deque[Any] = collections.deque()
        self._connect()

    def _connect(self) -> None:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # A blocking connect to a Unix socket waits up to SO_SNDTIMEO while the backlog
            # is full; with a Python timeout set it would fail at once with EAGAIN.
            set_kernel_timeouts(connection, receive=self.timeout, send=self.timeout)
            try:
                connection.connect(self.socket_path)
            except BlockingIOError:
                raise TimeoutError(
                    f"{self.socket_path}: the daemon's backlog stayed full for {self.timeout}s"
                ) from None
            except OSError as error:
                raise connect_error(error, self.socket_path) from None
        except BaseException:
            connection.close()
            raise
        self._socket = connection
        self._reader = FrameReader()
        self._replies.clear()

    def _drop(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """Send one request and return its `ok` value, or raise its error.

        Blocks up to the client's `timeout` for the reply (`TimeoutError` after it).
        """
        with self._lock:
            request_id = next(self._ids)
            payload = request_frame(request_id, op, args, kwargs)
            self._send(op, payload)
            try:
                reply = self._reply_to(request_id)
            except BlockingIOError:  # the kernel timeout (SO_RCVTIMEO); a late reply is skipped
                raise TimeoutError(f"{op}: no reply from {self.socket_path} within {self.timeout}s") from None
            except (OSError, FrameError) as error:
                self._drop()
                raise ConnectionLost(
                    f"{op}: the connection to {self.socket_path} broke with the call in flight "
                    f"(its effect is unknown): {error}"
                ) from error
        return result_of(reply)

    def _send(self, op: str, payload: bytes) -> None:
        for attempt in (1, 2):
            if self._socket is None:
                self._connect()
            assert self._socket is not None
            try:
                self._socket.sendall(payload)
                return
            except BlockingIOError:
                # Part of the frame may be out: this connection cannot carry another one.
                self._drop()
                raise TimeoutError(f"{op}: the daemon at {self.socket_path} took no request for {self.timeout}s") from None
            except OSError as error:
                # The daemon had closed this connection (a restart, an idle slot reclaimed):
                # a frame it did not receive whole was never executed, so sending it again
                # on a new connection is safe.
                self._drop()
                if attempt == 2:
                    raise ConnectionLost(f"{op}: cannot send to {self.socket_path}: {error}") from error

    def _reply_to(self, request_id: int) -> dict[str, Any]:
        replies = self._replies
        while True:
            while not replies:
                assert self._socket is not None
                data = self._socket.recv(65536)
                if not data:
                    raise ConnectionResetError("the daemon closed the connection")
                self._reader.feed(data)
                replies.extend(self._reader.frames())
            reply = replies.popleft()
            if not isinstance(reply, dict):
                self._drop()
                raise RemoteError("ProtocolError", f"malformed reply: {reply!r}")
            if reply.get("id") == request_id:
                return reply
            if reply.get("id") is None and "error" in reply:
                self._drop()  # the daemon closes a connection after a nil-id error
                return reply
            # else: a reply to a call abandoned by a timeout

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def connect(state_dir: str | os.PathLike[str], *, timeout: float | None = 30.0) -> Client:
    """A `Client` for the daemon serving `state_dir`."""
    return Client(Path(state_dir) / SOCKET_NAME, timeout=timeout)
