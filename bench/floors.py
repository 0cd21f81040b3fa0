#!/usr/bin/env python3
"""Floors: the data movement of a mirror done with bare system calls, no
blockmirror code, to measure what this machine allows at all.

Each floor runs the same work as the blockmirror case it stands beside, in
two processes joined by loopback TCP (the primary's side in the calling
process, the secondary's side in a child started before the timing), with
what the design requires and nothing else: no checksums, no framing beyond
an offset and a length, no metadata store, no Python logic beyond a loop
around the calls.

- `local_write`: the host's writes alone: a file written in 256 KiB
  requests (nbdcopy's request size), then fdatasync (what `nbdcopy --flush`
  does to the local-only daemon).
- `mirror_write`: the same writes, each also sent to the secondary, whose
  side does what keeps a live mirror consistent at every instant (the
  prefix property, docs/ARCHITECTURE.md): every batch of records received
  is appended to a journal and fdatasynced, acknowledged, then written to
  the volume; the volumes' writeback is started every 16 MiB on both sides,
  the journal is checkpointed (the volume fdatasynced, the journal started
  over) every 64 MiB; the primary sends at most a window ahead of the
  acknowledgements (the engine's defaults). Timed until the primary's
  fdatasync after its last send, as nbdcopy's copy is.
- `resync_copy`: the changed chunks read from the primary's image and sent;
  the secondary applies them as a consistent round must: per group of 256
  chunks, the originals are read and written to a scratch file (written in
  full beforehand, as a spare COW file is) and fdatasynced before the new
  data overwrites them, the sync and the overwrites of one group on a worker
  thread while the next group is received (the overlap of blockmirror's
  first-write pipeline); a final fdatasync. Timed until the secondary's
  final fdatasync.

    .venv/bin/python bench/floors.py demo   # tiny run of each, prints seconds
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from blockmirror.engine.config import PrimaryConfig, SecondaryConfig  # noqa: E402
from blockmirror.storage.fileio import OsFile  # noqa: E402

REQUEST = 256 << 10  # nbdcopy's default request size
HEADER = struct.Struct(">QI")  # offset, length
ACK = struct.Struct(">Q")  # bytes applied so far
WINDOW = PrimaryConfig().window_bytes_max
KICK = SecondaryConfig().writeback_kick_bytes
CHECKPOINT = SecondaryConfig().journal_checkpoint_bytes
GROUP = 256  # chunks per COW group of the resync floor
RECV_BUFFER = 32 << 20


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    """`n` bytes, received straight into the buffer returned (no copy after)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise EOFError("the other side closed early")
        got += k
    return buf


def _send(sock: socket.socket, header: bytes, data) -> None:
    """One record, header and data, without joining them (sendmsg may stop
    short: send the rest)."""
    bufs = [memoryview(header), memoryview(data)]
    while bufs:
        n = sock.sendmsg(bufs)
        while n and bufs:
            if n >= bufs[0].nbytes:
                n -= bufs[0].nbytes
                bufs.pop(0)
            else:
                bufs[0] = bufs[0][n:]
                n = 0


def _child(mode: str, *args: str) -> tuple[subprocess.Popen, socket.socket]:
    """Start the secondary's side; returns it and a connection to it."""
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), mode, *args], stdout=subprocess.PIPE)
    port = int(p.stdout.readline())
    return p, socket.create_connection(("127.0.0.1", port))


def _listen() -> socket.socket:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    print(ls.getsockname()[1], flush=True)
    conn, _ = ls.accept()
    ls.close()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def _end(p: subprocess.Popen, sock: socket.socket) -> None:
    sock.close()
    if p.wait(60) != 0:
        raise RuntimeError(f"floor child exited {p.returncode}")


# -- the host's writes, local and mirrored ---------------------------------------------------
def local_write(source: str, dst: str, size: int) -> float:
    """Seconds to write `size` bytes of `source` over `dst` in 256 KiB
    requests, then fdatasync."""
    fs = os.open(source, os.O_RDONLY)
    fd = os.open(dst, os.O_WRONLY)
    try:
        buf = bytearray(REQUEST)
        start = time.perf_counter()
        for off in range(0, size, REQUEST):
            n = os.preadv(fs, [buf], off)
            os.pwrite(fd, memoryview(buf)[:n], off)
        os.fdatasync(fd)
        return time.perf_counter() - start
    finally:
        os.close(fs)
        os.close(fd)


def mirror_write(source: str, dst: str, size: int, sec_volume: str, journal: str) -> float:
    """`local_write` mirrored to a secondary process (module doc). Seconds."""
    p, sock = _child("mirror-secondary", sec_volume, journal)
    fs = os.open(source, os.O_RDONLY)
    vol = OsFile(dst, create=False)  # for its start_writeback (sync_file_range), as the engines start it
    fd = vol.fd
    acked = [0]
    cond = threading.Condition()

    def read_acks():
        try:
            while True:
                (n,) = ACK.unpack(_recv_exact(sock, ACK.size))
                with cond:
                    acked[0] = n
                    cond.notify()
        except (EOFError, OSError):
            with cond:
                acked[0] = 1 << 62
                cond.notify()

    reader = threading.Thread(target=read_acks, daemon=True)
    reader.start()
    try:
        buf = bytearray(REQUEST)
        sent = unkicked = 0
        start = time.perf_counter()
        for off in range(0, size, REQUEST):
            n = os.preadv(fs, [buf], off)
            data = memoryview(buf)[:n]
            os.pwrite(fd, data, off)
            unkicked += n
            if unkicked >= KICK:
                vol.start_writeback(0, size)
                unkicked = 0
            with cond:
                while sent + n - acked[0] > WINDOW:
                    cond.wait()
            _send(sock, HEADER.pack(off, n), data)
            sent += n
        os.fdatasync(fd)
        elapsed = time.perf_counter() - start
        sock.shutdown(socket.SHUT_WR)
        reader.join(60)
        return elapsed
    finally:
        os.close(fs)
        vol.close()
        _end(p, sock)


def _mirror_secondary(volume: str, journal: str) -> None:
    conn = _listen()
    vol = OsFile(volume, create=False)
    fv = vol.fd
    vsize = os.fstat(fv).st_size
    fj = os.open(journal, os.O_WRONLY)
    buf = bytearray(RECV_BUFFER)
    view = memoryview(buf)
    have = tail = applied = unkicked = 0
    while True:
        n = conn.recv_into(view[have:])
        if not n:
            break
        have += n
        pos = 0
        records = []
        while have - pos >= HEADER.size:
            off, length = HEADER.unpack_from(buf, pos)
            if have - pos - HEADER.size < length:
                break
            records.append((off, view[pos + HEADER.size:pos + HEADER.size + length]))
            pos += HEADER.size + length
        if not records:
            continue
        os.pwrite(fj, view[:pos], tail)  # the batch's records, as received
        tail += pos
        os.fdatasync(fj)
        nbytes = sum(len(d) for _, d in records)
        applied += nbytes
        conn.sendall(ACK.pack(applied))
        for off, data in records:
            os.pwrite(fv, data, off)
        unkicked += nbytes
        if unkicked >= KICK:
            vol.start_writeback(0, vsize)
            unkicked = 0
        if tail >= CHECKPOINT:
            os.fdatasync(fv)
            tail = 0
        del records, data
        view[:have - pos] = view[pos:have]
        have -= pos
    os.fdatasync(fv)
    vol.close()
    os.close(fj)


# -- the resync ----------------------------------------------------------------------------------
def resync_copy(src: str, dst: str, chunks, chunk_size: int, scratch: str) -> float:
    """The changed chunks sent from `src` to a secondary process that
    applies them to `dst` keeping it consistent (module doc). `scratch` must
    hold at least len(chunks) * chunk_size written bytes. Seconds."""
    chunks = sorted(chunks)
    p, sock = _child("resync-secondary", dst, scratch, str(chunk_size))
    fs = os.open(src, os.O_RDONLY)
    try:
        start = time.perf_counter()
        for i in range(0, len(chunks), GROUP):
            group = chunks[i:i + GROUP]
            sock.sendall(struct.pack(">I", len(group)))
            for c in group:  # each chunk read and sent
                _send(sock, HEADER.pack(c * chunk_size, chunk_size), os.pread(fs, chunk_size, c * chunk_size))
        sock.sendall(struct.pack(">I", 0))
        _recv_exact(sock, 1)  # after the secondary's final fdatasync
        return time.perf_counter() - start
    finally:
        os.close(fs)
        _end(p, sock)


def _resync_secondary(dst: str, scratch: str, chunk_size: str) -> None:
    """Per group: read the originals and write them to the scratch file on
    this thread; a worker thread syncs them and then overwrites, while this
    thread receives the next group (at most one group queued): the overlap
    blockmirror's first-write pipeline has."""
    conn = _listen()
    fd = os.open(dst, os.O_RDWR)
    fc = os.open(scratch, os.O_WRONLY)
    queue: list = []
    cond = threading.Condition()

    def worker():
        while True:
            with cond:
                while not queue:
                    cond.wait()
                group = queue[0]
            if group is None:
                return
            os.fdatasync(fc)
            for off, data in group:
                os.pwrite(fd, data, off)
            with cond:
                queue.pop(0)
                cond.notify_all()

    t = threading.Thread(target=worker)
    t.start()
    pos = 0
    while True:
        (k,) = struct.unpack(">I", _recv_exact(conn, 4))
        group = []
        for _ in range(k):
            off, length = HEADER.unpack(_recv_exact(conn, HEADER.size))
            group.append((off, _recv_exact(conn, length)))
        if group:  # the originals of this group, before any of its overwrites is queued
            os.pwritev(fc, [os.pread(fd, len(data), off) for off, data in group], pos)
            pos += sum(len(d) for _, d in group)
        with cond:
            while queue:
                cond.wait()
            queue.append(group or None)
            cond.notify_all()
        if not group:
            break
    t.join()
    os.fdatasync(fd)
    conn.sendall(b"k")
    os.close(fd)
    os.close(fc)


def _demo() -> None:
    import random
    import tempfile
    d = tempfile.mkdtemp(prefix="floors-", dir="/var/tmp")
    size = 32 << 20
    names = ["source", "a", "b", "journal", "scratch"]
    paths = {n: os.path.join(d, n) for n in names}
    try:
        for n in names:
            with open(paths[n], "wb") as f:
                f.write(os.urandom(size))
        print(f"local_write {local_write(paths['source'], paths['a'], size):.3f}s")
        print(f"mirror_write {mirror_write(paths['source'], paths['a'], size, paths['b'], paths['journal']):.3f}s")
        chunks = random.sample(range(size // 65536), 64)
        print(f"resync_copy {resync_copy(paths['source'], paths['b'], chunks, 65536, paths['scratch']):.3f}s")
    finally:
        for p in paths.values():
            os.unlink(p)
        os.rmdir(d)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "demo"
    if what == "mirror-secondary":
        _mirror_secondary(*sys.argv[2:])
    elif what == "resync-secondary":
        _resync_secondary(*sys.argv[2:])
    elif what == "demo":
        _demo()
    else:
        raise SystemExit(f"unknown: {what}")
