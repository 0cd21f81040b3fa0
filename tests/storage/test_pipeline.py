"""The first-write pipeline: a batch's overwrites follow its record's sync,
behind the caller. A completed write is visible to every read at once, is
durable after a flush (or at once with FUA), never reaches the volume before
the originals it overwrites are on disk, and a failed sync stops the node
without changing a volume byte."""

import errno
import random

import pytest

from blockmirror.errors import NodeError
from blockmirror.storage import Node, WriteOp
from blockmirror.storage.crashfs import CrashFileSystem

CHUNK = 4096
SIZE = 64 * CHUNK


def _fill(node, byte=1):
    node.write_many([WriteOp("v", c * CHUNK, bytes([byte]) * CHUNK) for c in range(SIZE // CHUNK)])
    node.flush()


def _raw(node, offset, length):
    """The volume file's bytes, past the node (no wait for queued writes)."""
    return node.volumes["v"].file.pread(offset, length)


def test_overwrite_waits_for_the_record_sync_and_the_next_batch_overlaps_it(tmp_path):
    fs = CrashFileSystem(1)
    fs.trace_max = 1 << 16
    node = Node.create(str(tmp_path / "n"), {"v": SIZE}, chunk_size=CHUNK, fs=fs, pipeline="deferred")
    try:
        _fill(node)
        snap = node.snapshot("s").id
        start = len(fs.trace)
        node.write_many([WriteOp("v", 0, b"\x02" * 2 * CHUNK)])  # first writes: queued
        assert _raw(node, 0, CHUNK) == b"\x01" * CHUNK, "overwrite reached the volume before its record's sync"
        node.write_many([WriteOp("v", 4 * CHUNK, b"\x03" * CHUNK)])  # the next batch's record first
        trace = fs.trace[start:]
        cow_writes = [i for i, t in enumerate(trace) if t.startswith("pwrite") and ".cow" in t]
        cow_syncs = [i for i, t in enumerate(trace) if t.startswith("sync") and ".cow" in t]
        vol_writes = [i for i, t in enumerate(trace) if t.startswith("pwrite") and ".img" in t]
        assert len(cow_syncs) == 1 and vol_writes, trace
        # Batch 2's record was written before batch 1's sync (the overlap), and
        # batch 1's overwrite came only after that sync.
        assert max(cow_writes) < cow_syncs[0] < min(vol_writes), trace
        # Every read sees both writes at once; the snapshot keeps the originals.
        assert node.volumes["v"].read(0, 5 * CHUNK) == b"\x02" * 2 * CHUNK + b"\x01" * 2 * CHUNK + b"\x03" * CHUNK
        assert node.read_snapshot(snap, "v", 0, 5 * CHUNK) == b"\x01" * 5 * CHUNK
        assert set(node.diff(snap)["v"]) == {0, 1, 4}
    finally:
        node.close()


@pytest.mark.parametrize("how", ["fua", "flush"])
def test_a_queued_first_write_is_durable_after_fua_or_flush(tmp_path, how):
    fs = CrashFileSystem(2)
    path = str(tmp_path / "n")
    node = Node.create(path, {"v": SIZE}, chunk_size=CHUNK, fs=fs, pipeline="deferred")
    _fill(node)
    snap = node.snapshot("s").id
    node.write("v", 3 * CHUNK, b"\x09" * CHUNK, fua=how == "fua")
    if how == "flush":
        node.flush()
    node.meta.close()  # the process dies here
    fs.crash(random.Random(5))
    with Node.open(path, fs=fs, pipeline="deferred") as after:
        assert after.volumes["v"].read(3 * CHUNK, CHUNK) == b"\x09" * CHUNK
        assert after.read_snapshot(snap, "v", 0, SIZE) == b"\x01" * SIZE
    fs.close()


def test_snapshot_and_delete_take_the_queued_writes_with_them(tmp_path):
    node = Node.create(str(tmp_path / "n"), {"v": SIZE}, chunk_size=CHUNK, pipeline="deferred")
    try:
        _fill(node)
        s1 = node.snapshot("s1").id
        node.write_many([WriteOp("v", 0, b"\x02" * CHUNK)])  # queued
        s2 = node.snapshot("s2").id  # its image holds the queued write
        node.write_many([WriteOp("v", 0, b"\x03" * CHUNK)])
        assert node.read_snapshot(s2, "v", 0, CHUNK) == b"\x02" * CHUNK
        node.write_many([WriteOp("v", CHUNK, b"\x04" * CHUNK)])
        node.delete_snapshot(s2)  # s2's originals move to s1 where s1 lacks them
        assert node.read_snapshot(s1, "v", 0, 2 * CHUNK) == b"\x01" * 2 * CHUNK
        assert node.volumes["v"].read(0, 2 * CHUNK) == b"\x03" * CHUNK + b"\x04" * CHUNK
    finally:
        node.close()


def test_thread_pipeline_keeps_order_and_images_under_mixed_batches(tmp_path):
    """Real files, the worker thread: batches of first writes and rewrites of
    the same chunks, reads in between; all against a model."""
    rng = random.Random(11)
    node = Node.create(str(tmp_path / "n"), {"v": SIZE}, chunk_size=CHUNK, pipeline="thread")
    model = bytearray(SIZE)
    images = {}
    try:
        for step in range(300):
            r = rng.random()
            if r < 0.05:
                images[node.snapshot(f"s{step}").id] = bytes(model)
            elif r < 0.08 and images:
                del_id = rng.choice(sorted(images))
                node.delete_snapshot(del_id)
                del images[del_id]
            elif r < 0.15:
                off = rng.randrange(SIZE - 1)
                n = rng.randrange(1, min(3 * CHUNK, SIZE - off) + 1)
                assert node.volumes["v"].read(off, n) == model[off:off + n], f"step {step}"
            else:
                ops = []
                for _ in range(rng.randrange(1, 9)):
                    off = rng.randrange(SIZE - 1)
                    n = rng.randrange(1, min(2 * CHUNK, SIZE - off) + 1)
                    data = bytes([rng.randrange(256)]) * n
                    ops.append(WriteOp("v", off, data))
                    model[off:off + n] = data
                node.write_many(ops, fua=rng.random() < 0.1)
        assert node.volumes["v"].read(0, SIZE) == model
        for snap, image in images.items():
            assert node.read_snapshot(snap, "v", 0, SIZE) == image
    finally:
        node.close()


class _Faulty:
    """A file on a failing disk: one method raises `exc`, the rest work."""

    def __init__(self, inner, method, exc):
        self._inner = inner
        self._method = method
        self._exc = exc

    def __getattr__(self, name):
        if name == self._method:
            def fail(*args):
                raise self._exc
            return fail
        return getattr(self._inner, name)


def test_a_failed_record_sync_stops_the_node_and_no_overwrite_reaches_the_volume(tmp_path):
    path = str(tmp_path / "n")
    node = Node.create(path, {"v": SIZE}, chunk_size=CHUNK, pipeline="thread")
    _fill(node)
    snap = node.snapshot("s").id
    vid = node.volumes["v"].id
    node.pool._handles[(snap, vid)] = _Faulty(node.pool.file((snap, vid), create=True), "sync",
                                              OSError(errno.EIO, "Input/output error"))
    node.write_many([WriteOp("v", 0, b"\x02" * 4 * CHUNK)])  # queued; its sync fails behind the caller
    with pytest.raises(NodeError, match="a write failed on the disk.*Input/output error"):
        node.flush()  # the first call to wait for it says so
    for call in (node.flush, lambda: node.volumes["v"].read(0, CHUNK),
                 lambda: node.write_many([WriteOp("v", 9 * CHUNK, b"\x04" * CHUNK)])):
        with pytest.raises(NodeError, match="failed on the disk"):
            call()
    assert _raw(node, 0, 10 * CHUNK) == b"\x01" * 10 * CHUNK, "a volume byte changed after the failed sync"
    with pytest.raises(NodeError):
        node.close()  # says so, and still lets go of the node
    with Node.open(path) as after:  # a restart: the snapshot and the volume as they were
        assert after.read_snapshot(snap, "v", 0, SIZE) == b"\x01" * SIZE
        assert after.volumes["v"].read(0, SIZE) == b"\x01" * SIZE
        after.write("v", 0, b"\x05" * CHUNK)
        assert after.read_snapshot(snap, "v", 0, CHUNK) == b"\x01" * CHUNK


def test_a_batch_queued_while_a_snapshot_is_taken_belongs_to_its_image(tmp_path):
    """Writers on other threads: one gets in between the snapshot's pre-pause
    flush and its pause (its batch is still queued when the snapshot is
    taken: the pause does not wait for it), another writes the same chunk
    right after the pause, before the snapshot's closing flush. That first
    write for the new snapshot must preserve the queued batch's data."""
    node = Node.create(str(tmp_path / "n"), {"v": SIZE}, chunk_size=CHUNK, pipeline="deferred")
    try:
        _fill(node)
        node.snapshot("s1")
        real_flush = node.writes.flush  # what the snapshot calls before and after its pause
        calls = []

        def flush_with_writers_around_the_pause():
            calls.append(node.writes.queued())
            if len(calls) == 1:  # before the pause
                real_flush()
                node.write_many([WriteOp("v", 0, b"\x02" * CHUNK)])  # a first write for s1: queued
            else:  # after it
                node.write_many([WriteOp("v", 0, b"\x03" * CHUNK)])  # the first write to chunk 0 for s2
                real_flush()

        node.writes.flush = flush_with_writers_around_the_pause
        s2 = node.snapshot("s2").id
        node.writes.flush = real_flush
        assert calls == [0, 1], "the test's batch was not queued across the pause"
        assert node.read_snapshot(s2, "v", 0, CHUNK) == b"\x02" * CHUNK
        assert node.volumes["v"].read(0, CHUNK) == b"\x03" * CHUNK
    finally:
        node.close()


@pytest.mark.parametrize("pipeline", ["thread", "deferred"])
def test_a_full_disk_refuses_the_write_before_it_completes(tmp_path, pipeline):
    """A write whose overwrite runs behind the caller must not find the disk
    full after it was acknowledged: blocks it would allocate are reserved
    first, so on a full disk a write into a hole is a clean NoSpace, no byte
    changes, and the node goes on; a write over allocated data needs no new
    space and goes through."""
    from blockmirror.errors import NoSpace

    node = Node.create(str(tmp_path / "n"), {"v": SIZE}, chunk_size=CHUNK, pipeline=pipeline)
    try:
        _fill(node)
        node.trim("v", 4 * CHUNK, 4 * CHUNK)  # a hole
        node.flush()
        snap = node.snapshot("s").id
        vol = node.volumes["v"]
        real = vol.file
        vol.file = _Faulty(real, "allocate", NoSpace("disk full while reserving space", hint="free space"))
        node.write_many([WriteOp("v", 0, b"\x05" * CHUNK)])  # over data: no new block needed
        with pytest.raises(NoSpace):
            node.write_many([WriteOp("v", 9 * CHUNK, b"\x02" * CHUNK), WriteOp("v", 5 * CHUNK + 100, b"\x03" * 10)])
        node.flush()
        vol.file = real
        image = b"\x05" * CHUNK + b"\x01" * 3 * CHUNK + bytes(4 * CHUNK) + b"\x01" * (SIZE - 8 * CHUNK)
        assert vol.read(0, SIZE) == image
        assert set(node.diff(snap)["v"]) == {0}, "a refused write left rows behind"
        node.write("v", 5 * CHUNK, b"\x04" * CHUNK)  # space again: the node goes on
        node.flush()
        assert vol.read(5 * CHUNK, CHUNK) == b"\x04" * CHUNK
        assert node.read_snapshot(snap, "v", 0, 8 * CHUNK) == b"\x01" * 4 * CHUNK + bytes(4 * CHUNK)
    finally:
        node.close()
