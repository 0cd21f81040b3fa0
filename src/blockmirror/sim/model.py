"""What the checker knows independently of the engines.

HistoryModel: the primary's write history, one point per applied host write,
the image hash at each point, and which (generation, seq) of the secondary
names which point. LastWriters: which host write last wrote each byte of the
primary's image, so a crash can be held to what completed flushes and FUA
writes made durable."""

from __future__ import annotations

from bisect import bisect_left, bisect_right

import xxhash
from pyroaring import BitMap

DURABLE = -1  # the writer of bytes a crash has just settled: on disk whatever comes next


class HistoryModel:
    def __init__(self, sizes: list[int], chunk_size: int):
        self.sizes = sizes
        self.starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.chunk_size = chunk_size
        self.image = bytearray(sum(sizes))
        self.hashes = [self._hash()]
        self.touched: list[list[BitMap]] = [[BitMap() for _ in sizes]]  # chunks written at each point
        self.seq_point: dict[tuple[str, int], int] = {}
        self.target_point: dict[str, int] = {}  # round target generation -> its point

    def _hash(self) -> int:
        return xxhash.xxh3_64_intdigest(self.image)

    @property
    def point(self) -> int:
        return len(self.hashes) - 1

    def apply(self, vol: int, offset: int, data: bytes | None, length: int) -> None:
        start = self.starts[vol] + offset
        self.image[start:start + length] = data if data is not None else bytes(length)
        touched = [BitMap() for _ in self.sizes]
        if length:
            touched[vol].add_range(offset // self.chunk_size, (offset + length - 1) // self.chunk_size + 1)
        self.hashes.append(self._hash())
        self.touched.append(touched)

    def reset(self, image: bytes) -> list[BitMap]:
        """The primary crashed or stopped: its history continues from what its
        disk kept. Returns the chunks that differ from the model."""
        changed = [BitMap() for _ in self.sizes]
        for vol, size in enumerate(self.sizes):
            s = self.starts[vol]
            for c in range(-(-size // self.chunk_size)):
                a, b = s + c * self.chunk_size, s + min(size, (c + 1) * self.chunk_size)
                if self.image[a:b] != image[a:b]:
                    changed[vol].add(c)
        self.image[:] = image
        self.hashes.append(self._hash())
        self.touched.append(changed)
        return changed

    def point_of(self, generation: str, seq: int) -> int | None:
        return self.seq_point.get((generation, seq))

    def touched_since(self, point: int) -> list[BitMap]:
        out = [BitMap() for _ in self.sizes]
        for sets in self.touched[point + 1:]:
            for vol, s in enumerate(sets):
                out[vol] |= s
        return out

    def chunk_range(self, vol: int, chunk: int) -> tuple[int, int]:
        """Image byte range of one chunk."""
        a = self.starts[vol] + chunk * self.chunk_size
        return a, min(a + self.chunk_size, self.starts[vol] + self.sizes[vol])


class LastWriters:
    """Contiguous byte ranges of the image, each with the host write (token)
    that last wrote it. Host write tokens increase in submission order, so a
    completed flush covers every writer with a smaller token."""

    def __init__(self, total_bytes: int):
        self.total_bytes = total_bytes
        self.starts = [0]
        self.ranges: list[tuple[int, int, float]] = [(0, total_bytes, DURABLE)]

    def write(self, a: int, b: int, writer: float) -> None:
        if a >= b:
            return
        i = bisect_right(self.starts, a) - 1
        j = bisect_left(self.starts, b)
        s0, _, w0 = self.ranges[i]
        _, e1, w1 = self.ranges[j - 1]
        new = ([(s0, a, w0)] if s0 < a else []) + [(a, b, writer)] + ([(b, e1, w1)] if e1 > b else [])
        self.ranges[i:j] = new
        self.starts[i:j] = [r[0] for r in new]

    def settle(self) -> None:
        """A crash decided every byte: all of it is on disk now."""
        self.starts = [0]
        self.ranges = [(0, self.total_bytes, DURABLE)]


def subtract(a: int, b: int, holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[a, b) minus the (sorted or not) ranges in `holes`."""
    out = [(a, b)]
    for ha, hb in holes:
        nxt = []
        for x, y in out:
            if hb <= x or ha >= y:
                nxt.append((x, y))
                continue
            if x < ha:
                nxt.append((x, ha))
            if hb < y:
                nxt.append((hb, y))
        out = nxt
    return out
