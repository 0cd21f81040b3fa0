"""Ordering rules of the streaming phase that depend on message contents.

One sequence space per consistency group: Write/WriteZeroes seqs strictly
increase, starting above the secondary's committed seq; a ResyncCommit moves
the stream to its `seq` (never backwards); Acks are cumulative and never go
backwards or beyond what was sent. Resync rounds have increasing ids, start
from the secondary's current generation (or nil, for a full copy), carry only
extents inside their volumes, and commit with exact totals. Both sides run
the same checks (the primary on send, the secondary on receive), so an engine
bug is caught before its bytes leave the node.
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass

from blockmirror.protocol.codec import NIL_UUID, Message
from blockmirror.protocol.errors import ErrorCode
from blockmirror.protocol.handshake import VolumeInfo
from blockmirror.protocol.messages import (
    Ack,
    ResyncBegin,
    ResyncCommit,
    ResyncCommitted,
    ResyncData,
    ResyncZeroes,
    VerifyRequest,
    Write,
    WriteZeroes,
)


class StreamViolation(Exception):
    """A message whose numbers break the stream rules."""

    def __init__(self, code: ErrorCode, text: str):
        super().__init__(text)
        self.code = code


@dataclass
class _OpenRound:
    begin: ResyncBegin
    extent_count: int = 0
    data_bytes: int = 0


class StreamOrder:
    """Tracks the stream position of one connection and checks each message."""

    def __init__(self, volumes: tuple[VolumeInfo, ...], committed_generation: uuid.UUID, committed_seq: int):
        self._volumes = volumes
        self.last_seq = committed_seq  # highest seq the stream has reached
        self.acked_seq = committed_seq
        self.generation = committed_generation  # the secondary's image once pending commits land
        self.last_round_id: int | None = None
        self._round: _OpenRound | None = None
        self._unconfirmed: deque[ResyncCommit] = deque()  # committed rounds awaiting ResyncCommitted

    def check(self, msg: Message) -> None:
        """Apply `msg` to the position, or raise StreamViolation."""
        handler = _HANDLERS.get(type(msg))
        if handler is not None:
            handler(self, msg)

    def _extent(self, volume: int, offset: int, length_bytes: int) -> None:
        if volume >= len(self._volumes):
            raise StreamViolation(ErrorCode.OUT_OF_RANGE,
                                  f"volume index {volume} but the pair has {len(self._volumes)} volumes")
        v = self._volumes[volume]
        if offset + length_bytes > v.size_bytes:
            raise StreamViolation(ErrorCode.OUT_OF_RANGE,
                                  f"extent {offset}+{length_bytes} ends beyond volume {v.name!r} "
                                  f"of {v.size_bytes} bytes")

    def _write(self, msg: Write | WriteZeroes) -> None:
        if msg.seq <= self.last_seq:
            raise StreamViolation(ErrorCode.SEQUENCE_ERROR,
                                  f"write seq {msg.seq} does not follow seq {self.last_seq}")
        self._extent(msg.volume, msg.offset, msg.length_bytes)
        self.last_seq = msg.seq

    def _verify(self, msg: VerifyRequest) -> None:
        self._extent(msg.volume, msg.offset, msg.length_bytes)

    def _ack(self, msg: Ack) -> None:
        if not self.acked_seq <= msg.seq <= self.last_seq:
            raise StreamViolation(ErrorCode.SEQUENCE_ERROR,
                                  f"ack of seq {msg.seq} outside {self.acked_seq}..{self.last_seq}")
        self.acked_seq = msg.seq

    def _begin(self, msg: ResyncBegin) -> None:
        if self.last_round_id is not None and msg.round_id <= self.last_round_id:
            raise StreamViolation(ErrorCode.RESYNC_ERROR,
                                  f"round {msg.round_id} does not follow round {self.last_round_id}")
        if msg.base_generation not in (NIL_UUID, self.generation):
            raise StreamViolation(ErrorCode.RESYNC_ERROR,
                                  f"round {msg.round_id} starts from generation {msg.base_generation} but the "
                                  f"secondary is at {self.generation}")
        self.last_round_id = msg.round_id
        self._round = _OpenRound(msg)

    def _round_extent(self, msg: ResyncData | ResyncZeroes) -> None:
        r = self._round
        assert r is not None, "state table admits extents only inside a round"
        if msg.round_id != r.begin.round_id:
            raise StreamViolation(ErrorCode.RESYNC_ERROR,
                                  f"extent for round {msg.round_id} inside round {r.begin.round_id}")
        self._extent(msg.volume, msg.offset, msg.length_bytes)
        r.extent_count += 1
        if isinstance(msg, ResyncData):
            r.data_bytes += msg.length_bytes
        if r.extent_count > r.begin.extent_count_max or r.data_bytes > r.begin.data_bytes_max:
            raise StreamViolation(ErrorCode.RESYNC_ERROR,
                                  f"round {r.begin.round_id} exceeds its announced "
                                  f"{r.begin.extent_count_max} extents / {r.begin.data_bytes_max} bytes")

    def _commit(self, msg: ResyncCommit) -> None:
        r = self._round
        assert r is not None, "state table admits a commit only inside a round"
        b = r.begin
        if msg.round_id != b.round_id or msg.generation != b.target_generation:
            raise StreamViolation(ErrorCode.RESYNC_ERROR,
                                  f"commit of round {msg.round_id} -> {msg.generation} inside round "
                                  f"{b.round_id} -> {b.target_generation}")
        if (msg.extent_count, msg.data_bytes) != (r.extent_count, r.data_bytes):
            raise StreamViolation(ErrorCode.RESYNC_ERROR,
                                  f"round {b.round_id} commits {msg.extent_count} extents / {msg.data_bytes} "
                                  f"bytes but carried {r.extent_count} / {r.data_bytes}")
        if msg.seq < self.last_seq:
            raise StreamViolation(ErrorCode.SEQUENCE_ERROR,
                                  f"round {b.round_id} commits at seq {msg.seq}, behind seq {self.last_seq}")
        self.last_seq = msg.seq
        self.generation = msg.generation
        self._round = None
        self._unconfirmed.append(msg)

    def _committed(self, msg: ResyncCommitted) -> None:
        if not self._unconfirmed:
            raise StreamViolation(ErrorCode.RESYNC_ERROR, f"round {msg.round_id} confirmed but none was committed")
        c = self._unconfirmed[0]
        if (msg.round_id, msg.generation, msg.seq) != (c.round_id, c.generation, c.seq):
            raise StreamViolation(ErrorCode.RESYNC_ERROR,
                                  f"confirmation of round {msg.round_id} ({msg.generation}, seq {msg.seq}) does "
                                  f"not match commit of round {c.round_id} ({c.generation}, seq {c.seq})")
        self._unconfirmed.popleft()


_HANDLERS = {
    Write: StreamOrder._write,
    WriteZeroes: StreamOrder._write,
    Ack: StreamOrder._ack,
    ResyncBegin: StreamOrder._begin,
    ResyncData: StreamOrder._round_extent,
    ResyncZeroes: StreamOrder._round_extent,
    ResyncCommit: StreamOrder._commit,
    VerifyRequest: StreamOrder._verify,
    ResyncCommitted: StreamOrder._committed,
}
