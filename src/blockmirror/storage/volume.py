"""A volume: one raw sparse file, addressed in bytes and grouped in chunks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from pyroaring import BitMap

from blockmirror.errors import OutOfRange
from blockmirror.storage.fileio import File
from blockmirror.storage.layout import VOLUME_ALIGN_BYTES


@dataclass(eq=False)
class Volume:
    id: int
    name: str
    uuid: str
    size: int
    chunk_size: int
    path: str
    file: File = field(repr=False)
    # The node's: waits for writes it has queued (reads see every completed write).
    before_read: Callable[[], None] | None = field(default=None, repr=False)
    # 4 KiB blocks that hold data or the node reserved (fallocate), and were
    # not punched since; None until the node first needs it (then scanned).
    reserved: BitMap | None = field(default=None, repr=False)

    def check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise OutOfRange(
                f"volume {self.name}: request [{offset}, {offset + length}) outside [0, {self.size})")

    def read(self, offset: int, length: int) -> bytes:
        self.check_range(offset, length)
        if self.before_read is not None:
            self.before_read()
        return self.file.pread(offset, length)

    @property
    def chunk_count(self) -> int:
        return -(-self.size // self.chunk_size)

    def chunk_span(self, offset: int, length: int) -> range:
        """Chunk indices that [offset, offset+length) touches."""
        if length <= 0:
            return range(0)
        return range(offset // self.chunk_size, (offset + length - 1) // self.chunk_size + 1)

    def chunk_bytes(self, chunk: int) -> int:
        """Length of a chunk; the last one may be short."""
        return min(self.chunk_size, self.size - chunk * self.chunk_size)

    def allocated_extents(self) -> list[tuple[int, int]]:
        """(offset, length) ranges that hold data; holes are skipped."""
        if self.before_read is not None:
            self.before_read()
        return self.file.data_extents(0, self.size)

    def blocks_written(self, offset: int, length: int, edges_only: bool = False) -> list[tuple[int, int]]:
        """[lo, hi) spans of the 4 KiB blocks a write of [offset,
        offset+length) writes; `edges_only`: a zeroing write, which punches
        whole blocks and writes only its partial edge blocks."""
        a = VOLUME_ALIGN_BYTES
        if not length:
            return []
        first, end = offset // a, -(-(offset + length) // a)
        if not edges_only:
            return [(first, end)]
        spans = [(first, first + 1)] if offset % a else []
        if (offset + length) % a and (end - 1, end) not in spans:
            spans.append((end - 1, end))
        return spans

    def reserve(self, offset: int, length: int, edges_only: bool = False) -> None:
        """Reserve the blocks a write will need (`blocks_written`): NoSpace
        now, with nothing changed, rather than when the write runs. Blocks
        reserved once are remembered (until punched), so a rewritten range
        costs no call."""
        a = VOLUME_ALIGN_BYTES
        if not length:
            return
        if self.reserved is None:  # once per process: what holds data needs no reservation
            self.reserved = BitMap()
            for off, n in self.allocated_extents():
                self.reserved.add_range(-(-off // a), (off + n) // a)
        elif len(self.reserved) * a >= self.size:
            return  # every block is: the common case of a volume after its first sync
        for lo, hi in self.blocks_written(offset, length, edges_only):
            if self.reserved.range_cardinality(lo, hi) != hi - lo:
                self.file.allocate(lo * a, (hi - lo) * a)
                self.reserved.add_range(lo, hi)

    def zero(self, offset: int, length: int, keep: BitMap | None = None) -> None:
        """Zero a range: punch its whole 4 KiB blocks (keeps the file
        sparse), write its partial edges. Blocks in `keep` (that a later
        write of the same batch needs: they are reserved) are written with
        zeroes instead of punched."""
        a = VOLUME_ALIGN_BYTES
        start = -(-offset // a) * a
        end = (offset + length) // a * a
        if end > start:
            if start > offset:
                self.file.pwrite(offset, bytes(start - offset))
            self._punch(start // a, end // a, keep)
            if offset + length > end:
                self.file.pwrite(end, bytes(offset + length - end))
        elif length:
            self.file.pwrite(offset, bytes(length))

    def _punch(self, lo: int, hi: int, keep: BitMap | None) -> None:
        """Punch blocks [lo, hi) but those in `keep`, which are zeroed."""
        a = VOLUME_ALIGN_BYTES
        pos = lo
        for block in (() if keep is None else keep.iter_equal_or_larger(lo)):
            if block >= hi:
                break
            if block > pos:
                self._punch_span(pos, block)
            self.file.pwrite(block * a, bytes(a))
            pos = block + 1
        if hi > pos:
            self._punch_span(pos, hi)

    def _punch_span(self, lo: int, hi: int) -> None:
        self.file.punch(lo * VOLUME_ALIGN_BYTES, (hi - lo) * VOLUME_ALIGN_BYTES)
        if self.reserved is not None:
            self.reserved.remove_range(lo, hi)
