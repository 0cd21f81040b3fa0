"""Initialised node directories for a pair, the shared secret file, the
command lines of a primary and a secondary on loopback, and the data of a
stopped node (written before a pair runs, read after it stopped)."""

from __future__ import annotations

import hashlib
import os

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
