"""The real filesystem seam: vectored writes, holes, extents, disk full."""

import os

from blockmirror.storage.fileio import OsFileSystem


def test_pwritev_writes_every_buffer_in_order(tmp_path):
    f = OsFileSystem().open(str(tmp_path / "f"), create=True)
    try:
        buffers = [bytes([i % 251]) * (100 + i) for i in range(3000)]  # more buffers than IOV_MAX
        f.pwritev(4096, buffers)
        assert f.pread(4096, sum(map(len, buffers))) == b"".join(buffers)
        assert f.pread(0, 4096) == bytes(4096)
    finally:
        f.close()


def test_punch_and_extents_keep_the_file_sparse(tmp_path):
    path = str(tmp_path / "f")
    f = OsFileSystem().open(path, create=True)
    try:
        f.truncate(1 << 20)
        f.pwrite(0, b"x" * (256 << 10))
        f.pwrite(768 << 10, b"y" * 4096)
        f.sync()
        assert f.data_extents(0, 1 << 20) == [(0, 256 << 10), (768 << 10, 4096)]
        f.punch(0, 128 << 10)
        assert f.pread(0, 128 << 10) == bytes(128 << 10)
        assert f.pread(128 << 10, 4) == b"xxxx"
        assert os.stat(path).st_blocks * 512 <= (128 << 10) + 4096 + 65536
    finally:
        f.close()


def test_pread_into_fills_the_buffer_and_reads_zeroes_past_the_end(tmp_path):
    f = OsFileSystem().open(str(tmp_path / "f"), create=True)
    try:
        f.pwrite(0, b"\x07" * 4096)
        buf = bytearray(b"\xff" * 4096)
        f.pread_into(2048, memoryview(buf))
        assert buf == b"\x07" * 2048 + bytes(2048)
    finally:
        f.close()


def test_start_writeback_is_a_hint_that_changes_no_byte(tmp_path):
    f = OsFileSystem().open(str(tmp_path / "f"), create=True)
    try:
        f.pwrite(0, b"\x05" * 8192)
        f.start_writeback(0, 8192)
        f.start_writeback(4096, 1 << 30)  # past the end: still harmless
        f.sync()
        assert f.pread(0, 8192) == b"\x05" * 8192
    finally:
        f.close()


def test_allocate_reserves_blocks_and_changes_no_byte(tmp_path):
    """What the write path relies on to refuse a write on a full disk before
    it completes: the reserved range keeps its content (zeroes in a hole, data
    elsewhere) and the file its size, but its blocks now exist."""
    fs = OsFileSystem()
    path = str(tmp_path / "f")
    f = fs.open(path, create=True)
    try:
        f.truncate(1 << 20)
        f.pwrite(0, b"\x07" * 4096)
        blocks = os.stat(path).st_blocks
        f.allocate(0, 256 << 10)
        assert os.stat(path).st_size == 1 << 20
        assert os.stat(path).st_blocks * 512 >= 256 << 10 > blocks * 512
        assert f.pread(0, 256 << 10) == b"\x07" * 4096 + bytes((256 << 10) - 4096)
    finally:
        f.close()


def test_both_filesystems_refuse_a_used_directory_and_a_missing_node(tmp_path):
    """Node.create and Node.open make the same checks through the seam on the
    real filesystem and on the crash-test one (no switch on its type)."""
    import pytest

    from blockmirror.errors import NodeError
    from blockmirror.storage import Node
    from blockmirror.storage.crashfs import CrashFileSystem

    crash = CrashFileSystem(0)
    for fs, root in ((OsFileSystem(), str(tmp_path)), (crash, "/sim")):
        with pytest.raises(NodeError, match="not an initialised blockmirror node"):
            Node.open(root + "/none", fs=fs)
        Node.create(root + "/n", {"v": 1 << 16}, fs=fs).close()
        with pytest.raises(NodeError, match="not an empty directory"):
            Node.create(root + "/n", {"v": 1 << 16}, fs=fs)
        with Node.open(root + "/n", fs=fs) as node:
            assert node.writes.pipeline_mode == fs.pipeline_default
    crash.close()
    with Node.open(str(tmp_path / "n")):
        with pytest.raises(NodeError, match="in use by another blockmirror process"):
            Node.open(str(tmp_path / "n"))
