"""Transmission-phase requests: framing parsed in place, and validation.

`RequestReader` owns the receive buffer. The transport receives straight into
`get_buffer()` (asyncio.BufferedProtocol), so request headers are parsed where
the kernel put them, and a write payload that does not fit in what was
already received is received straight into its own buffer: at most one copy
of any payload byte, none for most of a large write (see SMALL_WINDOW_BYTES).
"""

from __future__ import annotations

from typing import NamedTuple

from blockmirror.buffers import uninitialized
from blockmirror.nbd import wire
from blockmirror.nbd.wire import Cmd, Err

RECEIVE_BUFFER_BYTES = 256 << 10
# After a large write, offer the socket only a small window: the next request
# is likely another large write, and its payload should then land in its own
# buffer rather than be received here and copied.
LARGE_WRITE_BYTES = 64 << 10
SMALL_WINDOW_BYTES = 4096


class ProtocolError(Exception):
    """The client broke the request framing; only hanging up is safe."""


class Request(NamedTuple):
    cmd: int
    flags: int
    cookie: int
    offset: int
    length: int
    data: bytes | bytearray | None = None  # a WRITE's payload; None if it was too large and dropped


class RequestReader:
    """Sans-IO request parser over a buffer the transport fills in place."""

    def __init__(self, buffer_bytes: int = RECEIVE_BUFFER_BYTES):
        assert 2 * wire.REQUEST_BYTES <= buffer_bytes <= wire.MAX_PAYLOAD_BYTES
        self._buf = bytearray(buffer_bytes)
        self._view = memoryview(self._buf)
        self._start = 0  # parsed up to here
        self._end = 0  # received up to here
        self._pending: Request | None = None  # a WRITE header waiting for its payload
        self._payload: bytearray | None = None
        self._payload_got = 0
        self._discard_left = 0  # bytes of an oversized payload still to drop
        self._small_window = False

    @property
    def mid_request(self) -> bool:
        """True if a request has been started but not completely received."""
        return self._pending is not None or self._end > self._start

    def get_buffer(self) -> memoryview:
        if self._payload is not None:
            return memoryview(self._payload)[self._payload_got:]
        if self._discard_left:
            assert self._start == self._end == 0
            return self._view[:min(self._discard_left, len(self._buf))]
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buf):
            # Only a partial header can be left over (payloads never wait here).
            assert self._end - self._start < wire.REQUEST_BYTES
            tail = bytes(self._view[self._start:self._end])
            self._buf[:len(tail)] = tail
            self._start, self._end = 0, len(tail)
        if self._small_window:
            return self._view[self._end:self._end + SMALL_WINDOW_BYTES]
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._payload is not None:
            self._payload_got += nbytes
        elif self._discard_left:
            self._discard_left -= nbytes
        else:
            self._end += nbytes

    def feed(self, data: bytes) -> None:
        """Start from bytes received before the reader existed (handshake leftovers)."""
        assert not self.mid_request and len(data) <= len(self._buf)
        self._buf[:len(data)] = data
        self._start, self._end = 0, len(data)

    def next_request(self) -> Request | None:
        """The next complete request, or None until more bytes arrive."""
        if self._pending is not None:
            if self._payload is not None:
                if self._payload_got < len(self._payload):
                    return None
                request = self._pending._replace(data=self._payload)
                self._payload = None
            elif self._discard_left:
                return None
            else:
                request = self._pending
            self._pending = None
            return request
        start = self._start
        available = self._end - start
        if available < wire.REQUEST_BYTES:
            return None
        magic, flags, cmd, cookie, offset, length = wire.REQUEST.unpack_from(self._buf, start)
        if magic != wire.REQUEST_MAGIC:
            raise ProtocolError(f"bad request magic 0x{magic:08x}")
        start += wire.REQUEST_BYTES
        available -= wire.REQUEST_BYTES
        self._small_window = cmd == Cmd.WRITE and length >= LARGE_WRITE_BYTES
        if cmd != Cmd.WRITE:
            self._start = start
            return Request(cmd, flags, cookie, offset, length)
        if available >= length:
            self._start = start + length
            return Request(cmd, flags, cookie, offset, length, bytes(self._view[start:start + length]))
        header = Request(cmd, flags, cookie, offset, length)
        self._start = self._end = 0
        if length > wire.MAX_PAYLOAD_BYTES:
            self._discard_left = length - available
            self._pending = header
            return None
        self._payload = uninitialized(length)  # handed on only once every byte arrived
        self._payload[:available] = self._view[start:start + available]
        self._payload_got = available
        self._pending = header
        return None


def check(request: Request, size: int, read_only: bool) -> Err:
    """The error a request must get before it touches the export, or OK."""
    cmd = request.cmd
    allowed = wire.ALLOWED_CMD_FLAGS.get(cmd)
    if allowed is None:
        return Err.EINVAL  # unknown, or not advertised (CACHE, BLOCK_STATUS)
    if request.flags & ~allowed:
        return Err.EINVAL
    offset, length = request.offset, request.length
    inside = offset + length <= size
    if cmd == Cmd.READ:
        if length > wire.MAX_PAYLOAD_BYTES or not inside:
            return Err.EINVAL
    elif cmd == Cmd.WRITE:
        if read_only:
            return Err.EPERM
        if request.data is None or length > wire.MAX_PAYLOAD_BYTES:
            return Err.EINVAL
        if not inside:
            return Err.ENOSPC
    elif cmd == Cmd.WRITE_ZEROES:
        if read_only:
            return Err.EPERM
        if not inside:
            return Err.ENOSPC
    elif cmd == Cmd.TRIM:
        if read_only:
            return Err.EPERM
        if not inside:
            return Err.EINVAL
    elif cmd == Cmd.FLUSH:
        if offset or length:
            return Err.EINVAL
    return Err.OK
