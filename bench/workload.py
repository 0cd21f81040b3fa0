"""The host side of the daemon benchmarks and diagnostics: volume data
written before a pair starts, fresh data for the chunks a run changes,
nbdcopy as the host, sync() between cases, and files evicted from the page
cache."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import time

from blockmirror.testing.nodes import CHUNK

from common import BenchError

QD = 16  # libnbd requests in flight for the benchmark writers


def prefill_file(path: str, size: int, seed: int = 3) -> None:
    """Non-zero data, every 64 KiB chunk distinct (its index in the first 8
    bytes), so rsync's block matching cannot find a chunk elsewhere."""
    rng = random.Random(seed)
    pool = rng.randbytes(16 * CHUNK)
    step = 16 * CHUNK
    with open(path, "r+b" if os.path.exists(path) else "wb") as f:
        for base in range(0, size, step):
            n = min(step, size - base)
            buf = bytearray(pool[:n])
            for i in range(0, n, CHUNK):
                buf[i:i + 8] = struct.pack("<Q", (base + i) // CHUNK + 1)
            f.write(buf)
        f.truncate(size)


def prefill_volume(size: int, name: str = "vol0"):
    """A `prefill` for blockmirror.testing.pair.Pair: `prefill_file` into
    the primary's volume image before any daemon runs."""
    def fill(node_dir: str) -> None:
        prefill_file(os.path.join(node_dir, "volumes", f"{name}.img"), size)
    return fill


def fresh_writes(chunks, seed: int):
    """(offset, data) with new random data per chunk, generated lazily; give
    every call its own seed, or rsync finds the data of an earlier run."""
    rng = random.Random(seed)
    for c in chunks:
        yield c * CHUNK, rng.randbytes(CHUNK)


def random_file(path: str, size: int) -> None:
    """`size` bytes (a multiple of 1 MiB) of random data."""
    with open(path, "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))


def nbdcopy(source: str, uri: str) -> tuple[float, float]:
    """`nbdcopy --flush SOURCE URI`: (wall seconds, nbdcopy's own CPU seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(["nbdcopy", "--flush", source, uri], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise BenchError(f"nbdcopy {source} {uri} exited {proc.returncode}: {err}")
    return wall, usage.ru_utime + usage.ru_stime


def settle() -> None:
    """Write back dirty pages so the next case does not pay for the last."""
    os.sync()


def evict(paths) -> None:
    """Write back, then drop the files' pages from the page cache
    (posix_fadvise DONTNEED: no root needed, nothing else evicted), so the
    next reads of them come from the disk."""
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
