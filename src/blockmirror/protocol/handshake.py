"""The handshake messages: who each side is (Hello), the proofs of the pair
secret (AuthProof), and the volume lists that pair the two nodes (Attach,
Ready). The order they travel in is in state.py; what makes two nodes a pair
is in pairing.py.
"""

from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass, field
from typing import ClassVar

from blockmirror.protocol.codec import (
    U16,
    U64,
    Message,
    NIL_UUID,
    MessageType,
    Reader,
    check_name,
    check_uint,
    check_uuid,
    encode_text,
)
from blockmirror.protocol.frames import Buffer

NONCE_BYTES = 32
AUTH_MAC_BYTES = 32  # HMAC-SHA256
VOLUMES_MAX = 256  # volume index is a u16 on the wire; this bounds the handshake


class Role(enum.IntEnum):
    PRIMARY = 1  # initiator: dials, proves first, sends data
    SECONDARY = 2  # acceptor: checks the pairing, applies data, acknowledges

    @property
    def peer(self) -> Role:
        return Role.SECONDARY if self is Role.PRIMARY else Role.PRIMARY


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    """One volume of the pair as the handshake describes it.

    On the secondary, a nil UUID means "not yet paired": the volume takes the
    primary's UUID at its first full sync."""

    name: str
    uuid: uuid.UUID
    size_bytes: int

    def __post_init__(self) -> None:
        check_name("volume name", self.name)
        check_uuid("volume uuid", self.uuid)
        check_uint("size_bytes", self.size_bytes, 64)
        if self.size_bytes == 0:
            raise ValueError(f"volume {self.name!r} has size 0")

    def _encode(self) -> bytes:
        return self.uuid.bytes + U64.pack(self.size_bytes) + encode_text(self.name)

    @classmethod
    def _read(cls, r: Reader) -> VolumeInfo:
        volume_uuid = r.uuid()
        size_bytes = r.u64()
        return cls(r.text(), volume_uuid, size_bytes)


def check_volumes(value: tuple[VolumeInfo, ...]) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, VolumeInfo) for v in value):
        raise TypeError("volumes must be a tuple of VolumeInfo")
    if not 1 <= len(value) <= VOLUMES_MAX:
        raise ValueError(f"a pair has 1..{VOLUMES_MAX} volumes, got {len(value)}")
    names = [v.name for v in value]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate volume names in {names}")


def _encode_volumes(volumes: tuple[VolumeInfo, ...]) -> bytes:
    return U16.pack(len(volumes)) + b"".join(v._encode() for v in volumes)


def _read_volumes(r: Reader) -> tuple[VolumeInfo, ...]:
    return tuple(VolumeInfo._read(r) for _ in range(r.u16()))


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
        check_uuid("node_uuid", self.node_uuid)
        check_uuid("pair_uuid", self.pair_uuid)
        check_name("pair name", self.pair_name)
        if not isinstance(self.nonce, bytes) or len(self.nonce) != NONCE_BYTES:
            raise ValueError(f"nonce must be {NONCE_BYTES} bytes")

    def _parts(self) -> list[Buffer]:
        return [_HELLO_FIXED.pack(self.role, self.node_uuid.bytes, self.pair_uuid.bytes, self.nonce)
                + encode_text(self.pair_name)]

    @classmethod
    def _decode(cls, view: memoryview) -> Hello:
        r = Reader(view)
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
        r = Reader(view)
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
        check_volumes(self.volumes)

    def _parts(self) -> list[Buffer]:
        return [_encode_volumes(self.volumes)]

    @classmethod
    def _decode(cls, view: memoryview) -> Attach:
        r = Reader(view)
        volumes = _read_volumes(r)
        r.end()
        return cls(volumes)


_READY_FIXED = struct.Struct(">16sQ")
_CHANGED = struct.Struct(">HQQ")
_DIGEST = struct.Struct(">HQI16s")
_DIVERGED = struct.Struct(">QB")  # diverged, flags: 1 discard, 2 demoted, 4 an open round follows
_DEMOTED = 2
_ROUND_FOLLOWS = 4
_ROUND = struct.Struct(">Q16sHQ")  # round id, target generation, resume volume index, resume offset
DIGEST_BYTES = 16
# Bounds of Ready's two lists (together well under a frame): a demoted node
# with more coalesces its extents and sends the rest without digests.
READY_CHANGED_MAX = 50_000
READY_DIGESTS_MAX = 80_000

ChangedExtent = tuple[int, int, int]  # (volume index in the primary's order, offset, length)
ChunkDigest = tuple[int, int, int, bytes]  # (volume index, offset, length, BLAKE2b-128 of those bytes)
# A resync round the secondary holds open: (round id, target generation, and where to resume: the
# volume index and offset before which every extent of the round, in disk order, is durable).
RoundMark = tuple[int, uuid.UUID, int, int]


def check_round_mark(mark, volumes: int) -> None:
    if mark is None:
        return
    if not isinstance(mark, tuple) or len(mark) != 4:
        raise TypeError("open_round must be (round id, target generation, volume index, offset)")
    round_id, target, vol, off = mark
    check_uint("open round id", round_id, 64)
    check_uuid("open round target", target)
    if target == NIL_UUID:
        raise ValueError("an open round's target generation is not nil")
    if not 0 <= vol < volumes:
        raise ValueError(f"open round resumes at volume index {vol}; there are {volumes} volumes")
    check_uint("open round offset", off, 64)


def check_changed(changed: tuple, digests: tuple, volumes: int) -> None:
    if not isinstance(changed, tuple) or len(changed) > READY_CHANGED_MAX:
        raise ValueError(f"changed must be a tuple of at most {READY_CHANGED_MAX} extents")
    if not isinstance(digests, tuple) or len(digests) > READY_DIGESTS_MAX:
        raise ValueError(f"digests must be a tuple of at most {READY_DIGESTS_MAX} chunks")
    for vol, off, length, *rest in changed + digests:
        if not 0 <= vol < volumes:
            raise ValueError(f"changed extent of volume index {vol}; there are {volumes} volumes")
        check_uint("changed offset", off, 64)
        check_uint("changed length", length, 32 if rest else 64)
        if rest and (not isinstance(rest[0], bytes) or len(rest[0]) != DIGEST_BYTES):
            raise ValueError(f"a chunk digest is {DIGEST_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class Ready(Message):
    """Secondary -> primary: pairing accepted. Carries the secondary's own
    volumes and the last point it has durably committed, from which the
    primary's engine chooses to continue, resync incrementally or fully.

    `changed`: extents a demoted node changed itself since that point (its
    own writes the primary lacks); the primary's resync sends them too.
    `digests`: chunks it may have changed, each with a digest of its bytes;
    the primary sends those whose bytes differ at the shared point.
    `diverged`: how many chunks it wrote as a primary after the pair parted
    (not crash leftovers); with the primary's own such writes that is a
    split brain, unless `discard` (its writes may lose). `demoted`: its seq
    names no point (it was a primary): any base of its generation fits, with
    its changes. `open_round`: a resync round it holds open (kept durable
    across a link failure or a crash) and where it can resume (RoundMark).
    All optional on the wire, in this order: absent when empty (the earlier
    format)."""

    TYPE: ClassVar[MessageType] = MessageType.READY
    committed_generation: uuid.UUID
    committed_seq: int
    volumes: tuple[VolumeInfo, ...]
    changed: tuple[ChangedExtent, ...] = ()
    digests: tuple[ChunkDigest, ...] = ()
    diverged: int = 0
    discard: bool = False
    demoted: bool = False
    open_round: RoundMark | None = None

    def __post_init__(self) -> None:
        check_uuid("committed_generation", self.committed_generation)
        check_uint("committed_seq", self.committed_seq, 64)
        check_volumes(self.volumes)
        check_changed(self.changed, self.digests, len(self.volumes))
        check_round_mark(self.open_round, len(self.volumes))
        check_uint("diverged", self.diverged, 64)
        if not isinstance(self.discard, bool) or not isinstance(self.demoted, bool):
            raise TypeError("discard and demoted must be bools")

    def _parts(self) -> list[Buffer]:
        out = _READY_FIXED.pack(self.committed_generation.bytes, self.committed_seq) + _encode_volumes(self.volumes)
        tail = bool(self.diverged or self.discard or self.demoted or self.open_round)
        if self.changed or self.digests or tail:
            out += U64.pack(len(self.changed)) + b"".join(_CHANGED.pack(*e) for e in self.changed)
        if self.digests or tail:
            out += U64.pack(len(self.digests)) + b"".join(_DIGEST.pack(*e) for e in self.digests)
        if tail:
            flags = int(self.discard) | _DEMOTED * int(self.demoted) | _ROUND_FOLLOWS * (self.open_round is not None)
            out += _DIVERGED.pack(self.diverged, flags)
        if self.open_round is not None:
            round_id, target, vol, off = self.open_round
            out += _ROUND.pack(round_id, target.bytes, vol, off)
        return [out]

    @classmethod
    def _decode(cls, view: memoryview) -> Ready:
        r = Reader(view)
        generation, seq = r.unpack(_READY_FIXED)
        volumes = _read_volumes(r)
        changed: tuple = ()
        digests: tuple = ()
        if not r.at_end:
            count = r.u64()
            if count > READY_CHANGED_MAX:
                raise ValueError(f"{count} changed extents; at most {READY_CHANGED_MAX}")
            changed = tuple(r.unpack(_CHANGED) for _ in range(count))
        if not r.at_end:
            count = r.u64()
            if count > READY_DIGESTS_MAX:
                raise ValueError(f"{count} chunk digests; at most {READY_DIGESTS_MAX}")
            digests = tuple(r.unpack(_DIGEST) for _ in range(count))
        diverged, flags = (0, 0) if r.at_end else r.unpack(_DIVERGED)
        if flags & ~(1 | _DEMOTED | _ROUND_FOLLOWS):
            raise ValueError(f"unknown Ready flags {flags:#x}")
        mark = None
        if flags & _ROUND_FOLLOWS:
            round_id, target, vol, off = r.unpack(_ROUND)
            mark = (round_id, uuid.UUID(bytes=target), vol, off)
        r.end()
        return cls(uuid.UUID(bytes=generation), seq, volumes, changed, digests, diverged, bool(flags & 1),
                   bool(flags & _DEMOTED), mark)
