"""A file of the crash-test disk (storage/crashfs.py): sparse, behind a
volatile cache.

Its content is allocated in 4 KiB blocks: a block is allocated by a write
into it or by `allocate`, and freed by `punch` or a truncate below it; a
hole reads as zeroes. When the disk is full (`CrashFileSystem.disk_full`), a
write or allocate that needs a block not yet allocated raises NoSpace, as
ENOSPC would, before any byte changes. Writes, punches and truncates sit
in the cache until `sync`; a crash keeps, drops or tears each one (see
`_crash`), and keeps the allocation of what survived. An allocation is kept
at once: it changes no byte, and a node rescans its volumes' allocation at
open anyway.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from pyroaring import BitMap

from blockmirror.errors import NoSpace

if TYPE_CHECKING:
    from blockmirror.storage.crashfs import CrashFileSystem

SECTOR_BYTES = 512
BLOCK_BYTES = 4096


class SimulatedCrash(Exception):
    """Raised at the injected crash point; the process 'dies' here."""


class Inode:
    """What is on the disk for one file (its names are the filesystem's)."""

    __slots__ = ("data", "blocks")

    def __init__(self, data: bytearray | None = None, blocks: BitMap | None = None):
        self.data = data if data is not None else bytearray()
        self.blocks = blocks if blocks is not None else BitMap()  # allocated 4 KiB blocks

    def copy(self) -> Inode:
        return Inode(bytearray(self.data), BitMap(self.blocks))


def _blocks_of(offset: int, length: int) -> tuple[int, int]:
    """[first, end) of the blocks that bytes [offset, offset+length) touch."""
    return offset // BLOCK_BYTES, -(-(offset + length) // BLOCK_BYTES)


def _free(blocks: BitMap, offset: int, length: int) -> None:
    """Free the blocks wholly inside the range (a partial block stays allocated)."""
    first, end = -(-offset // BLOCK_BYTES), (offset + length) // BLOCK_BYTES
    if end > first:
        blocks.remove_range(first, end)


def _no_space(path: str, what: str) -> NoSpace:
    return NoSpace(f"disk full while {what} {path}", hint="free space on the node's filesystem")


class MemFile:
    __slots__ = ("fs", "path", "epoch", "current", "blocks", "durable", "pending", "closed")

    def __init__(self, fs: CrashFileSystem, path: str, durable: Inode):
        self.fs = fs
        self.path = path
        self.epoch = fs.epoch
        self.current = bytearray(durable.data)
        self.blocks = BitMap(durable.blocks)  # allocated now (the cache included)
        self.durable = durable
        # ("write", offset, data), ("punch", offset, length), ("truncate", size, None)
        self.pending: list[tuple[str, int, bytes | int | None]] = []
        self.closed = False

    def _check(self):
        if self.epoch != self.fs.epoch or self.closed:
            raise SimulatedCrash(f"{self.path}: handle from before a crash")

    def _room(self, offset: int, length: int, what: str) -> None:
        """NoSpace if the disk is full and the range needs a new block."""
        first, end = _blocks_of(offset, length)
        if self.fs.disk_full and self.blocks.range_cardinality(first, end) != end - first:
            raise _no_space(self.path, what)

    def pread(self, offset: int, length: int) -> bytes:
        self._check()
        data = bytes(self.current[offset:offset + length])
        if len(data) < length:
            data += bytes(length - len(data))
        return data

    def pread_into(self, offset: int, buf: memoryview) -> None:
        buf[:] = self.pread(offset, len(buf))

    def pwrite(self, offset: int, data) -> None:
        self._check()
        data = bytes(data)
        self.fs._step(f"pwrite {self.path}@{offset}+{len(data)}")
        if data:
            self._room(offset, len(data), "writing")
            self.blocks.add_range(*_blocks_of(offset, len(data)))
        end = offset + len(data)
        if end > len(self.current):
            self.current.extend(bytes(end - len(self.current)))
        self.current[offset:end] = data
        self.pending.append(("write", offset, data))

    def pwritev(self, offset: int, buffers: list) -> None:
        self.pwrite(offset, b"".join(buffers))

    def punch(self, offset: int, length: int) -> None:
        self._check()
        length = max(0, min(length, len(self.current) - offset))
        if length:
            self.fs._step(f"punch {self.path}@{offset}+{length}")
            self.current[offset:offset + length] = bytes(length)
            _free(self.blocks, offset, length)
            self.pending.append(("punch", offset, length))

    def allocate(self, offset: int, length: int) -> None:
        self._check()
        if length > 0:
            self._room(offset, length, "reserving space in")
            self.blocks.add_range(*_blocks_of(offset, length))
            self.durable.blocks.add_range(*_blocks_of(offset, length))

    def rot(self, offset: int, data: bytes) -> None:
        """A faulty disk changes bytes under the file (the simulator's damage
        of a secondary): in the cache and on the media alike, with no I/O
        step of the process and whatever the free space. Cached writes over
        the range that a crash keeps still land on top of it."""
        self._check()
        end = offset + len(data)
        for image in (self.current, self.durable.data):
            if end > len(image):
                image.extend(bytes(end - len(image)))
            image[offset:end] = data
        if data:
            self.blocks.add_range(*_blocks_of(offset, len(data)))
            self.durable.blocks.add_range(*_blocks_of(offset, len(data)))

    def start_writeback(self, offset: int, length: int) -> None:
        self._check()  # a hint with no durability promise: the cache may keep it or not

    def sync(self) -> None:
        self._check()
        self.fs._step(f"sync {self.path}")
        self.durable.data[:] = self.current
        self.durable.blocks = BitMap(self.blocks)
        self.pending.clear()

    def size(self) -> int:
        self._check()
        return len(self.current)

    def truncate(self, size: int) -> None:
        self._check()
        self.fs._step(f"truncate {self.path} {size}")
        _resize(self.current, self.blocks, size)
        self.pending.append(("truncate", size, None))

    def data_extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        """The allocated blocks within the window (SEEK_DATA/SEEK_HOLE)."""
        self._check()
        end = min(offset + length, len(self.current))
        extents: list[list[int]] = []
        for block in self.blocks.iter_equal_or_larger(offset // BLOCK_BYTES):
            start = max(block * BLOCK_BYTES, offset)
            if start >= end:
                break
            stop = min((block + 1) * BLOCK_BYTES, end)
            if extents and extents[-1][0] + extents[-1][1] == start:
                extents[-1][1] = stop - extents[-1][0]
            else:
                extents.append([start, stop - start])
        return [(a, b) for a, b in extents]

    def close(self) -> None:
        self.closed = True

    def copy_to(self, fs: CrashFileSystem, durable: Inode) -> MemFile:
        """This handle, cache included, on a copy of the disk."""
        f = MemFile(fs, self.path, durable)
        f.current = bytearray(self.current)
        f.blocks = BitMap(self.blocks)
        f.pending = list(self.pending)
        return f

    def _crash(self, rng: random.Random) -> None:
        """Each cached change, in order: a truncate kept or dropped whole; a
        write (or a punch, which zeroes its range) dropped, kept, or torn:
        each 512-byte sector kept or not. A kept write's blocks are
        allocated, a kept punch's freed; a torn punch frees nothing."""
        image = self.durable
        for kind, offset, arg in self.pending:
            fate = rng.random()
            if kind == "truncate":
                if fate < 0.5:
                    _resize(image.data, image.blocks, offset)
                continue
            if fate < 1 / 3:
                continue  # dropped
            data = arg if kind == "write" else bytes(arg)
            end = offset + len(data)
            if end > len(image.data):
                image.data.extend(bytes(end - len(image.data)))
            if fate < 2 / 3:  # kept
                image.data[offset:end] = data
                if kind == "write":
                    if data:
                        image.blocks.add_range(*_blocks_of(offset, len(data)))
                else:
                    _free(image.blocks, offset, len(data))
                continue
            pos = offset  # torn: each sector kept or not
            while pos < end:
                stop = min(end, (pos // SECTOR_BYTES + 1) * SECTOR_BYTES)
                if rng.random() < 0.5:
                    image.data[pos:stop] = data[pos - offset:stop - offset]
                    if kind == "write":
                        image.blocks.add(pos // BLOCK_BYTES)
                pos = stop


def _resize(data: bytearray, blocks: BitMap, size: int) -> None:
    if size > len(data):
        data.extend(bytes(size - len(data)))  # a hole: nothing allocated
    else:
        del data[size:]
        last = -(-size // BLOCK_BYTES)
        if blocks and blocks.max() >= last:
            blocks.remove_range(last, blocks.max() + 1)
