"""A real filesystem on a mirrored volume: ext4 through nbdfuse + a loop
device on the primary; files written, the link cut, more files written, the
link healed; a copy of the secondary's image mounts read-only with the same
files."""

import hashlib
import os
import subprocess
import time

import pytest

from blockmirror.testing.daemon import converged
from blockmirror.testing.tools import run_tool as run


def wait_for_file(path: str, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def write_files(root, files: dict) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    run(["sync", "-f", str(root)])


@pytest.mark.root
def test_ext4_files_written_across_a_link_cut_are_on_the_secondary(pair, tmp_path):
    if os.geteuid() != 0:
        pytest.fail("needs root for losetup and mount (run the tests as root)")
    p, s = pair.primary, pair.secondary
    p.wait_for(converged, what="initial sync")
    fuse_dir, mnt, mnt2 = tmp_path / "fuse", tmp_path / "mnt", tmp_path / "mnt2"
    for d in (fuse_dir, mnt, mnt2):
        d.mkdir()
    before = {f"before/file{i}.txt": f"written while mirroring {i}\n".encode() * (i + 1) for i in range(30)}
    before["before/big.bin"] = os.urandom(2 << 20)
    during = {f"during/file{i}.txt": f"written while the link is down {i}\n".encode() * (i + 3) for i in range(30)}
    during["during/big.bin"] = os.urandom(1 << 20)
    image = tmp_path / "secondary-vol0.img"
    fuse = loop = loop2 = None
    mounted = mounted2 = False
    try:
        fuse = subprocess.Popen(["nbdfuse", "-P", str(tmp_path / "nbdfuse.pid"), str(fuse_dir), p.uri("vol0")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_file(str(tmp_path / "nbdfuse.pid"))
        loop = run(["losetup", "-f", "--show", str(fuse_dir / "nbd")]).stdout.strip()
        run(["mkfs.ext4", "-q", "-F", loop])
        run(["mount", loop, str(mnt)])
        mounted = True
        write_files(mnt, before)
        pair.proxy.cut()
        p.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what="link-down detection")
        write_files(mnt, during)
        pair.proxy.heal()
        run(["umount", str(mnt)])
        mounted = False
        run(["losetup", "-d", loop])
        loop = None
        st = p.wait_for(converged, timeout_s=30, what="convergence after the cut")
        assert st["last_resync"]["bytes"] < 8 << 20, st["last_resync"]

        run(["nbdcopy", s.uri("vol0"), str(image)])
        loop2 = run(["losetup", "-r", "-f", "--show", str(image)]).stdout.strip()
        run(["mount", "-o", "ro", loop2, str(mnt2)])
        mounted2 = True
        for name, data in {**before, **during}.items():
            assert hashlib.sha256((mnt2 / name).read_bytes()).digest() == hashlib.sha256(data).digest(), name
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], capture_output=True)
        if mounted2:
            subprocess.run(["umount", str(mnt2)], capture_output=True)
        for dev in (loop, loop2):
            if dev:
                subprocess.run(["losetup", "-d", dev], capture_output=True)
        if fuse is not None:
            subprocess.run(["fusermount3", "-u", str(fuse_dir)], capture_output=True)
            try:
                fuse.wait(10)
            except subprocess.TimeoutExpired:
                fuse.kill()
                fuse.wait()
