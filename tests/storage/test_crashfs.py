"""The crash-test disk's files are sparse: a full disk refuses what needs a
new 4 KiB block (a write into a hole, an allocate) before any byte changes,
not only what grows a file; a punch frees blocks; the extents are the
allocated blocks; a crash keeps the allocation of what survived."""

import random

import pytest

from blockmirror.errors import NoSpace
from blockmirror.storage.crashfs import CrashFileSystem

B = 4096


def _file(size=8 * B):
    fs = CrashFileSystem(0)
    fs.makedirs("/d")
    f = fs.open("/d/f", create=True)
    f.truncate(size)
    f.sync()
    fs.sync_dir("/d")
    return fs, f


def test_a_full_disk_refuses_a_write_into_a_hole_and_changes_nothing():
    fs, f = _file()
    f.pwrite(0, b"\x01" * 2 * B)
    f.sync()
    fs.disk_full = True
    f.pwrite(100, b"\x02" * (2 * B - 200))  # over allocated blocks: no new space needed
    with pytest.raises(NoSpace, match="disk full while writing /d/f"):
        f.pwrite(2 * B - 10, b"\x03" * 20)  # its second block is a hole
    with pytest.raises(NoSpace):
        f.pwrite(8 * B, b"\x03")  # growing the file needs a block too
    assert f.pread(0, 3 * B) == b"\x01" * 100 + b"\x02" * (2 * B - 200) + b"\x01" * 100 + bytes(B)
    assert f.size() == 8 * B
    with pytest.raises(NoSpace, match="reserving space"):
        f.allocate(0, 3 * B)
    fs.disk_full = False
    f.allocate(4 * B, 2 * B)  # reserved: a later write there needs no space
    fs.disk_full = True
    f.pwrite(4 * B + 1, b"\x04" * (2 * B - 2))
    assert f.data_extents(0, 8 * B) == [(0, 2 * B), (4 * B, 2 * B)]
    f.punch(0, B)  # frees its block: writing there needs space again
    with pytest.raises(NoSpace):
        f.pwrite(0, b"\x05")
    assert f.pread(0, B) == bytes(B) and f.data_extents(0, 8 * B) == [(B, B), (4 * B, 2 * B)]
    fs.close()


def test_extents_are_the_allocated_blocks_even_when_they_hold_zeroes():
    fs, f = _file()
    f.pwrite(3 * B + 5, bytes(10))  # zeroes written: allocated, as on a real filesystem
    f.pwrite(5 * B, b"\x01" * (B + 1))
    assert f.data_extents(0, 8 * B) == [(3 * B, B), (5 * B, 2 * B)]
    assert f.data_extents(3 * B + 100, 3 * B) == [(3 * B + 100, B - 100), (5 * B, B + 100)]
    f.truncate(6 * B)  # frees the blocks past the end
    assert f.data_extents(0, 8 * B) == [(3 * B, B), (5 * B, B)]
    fs.close()


def test_a_crash_keeps_the_allocation_of_what_survived():
    outcomes = set()
    for seed in range(40):
        fs, f = _file()
        f.pwrite(0, b"\x01" * B)
        f.sync()
        f.pwrite(2 * B, b"\x02" * B)  # unsynced: dropped, kept or torn
        f.punch(0, B)  # unsynced: dropped, kept, or torn (then its block stays)
        fs.crash(random.Random(seed))
        f = fs.open("/d/f")
        allocated = {off // B for off, n in f.data_extents(0, 8 * B) for off in range(off, off + n, B)}
        data = f.pread(2 * B, B)
        assert (2 in allocated) == any(data), f"seed {seed}: allocation of the written block"
        assert 1 not in allocated and 3 not in allocated
        if f.pread(0, B) != bytes(B):
            assert 0 in allocated, f"seed {seed}: data in a freed block"
        outcomes.add((2 in allocated, 0 in allocated))
        fs.disk_full = True
        if 2 in allocated:
            f.pwrite(2 * B, b"\x03")  # a surviving block needs no space
        else:
            with pytest.raises(NoSpace):
                f.pwrite(2 * B, b"\x03")
        fs.close()
    assert outcomes == {(False, False), (False, True), (True, False), (True, True)}


def test_a_clone_copies_the_allocation():
    fs, f = _file()
    f.pwrite(B, b"\x01" * B)
    c = fs.clone(1)
    c.disk_full = True
    g = c.open("/d/f")
    g.pwrite(B, b"\x02")
    with pytest.raises(NoSpace):
        g.pwrite(0, b"\x02")
    assert f.pread(B, 1) == b"\x01"
    fs.close()
    c.close()


def test_a_file_renamed_twice_before_a_directory_sync_keeps_one_name_at_a_crash():
    seen = set()
    for seed in range(20):
        fs, f = _file()
        f.pwrite(0, b"\x01" * B)
        f.sync()
        fs.rename("/d/f", "/d/g")
        fs.rename("/d/g", "/d/h")  # e.g. a spare taken by a refused write, then retired again
        fs.crash(random.Random(seed))
        names = fs.listdir("/d")
        assert names in (["f"], ["h"]), f"seed {seed}: {names}"
        assert fs.open("/d/" + names[0]).pread(0, B) == b"\x01" * B
        seen.add(names[0])
        fs.close()
    assert seen == {"f", "h"}
