"""A snapshot commits the layers' key/value rows with it, keyed by its own
id: after a crash either both the snapshot and its rows exist, or neither."""

import random

from blockmirror.storage import Node
from blockmirror.storage.crashfs import CrashFileSystem, SimulatedCrash

CHUNK = 4096


def _rows(snap):
    return {f"up.base.{snap}": {"snap": snap}, "up.old": None}


def test_rows_are_keyed_by_the_new_snapshot_and_commit_with_it(tmp_path):
    with Node.create(str(tmp_path / "n"), {"v": 8 * CHUNK}, chunk_size=CHUNK) as node:
        node.set_state({"up.old": 1})
        snap = node.snapshot("s", _rows).id
        assert node.get_state(f"up.base.{snap}") == {"snap": snap}
        assert node.get_state("up.old") is None  # None deletes
        assert node.snapshot("t").id == snap + 1 and node.state_keys("up.") == [f"up.base.{snap}"]


def test_a_crash_at_any_step_of_a_snapshot_keeps_it_and_its_rows_together():
    probe = CrashFileSystem(0)
    node = Node.create("/n", {"v": 8 * CHUNK}, chunk_size=CHUNK, fs=probe, meta_synchronous="OFF")
    node.write("v", 0, b"\x01" * CHUNK)
    start = probe.steps
    node.snapshot("s", _rows)
    steps = probe.steps - start
    node.close()
    probe.close()
    assert steps >= 3  # the snapshot's commit, the volume syncs, the seal
    outcomes = set()
    for k in range(steps):
        fs = CrashFileSystem(k)
        node = Node.create("/n", {"v": 8 * CHUNK}, chunk_size=CHUNK, fs=fs, meta_synchronous="OFF")
        node.write("v", 0, b"\x01" * CHUNK)
        fs.crash_at_step = fs.steps + k
        try:
            node.snapshot("s", _rows)
        except SimulatedCrash:
            pass
        node.meta.close()
        fs.crash(random.Random(k))
        with Node.open("/n", fs=fs) as after:
            snaps = [s.id for s in after.snapshots()]
            assert after.state_keys("up.base.") == [f"up.base.{s}" for s in snaps], f"crash at step {k}"
            outcomes.add(len(snaps))
        fs.close()
    assert outcomes == {0, 1}  # crashes before and after the snapshot's commit
