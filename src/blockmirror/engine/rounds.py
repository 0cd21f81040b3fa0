"""Resync rounds on the primary (steps 74-76): which chunks a round sends,
and the round's messages, read from its own stable snapshot in disk order.

A round has a target snapshot T taken when it starts; its chunk set is the
diff since its base (the union of the exception tables from the base to the
newest snapshot) plus the unacknowledged writes recorded with the base. Its
data is read from T's image, which host writes after T cannot change (they
are preserved in T's table). With no common base the round is full: every
allocated chunk, and every hole as a zero extent so that stale data on the
secondary is cleared without sending zero bytes.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from typing import Iterator

from pyroaring import BitMap

from blockmirror.engine.records import FULL, INCREMENTAL, PrimaryRound, ResyncBase
from blockmirror.protocol import (
    NIL_UUID,
    ResyncBegin,
    ResyncCommit,
    ResyncData,
    ResyncZeroes,
)

ZERO_EXTENT_BYTES_MAX = 1 << 30
MESSAGE_OVERHEAD_BYTES = 64  # what a message costs the send budget besides its data


class Geometry:
    """The consistency group's volumes in wire order."""

    def __init__(self, names: list[str], sizes: list[int], chunk_size: int):
        self.names = names
        self.sizes = sizes
        self.chunk_size = chunk_size
        self.index = {name: i for i, name in enumerate(names)}

    def chunk_bytes(self, vol: int, chunk: int) -> int:
        return min(self.chunk_size, self.sizes[vol] - chunk * self.chunk_size)

    def run_bytes(self, vol: int, first: int, count: int) -> int:
        """Bytes of `count` chunks from `first` (the volume's last chunk may be short)."""
        return min((first + count) * self.chunk_size, self.sizes[vol]) - first * self.chunk_size

    def chunk_count(self, vol: int) -> int:
        return -(-self.sizes[vol] // self.chunk_size)

    def empty_sets(self) -> list[BitMap]:
        return [BitMap() for _ in self.names]

    def chunks_of(self, extents) -> list[BitMap]:
        sets = self.empty_sets()
        cs = self.chunk_size
        for vol, off, length in extents:
            if length > 0 and vol < len(self.sizes):
                end = min(off + length, self.sizes[vol])
                if end > off:
                    sets[vol].add_range(off // cs, (end - 1) // cs + 1)
        return sets

    def chunk_set_bytes(self, sets: list[BitMap]) -> int:
        total = 0
        for vol, chunks in enumerate(sets):
            n = len(chunks)
            if n and chunks.max() == self.chunk_count(vol) - 1:  # only the last chunk can be short
                total += (n - 1) * self.chunk_size + self.chunk_bytes(vol, chunks.max())
            else:
                total += n * self.chunk_size
        return total


def chunk_runs(chunks: BitMap, step_max: int | None = None):
    """(first, count) runs of consecutive chunks, each at most `step_max` long."""
    run_start = run_len = None
    for c in chunks:
        if run_start is not None and c == run_start + run_len and (step_max is None or run_len < step_max):
            run_len += 1
            continue
        if run_start is not None:
            yield run_start, run_len
        run_start, run_len = c, 1
    if run_start is not None:
        yield run_start, run_len


def full_round_chunks(node, geo: Geometry) -> list[BitMap]:
    """Every allocated chunk (holes are sent as zero extents)."""
    sets = geo.empty_sets()
    cs = geo.chunk_size
    for i, name in enumerate(geo.names):
        for off, length in node.volumes[name].allocated_extents():
            sets[i].add_range(off // cs, (off + length - 1) // cs + 1)
    return sets


def incremental_round_chunks(node, geo: Geometry, base: ResyncBase, diff: dict | None = None,
                             with_unacked: bool = True) -> list[BitMap]:
    """Step 74: the diff since the base (`diff` if the caller has it), plus
    the writes it records as sent and never acknowledged."""
    sets = geo.chunks_of(base.unacked if with_unacked else ())
    diff = node.diff(base.snapshot) if diff is None else diff
    for i, name in enumerate(geo.names):
        sets[i] |= diff[name]
    return sets


@dataclass
class ResyncRound:
    id: int
    kind: str  # FULL or INCREMENTAL
    base: int | None  # snapshot id
    base_generation: uuid.UUID
    target: int  # snapshot id of the stable image
    target_generation: uuid.UUID
    final: bool
    commit_seq: int
    chunks: list[BitMap]
    started: float
    total_chunks: int = 0
    total_bytes: int = 0
    extent_count: int = 0
    extents_sent: int = 0
    data_bytes_sent: int = 0
    chunks_sent: int = 0
    local_writes: int = 0  # host writes applied (not mirrored) since T while not final
    start: tuple[int, int] = (0, 0)  # (volume index, chunk) of its first extent: past (0, 0) when resumed
    resume: tuple[int, int] | None = None  # (volume index, offset): the secondary's resume point
    resumed_bytes: int = 0  # bytes already on the secondary when it resumed
    carry: tuple = ()  # extents its target, as a base, records as unacknowledged (hot regions)
    holes: bool = True  # a full round covers every chunk not in `chunks` with zero extents (not a checksum sync)
    _cursor: Iterator | None = field(default=None, repr=False)

    def begin(self) -> ResyncBegin:
        return ResyncBegin(self.id, self.base_generation, self.target_generation, max(self.extent_count, 1),
                           self.total_bytes, self.resume)

    def record(self) -> PrimaryRound:
        """What it takes to resume this round (its chunks as planned)."""
        return PrimaryRound(self.id, self.kind, self.base, self.base_generation, self.target,
                            self.target_generation, self.commit_seq, tuple(self.chunks), self.holes)

    def commit(self) -> ResyncCommit:
        return ResyncCommit(self.id, self.target_generation, self.commit_seq, self.extents_sent,
                            self.data_bytes_sent)

    def as_base(self) -> ResyncBase:
        """T as the base of the generation this round gives the secondary."""
        return ResyncBase(self.target, self.target_generation, self.commit_seq, tuple(self.carry))


class RoundSender:
    """Plans rounds and turns a round into its messages, in disk order."""

    def __init__(self, node, geo: Geometry, extent_bytes_max: int):
        self.node = node
        self.geo = geo
        self.step_max = max(1, extent_bytes_max // geo.chunk_size)

    def plan(self, round_id: int, base: ResyncBase | None, chunks: list[BitMap], target: int,
             target_generation: uuid.UUID, commit_seq: int, final_bytes_max: int, last_allowed: bool,
             now: float, holes: bool = True) -> ResyncRound:
        kind = FULL if base is None else INCREMENTAL
        total_bytes = self.geo.chunk_set_bytes(chunks)
        rnd = ResyncRound(round_id, kind, None if base is None else base.snapshot,
                          NIL_UUID if base is None else base.generation, target, target_generation,
                          total_bytes <= final_bytes_max or last_allowed, commit_seq, chunks, now,
                          total_chunks=sum(len(c) for c in chunks), total_bytes=total_bytes,
                          holes=holes and kind == FULL)
        rnd.extent_count = sum(1 for _ in self._extents(rnd))
        rnd._cursor = self._extents(rnd)
        return rnd

    def resume(self, rec: PrimaryRound, at: tuple[int, int], carry: tuple, now: float) -> ResyncRound:
        """The round `rec` from the secondary's resume point `at` (volume
        index, offset): only the extents from there on. Not final: host
        writes after its snapshot are left for the next round (unless, at
        its commit, there were none)."""
        vol, offset = at
        first = -(-offset // self.geo.chunk_size)
        chunks = []
        for v, c in enumerate(rec.chunks):
            c = BitMap(c)
            if v < vol:
                c.clear()
            elif v == vol and first:
                c.remove_range(0, first)
            chunks.append(c)
        left = self.geo.chunk_set_bytes(chunks)
        rnd = ResyncRound(rec.id, rec.kind, rec.base, rec.base_generation, rec.target, rec.target_generation,
                          False, rec.commit_seq, chunks, now, total_chunks=sum(len(c) for c in chunks),
                          total_bytes=left, local_writes=1, start=(vol, first), resume=(vol, offset),
                          resumed_bytes=self.geo.chunk_set_bytes(list(rec.chunks)) - left, carry=tuple(carry),
                          holes=rec.holes and rec.kind == FULL)
        rnd.extent_count = sum(1 for _ in self._extents(rnd))
        rnd._cursor = self._extents(rnd)
        return rnd

    def emit(self, rnd: ResyncRound, out: list, budget_bytes: int) -> tuple[int, bool]:
        """Append the round's next messages to `out` within the budget:
        (budget left, whether every extent has been emitted)."""
        cs = self.geo.chunk_size
        while budget_bytes > 0:
            nxt = next(rnd._cursor, None)
            if nxt is None:
                return budget_bytes, True
            kind, vol, first, count = nxt
            off = first * cs
            length = min(count * cs, self.geo.sizes[vol] - off)
            rnd.extents_sent += 1
            budget_bytes -= MESSAGE_OVERHEAD_BYTES
            if kind == "zero":
                out.append(ResyncZeroes(rnd.id, vol, off, length))
                continue
            data = self.node.read_snapshot(rnd.target, self.geo.names[vol], off, length)
            rnd.chunks_sent += count
            if data == _zeros(len(data)):  # memcmp stops at the first non-zero byte
                out.append(ResyncZeroes(rnd.id, vol, off, length))
            else:
                out.append(ResyncData(rnd.id, vol, off, data))
                rnd.data_bytes_sent += length
                budget_bytes -= length
        return budget_bytes, False

    def _extents(self, rnd: ResyncRound):
        """('data', vol, first, count) in disk order; a full round (but a
        checksum sync's) also covers every hole with ('zero', ...)."""
        full = rnd.holes
        start_vol, start_chunk = rnd.start
        for vol, chunks in enumerate(rnd.chunks):
            if vol < start_vol:
                continue
            pos = start_chunk if vol == start_vol else 0
            for first, count in chunk_runs(chunks, self.step_max):
                if full and first > pos:
                    yield from self._zero_runs(vol, pos, first)
                yield "data", vol, first, count
                pos = first + count
            if full:
                yield from self._zero_runs(vol, pos, self.geo.chunk_count(vol))

    def _zero_runs(self, vol: int, first: int, end: int):
        step = max(1, ZERO_EXTENT_BYTES_MAX // self.geo.chunk_size)
        for c in range(first, end, step):
            yield "zero", vol, c, min(step, end - c)


@functools.lru_cache(maxsize=8)
def _zeros(length: int) -> bytes:
    return bytes(length)


