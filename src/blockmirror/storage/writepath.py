"""The write path of a node: batches of writes, their copy-on-write, and
the queue of first-write jobs behind the caller.

Crash ordering of a first write to a chunk after the newest snapshot: the
chunk's original data is written to the COW file as a record that also
carries its exception row (storage/copyonwrite.py), the record is synced,
and only then may the overwrite reach the volume. A batch (`write_many`)
preserves all of its chunks with one record and one sync per COW file:
group commit. The sync and the overwrites run behind the caller
(storage/pipeline.py); every read waits for them (`drain`).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Iterable, NamedTuple

from pyroaring import BitMap

from blockmirror.errors import NodeError, NoSpace, OutOfRange
from blockmirror.storage.copyonwrite import CopyOnWrite
from blockmirror.storage.cowpool import CowPool
from blockmirror.storage.gate import WriteGate
from blockmirror.storage.pipeline import Job, Pipeline
from blockmirror.storage.tables import ExceptionTables
from blockmirror.storage.volume import Volume


class WriteOp(NamedTuple):
    volume: str
    offset: int
    data: bytes | memoryview | None = None
    length: int = 0
    kind: str = "write"  # 'write', 'zero' or 'trim'

    @property
    def nbytes(self) -> int:
        return len(self.data) if self.kind == "write" else self.length


class WritePath:
    def __init__(self, volumes: dict[str, Volume], lock: threading.RLock, gate: WriteGate, cow: CopyOnWrite,
                 tables: ExceptionTables, pool: CowPool, newest_snapshot: Callable[[], int | None],
                 pipeline: str):
        self._volumes = volumes
        self._lock = lock  # the node's: metadata, tables, COW files
        self.gate = gate  # writers pass through it; a snapshot pauses it
        self.cow = cow
        self._tables = tables
        self._pool = pool
        self._newest = newest_snapshot
        self._jobs: deque[Job] = deque()  # submitted to the pipeline and not yet reaped (in order)
        self._pipeline = Pipeline(self._run_job, pipeline)
        self._unkicked_bytes = 0  # written since the volumes' writeback was last started
        for vol in volumes.values():
            vol.before_read = self.drain

    def volume(self, name: str) -> Volume:
        try:
            return self._volumes[name]
        except KeyError:
            raise OutOfRange(f"no volume named {name!r}",
                             hint=f"volumes here: {', '.join(self._volumes)}") from None

    def write_many(self, ops: Iterable[WriteOp], fua: bool = False) -> None:
        """Apply writes in order. Checks every op first, so a bad one changes
        nothing; preserves all first-touched chunks with one group commit.

        With first writes (or earlier batches still queued) the overwrites
        are applied by the pipeline after the record's sync: this returns
        once they are queued (with `fua`, once they are applied and synced).
        Every read of the node waits for them, so a completed write is
        visible; `flush` waits for them, so it is durable after a flush."""
        ops = list(ops)
        for op in ops:
            if op.kind not in ("write", "zero", "trim"):
                raise ValueError(f"unknown write kind {op.kind!r}")
            self.volume(op.volume).check_range(op.offset, op.nbytes)
        with self.gate.writing():
            with self._lock:
                job = self._queue(ops, fua)
            if job is None:
                self._apply(ops, fua)
            elif fua:
                self._pipeline.wait(job)
                with self._lock:
                    self.reap()

    def _queue(self, ops: list[WriteOp], fua: bool) -> Job | None:
        """Under the lock: the job that will apply `ops` behind the caller
        (preserving their first-touched chunks first), or None when they
        can be applied at once."""
        self.reap()
        snap = self._newest()
        need = self.cow.fresh_chunks(snap, ops, self._volumes) if snap is not None else None
        if any(j.punches for j in self._jobs):
            self.drain()  # a queued punch would undo a reservation made now
        # The blocks the ops will write are reserved first: a full disk then
        # refuses the whole batch with nothing changed, rather than after some
        # of its ops were applied or, for queued overwrites, after the caller
        # was told they completed.
        for op in ops:
            self._volumes[op.volume].reserve(op.offset, op.nbytes, edges_only=op.kind != "write")
        job = None
        if need:
            if self._jobs and self._jobs[0].snap != snap:
                # Batches queued before this snapshot was taken belong to its
                # image: they reach the volume before any original is read for it.
                # (Waiting here, not in the snapshot's pause, keeps the pause short.)
                self.drain()
            job = self.cow.preserve(snap, ops, fua, need)
        elif self._jobs:  # behind a queued batch: keep the order
            job = Job(snap, ops, fua)
        if job is not None:
            self._jobs.append(job)
            self._pipeline.submit(job)
            self.reap()  # what finished meanwhile (inline: this job)
        return job

    def _apply(self, ops: list[WriteOp], fua: bool) -> None:
        touched = {}
        for i, op in enumerate(ops):
            vol = self._volumes[op.volume]
            touched[vol.id] = vol
            if op.kind == "write":
                vol.file.pwrite(op.offset, op.data)
            else:
                vol.zero(op.offset, op.length, self._needed_later(ops, i))
        if fua:
            for vol in touched.values():
                vol.file.sync()

    def _needed_later(self, ops: list[WriteOp], i: int) -> BitMap | None:
        """Blocks of op i's volume that the ops after it write: reserved
        before the batch, so op i must not punch them (the later write would
        need new space, and a full disk would refuse half a batch)."""
        vol = self._volumes[ops[i].volume]
        later = [op for op in ops[i + 1:] if op.volume == ops[i].volume and op.nbytes]
        if not later:
            return None
        needed = BitMap()
        for op in later:
            for lo, hi in vol.blocks_written(op.offset, op.nbytes, edges_only=op.kind != "write"):
                needed.add_range(lo, hi)
        return needed

    def _run_job(self, job: Job) -> None:
        """On the pipeline: the records durable, then the overwrites."""
        for cow in job.cows:
            cow.sync()
        if job.dir_sync:
            self._pool.sync_dir()
        self._apply(job.ops, job.fua)

    def reap(self) -> None:
        """Under the lock: publish the rows of finished jobs (their records
        are durable); once a job failed, raise that failure."""
        jobs = self._jobs
        while jobs and jobs[0].done.is_set() and jobs[0].error is None:
            job = jobs.popleft()
            self._tables.publish(job.rows, job.tails, job.nbytes)
            self._pool.entries_synced(job.created)
        failed = self._pipeline.failed
        if failed is not None:
            if not isinstance(failed, (OSError, NoSpace)):
                raise failed  # a bug, or a test's simulated crash: as it was raised
            raise NodeError(f"a write failed on the disk: {failed}; the writes queued after it were not "
                            f"applied, and this node takes no more I/O",
                            hint="check the disk, then restart the daemon: recovery brings every snapshot "
                                 "back") from failed
        self._tables.commit_due()

    def drain(self) -> None:
        """Every queued write applied (and its rows published)."""
        if self._jobs or self._pipeline.failed is not None:
            with self._lock:
                self._pipeline.wait()
                self.reap()

    @property
    def pipeline_mode(self) -> str:
        return self._pipeline.mode

    def queued(self) -> int:
        """Batches queued behind the callers (not yet reaped)."""
        return len(self._jobs)

    def flush(self) -> None:
        """Every write that completed before this call is on stable storage."""
        self.drain()
        for vol in self._volumes.values():
            vol.file.sync()

    def start_writeback(self) -> None:
        """Start writing every volume's dirty data to the disk now, without
        waiting: a later `flush` then has little left to wait for. A hint."""
        self._unkicked_bytes = 0
        for vol in self._volumes.values():
            vol.file.start_writeback(0, vol.size)

    def pace_writeback(self, nbytes: int, every: int) -> None:
        """Count `nbytes` just written; start the writeback once `every`
        bytes were written since it was last started."""
        self._unkicked_bytes += nbytes
        if self._unkicked_bytes >= every:
            self.start_writeback()

    def close(self) -> None:
        """Finish the queued jobs and stop the pipeline; raises the failure
        of a job (the rows of the jobs before it are published)."""
        self._pipeline.close()
        self.reap()
