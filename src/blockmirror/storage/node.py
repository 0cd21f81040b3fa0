"""A node: its volumes, its chain of copy-on-write snapshots, and the write
path that keeps every snapshot's image intact.

Crash ordering of a first write to a chunk after the newest snapshot (the
reason this module exists): the chunk's original data is written to the COW
file as a record that also carries its exception row, the record is synced,
and only then may the overwrite reach the volume. A batch of writes
(`write_many`) preserves all of its chunks with one record and one sync per
COW file: group commit. The sync and the overwrites run behind the caller
(storage/pipeline.py); every read waits for them.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
import time
import uuid as uuid_mod
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple

from pyroaring import BitMap

from blockmirror.buffers import uninitialized
from blockmirror.errors import ConfigError, NodeError, NoSpace, OutOfRange, SnapshotError
from blockmirror.storage import cowlog
from blockmirror.storage.fileio import FileSystem, OsFileSystem
from blockmirror.storage.gate import WriteGate
from blockmirror.storage.metadata import DB_NAME, FORMAT_VERSION, MetaStore
from blockmirror.storage.pipeline import Job, Pipeline
from blockmirror.storage.volume import Volume

CHUNK_SIZE_DEFAULT = 64 * 1024
CHUNK_SIZE_MIN = 4096
CHUNK_SIZE_MAX = 16 * 1024 * 1024
VOLUME_ALIGN_BYTES = 4096
VOLUMES_MAX = 256
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

VOLUME_DIR = "volumes"
COW_DIR = "cow"
LOCK_NAME = "blockmirror.lock"
SPARE_FRACTION = 4  # spare COW files may hold up to 1/4 of the volumes' total size
SPARES_MAX = 64
# Pending exception rows (durable in COW records, not yet in SQLite) are
# committed once they cover this much data or this many chunks: what a
# recovery must read back after a crash.
PENDING_BYTES_MAX = 256 << 20
PENDING_ROWS_MAX = 4096  # a commit of this many rows takes a few ms (on the writer's path)
# Originals of one record are written (and their writeback started) in
# groups of this size while the next ones are read.
WRITEBACK_GROUP_BYTES = 1 << 20
_SPARE_RE = re.compile(r"^spare-(\d+)\.cow$")
_COW_RE = re.compile(r"^(\d+)-(\d+)\.cow$")  # SNAP-VOL.cow


class WriteOp(NamedTuple):
    volume: str
    offset: int
    data: bytes | memoryview | None = None
    length: int = 0
    kind: str = "write"  # 'write', 'zero' or 'trim'

    @property
    def nbytes(self) -> int:
        return len(self.data) if self.kind == "write" else self.length


@dataclass(frozen=True)
class SnapshotInfo:
    id: int
    label: str
    created_ns: int
    pause_ns: int  # how long writers were kept out (drain + metadata commit)
    sealed: bool = True  # False only after a crash between its commit and its volume sync


@dataclass(frozen=True)
class SnapshotSpace:
    id: int
    exceptions: int  # preserved chunks, all volumes
    data_bytes: int  # bytes of preserved data held (zero chunks hold none)


def validate_volume_spec(volumes: dict[str, int], chunk_size: int) -> None:
    if not volumes:
        raise ConfigError("no volumes given", hint="add --volume NAME=SIZE")
    if len(volumes) > VOLUMES_MAX:
        raise ConfigError(f"too many volumes ({len(volumes)}); at most {VOLUMES_MAX}")
    if chunk_size < CHUNK_SIZE_MIN or chunk_size > CHUNK_SIZE_MAX or chunk_size & (chunk_size - 1):
        raise ConfigError(
            f"chunk size {chunk_size} must be a power of two between {CHUNK_SIZE_MIN} and {CHUNK_SIZE_MAX}",
            hint="use --chunk-size 64KiB")
    for name, size in volumes.items():
        if not _NAME_RE.match(name):
            raise ConfigError(
                f"invalid volume name {name!r}",
                hint="names are 1-64 characters of letters, digits, '.', '_', '-', starting with a letter or digit")
        if size <= 0:
            raise ConfigError(f"volume {name}: size must be greater than zero")
        if size % VOLUME_ALIGN_BYTES:
            raise ConfigError(f"volume {name}: size {size} is not a multiple of {VOLUME_ALIGN_BYTES}",
                              hint="use sizes like 512MiB or 4GiB")


class Node:
    """Not re-entrant: never call `snapshot` from inside a write."""

    def __init__(self, path: str, fs: FileSystem, meta: MetaStore, lock_fd: int | None,
                 clock_ns: Callable[[], int], monotonic_ns: Callable[[], int],
                 spare_limit_bytes: int | None = None, pipeline: str | None = None):
        self.path = path
        self.fs = fs
        self.meta = meta
        self._lock_fd = lock_fd
        self._clock_ns = clock_ns
        self._monotonic_ns = monotonic_ns
        self._lock = threading.RLock()  # metadata, tables, COW files
        self.gate = WriteGate()
        info = meta.node_info()
        self.node_uuid: str = info["node_uuid"]
        self.chunk_size: int = info["chunk_size"]
        self.volumes: dict[str, Volume] = {}
        self._by_id: dict[int, Volume] = {}
        for rec in meta.volumes():
            vpath = os.path.join(path, VOLUME_DIR, rec.name + ".img")
            vol = Volume(rec.id, rec.name, rec.uuid, rec.size_bytes, self.chunk_size, vpath,
                         fs.open(vpath))
            self.volumes[rec.name] = vol
            self._by_id[rec.id] = vol
        self._snapshots: dict[int, SnapshotInfo] = {
            r.id: SnapshotInfo(r.id, r.label, r.created_ns, r.pause_ns, r.sealed) for r in meta.snapshots()}
        # Exception-table chunk sets per snapshot and volume id.
        self._tables: dict[int, dict[int, BitMap]] = {
            s: {v: meta.load_table(s, v) for v in self._by_id} for s in self._snapshots}
        # Committed tail (in 4 KiB blocks) of every COW file (snapshot id, volume id).
        self._next_slot = meta.cow_files()
        self._cow_handles: dict[tuple[int, int], object] = {}
        self._zero_chunk = bytes(self.chunk_size)
        self._read_buf = memoryview(bytearray(0))
        # Exception rows durable in COW-file records but not yet in SQLite:
        # (snap, vol, chunk) -> (file, slot); and the tails they reach.
        self._pending: dict[tuple[int, int, int], tuple[int, int | None]] = {}
        self._pending_tails: dict[tuple[int, int], int] = {}
        self._pending_bytes = 0
        self._dir_durable: set[tuple[int, int]] = set()  # COW files whose directory entry is synced
        self.writeback_group_bytes = WRITEBACK_GROUP_BYTES
        self._unkicked_bytes = 0  # written since the volumes' writeback was last started
        self._epoch = self._recover_records(int(info.get("cow_epoch", 0)))
        # Spare COW files (name -> bytes): files of deleted snapshots kept for
        # reuse, so the next snapshot's originals overwrite blocks that are
        # already allocated and written, and their sync needs no filesystem
        # journal commit. Bounded by `spare_limit_bytes`.
        if spare_limit_bytes is None:
            spare_limit_bytes = sum(v.size for v in self.volumes.values()) // SPARE_FRACTION
        self.spare_limit_bytes = spare_limit_bytes
        self._spares: dict[str, int] = {}
        self._tidy_cow_dir()
        # Jobs submitted to the pipeline and not yet reaped (in order).
        if pipeline is None:  # a thread only over the real filesystem: the test ones stay deterministic
            pipeline = "thread" if isinstance(fs, OsFileSystem) else "inline"
        self._jobs: deque[Job] = deque()
        self._pipeline = Pipeline(self._run_job, pipeline)
        for vol in self.volumes.values():
            vol.before_read = self._drain

    # -- lifecycle -----------------------------------------------------------
    @classmethod
    def create(cls, path: str, volumes: dict[str, int], chunk_size: int = CHUNK_SIZE_DEFAULT,
               fs: FileSystem | None = None, new_uuid: Callable[[], str] | None = None,
               clock_ns: Callable[[], int] = time.time_ns,
               monotonic_ns: Callable[[], int] = time.perf_counter_ns,
               meta_synchronous: str = "FULL", spare_limit_bytes: int | None = None,
               pipeline: str | None = None) -> Node:
        validate_volume_spec(volumes, chunk_size)
        fs = fs or OsFileSystem()
        new_uuid = new_uuid or (lambda: str(uuid_mod.uuid4()))
        if isinstance(fs, OsFileSystem):
            if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
                raise NodeError(f"{path} exists and is not an empty directory",
                                hint="choose a new directory for the node")
        fs.makedirs(path)
        db_uri = fs.meta_uri(os.path.join(path, DB_NAME), create=True)
        meta = MetaStore.connect(db_uri, fs.step, create=True, synchronous=meta_synchronous)
        fs.makedirs(os.path.join(path, VOLUME_DIR))
        fs.makedirs(os.path.join(path, COW_DIR))
        try:
            for name, size in volumes.items():
                f = fs.open(os.path.join(path, VOLUME_DIR, name + ".img"), create=True)
                f.truncate(size)
                f.sync()
                f.close()
            fs.sync_dir(os.path.join(path, VOLUME_DIR))
            with meta.transaction("init") as conn:
                for key, value in (("format_version", FORMAT_VERSION), ("node_uuid", new_uuid()),
                                   ("chunk_size", chunk_size), ("created_ns", clock_ns())):
                    conn.execute("INSERT INTO node (key, value) VALUES (?, ?)", (key, value))
                for name, size in volumes.items():
                    conn.execute("INSERT INTO volumes (name, uuid, size_bytes) VALUES (?, ?, ?)",
                                 (name, new_uuid(), size))
        finally:
            meta.close()
        return cls.open(path, fs=fs, clock_ns=clock_ns, monotonic_ns=monotonic_ns,
                        meta_synchronous=meta_synchronous, spare_limit_bytes=spare_limit_bytes,
                        pipeline=pipeline)

    @classmethod
    def open(cls, path: str, fs: FileSystem | None = None,
             clock_ns: Callable[[], int] = time.time_ns,
             monotonic_ns: Callable[[], int] = time.perf_counter_ns,
             meta_synchronous: str = "FULL", spare_limit_bytes: int | None = None,
             pipeline: str | None = None) -> Node:
        """`spare_limit_bytes`: how much space spare COW files may keep
        (default: 1/4 of the volumes' total size; 0 keeps none). `pipeline`:
        how first writes' overwrites follow their record's sync (see
        storage/pipeline.py; default "thread" on the real filesystem)."""
        fs = fs or OsFileSystem()
        db_path = os.path.join(path, DB_NAME)
        lock_fd = None
        if isinstance(fs, OsFileSystem):
            if not os.path.exists(db_path):
                raise NodeError(f"{path} is not an initialised blockmirror node",
                                hint=f"blockmirror init {path} --volume NAME=SIZE")
            lock_fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock_fd)
                raise NodeError(f"{path} is in use by another blockmirror process",
                                hint=f"blockmirror status {path}") from None
        try:
            meta = MetaStore.connect(fs.meta_uri(db_path, create=False), fs.step, synchronous=meta_synchronous)
            return cls(path, fs, meta, lock_fd, clock_ns, monotonic_ns, spare_limit_bytes, pipeline)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise

    def close(self) -> None:
        with self._lock:
            self._pipeline.close()
            failure = None
            try:
                self._reap()
            except BaseException as exc:  # the rows of the jobs before it are still committed
                failure = exc
            self._commit_rows()
            for vol in self.volumes.values():
                vol.file.close()
            for f in self._cow_handles.values():
                f.close()
            self._cow_handles.clear()
            self.meta.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            if failure is not None:
                raise failure

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers ---------------------------------------------------------------
    def volume(self, name: str) -> Volume:
        try:
            return self.volumes[name]
        except KeyError:
            raise OutOfRange(f"no volume named {name!r}",
                             hint=f"volumes here: {', '.join(self.volumes)}") from None

    def _cow_path(self, file: int, vol: int) -> str:
        return os.path.join(self.path, COW_DIR, f"{file}-{vol}.cow")

    def _cow(self, file: int, vol: int, create: bool = False):
        """The COW file of snapshot `file` and volume `vol`; `create` makes it
        from a spare when there is one (the caller syncs the directory)."""
        key = (file, vol)
        handle = self._cow_handles.get(key)
        if handle is None:
            path = self._cow_path(file, vol)
            if create and self._spares and not self.fs.exists(path):
                name = max(self._spares, key=lambda n: (self._spares[n], n))
                del self._spares[name]
                self.fs.rename(os.path.join(self.path, COW_DIR, name), path)
            handle = self.fs.open(path, create=create)
            self._cow_handles[key] = handle
        return handle

    def _recover_records(self, epoch: int) -> int:
        """At open: the rows of COW-file records past the committed tails,
        written by the last process (`epoch`) and never committed to SQLite,
        are committed now. This process writes its records with the next
        epoch, stored before its first record (here if rows were found, else
        in `_preserve`), so records this recovery did not keep can never be
        taken later; a process that writes no record (`blockmirror info`)
        changes nothing. Returns the new epoch."""
        cow_dir = os.path.join(self.path, COW_DIR)
        rows, tails = [], {}
        for name in self.fs.listdir(cow_dir):
            m = _COW_RE.match(name)
            if not m:
                continue
            key = file, vid = int(m.group(1)), int(m.group(2))
            self._dir_durable.add(key)  # listed at open: its entry is on disk
            if file not in self._snapshots or vid not in self._by_id:
                continue  # only a live snapshot's file can hold uncommitted records
            block = start = self._next_slot.get(key, 0)
            cow = self.fs.open(os.path.join(cow_dir, name))
            try:
                while (rec := cowlog.read_record(cow, block, file, vid, epoch, self.chunk_size)) is not None:
                    found, block = rec
                    rows += [(file, vid, chunk, file, slot) for chunk, slot in found]
            finally:
                cow.close()
            if block != start:
                tails[key] = block
        self._epoch_stored = False
        if tails:
            with self.meta.transaction("recover") as conn:
                conn.executemany("INSERT OR IGNORE INTO exceptions (snap, vol, chunk, file, slot) "
                                 "VALUES (?, ?, ?, ?, ?)", rows)
                conn.executemany("INSERT OR REPLACE INTO cow_files (file, vol, next_slot) VALUES (?, ?, ?)",
                                 [(f, v, t) for (f, v), t in tails.items()])
                conn.execute("INSERT OR REPLACE INTO node (key, value) VALUES ('cow_epoch', ?)", (epoch + 1,))
            self._epoch_stored = True
        for snap, vid, chunk, _, _ in rows:
            self._tables[snap][vid].add(chunk)
        self._next_slot.update(tails)
        return epoch + 1

    def _commit_rows(self, conn=None) -> None:
        """Move the pending exception rows into SQLite (in `conn`'s open
        transaction, or in one of their own)."""
        if not self._pending:
            return
        if conn is None:
            with self.meta.transaction("exceptions") as conn:
                self._commit_rows(conn)
            return
        conn.executemany("INSERT INTO exceptions (snap, vol, chunk, file, slot) VALUES (?, ?, ?, ?, ?)",
                         [(s, v, c, f, slot) for (s, v, c), (f, slot) in self._pending.items()])
        conn.executemany("INSERT OR REPLACE INTO cow_files (file, vol, next_slot) VALUES (?, ?, ?)",
                         [(f, v, t) for (f, v), t in self._pending_tails.items()])
        self._pending = {}
        self._pending_tails = {}
        self._pending_bytes = 0

    def _lookup(self, snap: int, vol: int, chunk: int) -> tuple[int, int | None]:
        row = self._pending.get((snap, vol, chunk))
        return row if row is not None else self.meta.lookup(snap, vol, chunk)

    def _retire(self, name: str) -> None:
        """A COW file no snapshot uses any more: keep it as a spare if the
        pool has room, else remove it. The caller syncs the directory."""
        cow_dir = os.path.join(self.path, COW_DIR)
        path = os.path.join(cow_dir, name)
        m = _COW_RE.match(name)
        if m:
            key = (int(m.group(1)), int(m.group(2)))
            self._dir_durable.discard(key)
            handle = self._cow_handles.pop(key, None)
            if handle is not None:
                handle.close()
        room = self.spare_limit_bytes - sum(self._spares.values())
        f = self.fs.open(path)
        try:
            size = f.size()
            if size > room >= self.chunk_size:  # keep the part that fits
                size = room // self.chunk_size * self.chunk_size
                f.truncate(size)
        finally:
            f.close()
        if 0 < size <= room and len(self._spares) < SPARES_MAX:
            n = 1 + max((int(m.group(1)) for m in map(_SPARE_RE.match, self._spares) if m), default=0)
            spare = f"spare-{n}.cow"
            self.fs.rename(path, os.path.join(cow_dir, spare))
            self._spares[spare] = size
        else:
            self.fs.unlink(path)

    def _tidy_cow_dir(self) -> None:
        """At open: find the spares, and retire the COW files a crash left
        behind (made before their rows committed, or not yet retired after
        their snapshot's deletion committed)."""
        cow_dir = os.path.join(self.path, COW_DIR)
        names = self.fs.listdir(cow_dir)
        for name in names:
            if _SPARE_RE.match(name):
                f = self.fs.open(os.path.join(cow_dir, name))
                try:
                    self._spares[name] = f.size()
                finally:
                    f.close()
        changed = False
        while sum(self._spares.values()) > self.spare_limit_bytes or len(self._spares) > SPARES_MAX:
            name = min(self._spares, key=lambda n: (self._spares[n], n))
            del self._spares[name]
            self.fs.unlink(os.path.join(cow_dir, name))
            changed = True
        for name in names:
            m = _COW_RE.match(name)
            if _SPARE_RE.match(name) or (m and (int(m.group(1)), int(m.group(2))) in self._next_slot):
                continue
            if m:
                self._retire(name)
            else:
                self.fs.unlink(os.path.join(cow_dir, name))
            changed = True
        if changed:
            self.fs.sync_dir(cow_dir)

    def spare_space(self) -> tuple[int, int]:
        """(files, bytes) of spare COW files kept for the next snapshots."""
        with self._lock:
            return len(self._spares), sum(self._spares.values())

    @property
    def newest_snapshot(self) -> int | None:
        return max(self._snapshots) if self._snapshots else None

    # -- writes ------------------------------------------------------------------
    def write(self, volume: str, offset: int, data, fua: bool = False) -> None:
        self.write_many([WriteOp(volume, offset, data)], fua=fua)

    def write_zeroes(self, volume: str, offset: int, length: int, fua: bool = False) -> None:
        self.write_many([WriteOp(volume, offset, None, length, "zero")], fua=fua)

    def trim(self, volume: str, offset: int, length: int, fua: bool = False) -> None:
        self.write_many([WriteOp(volume, offset, None, length, "trim")], fua=fua)

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
            job = None
            with self._lock:
                self._reap()
                need = self._fresh_chunks(ops) if self._snapshots else None
                if any(j.punches for j in self._jobs):
                    self._drain()  # a queued punch would undo a reservation made now
                if need or self._jobs:
                    # Its overwrites will run behind the caller, after it was told
                    # they completed: they must not fail for lack of space then.
                    self._reserve(ops)
                if need:
                    job = self._preserve(ops, fua, need)
                if job is None and self._jobs:  # behind a queued batch: keep the order
                    job = Job(self.newest_snapshot, ops, fua)
                if job is not None:
                    self._jobs.append(job)
                    self._pipeline.submit(job)
                    self._reap()  # what finished meanwhile (inline: this job)
            if job is None:
                self._apply(ops, fua)
            elif fua:
                self._pipeline.wait(job)
                with self._lock:
                    self._reap()

    def _apply(self, ops: list[WriteOp], fua: bool) -> None:
        touched = {}
        for op in ops:
            vol = self.volumes[op.volume]
            touched[vol.id] = vol
            if op.kind == "write":
                vol.file.pwrite(op.offset, op.data)
            else:
                self._zero_range(vol, op.offset, op.length)
        if fua:
            for vol in touched.values():
                vol.file.sync()

    def _run_job(self, job: Job) -> None:
        """On the pipeline: the records durable, then the overwrites."""
        for cow in job.cows:
            cow.sync()
        if job.dir_sync:
            self.fs.sync_dir(os.path.join(self.path, COW_DIR))
        self._apply(job.ops, job.fua)

    def _reap(self) -> None:
        """Under `_lock`: publish the rows of finished jobs (their records
        are durable); once a job failed, raise that failure."""
        jobs = self._jobs
        while jobs and jobs[0].done.is_set() and jobs[0].error is None:
            job = jobs.popleft()
            self._pending.update(job.rows)
            self._pending_tails.update(job.tails)
            self._pending_bytes += job.nbytes
            self._dir_durable.update(job.created)
        failed = self._pipeline.failed
        if failed is not None:
            if not isinstance(failed, (OSError, NoSpace)):
                raise failed  # a bug, or a test's simulated crash: as it was raised
            raise NodeError(f"a write failed on the disk: {failed}; the writes queued after it were not "
                            f"applied, and this node takes no more I/O",
                            hint="check the disk, then restart the daemon: recovery brings every snapshot "
                                 "back") from failed
        if self._pending_bytes >= PENDING_BYTES_MAX or len(self._pending) >= PENDING_ROWS_MAX:
            self._commit_rows()

    def _drain(self) -> None:
        """Every queued write applied (and its rows published)."""
        if self._jobs or self._pipeline.failed is not None:
            with self._lock:
                self._pipeline.wait()
                self._reap()

    @staticmethod
    def _zero_range(vol: Volume, offset: int, length: int) -> None:
        # Punch whole 4 KiB blocks (keeps the file sparse), write the edges.
        start = -(-offset // VOLUME_ALIGN_BYTES) * VOLUME_ALIGN_BYTES
        end = (offset + length) // VOLUME_ALIGN_BYTES * VOLUME_ALIGN_BYTES
        if end > start:
            if start > offset:
                vol.file.pwrite(offset, bytes(start - offset))
            vol.file.punch(start, end - start)
            if vol.reserved is not None:
                vol.reserved.remove_range(start // VOLUME_ALIGN_BYTES, end // VOLUME_ALIGN_BYTES)
            if offset + length > end:
                vol.file.pwrite(end, bytes(offset + length - end))
        elif length:
            vol.file.pwrite(offset, bytes(length))

    def _fresh_chunks(self, ops: list[WriteOp]) -> dict[int, BitMap]:
        """Per volume id, the chunks these ops touch first since the newest snapshot."""
        tables = self._tables[self.newest_snapshot]
        need: dict[int, BitMap] = {}
        for op in ops:
            vol = self.volumes[op.volume]
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

    def _reserve(self, ops: list[WriteOp]) -> None:
        """Reserve the volume blocks the ops will write (NoSpace now, with
        nothing changed, rather than after the write was acknowledged). A
        zeroing op writes only its partial edge blocks. Blocks reserved once
        are remembered (until punched), so a rewritten range costs no call."""
        a = VOLUME_ALIGN_BYTES
        for op in ops:
            if not op.nbytes:
                continue
            vol = self.volumes[op.volume]
            if vol.reserved is None:  # once per process: what holds data needs no reservation
                vol.reserved = BitMap()
                for off, n in vol.allocated_extents():
                    vol.reserved.add_range(-(-off // a), (off + n) // a)
            first, end = op.offset // a, -(-(op.offset + op.nbytes) // a)
            if op.kind == "write":
                spans = [(first, end)]
            else:  # punches whole blocks, writes only its partial edges
                spans = [(first, first + 1)] if op.offset % a else []
                if (op.offset + op.nbytes) % a:
                    spans.append((end - 1, end))
            for lo, hi in spans:
                if vol.reserved.range_cardinality(lo, hi) != hi - lo:
                    vol.file.allocate(lo * a, (hi - lo) * a)
                    vol.reserved.add_range(lo, hi)

    def _preserve(self, ops: list[WriteOp], fua: bool, need: dict[int, BitMap]) -> Job:
        """Copy-on-write, first half (under `_lock`): write the original of
        every chunk in `need` (those the ops touch first since the newest
        snapshot) to its COW file, as one record per file. The job returned
        syncs them before any overwrite."""
        snap = self.newest_snapshot
        tables = self._tables[snap]
        if self._jobs and self._jobs[0].snap != snap:
            # Batches queued before this snapshot was taken belong to its
            # image: they reach the volume before any original is read for it.
            # (Waiting here, not in the snapshot's pause, keeps the pause short.)
            self._drain()
        if not self._epoch_stored:  # this process's first record: its epoch is stored first
            with self.meta.transaction("epoch") as conn:
                conn.execute("INSERT OR REPLACE INTO node (key, value) VALUES ('cow_epoch', ?)", (self._epoch,))
            self._epoch_stored = True
        job = Job(snap, ops, fua)
        cs = self.chunk_size
        step = cs // cowlog.BLOCK
        total = sum(len(c) for c in need.values()) * cs
        if len(self._read_buf) < total:  # originals are read into one reused buffer
            self._read_buf = memoryview(uninitialized(max(total, 2 * len(self._read_buf))))
        pos = 0
        group_max = max(1, self.writeback_group_bytes // cs)
        for vid, chunks in need.items():
            vol = self._by_id[vid]
            key = (snap, vid)
            chunk_list = list(chunks)
            # One record per COW file: its originals go out in groups, each
            # group's writeback started at once, so the disk works while the
            # next originals are read; the header (with the digest of them
            # all) last; the job syncs everything.
            block = self._next_slot.get(key, 0)
            cow = self._cow(snap, vid, create=True)
            if key not in self._dir_durable:
                job.dir_sync = True
                job.created.append(key)
            at = (block + cowlog.header_blocks(len(chunk_list))) * cowlog.BLOCK
            originals = []
            has_data = []
            group = []
            for chunk in chunk_list:
                original = self._read_buf[pos:pos + cs]
                n = vol.chunk_bytes(chunk)
                vol.file.pread_into(chunk * cs, original[:n])
                if n < cs:  # the short last chunk: pad its slot
                    original[n:] = bytes(cs - n)
                # memoryview == compares byte by byte: test a prefix, then memcmp a copy
                zero = original[:64] == self._zero_chunk[:64] and bytes(original) == self._zero_chunk
                has_data.append(not zero)
                if not zero:
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
            header = cowlog.encode_header(snap, vid, self._epoch, chunk_list, has_data, originals)
            cow.pwrite(block * cowlog.BLOCK, header)
            slot = block + len(header) // cowlog.BLOCK
            for chunk, data in zip(chunk_list, has_data):
                job.rows.append(((snap, vid, chunk), (snap, slot if data else None)))
                slot += step if data else 0
            job.cows.append(cow)
            job.tails[key] = slot
        # The next records go after these (set only now: a failure above
        # leaves the tails where they were, and the next record overwrites
        # what it wrote); the rows and these tails are published once the
        # job has synced them (`_reap`).
        self._next_slot.update(job.tails)
        job.nbytes = pos
        for vid, chunks in need.items():
            tables[vid] |= chunks  # later batches of these chunks copy nothing (and queue behind)
        return job

    def start_writeback(self) -> None:
        """Start writing every volume's dirty data to the disk now, without
        waiting: a later `flush` then has little left to wait for. A hint."""
        self._unkicked_bytes = 0
        for vol in self.volumes.values():
            vol.file.start_writeback(0, vol.size)

    def pace_writeback(self, nbytes: int, every: int) -> None:
        """Count `nbytes` just written; start the writeback once `every`
        bytes were written since it was last started."""
        self._unkicked_bytes += nbytes
        if self._unkicked_bytes >= every:
            self.start_writeback()

    def flush(self) -> None:
        """Every write that completed before this call is on stable storage."""
        self._drain()
        for vol in self.volumes.values():
            vol.file.sync()

    # -- snapshots -------------------------------------------------------------------
    def snapshot(self, label: str = "", rows: Callable[[int], dict] | None = None) -> SnapshotInfo:
        """Steps 64-70: pause writes to every volume, snapshot them all at one
        instant, resume. O(1) in volume size: no data is copied. `state`
        (key/value pairs for the layers above, e.g. the unacknowledged writes
        of step 68) commits atomically with the snapshot.

        The pause holds only the drain of in-flight writes and one metadata
        commit: copy-on-write starts at that commit, and originals are read
        through the page cache, so the image is right from then on. The
        volumes are synced after the writers are let go, and the snapshot is
        then sealed: a crash before the seal may have lost writes that were
        issued (not flushed) before the snapshot, and its image lacks them,
        as the volume does. Its exception table is complete either way."""
        # The bulk of the pending exception rows is committed first, then most
        # dirty data goes out, both before the pause: a writer held up by the
        # rows' commit is not the batch the pause then has to drain.
        with self._lock:
            self._drain()
            self._commit_rows()
        self.flush()
        start = self._monotonic_ns()
        with self.gate.paused():
            with self._lock:
                created = self._clock_ns()
                with self.meta.transaction("snapshot") as conn:
                    self._commit_rows(conn)
                    cur = conn.execute(
                        "INSERT INTO snapshots (label, created_ns, sealed) VALUES (?, ?, 0)", (label, created))
                    snap_id = cur.lastrowid
                    if rows is not None:
                        self._put_state(conn, rows(snap_id))
                self._tables[snap_id] = {v: BitMap() for v in self._by_id}
                pause_ns = self._monotonic_ns() - start
                self._snapshots[snap_id] = SnapshotInfo(snap_id, label, created, pause_ns, False)
        self.flush()
        with self._lock:
            with self.meta.transaction("seal") as conn:
                conn.execute("UPDATE snapshots SET sealed=1, pause_ns=? WHERE id=?", (pause_ns, snap_id))
            if snap_id in self._snapshots:
                info = SnapshotInfo(snap_id, label, created, pause_ns, True)
                self._snapshots[snap_id] = info
        return info

    # -- key/value state of the layers above -----------------------------------------
    @staticmethod
    def _put_state(conn, state: dict) -> None:
        for key, value in state.items():
            if value is None:
                conn.execute("DELETE FROM kv WHERE key=?", (key,))
            else:
                conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def set_state(self, state: dict) -> None:
        """Commit key/value pairs (JSON values; None deletes) in one transaction."""
        with self._lock:
            with self.meta.transaction("state") as conn:
                self._put_state(conn, state)

    def get_state(self, key: str, default=None):
        with self._lock:
            raw = self.meta.get(key)
        return default if raw is None else json.loads(raw)

    def state_keys(self, prefix: str) -> list[str]:
        with self._lock:
            return self.meta.keys(prefix)

    def snapshots(self) -> list[SnapshotInfo]:
        with self._lock:
            return [self._snapshots[s] for s in sorted(self._snapshots)]

    def _check_snapshot(self, snap: int) -> None:
        if snap not in self._snapshots:
            raise SnapshotError(f"no snapshot {snap}",
                                hint="list them with: blockmirror snapshot list DIR")

    def delete_snapshot(self, snap: int) -> None:
        """Removes one snapshot; every other snapshot's image stays the same.
        Its rows for chunks the next older snapshot lacks move to that one
        (that snapshot's image read through them); the rest are dropped."""
        with self._lock:
            self._check_snapshot(snap)
            self._drain()
            older = max((s for s in self._snapshots if s < snap), default=None)
            with self.meta.transaction("delete-snapshot") as conn:
                self._commit_rows(conn)
                files = {(f, v) for v in self._by_id for f in self.meta.files_of(snap, v)}
                if older is not None:
                    conn.execute("UPDATE OR IGNORE exceptions SET snap=? WHERE snap=?", (older, snap))
                conn.execute("DELETE FROM exceptions WHERE snap=?", (snap,))
                conn.execute("DELETE FROM snapshots WHERE id=?", (snap,))
                still_used = set()
                if older is not None:
                    still_used = {(f, v) for v in self._by_id for f in self.meta.files_of(older, v)}
                own = {(snap, v) for v in self._by_id if (snap, v) in self._next_slot}
                dead = (files | own) - still_used
                conn.executemany("DELETE FROM cow_files WHERE file=? AND vol=?", sorted(dead))
            tables = self._tables.pop(snap)
            if older is not None:
                for vid, table in tables.items():
                    self._tables[older][vid] |= table
            del self._snapshots[snap]
            for key in dead:
                self._next_slot.pop(key, None)
                handle = self._cow_handles.pop(key, None)
                if handle is not None:
                    handle.close()
            for key in sorted(dead):
                if self.fs.exists(self._cow_path(*key)):
                    self._retire(os.path.basename(self._cow_path(*key)))
            if dead:
                self.fs.sync_dir(os.path.join(self.path, COW_DIR))

    def diff(self, snap: int) -> dict[str, BitMap]:
        """Chunks changed since `snap`, per volume: the union of the exception
        tables of `snap` and every newer snapshot. Reads no volume data."""
        with self._lock:
            self._check_snapshot(snap)
            newer = [s for s in self._snapshots if s >= snap]
            return {vol.name: BitMap.union(*(self._tables[s][vol.id] for s in newer))
                    for vol in self.volumes.values()}

    def read_snapshot(self, snap: int, volume: str, offset: int, length: int) -> bytes:
        """The bytes of `volume` as they were when `snap` was taken."""
        vol = self.volume(volume)
        vol.check_range(offset, length)
        with self._lock:
            self._check_snapshot(snap)
            self._drain()
            chain = [s for s in sorted(self._snapshots) if s >= snap]
            out = bytearray()
            pos = offset
            end = offset + length
            while pos < end:
                chunk = pos // self.chunk_size
                inner = pos - chunk * self.chunk_size
                n = min(self.chunk_size - inner, end - pos)
                holder = next((s for s in chain if chunk in self._tables[s][vol.id]), None)
                if holder is None:
                    out += vol.file.pread(pos, n)
                else:
                    file, slot = self._lookup(holder, vol.id, chunk)
                    if slot is None:
                        out += bytes(n)
                    else:
                        out += self._cow(file, vol.id).pread(slot * cowlog.BLOCK + inner, n)
                pos += n
            return bytes(out)

    def snapshot_space(self) -> list[SnapshotSpace]:
        with self._lock:
            self._drain()
            self._commit_rows()
            result = []
            for s in sorted(self._snapshots):
                entries, with_data = self.meta.table_space(s)
                result.append(SnapshotSpace(s, entries, with_data * self.chunk_size))
            return result
