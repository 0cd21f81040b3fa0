"""Stateful test of the storage engine against a model: a bytearray per
volume and per snapshot, thousands of random steps on real files."""

import shutil
import tempfile

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, precondition, rule

from blockmirror.errors import OutOfRange
from blockmirror.storage import Node, WriteOp

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
        self.node = Node.create(self.path, dict(SIZES), chunk_size=CHUNK, meta_synchronous="NORMAL",
                                spare_limit_bytes=1 << 20)  # deleted snapshots leave spares to reuse
        self.model = {v: bytearray(s) for v, s in SIZES.items()}
        self.images: dict[int, dict[str, bytes]] = {}
        self.touched: dict[int, dict[str, set[int]]] = {}
        self.counter = 0

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
        self.node.write(vol, offset, data)
        self.model[vol][offset:offset + length] = data
        self._touch(vol, offset, length)

    @rule(ext=extents(), kind=st.sampled_from(["zero", "trim"]), fua=st.booleans())
    def zero(self, ext, kind, fua):
        vol, offset, length = ext
        if kind == "zero":
            self.node.write_zeroes(vol, offset, length, fua=fua)
        else:
            self.node.trim(vol, offset, length, fua=fua)
        self.model[vol][offset:offset + length] = bytes(length)
        self._touch(vol, offset, length)

    @rule(batch=st.lists(extents(), min_size=2, max_size=6))
    def write_batch(self, batch):
        ops = []
        for vol, offset, length in batch:
            data = self._data(length)
            ops.append(WriteOp(vol, offset, data))
            self.model[vol][offset:offset + length] = data
            self._touch(vol, offset, length)
        self.node.write_many(ops)

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
        info = self.node.snapshot(f"s{len(self.images)}")
        self.images[info.id] = {v: bytes(m) for v, m in self.model.items()}
        self.touched[info.id] = {v: set() for v in SIZES}
        return info.id

    @rule(snap=consumes(snaps))
    def delete(self, snap):
        self.node.delete_snapshot(snap)
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
        self.node = Node.open(self.path, meta_synchronous="NORMAL", spare_limit_bytes=1 << 20)

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
