"""The exception tables: per snapshot and volume, which chunks the snapshot
preserved, and where each one's original lives.

The chunk sets are pyroaring bitmaps kept in memory (loaded at open), so a
diff reads nothing. The rows (chunk -> COW file and slot) live in SQLite,
except the pending ones: rows whose COW record is durable but that are not
yet committed to SQLite. Those are committed in bulk (what a recovery would
otherwise read back from the COW files after a crash).
"""

from __future__ import annotations

import contextlib

from pyroaring import BitMap

from blockmirror.storage.metadata import MetaStore

# Pending rows are committed once they cover this much data or this many chunks.
PENDING_BYTES_MAX = 256 << 20
PENDING_ROWS_MAX = 4096  # a commit of this many rows takes a few ms (on the writer's path)

Row = tuple[tuple[int, int, int], tuple[int, int | None]]  # ((snap, vol, chunk), (file, slot or None))


class ExceptionTables:
    """Under the node's lock."""

    def __init__(self, meta: MetaStore, snaps, vids):
        self._meta = meta
        self._vids = list(vids)
        self.chunks: dict[int, dict[int, BitMap]] = {
            s: {v: meta.load_table(s, v) for v in self._vids} for s in snaps}
        self._pending: dict[tuple[int, int, int], tuple[int, int | None]] = {}
        self._pending_tails: dict[tuple[int, int], int] = {}  # COW file -> tail its pending rows reach
        self._pending_bytes = 0

    def add_snapshot(self, snap: int) -> None:
        self.chunks[snap] = {v: BitMap() for v in self._vids}

    def drop_snapshot(self, snap: int, older: int | None) -> None:
        """`snap` deleted: its chunks join the next older snapshot's (whose
        image now reads through them)."""
        tables = self.chunks.pop(snap)
        if older is not None:
            for vid, table in tables.items():
                self.chunks[older][vid] |= table

    def holder(self, chain: list[int], vid: int, chunk: int) -> int | None:
        """The first snapshot of `chain` that preserved `chunk` of `vid`."""
        return next((s for s in chain if chunk in self.chunks[s][vid]), None)

    def lookup(self, snap: int, vol: int, chunk: int) -> tuple[int, int | None]:
        """(file, slot) of a preserved chunk; slot None: its original was all zeroes."""
        row = self._pending.get((snap, vol, chunk))
        return row if row is not None else self._meta.lookup(snap, vol, chunk)

    def publish(self, rows: list[Row], tails: dict[tuple[int, int], int], nbytes: int) -> None:
        """Rows whose COW records are now durable."""
        self._pending.update(rows)
        self._pending_tails.update(tails)
        self._pending_bytes += nbytes

    @property
    def pending_due(self) -> bool:
        """Enough pending rows to commit them now."""
        return self._pending_bytes >= PENDING_BYTES_MAX or len(self._pending) >= PENDING_ROWS_MAX

    def commit(self) -> None:
        """The pending rows into SQLite, in a transaction of their own."""
        if self._pending:
            with self.transaction("exceptions"):
                pass

    @contextlib.contextmanager
    def transaction(self, what: str):
        """A metadata transaction that commits the pending rows too."""
        with self._meta.transaction(what) as conn:
            self._store_pending(conn)
            yield conn

    def _store_pending(self, conn) -> None:
        if not self._pending:
            return
        conn.executemany("INSERT INTO exceptions (snap, vol, chunk, file, slot) VALUES (?, ?, ?, ?, ?)",
                         [(s, v, c, f, slot) for (s, v, c), (f, slot) in self._pending.items()])
        conn.executemany("INSERT OR REPLACE INTO cow_files (file, vol, next_slot) VALUES (?, ?, ?)",
                         [(f, v, t) for (f, v), t in self._pending_tails.items()])
        self._pending = {}
        self._pending_tails = {}
        self._pending_bytes = 0
