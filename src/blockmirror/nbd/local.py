"""Exports over a local storage `Node`: the standalone primary's volumes.

All writes of all volumes of the node go through one `GroupCommitter`: while
one batch runs in a worker thread (`Node.write_many`), new writes queue up,
and the next batch takes all of them. One round of fdatasync per batch serves
every FUA write and flush in it: a batch with FUA writes is written with
`fua=True`; a batch with a flush ends with `Node.flush()`, which syncs every
volume and so also covers writes completed in earlier batches. Reads go
straight to a thread pool; the event loop never blocks on the disk.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
from dataclasses import dataclass

from blockmirror.errors import BlockmirrorError
from blockmirror.nbd import wire
from blockmirror.storage import Node, WriteOp

log = logging.getLogger("blockmirror.nbd.local")

IO_THREADS = 4  # reads in flight on the disk at once; more only contend for the GIL
BATCH_OPS_MAX = 512
BATCH_BYTES_MAX = 64 << 20


@dataclass
class _Pending:
    op: WriteOp | None  # None: a flush
    fua: bool  # the write must be on stable storage before it completes
    nbytes: int
    future: asyncio.Future


class GroupCommitter:
    """Applies queued writes in batches, one `write_many` (and at most one
    fdatasync) per batch, in submission order."""

    def __init__(self, node: Node, executor: concurrent.futures.Executor):
        self._node = node
        self._executor = executor
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.syncs = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    async def close(self) -> None:
        """Apply what is queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def submit(self, op: WriteOp | None, fua: bool) -> None:
        assert not self._closing, "submit after close"
        future = asyncio.get_running_loop().create_future()
        nbytes = op.length if op is not None else 0
        self._queue.append(_Pending(op, fua, nbytes, future))
        self._wakeup.set()
        await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._take_batch()
            ops = [p.op for p in batch if p.op is not None]
            fua = any(p.fua for p in batch if p.op is not None)
            flush = any(p.op is None for p in batch)
            sync = fua or flush
            try:
                await loop.run_in_executor(self._executor, self._apply_batch, ops, fua, flush)
                results: list[BaseException | None] = [None] * len(batch)
            except (BlockmirrorError, OSError) as exc:
                # Find out which request failed: redo them one by one (writes are
                # idempotent and keep their order), so one bad write fails only itself.
                log.info("batch of %d writes failed (%s); retrying them one by one", len(batch), exc)
                results = await loop.run_in_executor(self._executor, self._apply_each, batch)
            except Exception as exc:  # a bug: fail every request of the batch, keep serving
                log.exception("batch of %d writes failed", len(batch))
                results = [exc] * len(batch)
            self.batches += 1
            self.syncs += sync
            for pending, result in zip(batch, results):
                if pending.future.done():
                    continue
                if result is None:
                    pending.future.set_result(None)
                else:
                    pending.future.set_exception(result)

    def _take_batch(self) -> list[_Pending]:
        batch = [self._queue.popleft()]
        nbytes = batch[0].nbytes
        while self._queue and len(batch) < BATCH_OPS_MAX and nbytes + self._queue[0].nbytes <= BATCH_BYTES_MAX:
            pending = self._queue.popleft()
            nbytes += pending.nbytes
            batch.append(pending)
        return batch

    def _apply_batch(self, ops: list[WriteOp], fua: bool, flush: bool) -> None:
        # write_many(fua=True) syncs the volumes it touched; a flush must cover
        # every volume (writes completed in earlier batches), so it syncs them all.
        if ops:
            self._node.write_many(ops, fua=fua and not flush)
        if flush:
            self._node.flush()

    def _apply_each(self, batch: list[_Pending]) -> list[BaseException | None]:
        results: list[BaseException | None] = []
        for pending in batch:
            try:
                if pending.op is None:
                    self._apply_batch([], False, True)
                else:
                    self._apply_batch([pending.op], pending.fua, False)
                results.append(None)
            except Exception as exc:
                results.append(exc)
        return results


class LocalExport:
    """One volume of a local Node as a `BlockExport`."""

    multi_conn = True  # one node, one page cache, node-wide fdatasync

    def __init__(self, node: Node, volume_name: str, committer: GroupCommitter,
                 executor: concurrent.futures.Executor, read_only: bool = False):
        self._volume = node.volumes[volume_name]
        self._committer = committer
        self._executor = executor
        self.name = volume_name
        self.size = self._volume.size
        self.read_only = read_only
        self._zeroes: memoryview | None = None  # for NO_HOLE write-zeroes

    async def read(self, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._volume.read, offset, length)

    async def write(self, offset: int, data: bytes | bytearray, fua: bool) -> None:
        if not data:
            return
        await self._committer.submit(WriteOp(self.name, offset, data, len(data), "write"), fua)

    async def write_zeroes(self, offset: int, length: int, fua: bool, no_hole: bool) -> None:
        # NO_HOLE: the range must stay allocated, so zeroes are written, not
        # punched; they come from one calloc'd buffer whose pages the kernel
        # maps to the zero page, so it costs no memory.
        await self._submit_ranges("write" if no_hole else "zero", offset, length, fua)

    async def trim(self, offset: int, length: int, fua: bool) -> None:
        await self._submit_ranges("trim", offset, length, fua)

    async def flush(self) -> None:
        await self._committer.submit(None, True)

    async def _submit_ranges(self, kind: str, offset: int, length: int, fua: bool) -> None:
        # Zeroing or trimming a whole volume is one NBD request; the storage gets
        # it in pieces no larger than a payload so no single op is unbounded.
        step = wire.MAX_PAYLOAD_BYTES
        zeroes = None
        if kind == "write":
            if self._zeroes is None:
                self._zeroes = memoryview(bytes(step))
            zeroes = self._zeroes
        pieces = [WriteOp(self.name, pos, None if zeroes is None else zeroes[:min(step, offset + length - pos)],
                          min(step, offset + length - pos), kind)
                  for pos in range(offset, offset + length, step)]
        if pieces:
            await asyncio.gather(*(self._committer.submit(op, fua) for op in pieces))


class LocalNodeExports:
    """Every volume of an open Node as exports, with the thread pool and the
    group committer they share. `close()` drains, flushes and closes the node."""

    def __init__(self, node: Node, read_only: bool = False, io_threads: int = IO_THREADS):
        self.node = node
        self._executor = concurrent.futures.ThreadPoolExecutor(io_threads, thread_name_prefix="nbd-io")
        self.committer = GroupCommitter(node, self._executor)
        self.exports = [LocalExport(node, name, self.committer, self._executor, read_only)
                        for name in node.volumes]

    def start(self) -> None:
        self.committer.start()

    async def close(self) -> None:
        await self.committer.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.node.flush)
        await loop.run_in_executor(self._executor, self.node.close)
        self._executor.shutdown(wait=True)
