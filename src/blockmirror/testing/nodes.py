"""Initialised node directories for a pair, the shared secret file, the
command lines of a primary and a secondary on loopback, and the data of a
stopped node (written before a pair runs, read after it stopped; its image
files copied to another node or damaged behind the storage layer's back)."""

from __future__ import annotations

import hashlib
import os
from typing import Iterable

from blockmirror.storage import Node

CHUNK = 64 << 10
VOLUMES = {"vol0": 16 << 20, "vol1": 4 << 20}  # two small volumes of different sizes
SECRET = "c2VjcmV0IHNoYXJlZCBieSB0aGUgdGVzdCBwYWlyIG9mIG5vZGVz\n"
# A dead link is seen within 1 s; heartbeats keep a quiet one up.
FAST_LINK = ["--link-timeout", "1", "--heartbeat-interval", "0.2"]


def make_nodes(base: str | os.PathLike, volumes: dict[str, int] = VOLUMES,
               secondary_volumes: dict[str, int] | None = None) -> tuple[str, str, str]:
    """Two initialised nodes and a secret file (mode 0600) under `base`:
    (primary_dir, secondary_dir, secret_path)."""
    base = os.fspath(base)
    os.makedirs(base, exist_ok=True)
    p, s = os.path.join(base, "primary"), os.path.join(base, "secondary")
    Node.create(p, volumes, chunk_size=CHUNK).close()
    Node.create(s, secondary_volumes or volumes, chunk_size=CHUNK).close()
    secret = os.path.join(base, "secret")
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(SECRET)
    return p, s, secret


def primary_args(secret: str, peer: tuple[str, int], *extra: str) -> list[str]:
    return ["--nbd", "127.0.0.1:0", "--peer", f"{peer[0]}:{peer[1]}", "--secret-file", secret, *FAST_LINK, *extra]


def secondary_args(secret: str, *extra: str, listen: str = "127.0.0.1:0", nbd: str | None = "127.0.0.1:0") -> list[str]:
    """With `nbd`, the secondary also serves its volumes read-only there."""
    return ["--listen", listen, "--secret-file", secret, *(["--nbd", nbd] if nbd else []), *FAST_LINK, *extra]


def write_pattern(node_dir: str, tag: bytes, nbytes: int = 12 << 20, volume: str = "vol0") -> None:
    """The first `nbytes` of `volume` of a stopped node: a 64 KiB block
    derived from `tag`, repeated (through the storage layer, as a host
    write before the pair ever ran)."""
    block = hashlib.sha256(tag).digest() * 2048  # 64 KiB
    with Node.open(node_dir) as node:
        node.write(volume, 0, (block * (nbytes // len(block) + 1))[:nbytes])
        node.flush()


def read_volume(node_dir: str, name: str, offset: int = 0, length: int | None = None) -> bytes:
    """Volume bytes as the storage sees them (the node must be stopped)."""
    with Node.open(node_dir) as node:
        vol = node.volumes[name]
        return vol.read(offset, vol.size - offset if length is None else length)


def image_path(node_dir: str, volume: str) -> str:
    """The image file holding `volume`'s data on a node."""
    return os.path.join(node_dir, "volumes", f"{volume}.img")


def seed_copy(src_dir: str, dst_dir: str, volumes: Iterable[str] | None = None) -> None:
    """Pre-seed a node with a copy of another's data (a restored backup, a
    disk shipped by hand): each image file of the stopped node `src_dir`
    (every volume, or `volumes`) copied over the same volume's image file
    of `dst_dir`, which must not have run yet. Holes stay holes (only the
    data extents are copied, in the kernel: copy_file_range)."""
    if volumes is None:
        volumes = sorted(f[:-len(".img")] for f in os.listdir(os.path.join(src_dir, "volumes"))
                         if f.endswith(".img"))
    for name in volumes:
        src, dst = image_path(src_dir, name), image_path(dst_dir, name)
        fs = os.open(src, os.O_RDONLY)
        try:
            fd = os.open(dst, os.O_WRONLY)
            try:
                size = os.fstat(fs).st_size
                os.ftruncate(fd, 0)
                os.ftruncate(fd, size)
                for start, end in _data_extents(fs, size):
                    off = start
                    while off < end:
                        n = os.copy_file_range(fs, fd, end - off, off, off)
                        if n <= 0:
                            raise OSError(f"copy_file_range {src} -> {dst} at {off}: copied nothing")
                        off += n
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            os.close(fs)


def _data_extents(fd: int, size: int):
    """(start, end) of each data extent of a file (SEEK_DATA/SEEK_HOLE)."""
    off = 0
    while off < size:
        try:
            start = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole from here to the end
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        off = end


def write_image(node_dir: str, volume: str, writes: Iterable[tuple[int, bytes]]) -> None:
    """(offset, data) written straight into `volume`'s image file of a
    stopped node, behind the storage layer's back: data changed after a
    copy, or a careless admin, a faulty disk. fsynced."""
    fd = os.open(image_path(node_dir, volume), os.O_WRONLY)
    try:
        for offset, data in writes:
            os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def damage_chunks(node_dir: str, chunks: Iterable[tuple[str, int]], fill: bytes = b"\xee",
                  at: int = 100, length: int = 3000) -> None:
    """Damage chunks of a stopped node behind the storage layer's back:
    for each (volume, chunk offset), `length` bytes of `fill` written at
    `at` bytes into the chunk (so the chunk differs, but not wholly)."""
    block = (fill * length)[:length]
    by_volume: dict[str, list[int]] = {}
    for name, offset in chunks:
        by_volume.setdefault(name, []).append(offset)
    for name, offsets in by_volume.items():
        write_image(node_dir, name, ((off + at, block) for off in offsets))
