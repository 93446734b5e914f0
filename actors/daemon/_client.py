"""Talking to the daemon from another process.

    with actors.connect("/var/lib/fleet") as client:
        name = client.call("names.checkout_name")          # owner: this process
        client.call("locks.acquire", "/work/agents/w3", session_id="%4")
        client.call("names.pool_stats")

Errors come back as the same classes (`Locked`, `InvalidName`, `ChildNotFound`, ...)
when this package or `supervision` exports them, `RemoteError` otherwise.
"""

from __future__ import annotations

import functools
import itertools
import os
import socket
import threading
from pathlib import Path
from typing import Any

from actors._errors import RemoteError
from actors.daemon._protocol import FrameReader, encode, set_kernel_timeouts

__all__ = ["SOCKET_NAME", "Client", "connect"]

SOCKET_NAME = "tree.sock"


@functools.cache
def _error_classes() -> dict[str, type[BaseException]]:
    import actors
    import supervision

    classes: dict[str, type[BaseException]] = {}
    for module in (supervision, actors):
        for name in getattr(module, "__all__", []):
            try:
                value = getattr(module, name)
            except Exception:  # an optional part that cannot load here
                continue
            if isinstance(value, type) and issubclass(value, BaseException):
                classes[name] = value
    return classes


def raise_remote(error: Any) -> None:
    """Raise the exception an error reply describes."""
    if not isinstance(error, dict):
        raise RemoteError("ProtocolError", f"malformed error reply: {error!r}")
    type_name = str(error.get("type", "RemoteError"))
    message = str(error.get("message", ""))
    cls = _error_classes().get(type_name)
    if cls is None or cls is RemoteError:
        raise RemoteError(type_name, message)
    try:
        exception = cls(message)
    except Exception:
        raise RemoteError(type_name, message) from None
    raise exception


class Client:
    """A connection to a running daemon's socket (thread-safe; also a context manager)."""

    def __init__(self, socket_path: str | os.PathLike[str], *, timeout: float | None = 30.0) -> None:
        self.socket_path = os.fspath(socket_path)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.settimeout(timeout)
        try:
            self._socket.connect(self.socket_path)
        except OSError:
            self._socket.close()
            raise
        self.timeout = timeout
        set_kernel_timeouts(self._socket, receive=timeout, send=timeout)
        self._reader = FrameReader()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: list[Any] = []

    def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """Send one request and return its `ok` value, or raise its error.

        Blocks up to the client's `timeout` for the reply (`TimeoutError` after it).
        """
        try:
            return self._call(op, args, kwargs)
        except BlockingIOError:  # the kernel timeout (SO_RCVTIMEO/SO_SNDTIMEO)
            raise TimeoutError(f"{op}: no reply from {self.socket_path} within {self.timeout}s") from None

    def _call(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with self._lock:
            request_id = next(self._ids)
            self._socket.sendall(encode({"id": request_id, "op": op, "args": list(args), "kwargs": kwargs}))
            while True:
                reply = self._next_frame()
                if not isinstance(reply, dict):
                    raise RemoteError("ProtocolError", f"malformed reply: {reply!r}")
                if reply.get("id") is None and "error" in reply:
                    raise_remote(reply["error"])
                if reply.get("id") != request_id:
                    continue  # a reply to a call abandoned by a timeout
                if "error" in reply:
                    raise_remote(reply["error"])
                return reply.get("ok")

    def _next_frame(self) -> Any:
        while not self._pending:
            data = self._socket.recv(65536)
            if not data:
                raise ConnectionError(f"the daemon at {self.socket_path} closed the connection")
            self._pending.extend(self._reader.feed(data))
        return self._pending.pop(0)

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def connect(state_dir: str | os.PathLike[str], *, timeout: float | None = 30.0) -> Client:
    """A `Client` for the daemon serving `state_dir`."""
    return Client(Path(state_dir) / SOCKET_NAME, timeout=timeout)
