"""The payload codec every message is built from: type codes, field rules,
sequential payload reading, the Message base and the shared extent codecs.

A message that exists has legal field values, so the encoder never has to
check and the decoder only has to construct: every rule lives in one
`__post_init__`, made of the checks below. Integers are big-endian; a string
is a u16 byte length and UTF-8; a UUID is its 16 bytes. A payload must be
consumed exactly: trailing bytes are malformed, because a change of layout is
a version bump.
"""

from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass
from typing import ClassVar

from blockmirror.protocol.frames import WRITE_DATA_MAX_BYTES, Buffer

NAME_BYTES_MAX = 255
U64_MAX = (1 << 64) - 1
NIL_UUID = uuid.UUID(int=0)


class MessageType(enum.IntEnum):
    """The type byte of the frame header.

    Retired codes are never reused, so an old peer can never mistake a new
    message for one it knows: 0x12 was Flush (nothing sent it)."""

    HELLO = 0x01
    AUTH_PROOF = 0x02
    ATTACH = 0x03
    READY = 0x04
    WRITE = 0x10
    WRITE_ZEROES = 0x11
    ACK = 0x13
    HEARTBEAT = 0x20
    HEARTBEAT_ACK = 0x21
    RESYNC_BEGIN = 0x30
    RESYNC_DATA = 0x31
    RESYNC_ZEROES = 0x32
    RESYNC_COMMIT = 0x33
    RESYNC_COMMITTED = 0x34
    VERIFY_REQUEST = 0x40
    VERIFY_REPLY = 0x41
    ERROR = 0x7E
    GOODBYE = 0x7F


# --- field rules ------------------------------------------------------------

def check_uint(name: str, value: int, bits: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{name}={value} does not fit in u{bits}")


def check_uuid(name: str, value: uuid.UUID) -> None:
    if not isinstance(value, uuid.UUID):
        raise TypeError(f"{name} must be a uuid.UUID, not {type(value).__name__}")


def check_name(what: str, value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str")
    n = len(value.encode("utf-8"))
    if not 1 <= n <= NAME_BYTES_MAX:
        raise ValueError(f"{what} must be 1..{NAME_BYTES_MAX} UTF-8 bytes, got {n}")


def _check_extent(offset: int, length_bytes: int) -> None:
    if offset + length_bytes > U64_MAX:
        raise ValueError(f"extent at {offset} of {length_bytes} bytes overflows u64")


def _as_data(value: Buffer) -> Buffer:
    """Accept any contiguous byte buffer without copying it."""
    if isinstance(value, memoryview):
        if not value.contiguous:
            raise ValueError("data must be a contiguous buffer")
        if value.format != "B" or value.ndim != 1:
            value = value.cast("B")
    elif not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"data must be bytes-like, not {type(value).__name__}")
    if not 1 <= len(value) <= WRITE_DATA_MAX_BYTES:
        raise ValueError(f"data must be 1..{WRITE_DATA_MAX_BYTES} bytes, got {len(value)}")
    return value


# --- payload reading and writing ----------------------------------------------

U16 = struct.Struct(">H")
U64 = struct.Struct(">Q")


def encode_text(value: str) -> bytes:
    raw = value.encode("utf-8")
    return U16.pack(len(raw)) + raw


class Reader:
    """Sequential reads from a payload view; any shortfall is a ValueError."""

    __slots__ = ("_view", "_pos")

    def __init__(self, view: memoryview):
        self._view = view
        self._pos = 0

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._view):
            raise ValueError("payload too short")
        out = bytes(self._view[self._pos:end])
        self._pos = end
        return out

    def unpack(self, s: struct.Struct) -> tuple:
        if self._pos + s.size > len(self._view):
            raise ValueError("payload too short")
        out = s.unpack_from(self._view, self._pos)
        self._pos += s.size
        return out

    def u16(self) -> int:
        return self.unpack(U16)[0]

    def u64(self) -> int:
        return self.unpack(U64)[0]

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.take(16))

    def text(self) -> str:
        return self.take(self.u16()).decode("utf-8")

    @property
    def at_end(self) -> bool:
        return self._pos == len(self._view)

    def end(self) -> None:
        if self._pos != len(self._view):
            raise ValueError(f"{len(self._view) - self._pos} trailing bytes in payload")


# --- messages -------------------------------------------------------------------

class Message:
    """Base of all wire messages. Subclasses set TYPE and implement the codec:
    `_parts()` returns the payload as buffers (data last, uncopied) and
    `_decode(view)` builds the message from a payload view."""

    __slots__ = ()
    TYPE: ClassVar[MessageType]


_EXTENT_HEAD = struct.Struct(">QHQ")  # seq or round_id, volume, offset
_EXTENT_LEN = struct.Struct(">QHQQ")  # ... + length_bytes
_EXTENT_HEAD_BYTES = _EXTENT_HEAD.size


@dataclass(frozen=True, slots=True)
class DataExtentMessage(Message):
    """Shared codec of Write and ResyncData: (key, volume, offset) + data,
    where the key is the seq or the round id (named by `_KEY`). `data` is not
    copied on send."""

    _KEY: ClassVar[str]

    def __post_init__(self) -> None:
        check_uint(self._KEY, getattr(self, self._KEY), 64)
        check_uint("volume", self.volume, 16)
        check_uint("offset", self.offset, 64)
        object.__setattr__(self, "data", _as_data(self.data))
        _check_extent(self.offset, len(self.data))

    @property
    def length_bytes(self) -> int:
        return len(self.data)

    def _parts(self) -> list[Buffer]:
        return [_EXTENT_HEAD.pack(getattr(self, self._KEY), self.volume, self.offset), self.data]

    @classmethod
    def _decode(cls, view: memoryview):
        # The data stays a view into the receive buffer: the decoder never
        # overwrites bytes a live view refers to (frames.py), so no copy.
        key, volume, offset = _EXTENT_HEAD.unpack_from(view)
        return cls(key, volume, offset, view[_EXTENT_HEAD_BYTES:])


@dataclass(frozen=True, slots=True)
class ZeroExtentMessage(Message):
    """Shared codec of WriteZeroes and ResyncZeroes: (key, volume, offset,
    length), no zero bytes on the wire."""

    _KEY: ClassVar[str]

    def __post_init__(self) -> None:
        check_uint(self._KEY, getattr(self, self._KEY), 64)
        check_uint("volume", self.volume, 16)
        check_uint("offset", self.offset, 64)
        check_uint("length_bytes", self.length_bytes, 64)
        if self.length_bytes == 0:
            raise ValueError("length_bytes must be > 0")
        _check_extent(self.offset, self.length_bytes)

    def _parts(self) -> list[Buffer]:
        return [_EXTENT_LEN.pack(getattr(self, self._KEY), self.volume, self.offset, self.length_bytes)]

    @classmethod
    def _decode(cls, view: memoryview):
        if len(view) != _EXTENT_LEN.size:
            raise ValueError(f"bad {cls.__name__} length")
        return cls(*_EXTENT_LEN.unpack_from(view))


@dataclass(frozen=True, slots=True)
class U64Message(Message):
    """Shared codec of the messages whose payload is one u64 (named by `_FIELD`)."""

    _FIELD: ClassVar[str] = "seq"

    def __post_init__(self) -> None:
        check_uint(self._FIELD, getattr(self, self._FIELD), 64)

    def _parts(self) -> list[Buffer]:
        return [U64.pack(getattr(self, self._FIELD))]

    @classmethod
    def _decode(cls, view: memoryview) -> Message:
        if len(view) != 8:
            raise ValueError(f"payload must be 8 bytes, got {len(view)}")
        return cls(U64.unpack_from(view)[0])
