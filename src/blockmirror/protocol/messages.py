"""Wire messages: frozen dataclasses that validate themselves, and their codec.

A message that exists has legal field values, so the encoder never has to
check and the decoder only has to construct: every rule lives in one
`__post_init__`. Integers are big-endian; a string is a u16 byte length and
UTF-8; a UUID is its 16 bytes. A payload must be consumed exactly: trailing
bytes are malformed, because a change of layout is a version bump.
"""

from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass, field
from typing import ClassVar

from blockmirror.protocol.errors import ErrorCode, RemoteProtocolError
from blockmirror.protocol.frames import WRITE_DATA_MAX_BYTES, Buffer, encode_frame

NONCE_BYTES = 32
AUTH_MAC_BYTES = 32  # HMAC-SHA256
NAME_BYTES_MAX = 255
VOLUMES_MAX = 256  # volume index is a u16 on the wire; this bounds the handshake
ERROR_TEXT_BYTES_MAX = 1024
U16_MAX = (1 << 16) - 1
U64_MAX = (1 << 64) - 1
NIL_UUID = uuid.UUID(int=0)


class MessageType(enum.IntEnum):
    """The type byte of the frame header."""

    HELLO = 0x01
    AUTH_PROOF = 0x02
    ATTACH = 0x03
    READY = 0x04
    WRITE = 0x10
    WRITE_ZEROES = 0x11
    FLUSH = 0x12
    ACK = 0x13
    HEARTBEAT = 0x20
    HEARTBEAT_ACK = 0x21
    RESYNC_BEGIN = 0x30
    RESYNC_DATA = 0x31
    RESYNC_ZEROES = 0x32
    RESYNC_COMMIT = 0x33
    RESYNC_COMMITTED = 0x34
    ERROR = 0x7E
    GOODBYE = 0x7F


class Role(enum.IntEnum):
    PRIMARY = 1  # initiator: dials, proves first, sends data
    SECONDARY = 2  # acceptor: checks the pairing, applies data, acknowledges

    @property
    def peer(self) -> Role:
        return Role.SECONDARY if self is Role.PRIMARY else Role.PRIMARY


# --- field rules ------------------------------------------------------------

def _u(name: str, value: int, bits: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{name}={value} does not fit in u{bits}")


def _uuid(name: str, value: uuid.UUID) -> None:
    if not isinstance(value, uuid.UUID):
        raise TypeError(f"{name} must be a uuid.UUID, not {type(value).__name__}")


def _name(what: str, value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str")
    n = len(value.encode("utf-8"))
    if not 1 <= n <= NAME_BYTES_MAX:
        raise ValueError(f"{what} must be 1..{NAME_BYTES_MAX} UTF-8 bytes, got {n}")


def _extent(offset: int, length_bytes: int) -> None:
    if offset + length_bytes > U64_MAX:
        raise ValueError(f"extent at {offset} of {length_bytes} bytes overflows u64")


def _data(value: Buffer) -> Buffer:
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


# --- payload reading ----------------------------------------------------------

class _Reader:
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

    def u8(self) -> int:
        return self.unpack(_U8)[0]

    def u16(self) -> int:
        return self.unpack(_U16)[0]

    def u64(self) -> int:
        return self.unpack(_U64)[0]

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.take(16))

    def text(self) -> str:
        return self.take(self.u16()).decode("utf-8")

    def end(self) -> None:
        if self._pos != len(self._view):
            raise ValueError(f"{len(self._view) - self._pos} trailing bytes in payload")


_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    return _U16.pack(len(raw)) + raw


# --- messages -------------------------------------------------------------------

class Message:
    """Base of all wire messages. Subclasses set TYPE and implement the codec:
    `_parts()` returns the payload as buffers (data last, uncopied) and
    `_decode(view)` builds the message from a payload view."""

    __slots__ = ()
    TYPE: ClassVar[MessageType]


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    """One volume of the pair as the handshake describes it.

    On the secondary, a nil UUID means "not yet paired": the volume takes the
    primary's UUID at its first full sync."""

    name: str
    uuid: uuid.UUID
    size_bytes: int

    def __post_init__(self) -> None:
        _name("volume name", self.name)
        _uuid("volume uuid", self.uuid)
        _u("size_bytes", self.size_bytes, 64)
        if self.size_bytes == 0:
            raise ValueError(f"volume {self.name!r} has size 0")

    def _encode(self) -> bytes:
        return self.uuid.bytes + _U64.pack(self.size_bytes) + _text(self.name)

    @classmethod
    def _read(cls, r: _Reader) -> VolumeInfo:
        volume_uuid = r.uuid()
        size_bytes = r.u64()
        return cls(r.text(), volume_uuid, size_bytes)


def _volumes(value: tuple[VolumeInfo, ...]) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, VolumeInfo) for v in value):
        raise TypeError("volumes must be a tuple of VolumeInfo")
    if not 1 <= len(value) <= VOLUMES_MAX:
        raise ValueError(f"a pair has 1..{VOLUMES_MAX} volumes, got {len(value)}")
    names = [v.name for v in value]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate volume names in {names}")


def _encode_volumes(volumes: tuple[VolumeInfo, ...]) -> bytes:
    return _U16.pack(len(volumes)) + b"".join(v._encode() for v in volumes)


def _read_volumes(r: _Reader) -> tuple[VolumeInfo, ...]:
    return tuple(VolumeInfo._read(r) for _ in range(r.u16()))


# Handshake ---------------------------------------------------------------------

_HELLO_FIXED = struct.Struct(">B16s16s32s")


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """First message of each side: who I am, which pair, my fresh nonce.

    Both sides send one; the two encoded payloads together are the transcript
    that both authentication proofs are computed over."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    role: Role
    node_uuid: uuid.UUID
    pair_uuid: uuid.UUID
    pair_name: str
    nonce: bytes = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", Role(self.role))
        _uuid("node_uuid", self.node_uuid)
        _uuid("pair_uuid", self.pair_uuid)
        _name("pair name", self.pair_name)
        if not isinstance(self.nonce, bytes) or len(self.nonce) != NONCE_BYTES:
            raise ValueError(f"nonce must be {NONCE_BYTES} bytes")

    def _parts(self) -> list[Buffer]:
        return [_HELLO_FIXED.pack(self.role, self.node_uuid.bytes, self.pair_uuid.bytes, self.nonce)
                + _text(self.pair_name)]

    @classmethod
    def _decode(cls, view: memoryview) -> Hello:
        r = _Reader(view)
        role, node, pair, nonce = r.unpack(_HELLO_FIXED)
        name = r.text()
        r.end()
        return cls(Role(role), uuid.UUID(bytes=node), uuid.UUID(bytes=pair), name, nonce)


@dataclass(frozen=True, slots=True)
class AuthProof(Message):
    """HMAC-SHA256 proof that the sender knows the pair secret (see auth.py)."""

    TYPE: ClassVar[MessageType] = MessageType.AUTH_PROOF
    mac: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.mac, bytes) or len(self.mac) != AUTH_MAC_BYTES:
            raise ValueError(f"mac must be {AUTH_MAC_BYTES} bytes")

    def _parts(self) -> list[Buffer]:
        return [self.mac]

    @classmethod
    def _decode(cls, view: memoryview) -> AuthProof:
        r = _Reader(view)
        mac = r.take(AUTH_MAC_BYTES)
        r.end()
        return cls(mac)


@dataclass(frozen=True, slots=True)
class Attach(Message):
    """Primary -> secondary after mutual auth: the volumes it will mirror, in
    index order (Write.volume is an index into this list)."""

    TYPE: ClassVar[MessageType] = MessageType.ATTACH
    volumes: tuple[VolumeInfo, ...]

    def __post_init__(self) -> None:
        _volumes(self.volumes)

    def _parts(self) -> list[Buffer]:
        return [_encode_volumes(self.volumes)]

    @classmethod
    def _decode(cls, view: memoryview) -> Attach:
        r = _Reader(view)
        volumes = _read_volumes(r)
        r.end()
        return cls(volumes)


_READY_FIXED = struct.Struct(">16sQ")


@dataclass(frozen=True, slots=True)
class Ready(Message):
    """Secondary -> primary: pairing accepted. Carries the secondary's own
    volumes and the last point it has durably committed, from which the
    primary's engine chooses to continue, resync incrementally or fully."""

    TYPE: ClassVar[MessageType] = MessageType.READY
    committed_generation: uuid.UUID
    committed_seq: int
    volumes: tuple[VolumeInfo, ...]

    def __post_init__(self) -> None:
        _uuid("committed_generation", self.committed_generation)
        _u("committed_seq", self.committed_seq, 64)
        _volumes(self.volumes)

    def _parts(self) -> list[Buffer]:
        return [_READY_FIXED.pack(self.committed_generation.bytes, self.committed_seq)
                + _encode_volumes(self.volumes)]

    @classmethod
    def _decode(cls, view: memoryview) -> Ready:
        r = _Reader(view)
        generation, seq = r.unpack(_READY_FIXED)
        volumes = _read_volumes(r)
        r.end()
        return cls(uuid.UUID(bytes=generation), seq, volumes)


# Live mirroring ------------------------------------------------------------------

_EXTENT_HEAD = struct.Struct(">QHQ")  # seq or round_id, volume, offset
_EXTENT_LEN = struct.Struct(">QHQQ")  # ... + length_bytes
_EXTENT_HEAD_BYTES = _EXTENT_HEAD.size


@dataclass(frozen=True, slots=True)
class _DataExtent(Message):
    """Shared codec of Write and ResyncData: (key, volume, offset) + data,
    where the key is the seq or the round id (named by `_KEY`). `data` is not
    copied on send."""

    _KEY: ClassVar[str]

    def __post_init__(self) -> None:
        _u(self._KEY, getattr(self, self._KEY), 64)
        _u("volume", self.volume, 16)
        _u("offset", self.offset, 64)
        object.__setattr__(self, "data", _data(self.data))
        _extent(self.offset, len(self.data))

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
class _ZeroExtent(Message):
    """Shared codec of WriteZeroes and ResyncZeroes: (key, volume, offset,
    length), no zero bytes on the wire."""

    _KEY: ClassVar[str]

    def __post_init__(self) -> None:
        _u(self._KEY, getattr(self, self._KEY), 64)
        _u("volume", self.volume, 16)
        _u("offset", self.offset, 64)
        _u("length_bytes", self.length_bytes, 64)
        if self.length_bytes == 0:
            raise ValueError("length_bytes must be > 0")
        _extent(self.offset, self.length_bytes)

    def _parts(self) -> list[Buffer]:
        return [_EXTENT_LEN.pack(getattr(self, self._KEY), self.volume, self.offset, self.length_bytes)]

    @classmethod
    def _decode(cls, view: memoryview):
        if len(view) != _EXTENT_LEN.size:
            raise ValueError(f"bad {cls.__name__} length")
        return cls(*_EXTENT_LEN.unpack_from(view))


@dataclass(frozen=True, slots=True)
class Write(_DataExtent):
    """One host write, in sequence order."""

    TYPE: ClassVar[MessageType] = MessageType.WRITE
    _KEY: ClassVar[str] = "seq"
    seq: int
    volume: int
    offset: int
    data: Buffer = field(repr=False)


@dataclass(frozen=True, slots=True)
class WriteZeroes(_ZeroExtent):
    """A host trim/write-zeroes, in sequence order, without zero bytes on the wire."""

    TYPE: ClassVar[MessageType] = MessageType.WRITE_ZEROES
    _KEY: ClassVar[str] = "seq"
    seq: int
    volume: int
    offset: int
    length_bytes: int


@dataclass(frozen=True, slots=True)
class _SeqOnly(Message):
    """Shared codec of the messages whose payload is one u64."""

    _FIELD: ClassVar[str] = "seq"

    def _parts(self) -> list[Buffer]:
        return [_U64.pack(getattr(self, self._FIELD))]

    @classmethod
    def _decode(cls, view: memoryview) -> Message:
        if len(view) != 8:
            raise ValueError(f"payload must be 8 bytes, got {len(view)}")
        return cls(_U64.unpack_from(view)[0])


@dataclass(frozen=True, slots=True)
class Flush(_SeqOnly):
    """Barrier (primary -> secondary): make everything up to `seq` durable and
    Ack it now rather than at the next batch; the primary sends it for a host
    FLUSH/FUA in sync mode. `seq` names an already-sent write, it takes none."""

    TYPE: ClassVar[MessageType] = MessageType.FLUSH
    seq: int

    def __post_init__(self) -> None:
        _u("seq", self.seq, 64)


@dataclass(frozen=True, slots=True)
class Ack(_SeqOnly):
    """Secondary -> primary: every write with seq <= `seq` is on stable storage."""

    TYPE: ClassVar[MessageType] = MessageType.ACK
    seq: int

    def __post_init__(self) -> None:
        _u("seq", self.seq, 64)


@dataclass(frozen=True, slots=True)
class Heartbeat(_SeqOnly):
    """Liveness probe, either direction; the peer echoes `token` (the engine
    puts its send time there to measure round trips)."""

    TYPE: ClassVar[MessageType] = MessageType.HEARTBEAT
    _FIELD: ClassVar[str] = "token"
    token: int

    def __post_init__(self) -> None:
        _u("token", self.token, 64)


@dataclass(frozen=True, slots=True)
class HeartbeatAck(_SeqOnly):
    """Echo of a Heartbeat's token."""

    TYPE: ClassVar[MessageType] = MessageType.HEARTBEAT_ACK
    _FIELD: ClassVar[str] = "token"
    token: int

    def __post_init__(self) -> None:
        _u("token", self.token, 64)


# Resync rounds ---------------------------------------------------------------------

_RESYNC_BEGIN = struct.Struct(">Q16s16sQQ")
_RESYNC_COMMIT = struct.Struct(">Q16sQQQ")
_RESYNC_COMMITTED = struct.Struct(">Q16sQ")


@dataclass(frozen=True, slots=True)
class ResyncBegin(Message):
    """Opens a round that moves the secondary from `base_generation` (nil: no
    common base, full copy) to `target_generation`. The two maxima are upper
    bounds so the secondary can reserve journal space or refuse up front."""

    TYPE: ClassVar[MessageType] = MessageType.RESYNC_BEGIN
    round_id: int
    base_generation: uuid.UUID
    target_generation: uuid.UUID
    extent_count_max: int
    data_bytes_max: int

    def __post_init__(self) -> None:
        _u("round_id", self.round_id, 64)
        _uuid("base_generation", self.base_generation)
        _uuid("target_generation", self.target_generation)
        _u("extent_count_max", self.extent_count_max, 64)
        _u("data_bytes_max", self.data_bytes_max, 64)
        if self.target_generation == NIL_UUID:
            raise ValueError("target_generation must not be nil")
        if self.target_generation == self.base_generation:
            raise ValueError("target_generation must differ from base_generation")

    def _parts(self) -> list[Buffer]:
        return [_RESYNC_BEGIN.pack(self.round_id, self.base_generation.bytes, self.target_generation.bytes,
                                   self.extent_count_max, self.data_bytes_max)]

    @classmethod
    def _decode(cls, view: memoryview) -> ResyncBegin:
        if len(view) != _RESYNC_BEGIN.size:
            raise ValueError("bad ResyncBegin length")
        round_id, base, target, count, data_bytes = _RESYNC_BEGIN.unpack_from(view)
        return cls(round_id, uuid.UUID(bytes=base), uuid.UUID(bytes=target), count, data_bytes)


@dataclass(frozen=True, slots=True)
class ResyncData(_DataExtent):
    """One changed extent of a round, read from the stable snapshot image."""

    TYPE: ClassVar[MessageType] = MessageType.RESYNC_DATA
    _KEY: ClassVar[str] = "round_id"
    round_id: int
    volume: int
    offset: int
    data: Buffer = field(repr=False)


@dataclass(frozen=True, slots=True)
class ResyncZeroes(_ZeroExtent):
    """A changed extent of a round that is all zeroes (a hole or a trim)."""

    TYPE: ClassVar[MessageType] = MessageType.RESYNC_ZEROES
    _KEY: ClassVar[str] = "round_id"
    round_id: int
    volume: int
    offset: int
    length_bytes: int


@dataclass(frozen=True, slots=True)
class ResyncCommit(Message):
    """Closes a round: the secondary's image becomes `generation`, the
    primary's history at `seq`. The exact totals let the secondary prove it
    received the whole round before it exposes the new image."""

    TYPE: ClassVar[MessageType] = MessageType.RESYNC_COMMIT
    round_id: int
    generation: uuid.UUID
    seq: int
    extent_count: int
    data_bytes: int

    def __post_init__(self) -> None:
        _u("round_id", self.round_id, 64)
        _uuid("generation", self.generation)
        _u("seq", self.seq, 64)
        _u("extent_count", self.extent_count, 64)
        _u("data_bytes", self.data_bytes, 64)

    def _parts(self) -> list[Buffer]:
        return [_RESYNC_COMMIT.pack(self.round_id, self.generation.bytes, self.seq,
                                    self.extent_count, self.data_bytes)]

    @classmethod
    def _decode(cls, view: memoryview) -> ResyncCommit:
        if len(view) != _RESYNC_COMMIT.size:
            raise ValueError("bad ResyncCommit length")
        round_id, generation, seq, count, data_bytes = _RESYNC_COMMIT.unpack_from(view)
        return cls(round_id, uuid.UUID(bytes=generation), seq, count, data_bytes)


@dataclass(frozen=True, slots=True)
class ResyncCommitted(Message):
    """Secondary -> primary: the round is durably applied; the primary may now
    delete the round's base snapshot."""

    TYPE: ClassVar[MessageType] = MessageType.RESYNC_COMMITTED
    round_id: int
    generation: uuid.UUID
    seq: int

    def __post_init__(self) -> None:
        _u("round_id", self.round_id, 64)
        _uuid("generation", self.generation)
        _u("seq", self.seq, 64)

    def _parts(self) -> list[Buffer]:
        return [_RESYNC_COMMITTED.pack(self.round_id, self.generation.bytes, self.seq)]

    @classmethod
    def _decode(cls, view: memoryview) -> ResyncCommitted:
        if len(view) != _RESYNC_COMMITTED.size:
            raise ValueError("bad ResyncCommitted length")
        round_id, generation, seq = _RESYNC_COMMITTED.unpack_from(view)
        return cls(round_id, uuid.UUID(bytes=generation), seq)


# Closing -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Error(Message):
    """Refusal or failure; the sender closes after it. `code` stays an int when
    it is unknown to us, so a newer peer's reason still reaches the log."""

    TYPE: ClassVar[MessageType] = MessageType.ERROR
    code: int
    text: str

    def __post_init__(self) -> None:
        _u("code", self.code, 16)
        try:
            object.__setattr__(self, "code", ErrorCode(self.code))
        except ValueError:
            pass
        if not isinstance(self.text, str):
            raise TypeError("text must be a str")
        if len(self.text.encode("utf-8")) > ERROR_TEXT_BYTES_MAX:
            raise ValueError(f"text longer than {ERROR_TEXT_BYTES_MAX} UTF-8 bytes")

    @classmethod
    def make(cls, code: ErrorCode, text: str) -> Error:
        """An Error with `text` cut to the wire limit (on a character boundary)."""
        raw = text.encode("utf-8")[:ERROR_TEXT_BYTES_MAX]
        return cls(code, raw.decode("utf-8", errors="ignore"))

    def _parts(self) -> list[Buffer]:
        return [_U16.pack(self.code) + _text(self.text)]

    @classmethod
    def _decode(cls, view: memoryview) -> Error:
        r = _Reader(view)
        code = r.u16()
        text = r.text()
        r.end()
        return cls(code, text)


@dataclass(frozen=True, slots=True)
class Goodbye(Message):
    """Orderly close: the sender sends nothing after it (it may still receive)."""

    TYPE: ClassVar[MessageType] = MessageType.GOODBYE

    def _parts(self) -> list[Buffer]:
        return []

    @classmethod
    def _decode(cls, view: memoryview) -> Goodbye:
        if len(view):
            raise ValueError("Goodbye has no payload")
        return cls()


MESSAGE_CLASSES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (Hello, AuthProof, Attach, Ready, Write, WriteZeroes, Flush, Ack, Heartbeat, HeartbeatAck,
                ResyncBegin, ResyncData, ResyncZeroes, ResyncCommit, ResyncCommitted, Error, Goodbye)
}
assert set(MESSAGE_CLASSES) == set(MessageType)


def encode_message(msg: Message) -> list[Buffer]:
    """The frame of `msg` as buffers; data parts are passed through uncopied."""
    return encode_frame(msg.TYPE, msg._parts())


def encode_payload(msg: Message) -> bytes:
    """The payload alone (no frame header): what the auth transcript covers."""
    return b"".join(bytes(p) for p in msg._parts())


def decode_message(msg_type: int, payload: memoryview) -> Message:
    """Build a message from a checked frame; bad content is a remote error."""
    cls = MESSAGE_CLASSES[msg_type]
    try:
        return cls._decode(payload)
    except (ValueError, TypeError, struct.error, UnicodeDecodeError) as e:
        raise RemoteProtocolError(ErrorCode.MALFORMED_MESSAGE,
                                  f"malformed {cls.__name__} message: {e}") from None
