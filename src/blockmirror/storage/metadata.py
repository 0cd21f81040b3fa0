"""The metadata store: SQLite in WAL mode.

Holds the node's identity, its volumes, the snapshot chain, the exception
tables (chunk -> where its preserved data lives) and a small key/value space
for the layers above (pairing, generations). Each commit goes through the
filesystem (`FileSystem.meta_commit`: one I/O step for crash tests); SQLite
itself makes a commit atomic and, with synchronous=FULL, durable when it
returns.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass
from typing import Callable

from pyroaring import BitMap

from blockmirror.errors import NodeError, NoSpace

# 2: COW slots in 4 KiB blocks, records with headers; 3: snapshots.internal.
# A format-2 store is upgraded to 3 at open (`MetaStore.upgrade`).
FORMAT_VERSION = 3
DB_NAME = "blockmirror.db"

# The labels the engines of format 2 gave their own snapshots (engine/primary.py
# and engine/secondary_store.py), which did not record a snapshot's kind: the
# upgrade marks a format-2 store's rows with one of them internal (a user's
# snapshot that was labelled so too: `snapshot delete --force` deletes it).
# Fixed: snapshots of format 3 store their kind.
FORMAT_2_ENGINE_LABELS = ("link-down", "restart", "resync-target", "resync-safety")

_SCHEMA = """
CREATE TABLE node (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE volumes (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    uuid TEXT NOT NULL UNIQUE,
    size_bytes INTEGER NOT NULL
);
-- AUTOINCREMENT: an id is never reused; COW files are named by it.
CREATE TABLE snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    label TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    pause_ns INTEGER NOT NULL DEFAULT 0,
    -- 0 until every volume was synced after the snapshot: a crash before that
    -- may have lost writes issued (not flushed) before it, so its image can
    -- lack them; its exception table is complete either way.
    sealed INTEGER NOT NULL DEFAULT 1,
    -- 1: an engine took it for itself (a resync base for one); 0: a user did.
    -- Written by the INSERT that creates the snapshot. Format 3: the upgrade
    -- adds it to a format 2 store. (No comma in this comment: SQLite's DROP
    -- COLUMN would take it for the one before the column.)
    internal INTEGER NOT NULL DEFAULT 0
);
-- One row per preserved chunk. `file` names the COW data file (the snapshot
-- that first preserved it: rows move to an older snapshot when a snapshot is
-- deleted, data does not); `slot` is its position there, NULL for a chunk
-- that was all zeroes.
CREATE TABLE exceptions (
    snap INTEGER NOT NULL,
    vol INTEGER NOT NULL,
    chunk INTEGER NOT NULL,
    file INTEGER NOT NULL,
    slot INTEGER,
    PRIMARY KEY (snap, vol, chunk)
) WITHOUT ROWID;
CREATE TABLE cow_files (
    file INTEGER NOT NULL,
    vol INTEGER NOT NULL,
    next_slot INTEGER NOT NULL,
    PRIMARY KEY (file, vol)
) WITHOUT ROWID;
CREATE TABLE kv (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""


def _typed_error(exc: sqlite3.Error, what: str) -> BaseException:
    """The storage's error for an SQLite failure a user can fix."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary result code
    if code == sqlite3.SQLITE_FULL:
        error = NoSpace(f"disk full while committing {what} to the metadata store",
                        hint="free space on the node's filesystem; the node goes on once there is room")
    elif code == sqlite3.SQLITE_IOERR:
        error = NodeError(f"the metadata store failed while committing {what}: {exc}",
                          hint="check the disk, then restart the daemon")
    else:
        return exc  # a programming error: as SQLite raised it
    for note in getattr(exc, "__notes__", ()):
        error.add_note(note)
    return error


@dataclass(frozen=True)
class VolumeRecord:
    id: int
    name: str
    uuid: str
    size_bytes: int


@dataclass(frozen=True)
class SnapshotRecord:
    id: int
    label: str
    created_ns: int
    pause_ns: int
    sealed: bool
    internal: bool = False


class MetaStore:
    def __init__(self, conn: sqlite3.Connection, commit: Callable[[sqlite3.Connection, str], None]):
        self._conn = conn
        self._commit = commit
        self._in_txn = False

    @classmethod
    def connect(cls, uri: str, commit: Callable[[sqlite3.Connection, str], None], create: bool = False,
                synchronous: str = "FULL") -> MetaStore:
        """`uri` is an SQLite URI from `FileSystem.meta_uri` (a file, or a
        shared in-memory database for the simulator); `commit` is the
        filesystem's `meta_commit`."""
        path = uri
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            if create:
                conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise NodeError(f"cannot open metadata store {path}: {exc}") from exc
        return cls(conn, commit)

    def close(self) -> None:
        self._conn.close()

    @contextlib.contextmanager
    def transaction(self, what: str):
        """One atomic, durable change; a crash injected at the commit step
        leaves none of it. A full disk raises NoSpace (SQLITE_FULL) and a
        failing one NodeError (SQLITE_IOERR); nothing of the change is kept."""
        assert not self._in_txn, "nested metadata transaction"
        self._in_txn = True
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            yield self._conn
            self._commit(self._conn, what)
        except BaseException as exc:
            self._roll_back(exc)
            typed = _typed_error(exc, what) if isinstance(exc, sqlite3.Error) else exc
            if typed is not exc:
                raise typed from exc
            raise
        finally:
            self._in_txn = False

    def _roll_back(self, exc: BaseException) -> None:
        # SQLite rolls the transaction back itself on some errors (a full
        # disk, an I/O error): a ROLLBACK then fails with "no transaction is
        # active", which must not hide the error that mattered.
        if not self._conn.in_transaction:
            return
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error as failed:
            exc.add_note(f"and the rollback failed: {failed}")

    # -- node ----------------------------------------------------------------
    def upgrade(self) -> None:
        """Brings a format-2 store to the current format in one transaction
        (a crash leaves it whole at 2 or at 3): adds `snapshots.internal` and
        marks the rows labelled by an engine (FORMAT_2_ENGINE_LABELS)
        internal. Any other format is left for `node_info` to judge."""
        row = self._conn.execute("SELECT value FROM node WHERE key='format_version'").fetchone()
        if row is None or row[0] != 2:
            return
        with self.transaction("upgrade to format 3") as conn:
            columns = {r[1] for r in conn.execute("PRAGMA table_info(snapshots)")}
            if "internal" not in columns:
                conn.execute("ALTER TABLE snapshots ADD COLUMN internal INTEGER NOT NULL DEFAULT 0")
            marks = ",".join("?" * len(FORMAT_2_ENGINE_LABELS))
            conn.execute(f"UPDATE snapshots SET internal=1 WHERE label IN ({marks})", FORMAT_2_ENGINE_LABELS)
            conn.execute("UPDATE node SET value=? WHERE key='format_version'", (FORMAT_VERSION,))

    def node_info(self) -> dict:
        rows = dict(self._conn.execute("SELECT key, value FROM node"))
        if rows.get("format_version") != FORMAT_VERSION:
            raise NodeError(f"unsupported metadata format {rows.get('format_version')!r}")
        return rows

    def volumes(self) -> list[VolumeRecord]:
        return [VolumeRecord(*r) for r in self._conn.execute(
            "SELECT id, name, uuid, size_bytes FROM volumes ORDER BY id")]

    def snapshots(self) -> list[SnapshotRecord]:
        return [SnapshotRecord(r[0], r[1], r[2], r[3], bool(r[4]), bool(r[5])) for r in self._conn.execute(
            "SELECT id, label, created_ns, pause_ns, sealed, internal FROM snapshots ORDER BY id")]

    # -- exception tables ----------------------------------------------------
    def load_table(self, snap: int, vol: int) -> BitMap:
        """The chunk set of one exception table, streamed from the store."""
        cur = self._conn.execute("SELECT chunk FROM exceptions WHERE snap=? AND vol=?", (snap, vol))
        table = BitMap()
        while rows := cur.fetchmany(65536):
            table.update(r[0] for r in rows)
        return table

    def lookup(self, snap: int, vol: int, chunk: int) -> tuple[int, int | None]:
        row = self._conn.execute(
            "SELECT file, slot FROM exceptions WHERE snap=? AND vol=? AND chunk=?", (snap, vol, chunk)
        ).fetchone()
        assert row is not None, f"exception ({snap},{vol},{chunk}) missing"
        return row[0], row[1]

    def cow_files(self) -> dict[tuple[int, int], int]:
        return {(f, v): n for f, v, n in self._conn.execute("SELECT file, vol, next_slot FROM cow_files")}

    def table_space(self, snap: int) -> tuple[int, int]:
        """(entries, entries holding data) of one snapshot over all volumes."""
        row = self._conn.execute(
            "SELECT count(*), count(slot) FROM exceptions WHERE snap=?", (snap,)).fetchone()
        return row[0], row[1]

    def files_of(self, snap: int, vol: int) -> set[int]:
        return {r[0] for r in self._conn.execute(
            "SELECT DISTINCT file FROM exceptions WHERE snap=? AND vol=?", (snap, vol))}

    # -- key/value state of the layers above: JSON values ----------------------
    def get_state(self, key: str, default=None):
        row = self._conn.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def state_keys(self, prefix: str) -> list[str]:
        return [r[0] for r in self._conn.execute(
            "SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key", (prefix, prefix + "\uffff"))]

    @staticmethod
    def put_state(conn: sqlite3.Connection, rows: dict) -> None:
        """In `conn`'s open transaction; a None value deletes its key."""
        for key, value in rows.items():
            if value is None:
                conn.execute("DELETE FROM kv WHERE key=?", (key,))
            else:
                conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, json.dumps(value)))
