"""NBD exports over the engines.

- `PrimaryExport`: a writable volume of the replicating primary. A write,
  write-zeroes or trim is handed to the PrimaryNode (through the daemon's
  group commit) and returns when the engine completes it: async mode once
  local, sync mode once the secondary has it on stable storage too. During a
  link-failure pause it simply does not return yet. Reads go to the local
  volume on a small thread pool (`Volume.read` waits for first-write batches
  the node still has queued: a completed write is always seen).
- `SecondaryExport`: a read-only volume of the secondary showing its last
  consistent image (`SecondaryNode.read_image`, on the engine thread so it
  never sees a half-applied batch). While the secondary holds no consistent
  image (its first full sync is under way) reads fail with EIO.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

from blockmirror.nbd import wire
from blockmirror.nbd.export import ExportError
from blockmirror.nbd.wire import Err
from blockmirror.storage import WriteOp


class PrimaryExport:
    multi_conn = True  # one engine, one node: a flush covers every connection's writes

    def __init__(self, daemon, volume, reader: concurrent.futures.Executor):
        self._daemon = daemon  # .host_write(op, fua), .host_flush()
        self._volume = volume
        self._reader = reader
        self.name = volume.name
        self.size = volume.size
        self.read_only = False
        self._zeroes: memoryview | None = None

    async def read(self, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        return await asyncio.get_running_loop().run_in_executor(self._reader, self._volume.read, offset, length)

    async def write(self, offset: int, data, fua: bool) -> None:
        if data:
            await self._daemon.host_write(WriteOp(self.name, offset, data, len(data), "write"), fua)

    async def write_zeroes(self, offset: int, length: int, fua: bool, no_hole: bool) -> None:
        await self._ranges("write" if no_hole else "zero", offset, length, fua)

    async def trim(self, offset: int, length: int, fua: bool) -> None:
        await self._ranges("trim", offset, length, fua)

    async def flush(self) -> None:
        await self._daemon.host_flush()

    async def _ranges(self, kind: str, offset: int, length: int, fua: bool) -> None:
        # One NBD request may zero a whole volume; the engine gets bounded pieces.
        step = wire.MAX_PAYLOAD_BYTES
        zeroes = None
        if kind == "write":  # NO_HOLE: real zero bytes keep the range allocated
            if self._zeroes is None:
                self._zeroes = memoryview(bytes(step))
            zeroes = self._zeroes
        ops = [WriteOp(self.name, pos, None if zeroes is None else zeroes[:min(step, offset + length - pos)],
                       min(step, offset + length - pos), kind)
               for pos in range(offset, offset + length, step)]
        if ops:
            await asyncio.gather(*(self._daemon.host_write(op, fua) for op in ops))


class SecondaryExport:
    multi_conn = True
    read_only = True

    def __init__(self, daemon, name: str, size: int):
        self._daemon = daemon  # .read_image(name, offset, length)
        self.name = name
        self.size = size

    async def read(self, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        return await self._daemon.read_image(self.name, offset, length)

    async def write(self, offset: int, data, fua: bool) -> None:
        raise ExportError(Err.EPERM, "the secondary's export is read-only")

    async def write_zeroes(self, offset: int, length: int, fua: bool, no_hole: bool) -> None:
        raise ExportError(Err.EPERM, "the secondary's export is read-only")

    async def trim(self, offset: int, length: int, fua: bool) -> None:
        raise ExportError(Err.EPERM, "the secondary's export is read-only")

    async def flush(self) -> None:
        return None
