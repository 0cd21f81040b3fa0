"""Events that are not wire messages: what the connection tells the engine
about itself. Every other event is the received message itself."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from blockmirror.protocol.codec import Message
from blockmirror.protocol.handshake import Role, VolumeInfo


@dataclass(frozen=True)
class Established:
    """Handshake done, both sides authenticated, volumes match.

    `volumes` is the primary's list: Write.volume indexes it. `peer_volumes`
    is the peer's list in the same order (on the primary, a nil UUID marks a
    secondary volume that was never synced). The committed point is the
    secondary's: the engine starts from it to choose continue / incremental /
    full resync."""

    role: Role
    peer_node_uuid: uuid.UUID
    pair_uuid: uuid.UUID
    volumes: tuple[VolumeInfo, ...]
    peer_volumes: tuple[VolumeInfo, ...]
    committed_generation: uuid.UUID
    committed_seq: int
    peer_changed: tuple[tuple[int, int, int], ...] = ()  # the secondary's own changes (Ready.changed)
    peer_digests: tuple[tuple[int, int, int, bytes], ...] = ()  # and what it may have changed (Ready.digests)
    peer_diverged: int = 0  # Ready.diverged
    peer_discard: bool = False  # Ready.discard
    peer_demoted: bool = False  # Ready.demoted
    peer_round: tuple | None = None  # Ready.open_round: (round id, target generation, volume index, offset)


@dataclass(frozen=True)
class ConnectionClosed:
    """The byte stream ended. `clean` means the peer said Goodbye first; an
    unclean close is a link failure for the engine."""

    clean: bool


# What next_event() returns: a received message, or one of the above.
Event = Message | Established | ConnectionClosed
