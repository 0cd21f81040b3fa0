"""The first half of a first write: preserve the originals.

For a batch of writes, the chunks they touch first since the newest
snapshot are read from the volumes and written to that snapshot's COW files
as one record per file (storage/cowlog.py): originals in groups whose
writeback starts at once, so the disk works while the next ones are read,
the header (with the rows and the digest of them all) last. The `Job`
returned syncs the records before any overwrite (storage/pipeline.py).
"""

from __future__ import annotations

from pyroaring import BitMap

from blockmirror.buffers import uninitialized
from blockmirror.errors import NoSpace
from blockmirror.storage import cowlog
from blockmirror.storage.cowpool import CowPool
from blockmirror.storage.metadata import MetaStore
from blockmirror.storage.pipeline import Job
from blockmirror.storage.recovery import RecordEpoch
from blockmirror.storage.tables import ExceptionTables
from blockmirror.storage.volume import Volume

# Originals of one record are written (and their writeback started) in
# groups of this size while the next ones are read.
WRITEBACK_GROUP_BYTES = 1 << 20


class CopyOnWrite:
    """Under the node's lock."""

    def __init__(self, meta: MetaStore, pool: CowPool, tables: ExceptionTables, by_id: dict[int, Volume],
                 epoch: RecordEpoch, chunk_size: int):
        self._meta = meta
        self._pool = pool
        self._tables = tables
        self._by_id = by_id
        self._epoch = epoch
        self._chunk_size = chunk_size
        self._zero_chunk = bytes(chunk_size)
        self._read_buf = memoryview(bytearray(0))  # originals of a batch, reused
        self.writeback_group_bytes = WRITEBACK_GROUP_BYTES

    def fresh_chunks(self, snap: int, ops, volumes: dict[str, Volume]) -> dict[int, BitMap]:
        """Per volume id, the chunks these ops touch first since `snap`."""
        tables = self._tables.chunks[snap]
        need: dict[int, BitMap] = {}
        for op in ops:
            vol = volumes[op.volume]
            span = vol.chunk_span(op.offset, op.nbytes)
            if not span:
                continue
            table = tables[vol.id]
            if table.range_cardinality(span.start, span.stop) == len(span):
                continue  # a rewrite: every chunk already preserved (no set built)
            fresh = BitMap(span) - table
            if fresh:
                need.setdefault(vol.id, BitMap()).update(fresh)
        return need

    def preserve(self, snap: int, ops, fua: bool, need: dict[int, BitMap]) -> Job:
        """Write the original of every chunk in `need` to its COW file of
        snapshot `snap`, one record per file; the job returned syncs them
        before the ops' overwrites."""
        self._epoch.store(self._meta)  # this process's first record: its epoch is stored first
        job = Job(snap, ops, fua)
        total = sum(len(c) for c in need.values()) * self._chunk_size
        if len(self._read_buf) < total:  # originals are read into one reused buffer
            self._read_buf = memoryview(uninitialized(max(total, 2 * len(self._read_buf))))
        pos = 0
        for vid, chunks in need.items():
            try:
                pos = self._write_record(job, snap, self._by_id[vid], list(chunks), pos)
            except (NoSpace, OSError):
                self._void(job)
                raise
        # The next records go after these (set only now: a failure above
        # leaves the tails where they were, and the next record overwrites
        # what it wrote); the rows and these tails are published once the
        # job has synced them.
        self._pool.tails.update(job.tails)
        job.nbytes = pos
        tables = self._tables.chunks[snap]
        for vid, chunks in need.items():
            tables[vid] |= chunks  # later batches of these chunks copy nothing (and queue behind)
        return job

    def _write_record(self, job: Job, snap: int, vol: Volume, chunks: list[int], pos: int) -> int:
        """One record of `vol`'s originals of `chunks`, read into the buffer
        from `pos` on; returns the buffer position after them."""
        cs = self._chunk_size
        key = (snap, vol.id)
        block = self._pool.tail(key)
        cow = self._pool.file(key, create=True)
        if not self._pool.entry_durable(key):
            job.dir_sync = True
            job.created.append(key)
        at = (block + cowlog.header_blocks(len(chunks))) * cowlog.BLOCK
        group_max = max(1, self.writeback_group_bytes // cs)
        originals, has_data, group = [], [], []
        for chunk in chunks:
            original = self._read_buf[pos:pos + cs]
            zero = self._read_original(vol, chunk, original)
            has_data.append(not zero)
            if zero:
                continue
            pos += cs
            originals.append(original)
            group.append(original)
            if len(group) >= group_max:
                cow.pwritev(at, group)
                cow.start_writeback(at, len(group) * cs)
                at += len(group) * cs
                group = []
        if group:
            cow.pwritev(at, group)
        header = cowlog.encode_header(snap, vol.id, self._epoch.value, chunks, has_data, originals)
        cow.pwrite(block * cowlog.BLOCK, header)
        slot = block + len(header) // cowlog.BLOCK
        step = cs // cowlog.BLOCK
        for chunk, data in zip(chunks, has_data):
            job.rows.append(((snap, vol.id, chunk), (snap, slot if data else None)))
            slot += step if data else 0
        job.cows.append(cow)
        job.tails[key] = slot
        return pos

    def _void(self, job: Job) -> None:
        """The batch is refused (a full disk) after some of its records were
        written: their headers are zeroed, so that no recovery takes their
        rows (the overwrites never happen). Best effort: a record left whole
        only makes a diff name chunks that did not change."""
        for (snap, vid), cow in zip(job.tails, job.cows):
            try:
                cow.pwrite(self._pool.tail((snap, vid)) * cowlog.BLOCK, bytes(cowlog.BLOCK))
            except (NoSpace, OSError):
                pass

    def _read_original(self, vol: Volume, chunk: int, original: memoryview) -> bool:
        """Read a chunk's original into `original`; True if it is all zeroes."""
        cs = self._chunk_size
        n = vol.chunk_bytes(chunk)
        vol.file.pread_into(chunk * cs, original[:n])
        if n < cs:  # the short last chunk: pad its slot
            original[n:] = bytes(cs - n)
        # memoryview == compares byte by byte: test a prefix, then memcmp a copy
        return original[:64] == self._zero_chunk[:64] and bytes(original) == self._zero_chunk
