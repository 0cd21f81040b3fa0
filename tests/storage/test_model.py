"""Stateful test of the storage engine against a model: a bytearray per
volume and per snapshot, thousands of random steps on real files; and the
same on the crash-test disk, whose files and metadata store fill up and
free again: a step refused with NoSpace changes nothing, every other step
is exact, and the node goes on once there is room."""

import shutil
import tempfile

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, multiple, precondition, rule

from blockmirror.errors import NoSpace, OutOfRange
from blockmirror.storage import Node, WriteOp
from blockmirror.storage.crashfs import CrashFileSystem

CHUNK = 4096
SIZES = {"v0": 5 * CHUNK, "v1": 3 * CHUNK + 4096}  # v1 ends mid-chunk? no: sizes are 4 KiB multiples
SIZES["v1"] = 4 * CHUNK

volumes = st.sampled_from(sorted(SIZES))


@st.composite
def extents(draw):
    """Offsets biased to the interesting places: chunk borders and the end."""
    vol = draw(volumes)
    size = SIZES[vol]
    kind = draw(st.sampled_from(["any", "border", "end", "whole"]))
    if kind == "border":
        border = draw(st.integers(1, size // CHUNK - 1)) * CHUNK
        offset = border - draw(st.integers(1, 700))
        length = draw(st.integers(2, 1500))
    elif kind == "end":
        length = draw(st.integers(1, 3 * CHUNK))
        offset = size - length
    elif kind == "whole":
        offset, length = 0, size
    else:
        offset = draw(st.integers(0, size - 1))
        length = draw(st.integers(1, 2 * CHUNK))
    length = min(length, size - offset)
    return vol, offset, length


class StorageModel(RuleBasedStateMachine):
    snaps = Bundle("snaps")

    def __init__(self):
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="bm-model-")
        self.path = self.tmp + "/node"
        self.fs = self.make_fs()
        self.node = Node.create(self.path, dict(SIZES), chunk_size=CHUNK, meta_synchronous="NORMAL",
                                spare_limit_bytes=1 << 20, fs=self.fs)  # deleted snapshots leave spares to reuse
        self.model = {v: bytearray(s) for v, s in SIZES.items()}
        self.images: dict[int, dict[str, bytes]] = {}
        self.touched: dict[int, dict[str, set[int]]] = {}
        self.counter = 0

    def make_fs(self):
        return None  # the real filesystem

    def applied(self, step) -> bool:
        """Run a step; False if a full disk refused it (then it changed nothing)."""
        step()
        return True

    def teardown(self):
        self.node.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _touch(self, vol, offset, length):
        chunks = set(range(offset // CHUNK, (offset + length - 1) // CHUNK + 1))
        for t in self.touched.values():
            t[vol] |= chunks

    def _data(self, length):
        self.counter += 1
        pattern = self.counter.to_bytes(4, "little") + b"\xa5"
        return (pattern * (length // len(pattern) + 1))[:length]

    @rule(ext=extents())
    def write(self, ext):
        vol, offset, length = ext
        data = self._data(length)
        if self.applied(lambda: self.node.write(vol, offset, data)):
            self.model[vol][offset:offset + length] = data
            self._touch(vol, offset, length)

    @rule(ext=extents(), kind=st.sampled_from(["zero", "trim"]), fua=st.booleans())
    def zero(self, ext, kind, fua):
        vol, offset, length = ext
        call = self.node.write_zeroes if kind == "zero" else self.node.trim
        if self.applied(lambda: call(vol, offset, length, fua=fua)):
            self.model[vol][offset:offset + length] = bytes(length)
            self._touch(vol, offset, length)

    @rule(batch=st.lists(extents(), min_size=2, max_size=6))
    def write_batch(self, batch):
        ops = [WriteOp(vol, offset, self._data(length)) for vol, offset, length in batch]
        if self.applied(lambda: self.node.write_many(ops)):
            for op in ops:
                self.model[op.volume][op.offset:op.offset + op.nbytes] = op.data
                self._touch(op.volume, op.offset, op.nbytes)

    @rule(vol=volumes, offset=st.integers(-5, 60000), length=st.integers(0, 9000))
    def out_of_range_changes_nothing(self, vol, offset, length):
        size = SIZES[vol]
        if 0 <= offset and offset + length <= size:
            return
        before = self.node.volumes[vol].read(0, size)
        try:
            self.node.write_many([WriteOp("v0", 0, b"must-not-land"), WriteOp(vol, offset, bytes(length))])
        except OutOfRange:
            pass
        else:
            raise AssertionError("out-of-range write accepted")
        assert self.node.volumes[vol].read(0, size) == before
        assert self.node.volumes["v0"].read(0, 13) == bytes(self.model["v0"][:13])

    @rule(target=snaps)
    def snapshot(self):
        infos = []
        if not self.applied(lambda: infos.append(self.node.snapshot(f"s{len(self.images)}"))):
            return multiple()
        info = infos[0]
        self.images[info.id] = {v: bytes(m) for v, m in self.model.items()}
        self.touched[info.id] = {v: set() for v in SIZES}
        return info.id

    @rule(snap=consumes(snaps))
    def delete(self, snap):
        if self.applied(lambda: self.node.delete_snapshot(snap)):  # else kept: the invariant still checks it
            del self.images[snap]
            del self.touched[snap]

    @rule(ext=extents())
    def read_volume(self, ext):
        vol, offset, length = ext
        assert self.node.volumes[vol].read(offset, length) == bytes(self.model[vol][offset:offset + length])

    @rule(snap=snaps, ext=extents())
    def read_snapshot(self, snap, ext):
        vol, offset, length = ext
        got = self.node.read_snapshot(snap, vol, offset, length)
        assert got == self.images[snap][vol][offset:offset + length], f"snapshot {snap} {vol}@{offset}+{length}"

    @precondition(lambda self: self.images)
    @rule()
    def reopen(self):
        self.node.close()
        self.node = Node.open(self.path, meta_synchronous="NORMAL", spare_limit_bytes=1 << 20, fs=self.fs)

    @invariant()
    def snapshots_and_diffs_exact(self):
        assert [s.id for s in self.node.snapshots()] == sorted(self.images)
        for snap, image in self.images.items():
            diff = self.node.diff(snap)
            for vol, size in SIZES.items():
                assert self.node.read_snapshot(snap, vol, 0, size) == image[vol], f"snapshot {snap} {vol}"
                # diff(S) names exactly the chunks written since S: nothing missed, nothing extra.
                assert set(diff[vol]) == self.touched[snap][vol], f"diff({snap}) {vol}"


StorageModel.TestCase.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)
TestStorageModel = StorageModel.TestCase


class StorageModelOnAFillingDisk(StorageModel):
    def make_fs(self):
        return CrashFileSystem(0)

    def applied(self, step) -> bool:
        try:
            step()
        except NoSpace:
            assert self.fs.disk_full or self.fs.meta_full, "NoSpace with room on the disk"
            return False
        return True

    @rule(files=st.booleans(), meta=st.booleans())
    def fill_or_free(self, files, meta):
        self.fs.disk_full, self.fs.meta_full = files, meta

    @precondition(lambda self: self.images)
    @rule()
    def reopen(self):
        self.node.close()  # rows it cannot commit are recovered at the next open
        try:
            self.node = Node.open(self.path, spare_limit_bytes=1 << 20, fs=self.fs)
        except NoSpace:  # its recovery needs a commit: room first
            assert self.fs.meta_full
            self.fs.meta_full = False
            self.node = Node.open(self.path, spare_limit_bytes=1 << 20, fs=self.fs)

    def teardown(self):
        super().teardown()
        self.fs.close()


StorageModelOnAFillingDisk.TestCase.settings = settings(max_examples=500, stateful_step_count=50, deadline=None)
TestStorageModelOnAFillingDisk = StorageModelOnAFillingDisk.TestCase
