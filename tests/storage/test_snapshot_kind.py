"""A snapshot is internal (an engine took it for itself: a resync base, a
round's target or safety snapshot) or a user's, and stays so: the flag is
stored with the snapshot, and a store of format 2 (which had no such column)
is upgraded at open with the engines' snapshots marked internal."""

import os
import sqlite3

from blockmirror.storage import Node
from blockmirror.storage.crashfs import CrashFileSystem, SimulatedCrash
from blockmirror.storage.metadata import DB_NAME, FORMAT_VERSION

CHUNK = 4096
# The labels the engines gave their snapshots when the store was at format 2.
ENGINE_SNAPSHOTS = ("link-down", "restart", "resync-target", "resync-safety")


def _kinds(node) -> dict[str, bool]:
    return {s.label: s.internal for s in node.snapshots()}


def _columns(conn) -> set[str]:
    return {r[1] for r in conn.execute("PRAGMA table_info(snapshots)")}


def _as_format_2(conn: sqlite3.Connection) -> None:
    """What format 2 wrote: the snapshots table without `internal`."""
    with conn:
        conn.execute("ALTER TABLE snapshots DROP COLUMN internal")
        conn.execute("UPDATE node SET value=2 WHERE key='format_version'")
    assert "internal" not in _columns(conn)


def test_the_kind_is_kept_across_close_and_open(tmp_path):
    path = str(tmp_path / "n")
    with Node.create(path, {"v": 16 * CHUNK}, chunk_size=CHUNK) as node:
        node.write("v", 0, b"a" * CHUNK)
        base = node.snapshot("link-down", internal=True)
        node.write("v", 0, b"b" * CHUNK)
        mine = node.snapshot("before-upgrade")
        gone = node.snapshot("resync-target", internal=True)
        assert base.internal and not mine.internal and gone.internal
        assert _kinds(node) == {"link-down": True, "before-upgrade": False, "resync-target": True}
        node.delete_snapshot(gone.id)  # the engines delete their own snapshots as before
    with Node.open(path) as node:
        assert [(s.id, s.label, s.internal) for s in node.snapshots()] == [
            (base.id, "link-down", True), (mine.id, "before-upgrade", False)]
        assert node.read_snapshot(base.id, "v", 0, CHUNK) == b"a" * CHUNK


def test_a_format_2_store_is_upgraded_with_the_engines_snapshots_internal(tmp_path):
    path = str(tmp_path / "n")
    labels = ("manual", *ENGINE_SNAPSHOTS, "before-upgrade")
    with Node.create(path, {"v": 16 * CHUNK}, chunk_size=CHUNK) as node:
        ids = {}
        for i, label in enumerate(labels):
            node.write("v", 0, bytes([i + 1]) * CHUNK)
            ids[label] = node.snapshot(label).id  # format 2 knew no kind
        node.write("v", 0, b"z" * CHUNK)
    conn = sqlite3.connect(os.path.join(path, DB_NAME))
    _as_format_2(conn)
    conn.close()
    with Node.open(path) as node:
        assert node.meta.node_info()["format_version"] == FORMAT_VERSION == 3
        kinds = _kinds(node)
        assert {label for label, internal in kinds.items() if internal} == set(ENGINE_SNAPSHOTS)
        assert kinds["manual"] is False and kinds["before-upgrade"] is False
        # The images are untouched by the upgrade.
        for i, label in enumerate(labels):
            assert node.read_snapshot(ids[label], "v", 0, CHUNK) == bytes([i + 1]) * CHUNK, label
        # New snapshots store their kind in the added column.
        assert node.snapshot("after", internal=True).internal
    conn = sqlite3.connect(os.path.join(path, DB_NAME))
    assert "internal" in _columns(conn)
    conn.close()
    with Node.open(path) as node:
        assert _kinds(node) == {**kinds, "after": True}


def test_a_crash_during_the_upgrade_leaves_a_store_the_next_open_upgrades():
    outcomes, crashes = set(), []
    for k in range(20):
        fs = CrashFileSystem(k)
        with Node.create("/n", {"v": 8 * CHUNK}, chunk_size=CHUNK, fs=fs, meta_synchronous="OFF") as node:
            node.snapshot("link-down")
            node.snapshot("manual")
        conn = sqlite3.connect(fs.meta_uri("/n/" + DB_NAME, create=False), uri=True)
        _as_format_2(conn)
        conn.close()
        fs.crash_at_step = fs.steps + k
        try:
            with Node.open("/n", fs=fs):
                pass
            crashed = False
        except SimulatedCrash as exc:
            crashed = True
            crashes.append(str(exc))
        fs.crash()
        fs.crash_at_step = None
        with Node.open("/n", fs=fs) as after:
            assert _kinds(after) == {"link-down": True, "manual": False}, f"crash at step {k}"
            assert after.meta.node_info()["format_version"] == FORMAT_VERSION
        fs.close()
        outcomes.add(crashed)
        if not crashed:
            break
    assert outcomes == {True, False}  # crashes inside the open, then an open that got through
    assert any("upgrade to format 3" in c for c in crashes), crashes
