"""Recovery at open: exception rows that are durable in COW records but
were never committed to SQLite (the process died first) are committed now.

Each process writes its records with its own epoch, one more than the last
process's. Recovery keeps the records of the last epoch past each file's
committed tail and stores the new epoch with their rows; a process that
found none stores its epoch before its first record (`RecordEpoch.store`).
So a record that a recovery did not keep (torn, or past a torn one) can
never be taken by a later recovery, and a process that writes no record
(`blockmirror info`) changes nothing.
"""

from __future__ import annotations

from blockmirror.storage import cowlog
from blockmirror.storage.cowpool import CowPool, cow_key
from blockmirror.storage.metadata import MetaStore
from blockmirror.storage.tables import ExceptionTables


class RecordEpoch:
    """The epoch this process writes its COW records with."""

    def __init__(self, value: int, stored: bool):
        self.value = value
        self.stored = stored

    def store(self, meta: MetaStore) -> None:
        """Before this process's first record."""
        if not self.stored:
            with meta.transaction("epoch") as conn:
                conn.execute("INSERT OR REPLACE INTO node (key, value) VALUES ('cow_epoch', ?)", (self.value,))
            self.stored = True


def recover_records(meta: MetaStore, pool: CowPool, tables: ExceptionTables, live: set[int], vids: set[int],
                    last_epoch: int, chunk_size: int) -> RecordEpoch:
    """Commit the rows of the last process's records past the committed
    tails of the live snapshots' COW files; returns this process's epoch."""
    rows, tails = [], {}
    names = pool.names()
    if any(cow_key(name) for name in names):
        # After a process death a file's entry may be only in the page cache:
        # on disk before anything relies on it (rows committed here or later),
        # or a power failure could drop the file under committed rows.
        pool.sync_dir()
    for name in names:
        key = cow_key(name)
        if key is None:
            continue
        pool.entries_synced([key])  # listed at open, and the directory synced: its entry is on disk
        file, vid = key
        if file not in live or vid not in vids:
            continue  # only a live snapshot's file can hold uncommitted records
        block = start = pool.tail(key)
        cow = pool.fs.open(pool.path(key))
        try:
            while (rec := cowlog.read_record(cow, block, file, vid, last_epoch, chunk_size)) is not None:
                found, block = rec
                rows += [(file, vid, chunk, file, slot) for chunk, slot in found]
            if block != start:
                # After a process death the records may be only in the page
                # cache: durable before their rows are, or a crash would keep
                # rows that point at lost data.
                cow.sync()
        finally:
            cow.close()
        if block != start:
            tails[key] = block
    epoch = RecordEpoch(last_epoch + 1, stored=False)
    if tails:
        with meta.transaction("recover") as conn:
            conn.executemany("INSERT OR IGNORE INTO exceptions (snap, vol, chunk, file, slot) "
                             "VALUES (?, ?, ?, ?, ?)", rows)
            conn.executemany("INSERT OR REPLACE INTO cow_files (file, vol, next_slot) VALUES (?, ?, ?)",
                             [(f, v, t) for (f, v), t in tails.items()])
            conn.execute("INSERT OR REPLACE INTO node (key, value) VALUES ('cow_epoch', ?)", (epoch.value,))
        epoch.stored = True
    for snap, vid, chunk, _, _ in rows:
        tables.chunks[snap][vid].add(chunk)
    pool.tails.update(tails)
    return epoch
