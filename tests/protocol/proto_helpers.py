"""Shared test doubles: deterministic identities, a fake link that moves
bytes between two connections, and a raw frame builder for bad input."""

from __future__ import annotations

import random
import struct
import uuid

import xxhash

from blockmirror.protocol import (
    Connection,
    ConnectionClosed,
    Established,
    LocalNode,
    Role,
    VolumeInfo,
)
from blockmirror.protocol.codec import Message
from blockmirror.protocol.frames import FrameDecoder
from blockmirror.protocol.messages import MESSAGE_CLASSES, decode_message, encode_message

SECRET = b"correct horse battery staple!!"
PAIR_UUID = uuid.UUID("0c0ffee0-0000-4000-8000-000000000001")
PRIMARY_NODE = uuid.UUID("aaaaaaaa-0000-4000-8000-000000000001")
SECONDARY_NODE = uuid.UUID("bbbbbbbb-0000-4000-8000-000000000002")
VOL_DB = VolumeInfo("db", uuid.UUID("d0d0d0d0-0000-4000-8000-000000000001"), 1 << 20)
VOL_LOGS = VolumeInfo("logs", uuid.UUID("10910910-0000-4000-8000-000000000002"), 2 << 20)
VOLUMES = (VOL_DB, VOL_LOGS)


def primary_node(volumes=VOLUMES, **kw) -> LocalNode:
    args = dict(role=Role.PRIMARY, node_uuid=PRIMARY_NODE, pair_uuid=PAIR_UUID, pair_name="pair-a",
                volumes=volumes)
    args.update(kw)
    return LocalNode(**args)


def secondary_node(volumes=VOLUMES, **kw) -> LocalNode:
    args = dict(role=Role.SECONDARY, node_uuid=SECONDARY_NODE, pair_uuid=PAIR_UUID, pair_name="pair-a",
                volumes=volumes)
    args.update(kw)
    return LocalNode(**args)


def make_pair(seed: int = 1, primary: LocalNode | None = None, secondary: LocalNode | None = None,
              primary_secret: bytes = SECRET, secondary_secret: bytes = SECRET) -> tuple[Connection, Connection]:
    return (Connection(primary or primary_node(), primary_secret, random.Random(seed).randbytes),
            Connection(secondary or secondary_node(), secondary_secret, random.Random(seed + 1000).randbytes))


class Link:
    """Moves bytes between two connections until neither has anything to say;
    records every byte each side emitted and every event it received."""

    def __init__(self, primary: Connection, secondary: Connection):
        self.primary, self.secondary = primary, secondary
        self.wire = {primary: bytearray(), secondary: bytearray()}  # bytes each side emitted
        self.events = {primary: [], secondary: []}
        self.errors = {primary: [], secondary: []}

    def pump(self, limit: int = 100) -> None:
        for _ in range(limit):
            moved = False
            for src, dst in ((self.primary, self.secondary), (self.secondary, self.primary)):
                data = src.data_to_send()
                if data:
                    moved = True
                    self.wire[src] += data
                    dst.receive_data(data)
                self.drain(dst)
            if not moved:
                return
        raise AssertionError("link did not settle")

    def drain(self, conn: Connection) -> None:
        try:
            self.events[conn].extend(conn.events())
        except Exception as e:  # noqa: BLE001 - recorded for the test to assert on
            self.errors[conn].append(e)

    def send(self, src: Connection, msg: Message) -> list:
        """Send msg from src, deliver it, return the events the peer got."""
        dst = self.secondary if src is self.primary else self.primary
        data = src.send(msg)
        self.wire[src] += data
        before = len(self.events[dst])
        dst.receive_data(data)
        self.drain(dst)
        return self.events[dst][before:]


def handshake(primary: Connection, secondary: Connection) -> Link:
    link = Link(primary, secondary)
    primary.initiate()
    link.pump()
    return link


def established_pair(seed: int = 1, volume_bytes: int | None = None, **kw) -> tuple[Connection, Connection]:
    if volume_bytes is not None:
        vols = (VolumeInfo("big", VOL_DB.uuid, volume_bytes),)
        kw.setdefault("primary", primary_node(volumes=vols))
        kw.setdefault("secondary", secondary_node(volumes=vols))
    p, s = make_pair(seed, **kw)
    link = handshake(p, s)
    assert isinstance(link.events[p][-1], Established) and isinstance(link.events[s][-1], Established)
    return p, s


def frame_bytes(msg: Message) -> bytes:
    return b"".join(bytes(b) for b in encode_message(msg))


def raw_frame(msg_type: int, payload: bytes, *, version: int = 1, magic: bytes = b"BM",
              length: int | None = None, checksum: int | None = None) -> bytes:
    """A frame built by hand, for input the real encoder refuses to make."""
    prefix = struct.pack(">2sBBI", magic, version, msg_type, len(payload) if length is None else length)
    if checksum is None:
        checksum = xxhash.xxh3_64_intdigest(prefix + payload)
    return prefix + struct.pack(">Q", checksum) + payload


def decode_all(data: bytes) -> list[Message]:
    """Decode a byte string of frames with no connection state."""
    decoder = FrameDecoder(MESSAGE_CLASSES)
    decoder.feed(data)
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(decode_message(frame.msg_type, frame.payload))
    assert decoder.buffered_bytes == 0
    return out


__all__ = ["ConnectionClosed", "Established"]
