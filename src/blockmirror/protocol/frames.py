"""Binary framing: a fixed 16-byte header, a payload, one checksum over both.

Layout (big-endian)::

    0   2  magic  b"BM"
    2   1  version (PROTOCOL_VERSION)
    3   1  message type
    4   4  payload_bytes
    8   8  xxh3_64(header[0:8] || payload)

The checksum sits in the header so a receiver can reject an oversized or
unknown frame before its payload arrives; it covers the first 8 header bytes
so a flipped type or length is caught as well. The receive buffer is parsed in
place (offsets into one bytearray), so a 64 KiB frame costs one hash and no
copy at all: a frame's payload is a view into the receive buffer, and bytes
that a live view refers to are never overwritten. While any view into the
current buffer lives (a decoded Write's data waiting for the engine), the
decoder does not move or reuse that buffer: when it runs out of room it
continues in another one (a spare whose views are all gone, or a new one)
and copies only the unparsed tail there. Whether views live is the buffer's
reference count: every memoryview of it holds one reference.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable
from typing import NamedTuple

import xxhash

from blockmirror.buffers import uninitialized
from blockmirror.protocol.errors import ErrorCode, RemoteProtocolError

MAGIC = b"BM"
PROTOCOL_VERSION = 1
FRAME_HEADER_BYTES = 16
# Largest data a Write/ResyncData may carry; the engine splits bigger extents.
WRITE_DATA_MAX_BYTES = 4 * 1024 * 1024
# Room for the fixed fields that precede data in a payload.
FRAME_PAYLOAD_MAX_BYTES = WRITE_DATA_MAX_BYTES + 4096

# The receive buffer starts small (one connection per pair, but tests make
# thousands) and grows to fit the largest frame it has to hold.
RECEIVE_BUFFER_BYTES_INITIAL = 256 * 1024
# Never offer the runtime less than this to recv_into: tiny reads cost syscalls.
RECEIVE_CHUNK_BYTES_MIN = 64 * 1024
_RECEIVE_BUFFER_BYTES_KEPT_MAX = 4 * (FRAME_HEADER_BYTES + FRAME_PAYLOAD_MAX_BYTES)
# A buffer that views still refer to is left for another; a busy stream grows
# its buffers up to this size, so the unparsed tail is copied rarely.
RECEIVE_SEGMENT_BYTES = 4 << 20
_SPARE_BUFFERS_MAX = 4  # buffers kept for reuse once their views are gone
# sys.getrefcount(self._buf) when nothing but the decoder refers to it: the
# attribute and getrefcount's own argument.
_UNREFERENCED = 2

# Anything the transport can write and memoryview can read.
Buffer = bytes | bytearray | memoryview

_HEADER = struct.Struct(">2sBBIQ")
assert _HEADER.size == FRAME_HEADER_BYTES
_PREFIX = struct.Struct(">2sBBI")


class Frame(NamedTuple):
    """A checked frame. `payload` is a view into the receive buffer; the
    decoder never overwrites bytes a live view refers to, so a message may
    keep (a slice of) it instead of copying."""

    msg_type: int
    payload: memoryview


def encode_frame(msg_type: int, parts: Iterable[Buffer]) -> list[Buffer]:
    """Frame `parts` (concatenated on the wire) without joining them.

    Returns [header + first part, further parts...] so a large data part is
    handed to the transport as is (writev / transport.writelines)."""
    parts = [p for p in parts if len(p)]
    payload_bytes = sum(memoryview(p).nbytes for p in parts)
    if payload_bytes > FRAME_PAYLOAD_MAX_BYTES:
        raise ValueError(f"payload of {payload_bytes} bytes exceeds FRAME_PAYLOAD_MAX_BYTES")
    prefix = _PREFIX.pack(MAGIC, PROTOCOL_VERSION, msg_type, payload_bytes)
    h = xxhash.xxh3_64(prefix)
    for p in parts:
        h.update(p)
    header = prefix + h.digest()
    if not parts:
        return [header]
    return [header + bytes(parts[0]), *parts[1:]]


class FrameDecoder:
    """Turns a byte stream into checked frames.

    Feed it with `feed(data)` (copies into the buffer) or, from an asyncio
    BufferedProtocol, `get_buffer(hint)` + `buffer_updated(n)` (the kernel
    writes straight into the buffer). The buffer is never resized in place,
    only replaced, so a view the runtime still holds can never make us fail.
    """

    def __init__(self, known_types: Iterable[int], payload_bytes_max: int = FRAME_PAYLOAD_MAX_BYTES,
                 verify_checksums: bool = True):
        self._known_types = frozenset(known_types)
        # False only in the simulator's mutation check (a receiver that trusts corrupted bytes).
        self._verify_checksums = verify_checksums
        self._payload_bytes_max = payload_bytes_max
        self._buf = bytearray(RECEIVE_BUFFER_BYTES_INITIAL)
        self._spares: list[bytearray] = []
        self._start = 0  # first unparsed byte
        self._end = 0  # one past the last received byte
        self._frame_bytes_wanted = 0  # size of the frame whose header we have seen
        self._eof = False

    @property
    def buffered_bytes(self) -> int:
        return self._end - self._start

    @property
    def eof(self) -> bool:
        return self._eof

    def feed(self, data: Buffer) -> None:
        """Append received bytes; empty data means the peer closed (EOF)."""
        n = memoryview(data).nbytes
        if n == 0:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("data fed after EOF")
        self._reserve(n)
        self._buf[self._end:self._end + n] = data
        self._end += n

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """A writable view of free buffer space, for `recv_into`."""
        want = max(sizehint, RECEIVE_CHUNK_BYTES_MIN, self._frame_bytes_wanted - self.buffered_bytes)
        self._reserve(want)
        return memoryview(self._buf)[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        assert 0 <= nbytes <= len(self._buf) - self._end, "more bytes than the offered buffer"
        self._end += nbytes

    def next_frame(self) -> Frame | None:
        """The next whole, checked frame, or None if more bytes are needed.

        Raises RemoteProtocolError for a bad magic, version, type, length or
        checksum, and for a frame cut short by EOF."""
        available = self._end - self._start
        if available < FRAME_HEADER_BYTES:
            if self._eof and available:
                raise RemoteProtocolError(ErrorCode.TRUNCATED_FRAME,
                                          f"connection closed {available} bytes into a frame header")
            return None
        start = self._start
        magic, version, msg_type, payload_bytes, checksum = _HEADER.unpack_from(self._buf, start)
        if magic != MAGIC:
            raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME,
                                      f"bad frame magic {magic!r}: peer is not speaking blockmirror")
        if version != PROTOCOL_VERSION:
            raise RemoteProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                                      f"peer speaks protocol version {version}, this node speaks {PROTOCOL_VERSION}")
        if payload_bytes > self._payload_bytes_max:
            raise RemoteProtocolError(ErrorCode.FRAME_TOO_LARGE,
                                      f"frame payload of {payload_bytes} bytes exceeds the limit of "
                                      f"{self._payload_bytes_max}")
        if msg_type not in self._known_types:
            raise RemoteProtocolError(ErrorCode.UNKNOWN_MESSAGE_TYPE, f"unknown message type 0x{msg_type:02x}")
        frame_bytes = FRAME_HEADER_BYTES + payload_bytes
        if available < frame_bytes:
            self._frame_bytes_wanted = frame_bytes
            if self._eof:
                raise RemoteProtocolError(ErrorCode.TRUNCATED_FRAME,
                                          f"connection closed after {available} of {frame_bytes} frame bytes")
            return None
        view = memoryview(self._buf)
        payload = view[start + FRAME_HEADER_BYTES:start + frame_bytes]
        h = xxhash.xxh3_64(view[start:start + 8])
        h.update(payload)
        if self._verify_checksums and h.intdigest() != checksum:
            raise RemoteProtocolError(ErrorCode.BAD_CHECKSUM,
                                      f"checksum mismatch in a frame of type 0x{msg_type:02x}")
        self._frame_bytes_wanted = 0
        self._start = start + frame_bytes
        if self._start == self._end and len(self._buf) > _RECEIVE_BUFFER_BYTES_KEPT_MAX:
            # Give back a one-off huge feed (replacing never overwrites: views keep the old one).
            self._buf = bytearray(RECEIVE_BUFFER_BYTES_INITIAL)
            self._start = self._end = 0
        return Frame(msg_type, payload)

    def _reserve(self, nbytes: int) -> None:
        """Make room for `nbytes` after `_end`, moving the unparsed tail to the
        front or into a larger buffer (both copy only the unparsed bytes)."""
        if self._start == self._end and self._end and sys.getrefcount(self._buf) <= _UNREFERENCED:
            # Everything parsed and no view refers to the buffer: start over
            # at its front (the common case: no copy at all).
            self._start = self._end = 0
        capacity = len(self._buf)
        if capacity - self._end >= nbytes:
            return
        live = self._end - self._start
        needed = live + nbytes
        if sys.getrefcount(self._buf) > _UNREFERENCED:
            # Views of parsed frames still refer to this buffer: leave it to
            # them and continue in another one.
            size = max(needed, min(2 * capacity, RECEIVE_SEGMENT_BYTES), capacity)
            new = None
            spares = self._spares
            for i in range(len(spares)):
                # refs when no view is left: the list and getrefcount's argument
                if len(spares[i]) >= size and sys.getrefcount(spares[i]) <= 2:
                    new = spares.pop(i)
                    break
            if new is None:
                new = uninitialized(size)  # bytes past _end are written before they are parsed
            new[0:live] = memoryview(self._buf)[self._start:self._end]
            self._spares.append(self._buf)
            if len(self._spares) > _SPARE_BUFFERS_MAX:
                self._spares.pop(0)  # freed once its views are gone
            self._buf = new
        elif needed <= capacity and self._start >= live:
            # Non-overlapping move within the same buffer (no view refers to it).
            self._buf[0:live] = memoryview(self._buf)[self._start:self._end]
        else:
            new = uninitialized(capacity if needed <= capacity else max(needed, 2 * capacity))
            new[0:live] = memoryview(self._buf)[self._start:self._end]
            self._buf = new
        self._start, self._end = 0, live
