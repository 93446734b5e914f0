"""The daemon's wire protocol: a stream of msgpack maps over a Unix socket.

Request ``{"id": int, "op": str, "args": list, "kwargs": map}``; reply
``{"id": int, "ok": value}`` or ``{"id": int, "error": {"type": str, "message": str}}``.
Each frame is at most `MAX_FRAME` bytes. Replies to one connection come in request order.
After ``events.follow`` the daemon sends ``{"event": {...}}`` and ``{"dropped": n}`` frames.

The clients' side of the protocol lives here without any I/O (`request_frame`,
`parse_incoming`, `result_of`, `connect_error`): the blocking `Client` and the
`AsyncClient` are two drivers over it.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import msgpack
import pykka
from pykka import messages as pykka_messages

from actors._errors import RemoteError
from supervision import ChildInfo, Event

__all__ = [
    "MAX_FRAME",
    "FrameError",
    "FrameReader",
    "ask_method",
    "Incoming",
    "connect_error",
    "encode",
    "error_reply",
    "parse_incoming",
    "raise_remote",
    "request_frame",
    "result_of",
    "ok_reply",
    "nesting_depth",
    "set_kernel_timeouts",
    "to_wire",
]

MAX_FRAME = 1024 * 1024


class FrameError(ValueError):
    """Bytes that are not a valid frame: the connection cannot be trusted any further."""


def ask_method(
    target: Any, method: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *, timeout: float | None
) -> Any:
    """Call the public method `method` of an actor (an `ActorRef` or a `Handle`) and wait.

    What an op becomes: a pykka `ProxyCall` asked directly, without building a proxy
    (~60 µs each time pykka introspects the actor for one).
    """
    message = pykka_messages.ProxyCall(attr_path=(method,), args=tuple(args), kwargs=kwargs or {})
    return target.ask(message, timeout=timeout)


def set_kernel_timeouts(sock: socket.socket, *, receive: float | None, send: float | None) -> None:
    """Blocking socket with kernel timeouts (SO_RCVTIMEO/SO_SNDTIMEO).

    Cheaper than `settimeout`, which makes Python poll() before every recv and send
    (measured ~8-18 µs per call here). A timeout then surfaces as `BlockingIOError`.
    """
    sock.settimeout(None)
    for option, seconds in ((socket.SO_RCVTIMEO, receive), (socket.SO_SNDTIMEO, send)):
        whole = int(seconds or 0)
        micro = int(((seconds or 0) - whole) * 1_000_000)
        sock.setsockopt(socket.SOL_SOCKET, option, struct.pack("ll", whole, micro))


_CONTAINERS = (list, tuple, dict)


def nesting_depth(value: Any, *, limit: int) -> int:
    """How deeply lists and maps nest in `value`, counted up to `limit + 1` (no recursion).

    Level by level, queueing only containers: every request pays for this, so `[[], {}]`
    must cost next to nothing.
    """
    level = [value] if isinstance(value, _CONTAINERS) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return depth
        below: list[Any] = []
        for item in level:
            if not item:
                continue
            if isinstance(item, dict):
                below.extend(key for key in item if isinstance(key, _CONTAINERS))
                below.extend(child for child in item.values() if isinstance(child, _CONTAINERS))
            else:
                below.extend(child for child in item if isinstance(child, _CONTAINERS))
        level = below
    return depth


def to_wire(value: Any) -> Any:
    """What msgpack cannot pack as is, made plain: dataclasses, refs, enums, sets, paths."""
    if isinstance(value, ChildInfo):
        return {"id": value.id, "running": value.running, "restarts": value.restarts, "is_supervisor": value.is_supervisor}
    if isinstance(value, pykka.ActorRef):
        return value.actor_urn
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"cannot send a {type(value).__name__} over the socket")


_PACKER_KEEP = 64 * 1024  # a packer that packed a frame larger than this is dropped after use
_packers = threading.local()


def encode(message: dict[str, Any]) -> bytes:
    """One frame; a reply too large for a frame becomes an error reply.

    Each thread keeps one `msgpack.Packer` (`packb` builds one, with a 256 KiB buffer, per
    call: ~0.4 µs per frame; only the pages a frame touches become resident); one
    that packed a large frame is let go, so no thread keeps a large buffer resident.
    """
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(default=to_wire, use_bin_type=True)
    data: bytes = packer.pack(message)  # on an error the packer resets itself
    if len(data) > _PACKER_KEEP:
        _packers.packer = None
    if len(data) > MAX_FRAME:
        raise FrameError(f"frame of {len(data)} bytes exceeds the {MAX_FRAME}-byte limit")
    return data


def ok_reply(request_id: Any, value: Any) -> dict[str, Any]:
    return {"id": request_id, "ok": value}


def error_reply(request_id: Any, error: BaseException | str, message: str | None = None) -> dict[str, Any]:
    if isinstance(error, BaseException):
        return {"id": request_id, "error": {"type": type(error).__name__, "message": str(error)}}
    return {"id": request_id, "error": {"type": error, "message": message or ""}}


class FrameReader:
    """Bytes in, whole frames out, never holding more than one frame's worth of bytes.

        reader = FrameReader()
        reader.feed(connection.recv(65536))
        for frame in reader.frames():   # FrameError at a malformed or oversized frame
            ...

    Nothing of a frame is decoded until all of it has arrived: a scanning `Unpacker`
    finds where each frame ends with `skip()` (which builds no objects), and only then are
    that frame's bytes decoded. `max_buffer_size` alone would not do: it bounds the bytes
    not yet parsed, not one object, so a request of many 512 KiB strings would be decoded
    string by string without end. Here the bytes of the current frame are counted, so a
    frame is refused once more than `max_frame` bytes of it have arrived (after at most one
    more `feed`). The usual case skips the scanner: the first feed after an empty buffer (at
    most `max_frame` bytes) is decoded as one frame outright, and scanned only if it is
    not exactly one (a wasted decode of at most one chunk per frame).
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._max_frame = max_frame
        # Two frames' worth: a `feed` larger than that is refused rather than buffered.
        self._scanner = msgpack.Unpacker(max_buffer_size=2 * max_frame)
        self._pending = bytearray()  # bytes of frames not handed out yet
        self._offset = 0  # stream position of _pending[0], on the scanner's tell() scale
        self._fresh: bytes | None = None  # one feed after an empty buffer: maybe one whole frame

    @property
    def has_partial(self) -> bool:
        """True while some bytes of a frame have arrived but not all of it."""
        return bool(self._pending) or self._fresh is not None

    def feed(self, data: bytes) -> None:
        if not self._pending and self._fresh is None and len(data) <= self._max_frame:
            self._fresh = data  # the usual case, one whole request: `frames` decodes it at once
            return
        self._scan_fresh()
        self._scan(data)

    def _scan(self, data: bytes) -> None:
        try:
            self._scanner.feed(data)
        except msgpack.BufferFull:
            raise FrameError(f"frame exceeds the {self._max_frame}-byte limit") from None
        self._pending += data

    def _scan_fresh(self) -> None:
        fresh, self._fresh = self._fresh, None
        if fresh is not None:
            self._scan(fresh)

    def frames(self) -> Iterator[Any]:
        """The frames complete so far, in order; `FrameError` where the stream goes bad."""
        fresh = self._fresh
        if fresh is not None:
            # One decode of at most one frame's worth of bytes, and only for the first
            # feed after an empty buffer; what is not exactly one frame is scanned instead.
            try:
                frame = msgpack.unpackb(fresh, raw=False, strict_map_key=False, use_list=True)
            except Exception:  # part of a frame, several, or bad bytes: the scanner decides
                self._scan_fresh()
            else:
                self._fresh = None
                yield frame
                return
        scanner, pending = self._scanner, self._pending
        while True:
            try:
                scanner.skip()
            except msgpack.OutOfData:
                break
            except Exception as error:  # msgpack raises several types for malformed bytes
                raise FrameError(f"malformed msgpack: {error or type(error).__name__}") from None
            end = scanner.tell() - self._offset
            if end > self._max_frame:
                raise FrameError(f"frame of {end} bytes exceeds the {self._max_frame}-byte limit")
            self._offset += end
            if end == len(pending):  # the usual case: one whole frame, nothing after it
                frame = _decode(pending)
                pending.clear()
                yield frame
                break  # nothing left to scan (skip() would only raise OutOfData, ~0.6 µs)
            frame = _decode(pending[:end])
            del pending[:end]
            yield frame
        if len(pending) > self._max_frame:
            raise FrameError(f"frame exceeds the {self._max_frame}-byte limit")


def _decode(data: bytearray) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception as error:  # bad UTF-8, an unhashable key, an unknown ext, ...
        raise FrameError(f"malformed msgpack: {error or type(error).__name__}") from None


# -- the clients' side, without I/O --------------------------------------------------------------


def request_frame(request_id: int, op: str, args: Sequence[Any], kwargs: dict[str, Any]) -> bytes:
    """The bytes of one request (`FrameError` if it exceeds the frame limit)."""
    return encode({"id": request_id, "op": op, "args": list(args), "kwargs": kwargs})


@dataclasses.dataclass(frozen=True, slots=True)
class Incoming:
    """One frame from the daemon, classified: a reply (`request_id`, `reply`), an `event`,
    a count of `dropped` events, or a `fatal` reply (nil id: the daemon closes the connection)."""

    request_id: int | None = None
    reply: dict[str, Any] | None = None
    event: Event | None = None
    dropped: int = 0
    fatal: bool = False


def parse_incoming(frame: Any) -> Incoming:
    """Classify one decoded frame; `RemoteError("ProtocolError")` for one that fits nothing."""
    if isinstance(frame, dict):
        request_id = frame.get("id")
        if type(request_id) is int and ("ok" in frame or "error" in frame):
            return Incoming(request_id=request_id, reply=frame)
        if request_id is None and "error" in frame:
            return Incoming(reply=frame, fatal=True)
        event = frame.get("event")
        if isinstance(event, dict):
            try:
                return Incoming(event=Event(**event))
            except TypeError:
                pass
        dropped = frame.get("dropped")
        if type(dropped) is int:
            return Incoming(dropped=dropped)
    raise RemoteError("ProtocolError", f"malformed frame from the daemon: {frame!r}"[:500])


def result_of(reply: dict[str, Any]) -> Any:
    """The `ok` value of a reply, or the exception its error describes, raised."""
    if "error" in reply:
        raise_remote(reply["error"])
    return reply.get("ok")


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
    """Raise the exception an error reply describes: the same class where this package or
    `supervision` exports it, `RemoteError` otherwise."""
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


def connect_error(error: OSError, socket_path: str) -> OSError:
    """A failed connect, saying which socket (a bare ENOENT names nothing)."""
    if isinstance(error, FileNotFoundError):
        why = "no daemon socket there (is `python -m actors serve` or start_tree(serve=True) running?)"
    elif isinstance(error, ConnectionRefusedError):
        why = "nobody accepts on it (a daemon that has stopped?)"
    else:
        why = error.strerror or str(error)
    return type(error)(error.errno, f"cannot connect to {socket_path}: {why}", socket_path)
