"""An in-memory filesystem that behaves like a disk with a volatile cache.

Files are sparse (storage/crashfile.py); writes land in a cache until
`sync`; a crash keeps, drops or tears (at 512-byte sector granularity) each
unsynced write independently, and keeps or drops each directory change made
since the directory was last synced. Every mutating call is one numbered I/O
step; `crash_at_step` makes step N raise `SimulatedCrash` before it happens,
so a test can stop the storage engine between any two I/O steps. The disk
can be full: `disk_full` for the files (volumes, COW files, journal: a write
that needs a new block fails), `meta_full` for the metadata store (a commit
fails as SQLite's does on a full disk); either or both. Used by the crash
tests and the simulator.
"""

from __future__ import annotations

import itertools
import posixpath
import random
import sqlite3

from blockmirror.storage.crashfile import Inode, MemFile, SimulatedCrash

__all__ = ["CrashFileSystem", "SimulatedCrash"]

_instances = itertools.count()


class CrashFileSystem:
    """The metadata store lives in a shared in-memory SQLite database that
    outlives the node's connection (as a file outlives a process): a crash
    loses its open transaction, never a committed one."""

    pipeline_default = "inline"  # no thread: a run replays step for step

    def __init__(self, seed: int = 0):
        self._meta_name = f"crashfs{next(_instances)}"
        self._meta_keepers: dict[str, sqlite3.Connection] = {}
        self.epoch = 0
        self.steps = 0
        self.crash_at_step: int | None = None
        self.disk_full = False  # files: a write or allocate that needs a new block raises NoSpace
        self.meta_full = False  # the metadata store: a commit fails with SQLITE_FULL, rolled back
        self.trace: list[str] = []
        self.trace_max = 64
        self.rng = random.Random(seed)
        self._content: dict[str, Inode] = {}  # what is on the disk for each name
        self._open: dict[str, MemFile] = {}
        self._dirs: set[str] = set()
        self._visible: set[str] = set()  # entries a listing shows now
        self._entries_durable: set[str] = set()  # entries that survive a crash
        self._renames: list[tuple[str, str]] = []  # not yet made durable by a sync_dir

    # -- injection ---------------------------------------------------------
    def _step(self, what: str) -> None:
        if self.crash_at_step is not None and self.steps >= self.crash_at_step:
            raise SimulatedCrash(f"crash before step {self.steps}: {what}")
        self.steps += 1
        self.trace.append(what)
        if len(self.trace) > self.trace_max:
            del self.trace[: len(self.trace) - self.trace_max]

    def meta_commit(self, conn: sqlite3.Connection, what: str) -> None:
        self._step(f"meta-commit {what}")
        if self.meta_full:
            conn.execute("ROLLBACK")  # what SQLite does when a commit finds the disk full
            exc = sqlite3.OperationalError("database or disk is full")
            exc.sqlite_errorcode, exc.sqlite_errorname = sqlite3.SQLITE_FULL, "SQLITE_FULL"
            raise exc
        conn.execute("COMMIT")

    def meta_uri(self, path: str, create: bool) -> str:
        uri = f"file:{self._meta_name}{path}?mode=memory&cache=shared"
        if path not in self._meta_keepers:
            if not create:
                raise FileNotFoundError(path)
            self._meta_keepers[path] = sqlite3.connect(uri, uri=True, check_same_thread=False)
        return uri

    def clone(self, seed: int) -> CrashFileSystem:
        """A copy of this disk, cache included, that can be crashed and
        recovered without touching the original (the simulator's probe of
        what a crash right now would leave)."""
        c = CrashFileSystem(seed)
        copies: dict[int, Inode] = {}  # a renamed file's two names share one copy
        c._content = {p: copies.get(id(i)) or copies.setdefault(id(i), i.copy()) for p, i in self._content.items()}
        c._visible = set(self._visible)
        c._entries_durable = set(self._entries_durable)
        c._dirs = set(self._dirs)
        c._renames = list(self._renames)
        for path, f in self._open.items():
            if f.epoch != self.epoch or path not in c._content:
                continue
            c._open[path] = f.copy_to(c, c._content[path])
        for path, conn in self._meta_keepers.items():
            dst = sqlite3.connect(c.meta_uri(path, create=True), uri=True)
            conn.backup(dst)
            dst.close()
        return c

    def close(self) -> None:
        """Drop the in-memory metadata stores (end of a test or scenario)."""
        for conn in self._meta_keepers.values():
            conn.close()
        self._meta_keepers.clear()

    def crash(self, rng: random.Random | None = None) -> None:
        """Lose the cache as a power failure would; every open handle dies."""
        rng = rng or self.rng
        for f in self._open.values():
            f._crash(rng)
        survivors = set()
        decided = set()
        for src, dst in self._renames:  # atomic: the old name or the new one
            decided |= {src, dst}
            if dst not in self._visible:  # renamed again or unlinked since: its own entries decide
                decided -= {dst}
                if src in self._entries_durable:
                    survivors.add(src)
                continue
            if rng.random() < 0.5:
                survivors.add(dst)
            elif src in self._entries_durable:
                survivors.add(src)
        for path in sorted(self._visible | self._entries_durable):
            if path in decided:
                continue
            settled = (path in self._visible) == (path in self._entries_durable)
            if settled:
                if path in self._visible:
                    survivors.add(path)
            elif rng.random() < 0.5:  # an unsynced create or unlink reached the disk
                if path in self._visible:
                    survivors.add(path)
            elif path in self._entries_durable:
                survivors.add(path)
        self._content = {p: c for p, c in self._content.items() if p in survivors}
        self._visible = set(survivors)
        self._entries_durable = set(survivors)
        self._open.clear()
        self._renames.clear()
        self.epoch += 1
        self.crash_at_step = None

    # -- FileSystem --------------------------------------------------------
    def open(self, path: str, create: bool = False) -> MemFile:
        if path not in self._visible:
            if not create:
                raise FileNotFoundError(path)
            self._step(f"create {path}")
            self._content[path] = Inode()
            self._visible.add(path)
        f = self._open.get(path)
        if f is None or f.epoch != self.epoch:
            f = MemFile(self, path, self._content[path])
            self._open[path] = f
        f.closed = False
        return f

    def identity(self, path: str) -> str | None:
        return None  # simulated directories are never copied

    def exists(self, path: str) -> bool:
        return path in self._visible or path in self._dirs or path in self._meta_keepers

    def is_dir(self, path: str) -> bool:
        return path.rstrip("/") in self._dirs

    def lock_file(self, path: str) -> None:
        return None  # one simulated process per disk: nobody to keep out

    def unlink(self, path: str) -> None:
        if path not in self._visible:
            raise FileNotFoundError(path)
        self._step(f"unlink {path}")
        self._visible.discard(path)
        self._open.pop(path, None)

    def rename(self, src: str, dst: str) -> None:
        if src not in self._visible:
            raise FileNotFoundError(src)
        if dst in self._visible:
            raise FileExistsError(dst)
        self._step(f"rename {src} {dst}")
        self._visible.discard(src)
        self._visible.add(dst)
        self._content[dst] = self._content[src]  # one inode, two names until a crash or sync decides
        f = self._open.pop(src, None)
        if f is not None:
            f.path = dst
            self._open[dst] = f
        # Renamed again before the first rename was synced: a crash leaves
        # the first name or the last (the name between is not modelled).
        first = next((a for a, b in self._renames if b == src), None)
        if first is None:
            self._renames.append((src, dst))
        else:
            self._renames = [(a, dst if b == src else b) for a, b in self._renames]

    def listdir(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return sorted(p[len(prefix):] for p in self._visible | self._dirs | set(self._meta_keepers)
                      if p.startswith(prefix) and "/" not in p[len(prefix):])

    def makedirs(self, path: str) -> None:
        self._dirs.add(path.rstrip("/"))

    def sync_dir(self, path: str) -> None:
        self._step(f"syncdir {path}")
        path = path.rstrip("/")
        for p in list(self._entries_durable):
            if posixpath.dirname(p) == path and p not in self._visible:
                self._entries_durable.discard(p)
        for p in self._visible:
            if posixpath.dirname(p) == path:
                self._entries_durable.add(p)
        self._renames = [(a, b) for a, b in self._renames if posixpath.dirname(b) != path]
        for p in [p for p in self._content if p not in self._visible and p not in self._entries_durable]:
            del self._content[p]

    # -- inspection (tests) --------------------------------------------------
    def read_current(self, path: str) -> bytes:
        return bytes(self._open[path].current) if path in self._open else bytes(self._content[path].data)
