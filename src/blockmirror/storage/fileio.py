"""The I/O seam of the storage engine.

Every byte the storage engine reads or writes goes through a `FileSystem`, so
that tests and the simulator can swap the real one (`OsFileSystem`) for one
that loses unsynced writes at a crash (`blockmirror.storage.crashfs`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import sqlite3
from typing import Protocol

from blockmirror.errors import NoSpace

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _load_fallocate():
    fn = _libc.fallocate
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


def _load_sync_file_range():
    fn = getattr(_libc, "sync_file_range", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


_fallocate = _load_fallocate()
_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


class File(Protocol):
    """An open file: positional I/O only, so concurrent users never share a cursor."""

    def pread(self, offset: int, length: int) -> bytes: ...
    def pread_into(self, offset: int, buf: memoryview) -> None:
        """Fill `buf` from `offset` (zeroes past the end), without allocating."""
    def pwrite(self, offset: int, data: bytes | memoryview) -> None: ...
    def pwritev(self, offset: int, buffers: list) -> None:
        """Write the buffers back to back from `offset`, without joining them."""
    def punch(self, offset: int, length: int) -> None:
        """Deallocate a range (reads back as zeroes); size unchanged."""
    def allocate(self, offset: int, length: int) -> None:
        """Reserve the blocks of a range, its content unchanged, so that a
        later write there cannot fail for lack of space (raises NoSpace now
        instead). A no-op where the filesystem cannot reserve."""
    def sync(self) -> None:
        """fdatasync: everything written before is on stable storage."""
    def start_writeback(self, offset: int, length: int) -> None:
        """A hint: start writing this range to the disk now, without waiting
        (so a later `sync` has less left to do). Guarantees nothing."""
    def size(self) -> int: ...
    def truncate(self, size: int) -> None: ...
    def data_extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        """Allocated (offset, length) ranges within the window; holes skipped."""
    def close(self) -> None: ...


class FileLock(Protocol):
    def release(self) -> None: ...


class FileSystem(Protocol):
    # How a node on it runs its first-write pipeline by default
    # (storage/pipeline.py): "thread" overlaps syncs with the caller.
    pipeline_default: str

    def open(self, path: str, create: bool = False) -> File: ...
    def exists(self, path: str) -> bool:
        """A file, a directory or a metadata store is there."""
    def is_dir(self, path: str) -> bool: ...
    def lock_file(self, path: str) -> FileLock | None:
        """Hold an exclusive lock on `path` (created if missing) for this
        process until released, so no other process opens the same node;
        raises BlockingIOError if another holds it. None: this filesystem
        has no other process to keep out."""
    def unlink(self, path: str) -> None: ...
    def listdir(self, path: str) -> list[str]: ...
    def rename(self, src: str, dst: str) -> None:
        """Atomic: after a crash exactly one of the two names exists, the
        new one once the directory was synced."""
    def makedirs(self, path: str) -> None: ...
    def sync_dir(self, path: str) -> None:
        """Make creations and removals of entries in `path` durable."""
    def identity(self, path: str) -> str | None:
        """What tells this directory from a copy of it (None: no such
        notion on this filesystem)."""
    def meta_uri(self, path: str, create: bool) -> str:
        """The SQLite URI of the metadata store at `path`."""
    def meta_commit(self, conn: sqlite3.Connection, what: str) -> None:
        """COMMIT the metadata store's open transaction: an I/O step like a
        file call (a crash can be injected before it), which can fail as
        the disk does (SQLITE_FULL)."""


def _raise_os_error(exc: OSError, what: str):
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise NoSpace(f"disk full while {what}", hint="free space on the node's filesystem") from exc
    raise exc


class OsFile:
    __slots__ = ("fd", "path")

    def __init__(self, path: str, create: bool):
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        self.path = path
        self.fd = os.open(path, flags, 0o640)

    def pread(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) < length:  # past EOF of a sparse file reads as zeroes
            data += bytes(length - len(data))
        return data

    def pread_into(self, offset: int, buf: memoryview) -> None:
        pos = 0
        while pos < len(buf):
            n = os.preadv(self.fd, [buf[pos:]], offset + pos)
            if n == 0:  # past EOF of a sparse file reads as zeroes
                buf[pos:] = bytes(len(buf) - pos)
                return
            pos += n

    def pwrite(self, offset: int, data) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(self.fd, view, offset)
                view = view[n:]
                offset += n
        except OSError as exc:
            _raise_os_error(exc, f"writing {self.path}")

    def pwritev(self, offset: int, buffers: list) -> None:
        views = [memoryview(b) for b in buffers]
        try:
            while views:
                n = os.pwritev(self.fd, views[:_IOV_MAX], offset)
                offset += n
                while views and n >= views[0].nbytes:  # drop what was written, keep the rest
                    n -= views[0].nbytes
                    views.pop(0)
                if n:
                    views[0] = views[0][n:]
        except OSError as exc:
            _raise_os_error(exc, f"writing {self.path}")

    def start_writeback(self, offset: int, length: int) -> None:
        if _sync_file_range is not None and length > 0:
            _sync_file_range(self.fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # a hint: errors ignored

    def punch(self, offset: int, length: int) -> None:
        if length > 0 and not self._fallocate(_FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length,
                                               "punching"):
            self.pwrite(offset, bytes(length))

    def allocate(self, offset: int, length: int) -> None:
        if length > 0:
            self._fallocate(_FALLOC_FL_KEEP_SIZE, offset, length, "reserving space in")

    def _fallocate(self, mode: int, offset: int, length: int, what: str) -> bool:
        """False where the filesystem does not support `mode`."""
        if _fallocate(self.fd, mode, offset, length) == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.EOPNOTSUPP, errno.ENOSYS):
            return False
        _raise_os_error(OSError(err, os.strerror(err)), f"{what} {self.path}")

    def sync(self) -> None:
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            _raise_os_error(exc, f"syncing {self.path}")

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def truncate(self, size: int) -> None:
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            _raise_os_error(exc, f"sizing {self.path}")

    def data_extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        end = offset + length
        extents = []
        pos = offset
        while pos < end:
            try:
                start = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after pos
                    break
                raise
            if start >= end:
                break
            stop = min(os.lseek(self.fd, start, os.SEEK_HOLE), end)
            extents.append((start, stop - start))
            pos = stop
        return extents

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class OsFileLock:
    """An flock held on an open descriptor: released by closing it, or by the
    process's death."""

    def __init__(self, fd: int):
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class OsFileSystem:
    """The real filesystem."""

    pipeline_default = "thread"

    def open(self, path: str, create: bool = False) -> OsFile:
        return OsFile(path, create)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def identity(self, path: str) -> str | None:
        """The inode numbers of the directory and its metadata store: a copy
        (`cp -a`, a restored backup) has others; a rename within the
        filesystem keeps them. (The device number is left out: it can change
        across reboots.)"""
        from blockmirror.storage.metadata import DB_NAME
        return f"{os.stat(path).st_ino}:{os.stat(os.path.join(path, DB_NAME)).st_ino}"

    def lock_file(self, path: str) -> OsFileLock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        return OsFileLock(fd)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def rename(self, src: str, dst: str) -> None:
        if os.path.exists(dst):
            raise FileExistsError(dst)
        os.rename(src, dst)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def meta_uri(self, path: str, create: bool) -> str:
        return f"file:{path}?mode={'rwc' if create else 'rw'}"

    def meta_commit(self, conn: sqlite3.Connection, what: str) -> None:
        conn.execute("COMMIT")
