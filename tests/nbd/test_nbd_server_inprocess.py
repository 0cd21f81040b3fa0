"""The server against test exports, in this process: concurrency, durability
ordering, read-only exports, back-pressure and draining at shutdown."""

import asyncio
import errno
import os
import socket
import struct
import threading
import time

import nbd
import pytest
from nbd_helpers import (MemoryExport, ServerThread, is_closed, raw_connect, raw_go, read_simple_reply,
                         recv_exactly, send_request, wait_all)

from blockmirror.nbd.server import ServerLimits
from blockmirror.testing.host import connect

MiB = 1 << 20


def test_many_requests_in_flight_complete_out_of_order_and_match_their_cookies():
    export = MemoryExport("vol0", 8 * MiB, delay_s=0.02, seed=3)
    rng = __import__("random").Random(5)
    with ServerThread([export]) as server:
        h = connect(server.uri + "/vol0")
        blocks = [rng.randbytes(65536) for _ in range(64)]
        cookies = [h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(b)), i * 65536) for i, b in enumerate(blocks)]
        wait_all(h, cookies)
        bufs = [nbd.Buffer(65536) for _ in blocks]
        cookies = [h.aio_pread(buf, i * 65536) for i, buf in enumerate(bufs)]
        wait_all(h, cookies)
        assert [bytes(b.to_bytearray()) for b in bufs] == blocks
        h.shutdown()
    assert export.max_concurrent >= 16  # really concurrent, not one at a time
    assert bytes(export.data[:64 * 65536]) == b"".join(blocks)


def test_flush_reply_means_answered_writes_are_durable_and_fua_is_durable_at_reply():
    export = MemoryExport("vol0", 4 * MiB)
    with ServerThread([export]) as server:
        h = connect(server.uri)
        h.pwrite(b"A" * 4096, 0)
        assert export.durable[:4096] == bytes(4096)  # only cached so far
        h.pwrite(b"B" * 4096, 8192, nbd.CMD_FLAG_FUA)
        assert export.durable[8192:12288] == b"B" * 4096
        h.flush()
        assert export.durable[:4096] == b"A" * 4096
        h.shutdown()


def test_read_only_export_refuses_every_write_with_eperm_and_changes_nothing():
    export = MemoryExport("ro", MiB, read_only=True)
    export.data[:] = os.urandom(MiB)
    before = bytes(export.data)
    with ServerThread([export]) as server:
        h = connect(server.uri + "/ro", strict=False)
        assert h.is_read_only()
        for attempt in (lambda: h.pwrite(b"x" * 512, 0), lambda: h.trim(512, 0), lambda: h.zero(512, 0),
                        lambda: h.pwrite(b"x" * 512, 0, nbd.CMD_FLAG_FUA)):
            with pytest.raises(nbd.Error) as info:
                attempt()
            assert info.value.errnum == errno.EPERM
        assert h.pread(512, 0) == before[:512]
        h.flush()
        h.shutdown()
    assert bytes(export.data) == before
    assert not [c for c in export.calls if c[0] in ("write", "zero", "trim")]


def test_flooding_client_is_held_back_by_the_inflight_limit():
    """A client that sends 2000 writes without reading replies: the server
    hands at most inflight_requests_max to the export, stops reading its
    socket, and serves everything once the export makes progress."""
    export = MemoryExport("vol0", 16 * MiB)
    limits = ServerLimits(inflight_requests_max=8)
    with ServerThread([export], limits) as server:
        server.call(lambda: setattr(export, "gate", asyncio.Event()))
        sock = raw_connect(server.port)
        raw_go(sock, "vol0")
        count = 2000
        payload = b"z" * 4096
        stream = b"".join(struct.pack(">IHHQQI", 0x25609513, 0, 1, i, (i % 4096) * 4096, 4096) + payload
                          for i in range(count))
        sender = threading.Thread(target=sock.sendall, args=(stream,), daemon=True)
        sender.start()
        time.sleep(0.5)
        seen_while_blocked = len(export.calls)
        assert seen_while_blocked == 8
        assert sender.is_alive()  # the socket buffers filled: we stopped reading
        server.call(lambda: export.gate.set())
        replies = [read_simple_reply(sock) for _ in range(count)]
        sender.join(10)
        assert sorted(cookie for _, cookie, _ in replies) == list(range(count))
        assert all(err == 0 for err, _, _ in replies)
        assert export.max_concurrent <= 8
        sock.close()


def test_shutdown_finishes_inflight_requests_before_closing():
    export = MemoryExport("vol0", MiB)
    server = ServerThread([export])
    with server:
        server.call(lambda: setattr(export, "gate", asyncio.Event()))
        sock = raw_connect(server.port)
        raw_go(sock, "vol0")
        send_request(sock, 1, 42, 0, 4, data=b"abcd")
        time.sleep(0.2)
        shutdown = asyncio.run_coroutine_threadsafe(server.server.shutdown(grace_s=5), server.loop)
        time.sleep(0.2)
        assert not shutdown.done()  # waiting for the write
        server.call(lambda: export.gate.set())
        shutdown.result(5)
        assert read_simple_reply(sock) == (0, 42, b"")
        assert is_closed(sock)
        with pytest.raises(ConnectionRefusedError):  # no longer accepting
            socket.create_connection(("127.0.0.1", server.port), timeout=2)
    assert bytes(export.data[:4]) == b"abcd"


def test_export_exceptions_become_errors_for_that_request_only():
    from blockmirror.errors import NoSpace
    from blockmirror.nbd.export import ExportError
    from blockmirror.nbd.wire import Err

    class Failing(MemoryExport):
        async def write(self, offset, data, fua):
            if offset == 0:
                raise NoSpace("disk full")
            if offset == 4096:
                raise ExportError(Err.ESHUTDOWN)
            if offset == 8192:
                raise RuntimeError("bug")
            await super().write(offset, data, fua)

    export = Failing("vol0", MiB)
    with ServerThread([export]) as server:
        h = connect(server.uri)
        for offset, code in ((0, 28), (4096, 108), (8192, 5)):
            with pytest.raises(nbd.Error) as info:
                h.pwrite(b"x" * 512, offset)
            assert info.value.errnum == code
        h.pwrite(b"y" * 512, 12288)
        assert h.pread(512, 12288) == b"y" * 512
        h.shutdown()


def test_connection_limit_refuses_extra_clients_only():
    export = MemoryExport("vol0", MiB)
    with ServerThread([export], ServerLimits(connections_max=2)) as server:
        a, b = raw_connect(server.port), raw_connect(server.port)
        c = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        assert is_closed(c)
        raw_go(a, "vol0")
        send_request(a, 0, 1, 0, 16)
        assert read_simple_reply(a, 16) == (0, 1, bytes(16))
        for s in (a, b, c):
            s.close()


def test_handshake_timeout_closes_a_silent_client():
    export = MemoryExport("vol0", MiB)
    with ServerThread([export], ServerLimits(handshake_timeout_s=0.3)) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        recv_exactly(sock, 18)
        assert is_closed(sock, timeout_s=3)
