"""The snapshot chain of a node: taking a snapshot of every volume at one
instant (the method's steps 64-70), deleting any snapshot with its rows
merged into the next older one, the diff since a snapshot, and reads of a
snapshot's image.

Only the newest snapshot takes copy-on-write; reading snapshot S at a chunk
looks at S's exception table, then the newer ones', then the volume.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

from pyroaring import BitMap

from blockmirror.errors import NoSpace, SnapshotError
from blockmirror.storage import cowlog
from blockmirror.storage.cowpool import CowPool
from blockmirror.storage.metadata import MetaStore
from blockmirror.storage.tables import ExceptionTables
from blockmirror.storage.volume import Volume
from blockmirror.storage.writepath import WritePath

log = logging.getLogger(__name__)

# Key/value rows a snapshot commits with it, given the new snapshot's id.
SnapshotRows = Callable[[int], dict]


@dataclass(frozen=True)
class SnapshotInfo:
    id: int
    label: str
    created_ns: int
    pause_ns: int  # how long writers were kept out (drain + metadata commit)
    sealed: bool = True  # False only after a crash between its commit and its volume sync
    internal: bool = False  # taken by an engine for itself (a resync base, ...), not by a user


@dataclass(frozen=True)
class SnapshotSpace:
    id: int
    exceptions: int  # preserved chunks, all volumes
    data_bytes: int  # bytes of preserved data held (zero chunks hold none)


class SnapshotChain:
    def __init__(self, meta: MetaStore, lock: threading.RLock, writes: WritePath,
                 tables: ExceptionTables, pool: CowPool, volumes: dict[str, Volume],
                 chunk_size: int, clock_ns: Callable[[], int], monotonic_ns: Callable[[], int]):
        self._meta = meta
        self._lock = lock  # the node's: metadata, tables, COW files
        self._writes = writes
        self._tables = tables
        self._pool = pool
        self._volumes = volumes
        self._vids = [v.id for v in volumes.values()]
        self._chunk_size = chunk_size
        self._clock_ns = clock_ns
        self._monotonic_ns = monotonic_ns
        self.infos: dict[int, SnapshotInfo] = {
            r.id: SnapshotInfo(r.id, r.label, r.created_ns, r.pause_ns, r.sealed, r.internal)
            for r in meta.snapshots()}

    @property
    def newest(self) -> int | None:
        return max(self.infos) if self.infos else None

    def list(self) -> list[SnapshotInfo]:
        with self._lock:
            return [self.infos[s] for s in sorted(self.infos)]

    def check(self, snap: int) -> None:
        if snap not in self.infos:
            raise SnapshotError(f"no snapshot {snap}",
                                hint="list them with: blockmirror snapshot list DIR")

    def take(self, label: str = "", rows: SnapshotRows | None = None, *, internal: bool = False) -> SnapshotInfo:
        """Steps 64-70: pause writes to every volume, snapshot them all at one
        instant, resume. O(1) in volume size: no data is copied. `rows(id)`
        gives key/value pairs for the layers above (JSON values, None
        deletes; e.g. the unacknowledged writes of step 68, keyed by the new
        snapshot's id), committed atomically with the snapshot. `internal`
        marks a snapshot an engine takes for itself (stored in the same row).

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
            self._writes.drain()
            self._tables.commit()
        self._writes.flush()
        start = self._monotonic_ns()
        with self._writes.gate.paused():
            with self._lock:
                created = self._clock_ns()
                with self._tables.transaction("snapshot") as conn:
                    cur = conn.execute(
                        "INSERT INTO snapshots (label, created_ns, sealed, internal) VALUES (?, ?, 0, ?)",
                        (label, created, int(internal)))
                    snap_id = cur.lastrowid
                    if rows is not None:
                        MetaStore.put_state(conn, rows(snap_id))
                self._tables.add_snapshot(snap_id)
                pause_ns = self._monotonic_ns() - start
                self.infos[snap_id] = SnapshotInfo(snap_id, label, created, pause_ns, False, internal)
        self._writes.flush()
        info = SnapshotInfo(snap_id, label, created, pause_ns, True, internal)
        with self._lock:
            try:
                with self._meta.transaction("seal") as conn:
                    conn.execute("UPDATE snapshots SET sealed=1, pause_ns=? WHERE id=?", (pause_ns, snap_id))
            except NoSpace as exc:  # the snapshot is taken, its image complete: only the mark is missing
                log.warning("snapshot %d stays unsealed: %s", snap_id, exc)
                info = SnapshotInfo(snap_id, label, created, pause_ns, False, internal)
            if snap_id in self.infos:
                self.infos[snap_id] = info
        return info

    def delete(self, snap: int) -> None:
        """Removes one snapshot; every other snapshot's image stays the same.
        Its rows for chunks the next older snapshot lacks move to that one
        (that snapshot's image read through them); the rest are dropped."""
        with self._lock:
            self.check(snap)
            self._writes.drain()
            older = max((s for s in self.infos if s < snap), default=None)
            with self._tables.transaction("delete-snapshot") as conn:
                files = {(f, v) for v in self._vids for f in self._meta.files_of(snap, v)}
                if older is not None:
                    conn.execute("UPDATE OR IGNORE exceptions SET snap=? WHERE snap=?", (older, snap))
                conn.execute("DELETE FROM exceptions WHERE snap=?", (snap,))
                conn.execute("DELETE FROM snapshots WHERE id=?", (snap,))
                still_used = set()
                if older is not None:
                    still_used = {(f, v) for v in self._vids for f in self._meta.files_of(older, v)}
                own = {(snap, v) for v in self._vids if (snap, v) in self._pool.tails}
                dead = (files | own) - still_used
                conn.executemany("DELETE FROM cow_files WHERE file=? AND vol=?", sorted(dead))
            self._tables.drop_snapshot(snap, older)
            del self.infos[snap]
            self._pool.release(dead)

    def diff(self, snap: int) -> dict[str, BitMap]:
        """Chunks changed since `snap`, per volume: the union of the exception
        tables of `snap` and every newer snapshot. Reads no volume data."""
        with self._lock:
            self.check(snap)
            newer = [s for s in self.infos if s >= snap]
            return {vol.name: BitMap.union(*(self._tables.chunks[s][vol.id] for s in newer))
                    for vol in self._volumes.values()}

    def read(self, snap: int, volume: str, offset: int, length: int) -> bytes:
        """The bytes of `volume` as they were when `snap` was taken."""
        vol = self._writes.volume(volume)
        vol.check_range(offset, length)
        with self._lock:
            self.check(snap)
            self._writes.drain()
            chain = [s for s in sorted(self.infos) if s >= snap]
            out = bytearray()
            pos = offset
            end = offset + length
            cs = self._chunk_size
            while pos < end:
                chunk = pos // cs
                inner = pos - chunk * cs
                n = min(cs - inner, end - pos)
                holder = self._tables.holder(chain, vol.id, chunk)
                if holder is None:
                    out += vol.file.pread(pos, n)
                else:
                    file, slot = self._tables.lookup(holder, vol.id, chunk)
                    if slot is None:
                        out += bytes(n)
                    else:
                        out += self._pool.file((file, vol.id)).pread(slot * cowlog.BLOCK + inner, n)
                pos += n
            return bytes(out)

    def space(self) -> list[SnapshotSpace]:
        """Preserved chunks and bytes per snapshot (rows in SQLite and pending)."""
        with self._lock:
            self._writes.drain()
            result = []
            for s in sorted(self.infos):
                entries, with_data = self._meta.table_space(s)
                pending, pending_data = self._tables.pending_space(s)
                result.append(SnapshotSpace(s, entries + pending, (with_data + pending_data) * self._chunk_size))
            return result
