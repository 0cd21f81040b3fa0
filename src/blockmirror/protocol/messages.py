"""The streaming messages (live writes, acks, heartbeats), the resync round
messages and the closing ones, with the registry of every message type and
the frame encode/decode entry points. The codec they are built from is in
codec.py; the handshake messages are in handshake.py.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field
from typing import ClassVar

from blockmirror.protocol.codec import (
    NIL_UUID,
    U16,
    U64,
    DataExtentMessage,
    Message,
    MessageType,
    Reader,
    U64Message,
    ZeroExtentMessage,
    check_uint,
    check_uuid,
    encode_text,
)
from blockmirror.protocol.errors import ErrorCode, RemoteProtocolError
from blockmirror.protocol.frames import Buffer, encode_frame
from blockmirror.protocol.handshake import Attach, AuthProof, Hello, Ready

ERROR_TEXT_BYTES_MAX = 1024


# Live mirroring ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Write(DataExtentMessage):
    """One host write, in sequence order."""

    TYPE: ClassVar[MessageType] = MessageType.WRITE
    _KEY: ClassVar[str] = "seq"
    seq: int
    volume: int
    offset: int
    data: Buffer = field(repr=False)


@dataclass(frozen=True, slots=True)
class WriteZeroes(ZeroExtentMessage):
    """A host trim/write-zeroes, in sequence order, without zero bytes on the wire."""

    TYPE: ClassVar[MessageType] = MessageType.WRITE_ZEROES
    _KEY: ClassVar[str] = "seq"
    seq: int
    volume: int
    offset: int
    length_bytes: int


@dataclass(frozen=True, slots=True)
class Ack(U64Message):
    """Secondary -> primary: every write with seq <= `seq` is on stable storage."""

    TYPE: ClassVar[MessageType] = MessageType.ACK
    seq: int


@dataclass(frozen=True, slots=True)
class Heartbeat(U64Message):
    """Liveness probe, either direction; the peer echoes `token` (the engine
    puts its send time there to measure round trips)."""

    TYPE: ClassVar[MessageType] = MessageType.HEARTBEAT
    _FIELD: ClassVar[str] = "token"
    token: int


@dataclass(frozen=True, slots=True)
class HeartbeatAck(U64Message):
    """Echo of a Heartbeat's token."""

    TYPE: ClassVar[MessageType] = MessageType.HEARTBEAT_ACK
    _FIELD: ClassVar[str] = "token"
    token: int


# Resync rounds ---------------------------------------------------------------------

_RESYNC_BEGIN = struct.Struct(">Q16s16sQQ")
_RESUME = struct.Struct(">HQ")  # volume index, offset
_RESYNC_COMMIT = struct.Struct(">Q16sQQQ")
_RESYNC_COMMITTED = struct.Struct(">Q16sQ")


@dataclass(frozen=True, slots=True)
class ResyncBegin(Message):
    """Opens a round that moves the secondary from `base_generation` (nil: no
    common base, full copy) to `target_generation`. The two maxima are upper
    bounds so the secondary can reserve journal space or refuse up front.

    `resume`: (volume index, offset) continues the round of this id and
    target that the secondary holds open (its Ready.open_round): the extents
    follow from that position, the ones before it are already durable there.
    Absent (the earlier format) for a new round."""

    TYPE: ClassVar[MessageType] = MessageType.RESYNC_BEGIN
    round_id: int
    base_generation: uuid.UUID
    target_generation: uuid.UUID
    extent_count_max: int
    data_bytes_max: int
    resume: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        check_uint("round_id", self.round_id, 64)
        check_uuid("base_generation", self.base_generation)
        check_uuid("target_generation", self.target_generation)
        check_uint("extent_count_max", self.extent_count_max, 64)
        check_uint("data_bytes_max", self.data_bytes_max, 64)
        if self.target_generation == NIL_UUID:
            raise ValueError("target_generation must not be nil")
        if self.target_generation == self.base_generation:
            raise ValueError("target_generation must differ from base_generation")
        if self.resume is not None:
            vol, off = self.resume
            check_uint("resume volume", vol, 16)
            check_uint("resume offset", off, 64)

    def _parts(self) -> list[Buffer]:
        out = _RESYNC_BEGIN.pack(self.round_id, self.base_generation.bytes, self.target_generation.bytes,
                                 self.extent_count_max, self.data_bytes_max)
        return [out if self.resume is None else out + _RESUME.pack(*self.resume)]

    @classmethod
    def _decode(cls, view: memoryview) -> ResyncBegin:
        if len(view) not in (_RESYNC_BEGIN.size, _RESYNC_BEGIN.size + _RESUME.size):
            raise ValueError("bad ResyncBegin length")
        round_id, base, target, count, data_bytes = _RESYNC_BEGIN.unpack_from(view)
        resume = _RESUME.unpack_from(view, _RESYNC_BEGIN.size) if len(view) > _RESYNC_BEGIN.size else None
        return cls(round_id, uuid.UUID(bytes=base), uuid.UUID(bytes=target), count, data_bytes, resume)


@dataclass(frozen=True, slots=True)
class ResyncData(DataExtentMessage):
    """One changed extent of a round, read from the stable snapshot image."""

    TYPE: ClassVar[MessageType] = MessageType.RESYNC_DATA
    _KEY: ClassVar[str] = "round_id"
    round_id: int
    volume: int
    offset: int
    data: Buffer = field(repr=False)


@dataclass(frozen=True, slots=True)
class ResyncZeroes(ZeroExtentMessage):
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
        check_uint("round_id", self.round_id, 64)
        check_uuid("generation", self.generation)
        check_uint("seq", self.seq, 64)
        check_uint("extent_count", self.extent_count, 64)
        check_uint("data_bytes", self.data_bytes, 64)

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
        check_uint("round_id", self.round_id, 64)
        check_uuid("generation", self.generation)
        check_uint("seq", self.seq, 64)

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
        check_uint("code", self.code, 16)
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
        return [U16.pack(self.code) + encode_text(self.text)]

    @classmethod
    def _decode(cls, view: memoryview) -> Error:
        r = Reader(view)
        code = r.u16()
        text = r.text()
        r.end()
        return cls(code, text)


VERIFY_CHUNKS_MAX = 4096  # digests in one VerifyReply (64 KiB of them)
VERIFY_DIGEST_BYTES = 16  # BLAKE2b-128
_VERIFY_REQUEST = struct.Struct(">QHQQI")


@dataclass(frozen=True, slots=True)
class VerifyRequest(Message):
    """Primary -> secondary, in stream order: digest `count` chunks of
    `chunk_bytes` from `offset` of a volume, as the image stands after every
    write sent before this message. No chunk data crosses the link."""

    TYPE: ClassVar[MessageType] = MessageType.VERIFY_REQUEST
    request_id: int
    volume: int
    offset: int
    length_bytes: int
    chunk_bytes: int

    def __post_init__(self) -> None:
        check_uint("request_id", self.request_id, 64)
        check_uint("volume", self.volume, 16)
        check_uint("offset", self.offset, 64)
        check_uint("length_bytes", self.length_bytes, 64)
        check_uint("chunk_bytes", self.chunk_bytes, 32)
        if self.chunk_bytes == 0 or self.length_bytes == 0:
            raise ValueError("a verify request covers at least one byte, in chunks of at least one byte")
        if -(-self.length_bytes // self.chunk_bytes) > VERIFY_CHUNKS_MAX:
            raise ValueError(f"a verify request covers at most {VERIFY_CHUNKS_MAX} chunks")

    def _parts(self) -> list[Buffer]:
        return [_VERIFY_REQUEST.pack(self.request_id, self.volume, self.offset, self.length_bytes,
                                     self.chunk_bytes)]

    @classmethod
    def _decode(cls, view: memoryview) -> VerifyRequest:
        if len(view) != _VERIFY_REQUEST.size:
            raise ValueError("bad VerifyRequest length")
        return cls(*_VERIFY_REQUEST.unpack_from(view))


@dataclass(frozen=True, slots=True)
class VerifyReply(Message):
    """Secondary -> primary: the digests of a VerifyRequest's chunks, in order."""

    TYPE: ClassVar[MessageType] = MessageType.VERIFY_REPLY
    request_id: int
    digests: tuple[bytes, ...]

    def __post_init__(self) -> None:
        check_uint("request_id", self.request_id, 64)
        if not isinstance(self.digests, tuple) or len(self.digests) > VERIFY_CHUNKS_MAX:
            raise ValueError(f"a verify reply carries at most {VERIFY_CHUNKS_MAX} digests")
        if any(not isinstance(d, bytes) or len(d) != VERIFY_DIGEST_BYTES for d in self.digests):
            raise ValueError(f"a verify digest is {VERIFY_DIGEST_BYTES} bytes")

    def _parts(self) -> list[Buffer]:
        return [U64.pack(self.request_id) + b"".join(self.digests)]

    @classmethod
    def _decode(cls, view: memoryview) -> VerifyReply:
        if len(view) < 8 or (len(view) - 8) % VERIFY_DIGEST_BYTES:
            raise ValueError("bad VerifyReply length")
        raw = bytes(view[8:])
        return cls(U64.unpack_from(view)[0], tuple(raw[i:i + VERIFY_DIGEST_BYTES]
                                                   for i in range(0, len(raw), VERIFY_DIGEST_BYTES)))


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
    for cls in (Hello, AuthProof, Attach, Ready, Write, WriteZeroes, Ack, Heartbeat, HeartbeatAck,
                ResyncBegin, ResyncData, ResyncZeroes, ResyncCommit, ResyncCommitted, VerifyRequest, VerifyReply,
                Error, Goodbye)
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
