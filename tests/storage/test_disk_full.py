"""A node on a full disk: a write it refuses with NoSpace changes no volume
byte, a write it completed is never lost, and once there is room again it
works on without a restart."""

import pytest

from blockmirror.errors import NoSpace
from blockmirror.storage import Node, WriteOp
from blockmirror.storage.crashfs import CrashFileSystem

CHUNK = 4096  # one volume block per chunk
SIZE = 16 * CHUNK


@pytest.fixture
def full_node():
    """A node whose volume holds data in chunks 0-7 and holes in 8-15."""
    fs = CrashFileSystem(3)
    node = Node.create("/n", {"v": SIZE}, chunk_size=CHUNK, fs=fs, meta_synchronous="OFF")
    node.write("v", 0, b"\x01" * 8 * CHUNK)
    node.flush()
    yield fs, node
    node.close()
    fs.close()


def test_a_batch_is_refused_whole_or_applied_whole(full_node):
    fs, node = full_node
    vol = node.volumes["v"]
    fs.disk_full = True
    # A trim and, later in the same batch, writes into the blocks it frees:
    # the batch needs no new block, so it goes through.
    node.write_many([WriteOp("v", CHUNK, None, 2 * CHUNK, "trim"), WriteOp("v", CHUNK + 10, b"\x02" * 10),
                     WriteOp("v", 2 * CHUNK + 100, None, 50, "zero")])
    image = bytearray(b"\x01" * 8 * CHUNK + bytes(8 * CHUNK))
    image[CHUNK:3 * CHUNK] = bytes(2 * CHUNK)
    image[CHUNK + 10:CHUNK + 20] = b"\x02" * 10
    assert vol.read(0, SIZE) == image
    # Its last op needs a hole's block: the whole batch is refused, the trim
    # and the write before it included.
    with pytest.raises(NoSpace):
        node.write_many([WriteOp("v", 4 * CHUNK, None, CHUNK, "trim"), WriteOp("v", 0, b"\x03" * 10),
                         WriteOp("v", 9 * CHUNK + 1, b"\x04")])
    assert vol.read(0, SIZE) == image
    fs.disk_full = False  # room again: the node goes on
    node.write("v", 9 * CHUNK + 1, b"\x04")
    image[9 * CHUNK + 1] = 4
    assert vol.read(0, SIZE) == image


def test_first_writes_after_a_snapshot_on_a_full_disk(full_node):
    """The originals cannot be preserved (the COW file needs new blocks):
    refused with nothing changed; the snapshot's image and diff stay exact."""
    fs, node = full_node
    snap = node.snapshot("s").id
    fs.disk_full = True
    with pytest.raises(NoSpace):
        node.write_many([WriteOp("v", 0, b"\x05" * CHUNK)])
    assert node.volumes["v"].read(0, CHUNK) == b"\x01" * CHUNK
    assert set(node.diff(snap)["v"]) == set()
    fs.disk_full = False
    node.write_many([WriteOp("v", 0, b"\x05" * CHUNK)])
    assert node.read_snapshot(snap, "v", 0, 2 * CHUNK) == b"\x01" * 2 * CHUNK
    assert set(node.diff(snap)["v"]) == {0}


def test_a_full_metadata_store_refuses_cleanly_and_keeps_the_pending_rows(full_node, monkeypatch):
    """Commits fail as SQLite's do on a full disk (the transaction already
    rolled back): a typed NoSpace, never "cannot rollback"; the exception
    rows being committed stay in memory (their COW records are durable) and
    a later commit, once there is room, commits them."""
    from blockmirror.storage import tables

    monkeypatch.setattr(tables, "PENDING_ROWS_MAX", 2)  # writes try to commit their rows too
    fs, node = full_node
    s1 = node.snapshot("s1").id
    node.write("v", 7 * CHUNK, b"\x09" * CHUNK)  # this process's first record stores its epoch first
    fs.meta_full = True
    for c in range(6):  # first writes: their rows stay pending, the writes go on
        node.write("v", c * CHUNK, bytes([10 + c]) * CHUNK)
    for call in (lambda: node.snapshot("s2"), lambda: node.delete_snapshot(s1),
                 lambda: node.set_state({"k": 1})):
        with pytest.raises(NoSpace, match="metadata store") as err:
            call()
        assert "rollback" not in str(err.value) + "".join(getattr(err.value, "__notes__", []))
    assert [s.id for s in node.snapshots()] == [s1] and node.get_state("k") is None
    assert node.read_snapshot(s1, "v", 0, 8 * CHUNK) == b"\x01" * 8 * CHUNK
    assert set(node.diff(s1)["v"]) == {0, 1, 2, 3, 4, 5, 7}
    assert [(s.exceptions, s.data_bytes) for s in node.snapshot_space()] == [(7, 7 * CHUNK)]
    fs.meta_full = False  # room again: no restart needed
    s2 = node.snapshot("s2").id  # commits the rows kept
    node.write("v", 0, b"\x20" * CHUNK, fua=True)
    node.meta.close()  # the process dies: what was committed is all there is
    fs.crash()
    with Node.open("/n", fs=fs) as after:
        assert [s.id for s in after.snapshots()] == [s1, s2]
        assert after.read_snapshot(s1, "v", 0, 8 * CHUNK) == b"\x01" * 8 * CHUNK
        assert after.read_snapshot(s2, "v", 0, 6 * CHUNK) == b"".join(bytes([10 + c]) * CHUNK for c in range(6))
        assert after.volumes["v"].read(0, CHUNK) == b"\x20" * CHUNK
    node.close = lambda: None  # already gone


def test_a_full_metadata_store_at_close_loses_nothing(full_node):
    fs, node = full_node
    s1 = node.snapshot("s1").id
    node.write_many([WriteOp("v", c * CHUNK, b"\x07" * CHUNK) for c in range(4)])
    fs.meta_full = True
    node.close()  # its rows cannot be committed: recovered at the next open
    with pytest.raises(NoSpace):
        Node.open("/n", fs=fs)  # recovery must commit them: refused cleanly while full
    fs.meta_full = False
    with Node.open("/n", fs=fs) as after:
        assert set(after.diff(s1)["v"]) == {0, 1, 2, 3}
        assert after.read_snapshot(s1, "v", 0, 8 * CHUNK) == b"\x01" * 8 * CHUNK
    node.close = lambda: None
