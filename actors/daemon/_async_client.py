"""Talking to the daemon from an asyncio program: the `Client`'s calls as coroutines.

    async with await actors.aconnect("/var/lib/fleet") as client:
        name, stats = await asyncio.gather(
            client.call("names.checkout_name"), client.call("names.pool_stats"))
        async for event in client.events(kinds={"name_checked_out"}):
            print(event.kind, event.name)

Many calls may be in flight on one connection; the reader task matches each reply to
its call by id. Cancelling a call (or `asyncio.timeout` around it) abandons its wait
only: the daemon still runs it, its late reply is skipped, and the connection stays
usable. When the connection breaks, every pending call raises `ConnectionLost` (its
effect is unknown) and the next call reconnects. Errors are the same classes as the
blocking `Client`'s: both drive the I/O-free protocol core in `actors.daemon._protocol`.
`events()` follows the event stream on a connection of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from actors._errors import ConnectionLost
from actors.daemon._client import SOCKET_NAME
from actors.daemon._protocol import (
    FrameError,
    FrameReader,
    connect_error,
    parse_incoming,
    raise_remote,
    request_frame,
    result_of,
)
from supervision import Event

__all__ = ["AsyncClient", "EventStream", "aconnect"]

_READ_SIZE = 65536


async def _open(socket_path: str, timeout: float | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.open_unix_connection(socket_path)
    except TimeoutError:
        raise TimeoutError(f"{socket_path}: no connection within {timeout}s") from None
    except OSError as error:
        raise connect_error(error, socket_path) from None


class AsyncClient:
    """A connection to a running daemon's socket for one event loop (`async with`).

    `await client.call(op, *args, **kwargs)` returns the `ok` value or raises what the
    daemon answered (`Locked`, `InvalidName`, ..., `RemoteError`); `TimeoutError` after
    `timeout` seconds without a reply. Never blocks the loop.
    """

    def __init__(self, socket_path: str | os.PathLike[str], *, timeout: float | None = 30.0) -> None:
        self.socket_path = os.fspath(socket_path)
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Lock | None = None
        self._streams: set[EventStream] = set()
        self._closed = False

    async def connect(self) -> AsyncClient:
        """Open the connection now (a call opens it when needed)."""
        await self._ensure_connected()
        return self

    async def _ensure_connected(self) -> asyncio.StreamWriter:
        if self._closed:
            raise ConnectionLost(f"the client of {self.socket_path} is closed")
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._writer is None:
                reader, writer = await _open(self.socket_path, self.timeout)
                self._writer = writer
                self._reader_task = asyncio.get_running_loop().create_task(self._read_replies(reader, writer))
            return self._writer

    async def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """Send one request and await its reply (other calls may be in flight meanwhile)."""
        request_id = next(self._ids)
        payload = request_frame(request_id, op, args, kwargs)  # FrameError: nothing was sent
        writer = await self._ensure_connected()
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = reply
        try:
            try:
                writer.write(payload)  # whole frames only: calls never interleave bytes
                await writer.drain()
            except (OSError, RuntimeError) as error:
                self._broken(writer, error)
            try:
                async with asyncio.timeout(self.timeout):
                    answer = await reply
            except TimeoutError:
                raise TimeoutError(f"{op}: no reply from {self.socket_path} within {self.timeout}s") from None
        except ConnectionLost as lost:
            raise ConnectionLost(f"{op}: {lost}") from lost.__cause__
        finally:
            # A cancelled or timed-out call: its late reply finds no one and is skipped.
            self._pending.pop(request_id, None)
        return result_of(answer)

    async def _read_replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = FrameReader()
        error: BaseException
        try:
            while True:
                data = await reader.read(_READ_SIZE)
                if not data:
                    error = ConnectionResetError("the daemon closed the connection")
                    break
                frames.feed(data)
                for frame in frames.frames():
                    incoming = parse_incoming(frame)
                    if incoming.fatal:
                        try:
                            raise_remote(incoming.reply["error"])  # type: ignore[index]
                        except Exception as remote:
                            error = remote
                        raise _Fatal
                    if incoming.request_id is not None:
                        waiter = self._pending.get(incoming.request_id)
                        if waiter is not None and not waiter.done():
                            waiter.set_result(incoming.reply)  # type: ignore[arg-type]
        except _Fatal:
            pass
        except asyncio.CancelledError:
            error = ConnectionResetError("the client was closed")
        except Exception as failure:  # OSError, FrameError, a frame that fits nothing
            error = failure
        self._broken(writer, error)

    def _broken(self, writer: asyncio.StreamWriter, error: BaseException) -> None:
        """Fail every pending call with `ConnectionLost`; the next call reconnects."""
        if self._writer is writer:
            self._writer = None
        writer.close()
        lost = ConnectionLost(
            f"the connection to {self.socket_path} broke with the call in flight (its effect is unknown): {error}"
        )
        lost.__cause__ = error
        for waiter in list(self._pending.values()):
            if not waiter.done():
                waiter.set_exception(lost)
        self._pending.clear()

    def events(self, kinds: Iterable[str] | None = None) -> EventStream:
        """Follow the daemon's events (`events.follow`) on a connection of its own."""
        if isinstance(kinds, str):
            raise TypeError("kinds must be a set of event kinds, not a str")
        stream = EventStream(self.socket_path, None if kinds is None else sorted(kinds), self.timeout)
        self._streams.add(stream)
        return stream

    async def close(self) -> None:
        """Close the connection and every event stream; pending calls raise `ConnectionLost`."""
        self._closed = True
        for stream in list(self._streams):
            await stream.aclose()
        self._streams.clear()
        writer, task = self._writer, self._reader_task
        if task is not None:
            task.cancel()
            try:
                await task
            except BaseException:
                pass
        await _close_writer(writer)

    async def __aenter__(self) -> AsyncClient:
        return await self.connect()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class _Fatal(Exception):
    """The daemon answered with a nil id: it closes the connection."""


class EventStream:
    """`async for event in stream`: the daemon's events (`supervision.Event`) as they happen.

    `dropped` counts events the daemon dropped because this reader fell behind. The
    iteration ends when the daemon closes the stream; `aclose()` (or `async with`) ends it
    from this side.
    """

    def __init__(self, socket_path: str, kinds: list[str] | None, timeout: float | None) -> None:
        self.socket_path = socket_path
        self.kinds = kinds
        self.timeout = timeout
        self.dropped = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._frames = FrameReader()
        self._ready: list[Event] = []
        self._closed = False

    async def start(self) -> EventStream:
        """Open the stream now (iteration opens it when needed); errors as `call`'s."""
        if self._writer is not None or self._closed:
            return self
        reader, writer = await _open(self.socket_path, self.timeout)
        self._reader, self._writer = reader, writer
        try:
            writer.write(request_frame(1, "events.follow", [self.kinds], {}))
            await writer.drain()
            async with asyncio.timeout(self.timeout):
                while True:
                    incoming = await self._next_incoming()
                    if incoming.reply is not None:
                        result_of(incoming.reply)  # raises the daemon's refusal
                        return self
        except BaseException:
            await self.aclose()
            raise

    async def _next_incoming(self) -> Any:
        assert self._reader is not None
        while True:
            for frame in self._frames.frames():
                return parse_incoming(frame)
            data = await self._reader.read(_READ_SIZE)
            if not data:
                raise ConnectionLost(f"the daemon at {self.socket_path} closed the event stream")
            self._frames.feed(data)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self._closed:
            raise StopAsyncIteration
        await self.start()
        while True:
            try:
                incoming = await self._next_incoming()
            except (ConnectionLost, OSError, FrameError):
                await self.aclose()
                raise StopAsyncIteration from None
            if incoming.event is not None:
                return incoming.event
            self.dropped += incoming.dropped

    async def aclose(self) -> None:
        self._closed = True
        writer, self._writer = self._writer, None
        await _close_writer(writer)

    async def __aenter__(self) -> EventStream:
        return await self.start()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()


async def aconnect(state_dir: str | os.PathLike[str], *, timeout: float | None = 30.0) -> AsyncClient:
    """An `AsyncClient` connected to the daemon serving `state_dir` (an error names the socket)."""
    return await AsyncClient(Path(state_dir) / SOCKET_NAME, timeout=timeout).connect()


async def _close_writer(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass  # the peer went first
