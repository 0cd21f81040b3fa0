"""A host using volumes through NBD (python libnbd): one batch of writes
with a queue depth, and writers that keep writing in a thread until
stopped (`HotAreaWriter` keeps a test's host busy, `WriteLatencyRecorder`
measures each write for a benchmark)."""

from __future__ import annotations

import abc
import random
import threading
import time

import nbd

from blockmirror.testing.daemon import HarnessError

CHUNK = 64 << 10


def connect(uri: str, strict: bool = True) -> nbd.NBD:
    """A libnbd handle connected to `uri`; strict=False lets it send
    requests libnbd would refuse (to test the server's answer)."""
    h = nbd.NBD()
    if not strict:
        h.set_strict_mode(0)
    h.connect_uri(uri)
    return h


def aio_write(uri: str, writes, qd: int = 16, flush: bool = True) -> float:
    """Write (offset, bytes or nbd.Buffer) pairs through one connection with
    up to `qd` requests in flight, then FLUSH. Seconds taken (connect
    excluded)."""
    h = connect(uri)
    try:
        start = time.perf_counter()
        in_flight: list[tuple[int, nbd.Buffer]] = []  # (cookie, buffer kept alive until done)
        for off, data in writes:
            while h.aio_in_flight() >= qd:
                h.poll(-1)
                _retire(h, in_flight)
            buf = data if isinstance(data, nbd.Buffer) else nbd.Buffer.from_bytearray(bytearray(data))
            in_flight.append((h.aio_pwrite(buf, off), buf))
        while h.aio_in_flight() > 0:
            h.poll(-1)
            _retire(h, in_flight)
        _retire(h, in_flight)
        if flush:
            h.flush()
        return time.perf_counter() - start
    finally:
        h.shutdown()


def _retire(h: nbd.NBD, in_flight: list) -> None:
    in_flight[:] = [(cookie, buf) for cookie, buf in in_flight if not h.aio_command_completed(cookie)]


class _WriterThread(threading.Thread, abc.ABC):
    """Connects to each of `uris`, writes until stopped; an NBD error ends
    the writing and is kept in `errors`. Starts at once."""

    def __init__(self, uris: list[str], seed: int):
        super().__init__(daemon=True, name=type(self).__name__)
        self.uris = uris
        self.rng = random.Random(seed)
        self.writes = 0
        self.errors: list[str] = []
        self._stopping = threading.Event()
        self.start()

    def run(self) -> None:
        handles: list[nbd.NBD] = []
        try:
            for uri in self.uris:
                handles.append(connect(uri))
            self._write_until_stopped(handles)
        except nbd.Error as exc:
            self.errors.append(str(exc))
        finally:
            for h in handles:
                try:
                    h.shutdown()
                except nbd.Error:
                    pass

    @abc.abstractmethod
    def _write_until_stopped(self, handles: list[nbd.NBD]) -> None:
        """The subclass's writes, until `_stopping` is set."""

    def wait_writes(self, n: int, timeout_s: float = 20) -> None:
        """Until `n` more writes have completed."""
        deadline = time.monotonic() + timeout_s
        target = self.writes + n
        while self.writes < target:
            if self.errors:
                raise HarnessError(f"host writes failed: {self.errors}")
            if time.monotonic() > deadline:
                raise HarnessError(f"host writes stalled at {self.writes} (wanted {target})")
            time.sleep(0.01)

    def stop(self, errors_expected: bool = False, timeout_s: float = 20) -> int:
        """Stop writing; the number of writes done. A write error is an
        error unless `errors_expected` (the host lost its device)."""
        self._stopping.set()
        self.join(timeout_s)
        if self.is_alive():
            raise HarnessError(f"{self.name} stuck")
        if self.errors and not errors_expected:
            raise HarnessError(f"host writes failed: {self.errors}")
        return self.writes


class HotAreaWriter(_WriterThread):
    """A host writing 4 KiB - 64 KiB at random 4 KiB-aligned offsets of the
    first `area_bytes` of one volume, a FLUSH every `flush_every` writes,
    about 2 ms apart."""

    def __init__(self, uri: str, area_bytes: int = 1 << 20, seed: int = 1, flush_every: int = 16):
        self.area_bytes = area_bytes
        self.flush_every = flush_every
        super().__init__([uri], seed)

    def _write_until_stopped(self, handles: list[nbd.NBD]) -> None:
        (h,) = handles
        rng = self.rng
        while not self._stopping.is_set():
            length = rng.choice((4096, 16384, 65536))
            offset = rng.randrange(0, self.area_bytes - length, 4096)
            h.pwrite(rng.randbytes(length), offset)
            self.writes += 1
            if self.writes % self.flush_every == 0:
                h.flush()
            time.sleep(0.002)


class WriteLatencyRecorder(_WriterThread):
    """64 KiB writes at random chunks of several volumes (`sizes[i]` bytes
    behind `uris[i]`), one in flight, as fast as they complete; `samples`
    holds (completion time.perf_counter(), latency seconds) of each."""

    def __init__(self, uris: list[str], sizes: list[int], seed: int = 1):
        self.sizes = sizes
        self.samples: list[tuple[float, float]] = []
        super().__init__(uris, seed)

    def _write_until_stopped(self, handles: list[nbd.NBD]) -> None:
        rng = self.rng
        pool = [nbd.Buffer.from_bytearray(bytearray(rng.randbytes(CHUNK))) for _ in range(8)]
        while not self._stopping.is_set():
            i = rng.randrange(len(handles))
            off = rng.randrange(self.sizes[i] // CHUNK) * CHUNK
            t0 = time.perf_counter()
            handles[i].aio_pwrite(pool[rng.randrange(len(pool))], off)
            while handles[i].aio_in_flight() > 0:
                handles[i].poll(-1)
            t1 = time.perf_counter()
            self.samples.append((t1, t1 - t0))
            self.writes += 1
