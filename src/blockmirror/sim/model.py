"""The primary's write history as the checker sees it: one point per applied
host write, the image hash at each point, and which (generation, seq) of the
secondary names which point."""

from __future__ import annotations

import xxhash
from pyroaring import BitMap


class HistoryModel:
    def __init__(self, sizes: list[int], chunk_size: int):
        self.sizes = sizes
        self.starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.chunk_size = chunk_size
        self.image = bytearray(sum(sizes))
        self.hashes = [self._hash()]
        self.touched: list[list[BitMap]] = [[BitMap() for _ in sizes]]  # chunks written at each point
        self.seq_point: dict[tuple[str, int], int] = {}
        self.target_point: dict[str, int] = {}

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

    def reset(self, image: bytes) -> None:
        """The primary crashed: its history continues from what its disk kept."""
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

    def point_of(self, generation: str, seq: int) -> int | None:
        return self.seq_point.get((generation, seq))

    def touched_since(self, point: int) -> list[BitMap]:
        out = [BitMap() for _ in self.sizes]
        for sets in self.touched[point + 1:]:
            for vol, s in enumerate(sets):
                out[vol] |= s
        return out
