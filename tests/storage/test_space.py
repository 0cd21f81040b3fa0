"""What a snapshot holds and what taking it cost are accounted and reported:
preserved chunks and their bytes per snapshot (an all-zero original holds
none), the pause of each snapshot, in the API and in `blockmirror info`."""

import json
import subprocess
import sys

from blockmirror.storage import Node, WriteOp

CHUNK = 4096
SIZE = 64 * CHUNK


def test_each_snapshot_accounts_its_preserved_chunks_and_bytes(tmp_path):
    path = str(tmp_path / "n")
    with Node.create(path, {"a": SIZE, "b": SIZE}, chunk_size=CHUNK) as node:
        node.write_many([WriteOp("a", 0, b"\x01" * 32 * CHUNK), WriteOp("b", 0, b"\x01" * 32 * CHUNK)])
        s1 = node.snapshot("s1")
        assert s1.pause_ns > 0
        # 10 chunks of data and 2 holes (all-zero originals) on a, 3 on b; the
        # second write to a chunk preserves nothing more.
        node.write_many([WriteOp("a", c * CHUNK, b"\x02" * CHUNK) for c in range(10)]
                        + [WriteOp("a", 40 * CHUNK, b"\x02" * 2 * CHUNK), WriteOp("b", 5 * CHUNK, b"\x02" * 3 * CHUNK)])
        node.write("a", 0, b"\x03" * 100)
        s2 = node.snapshot("s2")
        node.write_many([WriteOp("b", 0, b"\x04" * CHUNK)])  # queued first write: counted too
        space = {s.id: s for s in node.snapshot_space()}
        assert (space[s1.id].exceptions, space[s1.id].data_bytes) == (15, 13 * CHUNK)
        assert (space[s2.id].exceptions, space[s2.id].data_bytes) == (1, CHUNK)
        assert [s.pause_ns for s in node.snapshots()] == [s1.pause_ns, s2.pause_ns]
    run = [sys.executable, "-m", "blockmirror", "info", path]
    out = json.loads(subprocess.run(run + ["--json"], capture_output=True, text=True, check=True).stdout)
    got = {s["label"]: (s["exceptions"], s["space_bytes"], s["pause_ns"]) for s in out["snapshots"]}
    assert got == {"s1": (15, 13 * CHUNK, s1.pause_ns), "s2": (1, CHUNK, s2.pause_ns)}
    text = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    assert any(line.split()[:5] == [str(s1.id), "user", "s1", "15", "52"] for line in text.splitlines()), text
    with Node.open(path) as node:  # deleting s1 drops what only it held
        node.delete_snapshot(s1.id)
        assert [(s.id, s.exceptions, s.data_bytes) for s in node.snapshot_space()] == [(s2.id, 1, CHUNK)]


def test_info_on_a_stopped_node_changes_nothing(tmp_path):
    """An inspection reads: the metadata store is byte for byte the same
    after `blockmirror info` (its recovery epoch moves on only when a
    process writes a COW record)."""
    import hashlib
    import os

    path = str(tmp_path / "n")
    with Node.create(path, {"a": SIZE}, chunk_size=CHUNK) as node:
        node.write("a", 0, b"\x01" * SIZE)
        node.snapshot("s1")
        node.write("a", 0, b"\x02" * 3 * CHUNK)
    db = os.path.join(path, "blockmirror.db")

    def digest():
        with open(db, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    before = digest()
    for _ in range(2):
        subprocess.run([sys.executable, "-m", "blockmirror", "info", path], capture_output=True, check=True)
    assert digest() == before
    with Node.open(path) as node:  # a first write stores the new epoch, then its record
        node.write("a", 10 * CHUNK, b"\x03" * CHUNK)
        assert node.read_snapshot(node.snapshots()[0].id, "a", 10 * CHUNK, CHUNK) == b"\x01" * CHUNK
    assert digest() != before
