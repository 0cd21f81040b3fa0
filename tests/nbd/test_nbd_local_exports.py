"""The local exports over a storage Node: group commit, durability across a
simulated power cut (the storage's CrashFileSystem), per-request failures."""

import asyncio
import random


from blockmirror.errors import NoSpace
from blockmirror.nbd.local import GroupCommitter, LocalNodeExports
from blockmirror.storage import Node, WriteOp
from blockmirror.storage.crashfs import CrashFileSystem

KiB = 1 << 10
MiB = 1 << 20


def test_concurrent_fua_writes_share_fdatasyncs(tmp_path):
    node = Node.create(str(tmp_path / "node"), {"vol0": 4 * MiB})

    async def main():
        local = LocalNodeExports(node)
        local.start()
        (vol0,) = local.exports
        await asyncio.gather(*(vol0.write(i * 4096, bytes([i % 251 + 1]) * 4096, fua=True) for i in range(256)))
        batches, syncs = local.committer.batches, local.committer.syncs
        data = await vol0.read(0, 256 * 4096)
        await local.close()
        return batches, syncs, data

    batches, syncs, data = asyncio.run(main())
    assert data == b"".join(bytes([i % 251 + 1]) * 4096 for i in range(256))
    assert syncs == batches and syncs <= 16, (batches, syncs)  # not one per write


def power_cut_scenario(tmp_path, seed: int) -> bool:
    """Writes, a flush, a FUA write, an unflushed write, a power cut; asserts
    what must survive and returns whether the unflushed write was lost."""
    fs = CrashFileSystem(seed)
    path = str(tmp_path / "node")
    node = Node.create(path, {"vol0": MiB, "vol1": MiB}, chunk_size=65536, fs=fs)

    async def main():
        local = LocalNodeExports(node)
        local.start()
        vol0, vol1 = local.exports
        await vol1.write(0, b"A" * 4096, fua=False)
        await vol1.write_zeroes(4096, 4096, fua=False, no_hole=False)
        await vol0.flush()  # a flush on any export covers writes completed on every volume
        await vol0.write(8192, b"B" * 4096, fua=True)
        await vol1.write(65536, b"C" * 65536, fua=False)  # never flushed
        await local.committer.close()  # stop without the shutdown flush: then the power goes

    asyncio.run(main())
    fs.crash(random.Random(seed))
    with Node.open(path, fs=fs) as after:
        assert after.volumes["vol1"].read(0, 4096) == b"A" * 4096
        assert after.volumes["vol0"].read(8192, 4096) == b"B" * 4096
        lost = after.volumes["vol1"].read(65536, 65536) != b"C" * 65536
    fs.close()
    return lost


def test_flush_and_fua_survive_a_power_cut_and_unflushed_writes_may_not(tmp_path):
    lost = [power_cut_scenario(tmp_path / str(seed), seed) for seed in range(12)]
    assert any(lost)  # the cut really drops unsynced writes, so the survivors prove the syncs


class FlakyNode:
    """write_many fails with NoSpace for a batch that holds offset 13."""

    def __init__(self):
        self.applied: list[tuple[str, int]] = []
        self.flushes = 0

    def write_many(self, ops, fua=False):
        if any(op.offset == 13 for op in ops):
            raise NoSpace("disk full")
        self.applied += [(op.volume, op.offset) for op in ops]

    def flush(self):
        self.flushes += 1


def test_a_failing_write_in_a_batch_fails_only_itself():
    import concurrent.futures
    node = FlakyNode()

    async def main():
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            committer = GroupCommitter(node, pool)
            committer.start()
            ops = [WriteOp("v", off, b"x", 1, "write") for off in (1, 2, 13, 4, 5)]
            results = await asyncio.gather(*(committer.submit(op, False) for op in ops), committer.submit(None, True),
                                           return_exceptions=True)
            await committer.close()
            return results

    results = asyncio.run(main())
    assert [type(r).__name__ for r in results] == ["NoneType", "NoneType", "NoSpace", "NoneType", "NoneType", "NoneType"]
    assert [off for _, off in node.applied if off != 1] == [2, 4, 5]  # retried in order, 13 never applied
    assert node.flushes >= 1


def test_write_zeroes_with_no_hole_stays_allocated_and_without_it_is_punched(tmp_path):
    node = Node.create(str(tmp_path / "node"), {"vol0": 8 * MiB})

    async def main():
        local = LocalNodeExports(node)
        local.start()
        (vol0,) = local.exports
        await vol0.write(0, b"\x01" * (8 * MiB), fua=False)
        await vol0.write_zeroes(MiB, 2 * MiB, fua=True, no_hole=True)
        await vol0.write_zeroes(4 * MiB, 2 * MiB, fua=True, no_hole=False)
        data = await vol0.read(0, 8 * MiB)
        extents = node.volumes["vol0"].allocated_extents()
        await local.close()
        return data, extents

    data, extents = asyncio.run(main())
    assert data == b"\x01" * MiB + bytes(2 * MiB) + b"\x01" * MiB + bytes(2 * MiB) + b"\x01" * (2 * MiB)
    allocated = set()
    for start, length in extents:
        allocated.update(range(start // MiB, (start + length) // MiB))
    assert allocated == {0, 1, 2, 3, 6, 7}  # NO_HOLE MiBs 1-2 allocated; MiBs 4-5 punched
