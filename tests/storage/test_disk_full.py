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
