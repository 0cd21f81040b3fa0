"""A real filesystem on a blockmirror volume: nbdfuse exposes the export as a
file, losetup makes it a block device, ext4 goes on it."""

import hashlib
import os
import subprocess
import time

import pytest
from blockmirror.testing.nodes import read_volume
from blockmirror.testing.tools import run_tool as run


def wait_for(path: str, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


@pytest.mark.root
def test_ext4_on_a_volume_survives_unmount_and_remount(primary, node_dir, tmp_path):
    if os.geteuid() != 0:
        pytest.fail("needs root for losetup and mount (run the tests as root)")
    fuse_dir, mnt = tmp_path / "fuse", tmp_path / "mnt"
    fuse_dir.mkdir()
    mnt.mkdir()
    pidfile = tmp_path / "nbdfuse.pid"
    fuse = loop = None
    mounted = False
    files = {f"dir/file{i}.txt": f"blockmirror file {i}\n".encode() * (i + 1) for i in range(50)}
    files["big.bin"] = os.urandom(3 << 20)
    try:
        fuse = subprocess.Popen(["nbdfuse", "-P", str(pidfile), str(fuse_dir), primary.uri("vol0")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(str(pidfile))
        loop = run(["losetup", "-f", "--show", str(fuse_dir / "nbd")]).stdout.strip()
        run(["mkfs.ext4", "-q", "-F", loop])
        run(["mount", loop, str(mnt)])
        mounted = True
        (mnt / "dir").mkdir()
        for name, data in files.items():
            (mnt / name).write_bytes(data)
        run(["umount", str(mnt)])
        mounted = False
        run(["losetup", "-d", loop])
        loop = None

        loop = run(["losetup", "-f", "--show", str(fuse_dir / "nbd")]).stdout.strip()
        run(["fsck.ext4", "-n", "-f", loop])
        run(["mount", loop, str(mnt)])
        mounted = True
        for name, data in files.items():
            assert hashlib.sha256((mnt / name).read_bytes()).digest() == hashlib.sha256(data).digest(), name
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], capture_output=True)
        if loop:
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        if fuse is not None:
            subprocess.run(["fusermount3", "-u", str(fuse_dir)], capture_output=True)
            try:
                fuse.wait(10)
            except subprocess.TimeoutExpired:
                fuse.kill()
                fuse.wait()
    primary.stop()
    superblock = read_volume(node_dir, "vol0", 1024, 1024)
    assert superblock[56:58] == b"\x53\xef"  # the ext4 magic, on the volume itself
