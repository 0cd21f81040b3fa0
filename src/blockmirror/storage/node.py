"""A node: its volumes, its chain of copy-on-write snapshots, the write path
that keeps every snapshot's image intact, and the key/value state of the
layers above, in one directory (storage/layout.py).

The node owns its parts and their lock: the COW file pool
(storage/cowpool.py), the exception tables (storage/tables.py), the write
path (storage/writepath.py, storage/copyonwrite.py) and the snapshot chain
(storage/snapshots.py); `open` recovers what a crash left
(storage/recovery.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid as uuid_mod
from typing import Callable, Iterable

from pyroaring import BitMap

from blockmirror.errors import NodeError, NoSpace
from blockmirror.storage.copyonwrite import CopyOnWrite
from blockmirror.storage.cowpool import SPARE_FRACTION, CowPool
from blockmirror.storage.fileio import FileLock, FileSystem, OsFileSystem
from blockmirror.storage.gate import WriteGate
from blockmirror.storage.layout import (
    CHUNK_SIZE_DEFAULT,
    COW_DIR,
    LOCK_NAME,
    VOLUME_DIR,
    validate_volume_spec,
)
from blockmirror.storage.metadata import DB_NAME, FORMAT_VERSION, MetaStore
from blockmirror.storage.recovery import recover_records
from blockmirror.storage.snapshots import SnapshotChain, SnapshotInfo, SnapshotRows, SnapshotSpace
from blockmirror.storage.tables import ExceptionTables
from blockmirror.storage.volume import Volume
from blockmirror.storage.writepath import WriteOp, WritePath
log = logging.getLogger(__name__)


class Node:
    """Not re-entrant: never call `snapshot` from inside a write."""

    def __init__(self, path: str, fs: FileSystem, meta: MetaStore, dir_lock: FileLock | None,
                 clock_ns: Callable[[], int], monotonic_ns: Callable[[], int],
                 spare_limit_bytes: int | None = None, pipeline: str | None = None):
        self.path = path
        self.fs = fs
        self.meta = meta
        self._dir_lock = dir_lock  # one process per node directory
        self._lock = threading.RLock()  # metadata, tables, COW files
        info = meta.node_info()
        self.node_uuid: str = info["node_uuid"]
        self.copied_from: str | None = self._check_identity(info)
        self.chunk_size: int = info["chunk_size"]
        self.volumes: dict[str, Volume] = {}
        by_id: dict[int, Volume] = {}
        for rec in meta.volumes():
            vpath = os.path.join(path, VOLUME_DIR, rec.name + ".img")
            vol = Volume(rec.id, rec.name, rec.uuid, rec.size_bytes, self.chunk_size, vpath, fs.open(vpath))
            self.volumes[rec.name] = vol
            by_id[rec.id] = vol
        snapshots = [r.id for r in meta.snapshots()]
        self.tables = ExceptionTables(meta, snapshots, by_id)
        if spare_limit_bytes is None:
            spare_limit_bytes = sum(v.size for v in self.volumes.values()) // SPARE_FRACTION
        self.pool = CowPool(fs, path, self.chunk_size, meta.cow_files(), spare_limit_bytes)
        try:
            epoch = recover_records(meta, self.pool, self.tables, set(snapshots), set(by_id),
                                    int(info.get("cow_epoch", 0)), self.chunk_size)
            self.pool.tidy()
        except BaseException:  # e.g. NoSpace: the recovery's commit found the disk full
            for vol in self.volumes.values():
                vol.file.close()
            self.pool.close()
            raise
        pipeline = pipeline or fs.pipeline_default
        cow = CopyOnWrite(meta, self.pool, self.tables, by_id, epoch, self.chunk_size)
        self.writes = WritePath(self.volumes, self._lock, WriteGate(), cow, self.tables, self.pool,
                                lambda: self.chain.newest, pipeline)
        self.chain = SnapshotChain(meta, self._lock, self.writes, self.tables, self.pool, self.volumes,
                                   self.chunk_size, clock_ns, monotonic_ns)

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
        if fs.exists(path) and (not fs.is_dir(path) or fs.listdir(path)):
            raise NodeError(f"{path} exists and is not an empty directory",
                            hint="choose a new directory for the node")
        fs.makedirs(path)
        db_uri = fs.meta_uri(os.path.join(path, DB_NAME), create=True)
        meta = MetaStore.connect(db_uri, fs.meta_commit, create=True, synchronous=meta_synchronous)
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

    def _check_identity(self, info: dict) -> str | None:
        """A directory copied from another node (or restored from a backup)
        takes a node UUID of its own: it is a new node whose data history
        forks from the original's. Returns the original's UUID if so."""
        now = self.fs.identity(self.path)
        if now is None or info.get("dir_identity") == now:
            return None
        copied = info.get("dir_identity") is not None
        old = self.node_uuid
        with self.meta.transaction("identity") as conn:
            if copied:
                self.node_uuid = str(uuid_mod.uuid4())
                conn.execute("UPDATE node SET value=? WHERE key='node_uuid'", (self.node_uuid,))
            conn.execute("INSERT OR REPLACE INTO node (key, value) VALUES ('dir_identity', ?)", (now,))
        if not copied:
            return None
        log.warning("%s is a copy of node %s (or a restored backup of it): it is a new node %s, its data a "
                    "fork of that node's history", self.path, old, self.node_uuid)
        return old

    @classmethod
    def open(cls, path: str, fs: FileSystem | None = None,
             clock_ns: Callable[[], int] = time.time_ns,
             monotonic_ns: Callable[[], int] = time.perf_counter_ns,
             meta_synchronous: str = "FULL", spare_limit_bytes: int | None = None,
             pipeline: str | None = None) -> Node:
        """`spare_limit_bytes`: how much space spare COW files may keep
        (default: 1/4 of the volumes' total size; 0 keeps none). `pipeline`:
        how first writes' overwrites follow their record's sync (see
        storage/pipeline.py; default: the filesystem's `pipeline_default`)."""
        fs = fs or OsFileSystem()
        db_path = os.path.join(path, DB_NAME)
        if not fs.exists(db_path):
            raise NodeError(f"{path} is not an initialised blockmirror node",
                            hint=f"blockmirror init {path} --volume NAME=SIZE")
        try:
            dir_lock = fs.lock_file(os.path.join(path, LOCK_NAME))
        except BlockingIOError:
            raise NodeError(f"{path} is in use by another blockmirror process",
                            hint=f"blockmirror status {path}") from None
        meta = None
        try:
            meta = MetaStore.connect(fs.meta_uri(db_path, create=False), fs.meta_commit, synchronous=meta_synchronous)
            meta.upgrade()  # a store of an older format, once
            return cls(path, fs, meta, dir_lock, clock_ns, monotonic_ns, spare_limit_bytes, pipeline)
        except BaseException:
            if meta is not None:
                meta.close()
            if dir_lock is not None:
                dir_lock.release()
            raise

    def close(self) -> None:
        """Finish the queued writes, commit the pending rows, let go of the
        node whatever fails (then raised)."""
        with self._lock:
            failure = None
            try:
                self.writes.close()
            except BaseException as exc:  # the rows of the jobs before it are still committed
                failure = exc
            try:
                self.tables.commit()
            except NoSpace as exc:  # nothing is lost: the next open recovers them from their records
                log.warning("%s: the exception rows not committed are recovered at the next open", exc)
            finally:
                for vol in self.volumes.values():
                    vol.file.close()
                self.pool.close()
                self.meta.close()
                if self._dir_lock is not None:
                    self._dir_lock.release()
                    self._dir_lock = None
            if failure is not None:
                raise failure

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- volumes and writes ------------------------------------------------------
    @property
    def gate(self) -> WriteGate:
        """The write gate every writer passes and a snapshot pauses."""
        return self.writes.gate

    @gate.setter
    def gate(self, gate: WriteGate) -> None:  # the benchmark times the pause with its own gate
        self.writes.gate = gate

    def volume(self, name: str) -> Volume:
        return self.writes.volume(name)

    def write(self, volume: str, offset: int, data, fua: bool = False) -> None:
        self.write_many([WriteOp(volume, offset, data)], fua=fua)

    def write_zeroes(self, volume: str, offset: int, length: int, fua: bool = False) -> None:
        self.write_many([WriteOp(volume, offset, None, length, "zero")], fua=fua)

    def trim(self, volume: str, offset: int, length: int, fua: bool = False) -> None:
        self.write_many([WriteOp(volume, offset, None, length, "trim")], fua=fua)

    def write_many(self, ops: Iterable[WriteOp], fua: bool = False) -> None:
        """Apply writes in order; see `WritePath.write_many`."""
        self.writes.write_many(ops, fua)

    def flush(self) -> None:
        """Every write that completed before this call is on stable storage."""
        self.writes.flush()

    def start_writeback(self) -> None:
        self.writes.start_writeback()

    def pace_writeback(self, nbytes: int, every: int) -> None:
        self.writes.pace_writeback(nbytes, every)

    # -- snapshots -------------------------------------------------------------------
    def snapshot(self, label: str = "", rows: SnapshotRows | None = None, *,
                 internal: bool = False) -> SnapshotInfo:
        """Steps 64-70: every volume at one instant, with `rows(snap_id)`
        (key/value state) committed atomically; see `SnapshotChain.take`.
        `internal`: an engine's own snapshot (the CLI refuses to delete it
        without --force); a user's otherwise."""
        return self.chain.take(label, rows, internal=internal)

    def delete_snapshot(self, snap: int) -> None:
        self.chain.delete(snap)

    def diff(self, snap: int) -> dict[str, BitMap]:
        return self.chain.diff(snap)

    def read_snapshot(self, snap: int, volume: str, offset: int, length: int) -> bytes:
        return self.chain.read(snap, volume, offset, length)

    def snapshots(self) -> list[SnapshotInfo]:
        return self.chain.list()

    def snapshot_space(self) -> list[SnapshotSpace]:
        return self.chain.space()

    @property
    def newest_snapshot(self) -> int | None:
        return self.chain.newest

    @property
    def spare_limit_bytes(self) -> int:
        return self.pool.spare_limit_bytes

    def spare_space(self) -> tuple[int, int]:
        """(files, bytes) of spare COW files kept for the next snapshots."""
        with self._lock:
            return self.pool.spare_space()

    # -- key/value state of the layers above -----------------------------------------
    def set_state(self, state: dict) -> None:
        """Commit key/value pairs (JSON values; None deletes) in one transaction."""
        with self._lock:
            with self.meta.transaction("state") as conn:
                MetaStore.put_state(conn, state)

    def get_state(self, key: str, default=None):
        with self._lock:
            return self.meta.get_state(key, default)

    def state_keys(self, prefix: str) -> list[str]:
        with self._lock:
            return self.meta.state_keys(prefix)
