"""Test doubles and process helpers for the NBD tests."""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

from blockmirror.nbd.server import NbdServer, ServerLimits

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class MemoryExport:
    """A BlockExport over a bytearray that models a disk cache: `durable` is
    what would survive a power cut (updated by flush and FUA writes)."""

    multi_conn = True

    def __init__(self, name: str, size: int, read_only: bool = False, delay_s: float = 0.0):
        self.name = name
        self.size = size
        self.read_only = read_only
        self.data = bytearray(size)
        self.durable = bytearray(size)
        self.delay_s = delay_s
        self.flushes = 0
        self.calls: list[tuple] = []
        self.max_concurrent = 0
        self._concurrent = 0

    async def _enter(self, call):
        self.calls.append(call)
        self._concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self._concurrent)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
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

    async def write_zeroes(self, offset, length, fua):
        await self._enter(("zero", offset, length, fua))
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


def run(cmd: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run a tool; a missing tool is a failure, never a skip."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n"
                             f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc
