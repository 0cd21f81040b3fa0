"""Test doubles for the NBD tests: an export in memory, the server on its
own thread, a minimal raw NBD client, and waiting for libnbd requests."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading

import nbd

from blockmirror.nbd.server import NbdServer, ServerLimits

VOL0_BYTES = 64 << 20
VOL1_BYTES = 16 << 20


def wait_all(h: nbd.NBD, cookies) -> None:
    """Until nothing is in flight on `h`; each of `cookies` completed."""
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for cookie in cookies:
        assert h.aio_command_completed(cookie)


class MemoryExport:
    """A BlockExport over a bytearray that models a disk cache: `durable` is
    what would survive a power cut (updated by flush and FUA writes)."""

    multi_conn = True

    def __init__(self, name: str, size: int, read_only: bool = False, delay_s: float = 0.0, seed: int = 0):
        self.name = name
        self.size = size
        self.read_only = read_only
        self.data = bytearray(size)
        self.durable = bytearray(size)
        self.delay_s = delay_s  # each call sleeps a random time up to this (replies reorder)
        self.rng = random.Random(seed)
        self.gate: asyncio.Event | None = None  # if set, every call waits for it
        self.flushes = 0
        self.calls: list[tuple] = []
        self.max_concurrent = 0
        self._concurrent = 0

    async def _enter(self, call):
        self.calls.append(call)
        self._concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self._concurrent)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.delay_s:
                await asyncio.sleep(self.rng.random() * self.delay_s)
        finally:
            self._concurrent -= 1

    async def read(self, offset, length):
        await self._enter(("read", offset, length))
        return bytes(self.data[offset:offset + length])

    async def write(self, offset, data, fua):
        await self._enter(("write", offset, len(data), fua))
        self.data[offset:offset + len(data)] = data
        if fua:
            self.durable[offset:offset + len(data)] = data

    async def write_zeroes(self, offset, length, fua, no_hole):
        await self._enter(("zero", offset, length, fua, no_hole))
        self.data[offset:offset + length] = bytes(length)
        if fua:
            self.durable[offset:offset + length] = bytes(length)

    async def trim(self, offset, length, fua):
        await self._enter(("trim", offset, length, fua))
        self.data[offset:offset + length] = bytes(length)
        if fua:
            self.durable[offset:offset + length] = bytes(length)

    async def flush(self):
        await self._enter(("flush",))
        self.durable[:] = self.data
        self.flushes += 1


class ServerThread:
    """An NbdServer on 127.0.0.1:<free port> in its own event loop thread."""

    def __init__(self, exports, limits: ServerLimits = ServerLimits()):
        self.exports = exports
        self.limits = limits
        self.loop = asyncio.new_event_loop()
        self.server: NbdServer | None = None
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(10), "server thread did not start"
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.server.shutdown(grace_s=5), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def call(self, fn):
        """Run fn() on the server's loop thread and return its result."""
        async def wrapper():
            return fn()
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(10)

    def _main(self):
        asyncio.set_event_loop(self.loop)

        async def start():
            self.server = NbdServer(self.exports, self.limits)
            _, self.port = await self.server.start("127.0.0.1", 0)

        self.loop.run_until_complete(start())
        self._ready.set()
        self.loop.run_forever()

    @property
    def uri(self):
        return f"nbd://127.0.0.1:{self.port}"


# -- a minimal raw NBD client for handshake and framing tests ---------------------

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"server closed the connection after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def is_closed(sock: socket.socket, timeout_s: float = 5) -> bool:
    """True if the server closes the connection (EOF or reset) within timeout_s."""
    sock.settimeout(timeout_s)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def raw_connect(port: int, client_flags: int = 3) -> socket.socket:
    """Connect and do the greeting; returns the socket ready for options."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    magic, opt_magic, flags = struct.unpack(">QQH", recv_exactly(sock, 18))
    assert (magic, opt_magic, flags) == (NBDMAGIC, IHAVEOPT, 3)
    sock.sendall(struct.pack(">I", client_flags))
    return sock


def send_option(sock: socket.socket, option: int, data: bytes = b"") -> None:
    sock.sendall(struct.pack(">QII", IHAVEOPT, option, len(data)) + data)


def read_option_reply(sock: socket.socket) -> tuple[int, int, bytes]:
    magic, option, reply, length = struct.unpack(">QIII", recv_exactly(sock, 20))
    assert magic == REPLY_MAGIC
    return option, reply, recv_exactly(sock, length)


def raw_go(sock: socket.socket, name: str) -> tuple[int, int]:
    """NBD_OPT_GO; returns (size, transmission flags)."""
    encoded = name.encode()
    send_option(sock, 7, struct.pack(">I", len(encoded)) + encoded + struct.pack(">H", 0))
    size = flags = None
    while True:
        _, reply, data = read_option_reply(sock)
        if reply == 3 and struct.unpack_from(">H", data)[0] == 0:
            size, flags = struct.unpack_from(">QH", data, 2)
        elif reply == 1:
            return size, flags
        elif reply != 3:
            raise AssertionError(f"GO failed with reply 0x{reply:x}: {data!r}")


def send_request(sock: socket.socket, cmd: int, cookie: int, offset: int, length: int,
                 flags: int = 0, data: bytes = b"", magic: int = 0x25609513) -> None:
    sock.sendall(struct.pack(">IHHQQI", magic, flags, cmd, cookie, offset, length) + data)


def read_simple_reply(sock: socket.socket, read_length: int = 0) -> tuple[int, int, bytes]:
    """(error, cookie, data); data is read only if error is 0."""
    magic, error, cookie = struct.unpack(">IIQ", recv_exactly(sock, 16))
    assert magic == 0x67446698
    data = recv_exactly(sock, read_length) if error == 0 and read_length else b""
    return error, cookie, data
