"""The second half of a first write, behind the caller: sync the record of
the originals, then overwrite.

A first write to a chunk after a snapshot has two halves. The caller reads
the originals and writes them to the COW file as a record (`CopyOnWrite.preserve`);
a `Job` then syncs that record and only then applies the batch's overwrites
to the volumes. `write_many` returns once its job is queued: the overwrite
is not yet in the volume, but every read of the node waits for the jobs
before it (`WritePath.drain`), so a completed write is visible, and a flush waits
for them too, so it is durable when the flush returns, as for any write. The
caller meanwhile prepares the next batch: the record sync of batch N
overlaps the reads of batch N+1's originals.

Order: jobs run one at a time, in the order submitted; once one fails,
every later job fails without touching a file (a later record must never be
overwritten over an earlier record that is not on disk: recovery reads a
COW file's records in order and stops at the first bad one).

Modes:
- "thread": a worker thread runs the jobs; at most `depth` jobs are queued
  or running, `submit` waits for room.
- "inline": `submit` runs the job at once (the write path without overlap).
- "deferred": `submit` first runs every earlier job, then leaves the new
  one queued until the next `submit` or `wait`. No thread: deterministic,
  for the crash tests and the simulator, and the latest point a job can run
  in thread mode (after the next batch's record is written).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable

MODES = ("thread", "inline", "deferred")
DEPTH_DEFAULT = 2


class Job:
    """One batch: records to sync, then overwrites to apply. `rows`, `tails`,
    `nbytes`, `created` are what the node publishes once the job is done."""

    __slots__ = ("snap", "cows", "dir_sync", "ops", "fua", "punches", "rows", "tails", "nbytes", "created", "done",
                 "error")

    def __init__(self, snap: int | None, ops, fua: bool):
        self.snap = snap  # the newest snapshot when it was queued
        self.cows: list = []  # COW files holding this batch's records
        self.dir_sync = False  # a COW file is new: sync the directory too
        self.ops = ops
        self.fua = fua
        self.punches = any(op.kind != "write" for op in ops)  # may deallocate volume blocks
        self.rows: list = []  # ((snap, vol, chunk), (file, slot))
        self.tails: dict = {}  # (file, vol) -> next free block after this batch's records
        self.nbytes = 0
        self.created: list = []  # COW files whose directory entry the dir sync makes durable
        self.done = threading.Event()
        self.error: BaseException | None = None


class Pipeline:
    def __init__(self, run: Callable[[Job], None], mode: str = "thread", depth: int = DEPTH_DEFAULT,
                 name: str = "cow-apply"):
        if mode not in MODES:
            raise ValueError(f"unknown pipeline mode {mode!r}")
        self._run = run
        self.mode = mode
        self.depth = max(1, depth)
        self._name = name
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()  # submitted, not yet finished
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.failed: BaseException | None = None

    def submit(self, job: Job) -> None:
        if self.mode == "inline":
            self._execute(job)
        elif self.mode == "deferred":
            self._run_queued()
            self._queue.append(job)
        else:
            with self._cond:
                while len(self._queue) >= self.depth:
                    self._cond.wait()
                self._queue.append(job)
                self._cond.notify_all()
                if self._thread is None:
                    self._thread = threading.Thread(target=self._worker, name=self._name, daemon=True)
                    self._thread.start()

    def wait(self, job: Job | None = None) -> None:
        """Until `job` (default: every job submitted so far) is done."""
        if self.mode == "deferred":
            self._run_queued()
        elif self.mode == "thread":
            if job is None:
                with self._cond:
                    last = self._queue[-1] if self._queue else None
                if last is None:
                    return
                job = last  # jobs finish in order
            job.done.wait()

    def close(self) -> None:
        """Finish every job, stop the worker."""
        self.wait()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    # -- internals ------------------------------------------------------------------------
    def _run_queued(self) -> None:
        while self._queue:
            self._execute(self._queue.popleft())

    def _execute(self, job: Job) -> None:
        try:
            if self.failed is not None:
                raise RuntimeError("not applied: an earlier write of this node failed") from self.failed
            self._run(job)
        except BaseException as exc:  # handed to the caller through the job
            job.error = exc
            if self.failed is None:
                self.failed = exc
        finally:
            job.done.set()

    def _worker(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                job = self._queue[0]
            self._execute(job)
            with self._cond:
                self._queue.popleft()
                self._cond.notify_all()
