"""The interface between the simulator and the cluster glue (cluster.py):
the facts it hands out about the nodes, as small frozen dataclasses, and the
events it reports. The checker reads engine state only through these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pyroaring import BitMap

from blockmirror.protocol import NIL_UUID, ProtocolError

NIL = str(NIL_UUID)


class ExportRefused(Exception):
    """The secondary's export refused a read (no committed image to serve)."""


@dataclass(frozen=True)
class PrimaryView:
    up: bool
    state: str = ""
    linked: bool = False
    live: bool = False  # host writes get seqs and go to the secondary
    seq: int = 0
    acked_seq: int = 0
    unacked: tuple[tuple[int, int], ...] = ()  # (seq, bytes) given out and not acknowledged
    waiting_writes: int = 0  # host writes held back (window full)
    verifying: bool = False  # a verify is under way (or asked for)


@dataclass(frozen=True)
class SecondaryView:
    up: bool
    generation: str = NIL
    seq: int = 0
    inconsistent: bool = False  # a full round is under way
    round_open: bool = False
    applied_batches: int = 0
    own_changes: bool = False  # a demoted node whose own writes no commit has replaced yet

    @property
    def holds_point(self) -> bool:
        """Its volumes are the image of the (generation, seq) it reports."""
        return (self.up and not self.inconsistent and not self.round_open and self.generation != NIL
                and not self.own_changes)


@dataclass(frozen=True)
class DiskProbe:
    """What a crash of the secondary now would leave, once it recovered."""
    generation: str
    seq: int
    inconsistent: bool
    image: bytes
    own_changes: bool = False


@dataclass(frozen=True)
class RoundStart:
    kind: str  # 'full' or 'incremental'
    target_generation: str
    base_generation: str
    commit_seq: int
    chunks: list[BitMap]  # per volume


class ClusterEvents(Protocol):
    def write_applied(self, token, vol: int, offset: int, data: bytes | None, length: int,
                      generation: str | None, first_seq: int | None, last_seq: int | None) -> None: ...
    def host_completed(self, token, error: BaseException | None, mirroring: bool) -> None: ...
    def link_established(self, peer_generation: str, peer_seq: int) -> None: ...
    def round_started(self, rnd: RoundStart) -> None: ...
    def round_resumed(self, rnd: RoundStart, start: tuple[int, int]) -> None: ...
    def target_taken(self, target_generation: str) -> None: ...
    def recovered_hot(self, extents: list) -> None: ...
    def secondary_changed(self, when: str) -> None: ...
    def secondary_acked(self, seq: int) -> None: ...
    def secondary_damaged(self, chunks: list[BitMap]) -> None: ...
    def round_committed(self, generation: str) -> None: ...
    def verify_started(self) -> None: ...
    def verify_repair(self, differ: list[BitMap], repaired: list[BitMap]) -> None: ...
    def verify_done(self, differ: list[BitMap], result: str) -> None: ...
    def primary_lost(self, image: bytes, how: str) -> None: ...
    def secondary_lost(self, how: str) -> None: ...
    def no_space(self, node: str) -> None: ...
    def protocol_error(self, node: str, exc: ProtocolError) -> None: ...
