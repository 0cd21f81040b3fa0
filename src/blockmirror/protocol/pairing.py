"""Who may pair with whom: the local node's identity and the rules that
compare it with the peer's Hello and volume list.

Volumes are matched by name, not position, so the two configs may list them
in any order; the primary's Attach order defines the wire volume index. A
secondary volume with a nil UUID is unpaired and adopts the primary's UUID at
its first full sync; any other UUID must equal the primary's, so a secondary
never takes data meant for a different volume that happens to share a name.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from blockmirror.protocol.codec import NIL_UUID, check_name, check_uint, check_uuid
from blockmirror.protocol.errors import ErrorCode, RemoteProtocolError
from blockmirror.protocol.handshake import Hello, Role, VolumeInfo, check_volumes
from blockmirror.units import format_size


@dataclass(frozen=True)
class LocalNode:
    """What this node says about itself in the handshake. On a secondary,
    `committed_generation`/`committed_seq` are its last durably committed
    point (nil/0 when it has never received anything), and `changed` the
    extents (volume name, offset, length) it changed itself since then (a
    demoted primary's own writes), `digests` the chunks it may have changed
    with a digest of their bytes."""

    role: Role
    node_uuid: uuid.UUID
    pair_uuid: uuid.UUID
    pair_name: str
    volumes: tuple[VolumeInfo, ...]
    committed_generation: uuid.UUID = NIL_UUID
    committed_seq: int = 0
    changed: tuple[tuple[str, int, int], ...] = ()
    digests: tuple[tuple[str, int, int, bytes], ...] = ()
    diverged: int = 0  # chunks it wrote as a primary after the pair parted
    discard: bool = False  # ... which may lose to the primary's (demote --discard-my-data)
    demoted: bool = False  # its seq names no point: any base of its generation fits
    open_round: tuple | None = None  # (round id, target generation, volume name, offset): a round it can resume

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", Role(self.role))
        check_uuid("node_uuid", self.node_uuid)
        check_uuid("pair_uuid", self.pair_uuid)
        check_name("pair name", self.pair_name)
        check_volumes(self.volumes)
        check_uuid("committed_generation", self.committed_generation)
        check_uint("committed_seq", self.committed_seq, 64)
        if self.role is Role.PRIMARY:
            for v in self.volumes:
                if v.uuid == NIL_UUID:
                    raise ValueError(f"primary volume {v.name!r} has a nil UUID")


def check_peer_hello(local: LocalNode, hello: Hello) -> None:
    """Refuse a peer with the same role or from another pair."""
    if hello.role is local.role:
        raise RemoteProtocolError(
            ErrorCode.ROLE_CONFLICT,
            f"both nodes are {local.role.name.lower()} for pair {local.pair_name!r}")
    if hello.pair_uuid != local.pair_uuid or hello.pair_name != local.pair_name:
        raise RemoteProtocolError(
            ErrorCode.PAIR_MISMATCH,
            f"peer belongs to pair {hello.pair_name!r} ({hello.pair_uuid}), "
            f"this node to pair {local.pair_name!r} ({local.pair_uuid})")
    if hello.node_uuid == local.node_uuid:
        raise RemoteProtocolError(ErrorCode.PAIR_MISMATCH,
                                  f"peer has this node's own UUID {local.node_uuid}: connected to itself?")


def changed_on_wire(local: LocalNode, ordered: tuple[VolumeInfo, ...]) -> tuple[tuple, tuple]:
    """The secondary's changed extents and chunk digests with the primary's
    volume indexes."""
    index = {v.name: i for i, v in enumerate(ordered)}
    return (tuple((index[name], *rest) for name, *rest in local.changed if name in index),
            tuple((index[name], *rest) for name, *rest in local.digests if name in index))


def round_on_wire(local: LocalNode, ordered: tuple[VolumeInfo, ...]):
    """The secondary's open round (Ready.open_round) with the primary's
    volume index."""
    if local.open_round is None:
        return None
    round_id, target, name, offset = local.open_round
    index = {v.name: i for i, v in enumerate(ordered)}
    return None if name not in index else (round_id, target, index[name], offset)


def match_volumes(primary: tuple[VolumeInfo, ...], secondary: tuple[VolumeInfo, ...]) -> tuple[VolumeInfo, ...]:
    """The secondary's volumes in the primary's order, or VOLUME_MISMATCH
    naming every volume that differs."""
    by_name = {v.name: v for v in secondary}
    problems: list[str] = []
    ordered: list[VolumeInfo] = []
    for p in primary:
        s = by_name.pop(p.name, None)
        if s is None:
            problems.append(f"volume {p.name!r} exists on the primary but not on the secondary")
            continue
        if s.size_bytes != p.size_bytes:
            problems.append(f"volume {p.name!r} is {format_size(p.size_bytes)} ({p.size_bytes} bytes) on the "
                            f"primary but {format_size(s.size_bytes)} ({s.size_bytes} bytes) on the secondary")
        elif p.uuid == NIL_UUID:
            problems.append(f"volume {p.name!r} has no UUID on the primary")
        elif s.uuid not in (NIL_UUID, p.uuid):
            problems.append(f"volume {p.name!r} on the secondary mirrors volume {s.uuid}, "
                            f"not the primary's {p.uuid}")
        ordered.append(s)
    for name in by_name:
        problems.append(f"volume {name!r} exists on the secondary but not on the primary")
    if problems:
        raise RemoteProtocolError(ErrorCode.VOLUME_MISMATCH, "; ".join(problems))
    return tuple(ordered)
