"""Spare COW files: a deleted snapshot's COW file is kept (up to the node's
spare limit) and the next snapshot's originals overwrite its blocks instead
of allocating new ones; images stay exact, `blockmirror info` reports it."""

import json
import os
import subprocess
import sys

from blockmirror.storage import Node, WriteOp

CHUNK = 4096
SIZE = 256 * CHUNK  # 1 MiB: the default limit keeps 256 KiB of spares


def _fill(node, byte):
    node.write_many([WriteOp("v", c * CHUNK, bytes([byte]) * CHUNK) for c in range(SIZE // CHUNK)])


def _cow_dir(path):
    return sorted(os.listdir(os.path.join(path, "cow")))


def test_deleted_snapshots_cow_file_is_reused_by_the_next_snapshot(tmp_path):
    path = str(tmp_path / "n")
    with Node.create(path, {"v": SIZE}, chunk_size=CHUNK) as node:
        assert node.spare_limit_bytes == SIZE // 4
        _fill(node, 1)
        s1 = node.snapshot("s1").id
        node.write_many([WriteOp("v", c * CHUNK, b"\x02" * CHUNK) for c in range(32)])
        node.delete_snapshot(s1)
        assert node.spare_space() == (1, 4096 + 32 * CHUNK)  # one record: header block + 32 originals
        [spare] = _cow_dir(path)
        assert spare.startswith("spare-")
        inode = os.stat(os.path.join(path, "cow", spare)).st_ino

        image = node.volumes["v"].read(0, SIZE)
        s2 = node.snapshot("s2").id
        node.write_many([WriteOp("v", c * CHUNK, b"\x03" * CHUNK) for c in range(100, 116)])
        assert node.spare_space() == (0, 0)
        [cow] = _cow_dir(path)
        assert cow == f"{s2}-1.cow" and os.stat(os.path.join(path, "cow", cow)).st_ino == inode
        assert node.read_snapshot(s2, "v", 0, SIZE) == image
        assert sorted(node.diff(s2)["v"]) == list(range(100, 116))
    with Node.open(path) as node:  # and after a restart
        assert node.read_snapshot(s2, "v", 0, SIZE) == image


def test_spares_are_kept_only_up_to_the_limit(tmp_path):
    path = str(tmp_path / "n")
    with Node.create(path, {"v": SIZE}, chunk_size=CHUNK) as node:
        _fill(node, 1)
        s1 = node.snapshot().id
        _fill(node, 2)  # every chunk preserved: a 1 MiB COW file
        node.delete_snapshot(s1)
        assert node.spare_space() == (1, SIZE // 4)  # truncated to what the limit allows
        [spare] = _cow_dir(path)
        assert os.path.getsize(os.path.join(path, "cow", spare)) == SIZE // 4
    with Node.open(path, spare_limit_bytes=0) as node:  # a lower limit releases them at open
        assert node.spare_space() == (0, 0)
        assert _cow_dir(path) == []


def test_info_reports_spare_space(tmp_path):
    path = str(tmp_path / "n")
    with Node.create(path, {"v": SIZE}, chunk_size=CHUNK) as node:
        _fill(node, 1)
        s1 = node.snapshot().id
        node.write_many([WriteOp("v", c * CHUNK, b"\x02" * CHUNK) for c in range(8)])
        node.delete_snapshot(s1)
    run = [sys.executable, "-m", "blockmirror", "info", path]
    out = json.loads(subprocess.run(run + ["--json"], capture_output=True, text=True, check=True).stdout)
    assert out["spare_cow"] == {"files": 1, "bytes": 4096 + 8 * CHUNK, "limit_bytes": SIZE // 4}
    text = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    assert "spare COW space 36 KiB in 1 file(s)" in text, text
