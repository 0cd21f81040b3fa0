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
import logging

from pyroaring import BitMap

from blockmirror.errors import NoSpace
from blockmirror.storage.metadata import MetaStore

log = logging.getLogger(__name__)

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
        # Pending rows are due for a commit at these marks, moved on while
        # the metadata store is full.
        self._due_rows = PENDING_ROWS_MAX
        self._due_bytes = PENDING_BYTES_MAX

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

    def pending_space(self, snap: int) -> tuple[int, int]:
        """(rows, rows holding data) of `snap` not yet in SQLite."""
        rows = [slot for (s, _, _), (_, slot) in self._pending.items() if s == snap]
        return len(rows), sum(1 for slot in rows if slot is not None)

    def commit_due(self) -> None:
        """Commit the pending rows if there are enough of them. A full
        metadata store refuses nothing here: the rows stay pending (durable
        in their records) and are tried again once as many more came."""
        if self._pending_bytes < self._due_bytes and len(self._pending) < self._due_rows:
            return
        try:
            self.commit()
        except NoSpace as exc:
            log.warning("%s: %d exception rows stay in their COW records until a later commit",
                        exc, len(self._pending))
            self._due_rows = len(self._pending) + PENDING_ROWS_MAX
            self._due_bytes = self._pending_bytes + PENDING_BYTES_MAX

    def commit(self) -> None:
        """The pending rows into SQLite, in a transaction of their own."""
        if self._pending:
            with self.transaction("exceptions"):
                pass

    @contextlib.contextmanager
    def transaction(self, what: str):
        """A metadata transaction that commits the pending rows too. They
        are forgotten only once it committed: a failed commit (a full disk)
        keeps them for the next one."""
        pending, count = self._pending, len(self._pending)
        with self._meta.transaction(what) as conn:
            if pending:
                conn.executemany("INSERT INTO exceptions (snap, vol, chunk, file, slot) VALUES (?, ?, ?, ?, ?)",
                                 [(s, v, c, f, slot) for (s, v, c), (f, slot) in pending.items()])
                conn.executemany("INSERT OR REPLACE INTO cow_files (file, vol, next_slot) VALUES (?, ?, ?)",
                                 [(f, v, t) for (f, v), t in self._pending_tails.items()])
            yield conn
        assert self._pending is pending and len(pending) == count, "rows published during their commit"
        if pending:
            self._pending = {}
            self._pending_tails = {}
            self._pending_bytes = 0
        self._due_rows = PENDING_ROWS_MAX
        self._due_bytes = PENDING_BYTES_MAX
