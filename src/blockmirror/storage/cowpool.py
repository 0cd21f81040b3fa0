"""The COW file pool: the files of the node's `cow/` directory.

`SNAP-VOL.cow` holds the originals that snapshot SNAP preserved for volume
VOL, as records (storage/cowlog.py), appended at the file's tail. A file no
snapshot uses any more is retired: kept as `spare-N.cow` while the spares fit
in `spare_limit_bytes`, else removed. The next snapshot that needs a file
takes the largest spare by renaming it, so its originals overwrite blocks
that are already allocated and written, and their sync needs no filesystem
journal commit.
"""

from __future__ import annotations

import os
import re

from blockmirror.storage.fileio import File, FileSystem
from blockmirror.storage.layout import COW_DIR

SPARE_FRACTION = 4  # spare COW files may hold up to 1/4 of the volumes' total size
SPARES_MAX = 64
_SPARE_RE = re.compile(r"^spare-(\d+)\.cow$")
_COW_RE = re.compile(r"^(\d+)-(\d+)\.cow$")  # SNAP-VOL.cow

CowKey = tuple[int, int]  # (file: the snapshot that made it, volume id)


def cow_key(name: str) -> CowKey | None:
    """(file, vol) of a COW file's name; None for any other name."""
    m = _COW_RE.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


class CowPool:
    """Open COW files, their tails, and the spares. Under the node's lock."""

    def __init__(self, fs: FileSystem, node_path: str, chunk_size: int, tails: dict[CowKey, int],
                 spare_limit_bytes: int):
        self.fs = fs
        self.dir = os.path.join(node_path, COW_DIR)
        self._chunk_size = chunk_size
        # Next free 4 KiB block of every COW file: committed tails at open, then
        # moved on as records are written (a failed record's space is reused).
        self.tails = tails
        self._handles: dict[CowKey, File] = {}
        self._dir_durable: set[CowKey] = set()  # files whose directory entry is synced
        self.spare_limit_bytes = spare_limit_bytes
        self._spares: dict[str, int] = {}  # name -> bytes

    def path(self, key: CowKey) -> str:
        return os.path.join(self.dir, f"{key[0]}-{key[1]}.cow")

    def names(self) -> list[str]:
        return self.fs.listdir(self.dir)

    def file(self, key: CowKey, create: bool = False) -> File:
        """The COW file `key`; `create` makes it from a spare when there is
        one (the caller syncs the directory)."""
        handle = self._handles.get(key)
        if handle is None:
            path = self.path(key)
            if create and self._spares and not self.fs.exists(path):
                name = max(self._spares, key=lambda n: (self._spares[n], n))
                del self._spares[name]
                self.fs.rename(os.path.join(self.dir, name), path)
            handle = self.fs.open(path, create=create)
            self._handles[key] = handle
        return handle

    def tail(self, key: CowKey) -> int:
        return self.tails.get(key, 0)

    def entry_durable(self, key: CowKey) -> bool:
        return key in self._dir_durable

    def entries_synced(self, keys) -> None:
        """These files' directory entries are on disk (listed at open, or synced)."""
        self._dir_durable.update(keys)

    def sync_dir(self) -> None:
        self.fs.sync_dir(self.dir)

    def release(self, dead: set[CowKey]) -> None:
        """Files whose rows are gone (committed): closed, retired."""
        for key in dead:
            self.tails.pop(key, None)
            handle = self._handles.pop(key, None)
            if handle is not None:
                handle.close()
        for key in sorted(dead):
            if self.fs.exists(self.path(key)):
                self._retire(os.path.basename(self.path(key)))
        if dead:
            self.sync_dir()

    def _retire(self, name: str) -> None:
        """A COW file no snapshot uses any more: keep it as a spare if the
        pool has room, else remove it. The caller syncs the directory."""
        path = os.path.join(self.dir, name)
        key = cow_key(name)
        if key is not None:
            self._dir_durable.discard(key)
            handle = self._handles.pop(key, None)
            if handle is not None:
                handle.close()
        room = self.spare_limit_bytes - sum(self._spares.values())
        f = self.fs.open(path)
        try:
            size = f.size()
            if size > room >= self._chunk_size:  # keep the part that fits
                size = room // self._chunk_size * self._chunk_size
                f.truncate(size)
        finally:
            f.close()
        if 0 < size <= room and len(self._spares) < SPARES_MAX:
            n = 1 + max((int(m.group(1)) for m in map(_SPARE_RE.match, self._spares) if m), default=0)
            spare = f"spare-{n}.cow"
            self.fs.rename(path, os.path.join(self.dir, spare))
            self._spares[spare] = size
        else:
            self.fs.unlink(path)

    def tidy(self) -> None:
        """At open: find the spares, and retire the COW files a crash left
        behind (made before their rows committed, or not yet retired after
        their snapshot's deletion committed): every file without a tail."""
        names = self.names()
        for name in names:
            if _SPARE_RE.match(name):
                f = self.fs.open(os.path.join(self.dir, name))
                try:
                    self._spares[name] = f.size()
                finally:
                    f.close()
        changed = False
        while sum(self._spares.values()) > self.spare_limit_bytes or len(self._spares) > SPARES_MAX:
            name = min(self._spares, key=lambda n: (self._spares[n], n))
            del self._spares[name]
            self.fs.unlink(os.path.join(self.dir, name))
            changed = True
        for name in names:
            key = cow_key(name)
            if _SPARE_RE.match(name) or key in self.tails:
                continue
            if key is not None:
                self._retire(name)
            else:
                self.fs.unlink(os.path.join(self.dir, name))
            changed = True
        if changed:
            self.sync_dir()

    def spare_space(self) -> tuple[int, int]:
        """(files, bytes) of spare COW files kept for the next snapshots."""
        return len(self._spares), sum(self._spares.values())

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles.clear()
