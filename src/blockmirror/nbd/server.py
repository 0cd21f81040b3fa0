"""The asyncio NBD server: a listener and one `NbdConnection` per client.

Each connection is an `asyncio.BufferedProtocol`: the kernel receives into the
`RequestReader`'s buffer and requests are parsed in place. Every valid request
runs as its own task against the export, so many requests are in flight per
connection and replies go out as they complete, matched by cookie.

Back-pressure: a connection stops parsing, and pauses reading from its
socket, while it has `inflight_requests_max` requests or `inflight_bytes_max`
payload bytes in flight, or while its transport's send buffer is full
(`pause_writing`). Nothing grows without bound when a client floods us.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Sequence

from blockmirror.nbd import wire
from blockmirror.nbd.export import BlockExport, error_for
from blockmirror.nbd.handshake import ExportInfo, Handshake, State
from blockmirror.nbd.requests import ProtocolError, Request, RequestReader, check
from blockmirror.nbd.wire import Cmd, Err

log = logging.getLogger("blockmirror.nbd")

_HANDSHAKE_BUFFER_BYTES = 64 << 10
_SMALL_REPLY_BYTES = 64 << 10  # replies up to this size are joined into one send


@dataclass(frozen=True)
class ServerLimits:
    connections_max: int = 64
    inflight_requests_max: int = 128  # per connection
    inflight_bytes_max: int = 64 << 20  # per connection: read lengths + write payloads
    send_buffer_high_bytes: int = 8 << 20  # transport write buffer that pauses reading
    handshake_timeout_s: float = 30.0

    def __post_init__(self):
        assert self.inflight_bytes_max >= wire.MAX_PAYLOAD_BYTES
        assert self.connections_max > 0 and self.inflight_requests_max > 0


class NbdServer:
    """Serves a fixed set of exports to any number of NBD clients."""

    def __init__(self, exports: Sequence[BlockExport], limits: ServerLimits = ServerLimits()):
        names = [e.name for e in exports]
        assert len(set(names)) == len(names), "export names must be unique"
        self.exports = {e.name: e for e in exports}
        self.catalog = {
            e.name: ExportInfo(e.name, e.size, wire.transmission_flags(e.read_only, e.multi_conn))
            for e in exports
        }
        self.limits = limits
        self.connections: set[NbdConnection] = set()
        self._listener: asyncio.base_events.Server | None = None
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; returns the bound address (the real port if `port` was 0)."""
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            lambda: NbdConnection(self), host, port, reuse_address=True, backlog=128)
        sockname = self._listener.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def shutdown(self, grace_s: float = 30.0) -> None:
        """Stop accepting, let in-flight requests finish and their replies go
        out (up to `grace_s`), then close every connection."""
        self._closing = True
        if self._listener is not None:
            self._listener.close()
        for conn in list(self.connections):
            conn.stop_reading()
        try:
            await asyncio.wait_for(self._drained(), grace_s)
        except asyncio.TimeoutError:
            log.warning("shutdown: %d requests still in flight after %.0f s; closing anyway",
                        sum(len(c.tasks) for c in self.connections), grace_s)
        for conn in list(self.connections):
            conn.close("server shutting down")
        for conn in list(self.connections):
            for task in list(conn.tasks):
                task.cancel()

    async def _drained(self) -> None:
        while any(c.tasks for c in self.connections):
            self._idle.clear()
            await self._idle.wait()

    # -- called by connections ------------------------------------------------------

    def _admit(self, conn: NbdConnection) -> bool:
        if self._closing or len(self.connections) >= self.limits.connections_max:
            return False
        self.connections.add(conn)
        return True

    def _forget(self, conn: NbdConnection) -> None:
        self.connections.discard(conn)
        self._idle.set()

    def _request_finished(self) -> None:
        if self._closing:
            self._idle.set()


class NbdConnection(asyncio.BufferedProtocol):
    def __init__(self, server: NbdServer):
        self.server = server
        self.limits = server.limits
        self.peer = "?"
        self.tasks: set[asyncio.Task] = set()
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._handshake = Handshake(server.catalog)
        self._handshake_buf = bytearray(_HANDSHAKE_BUFFER_BYTES)
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._reader: RequestReader | None = None
        self._export: BlockExport | None = None
        self._size = 0
        self._read_only = True
        self._inflight_bytes = 0
        self._reading_paused = False
        self._writing_paused = False
        self._stopped = False  # no more requests will be parsed (DISC, shutdown, error)
        self._lost = False
        self._closed = False  # we closed the transport; nothing more is sent
        self._out: list[bytes] = []
        self._out_scheduled = False

    # -- asyncio callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if not self.server._admit(self):
            log.warning("%s: refused: %s", self.peer,
                        "server shutting down" if self.server._closing else
                        f"already {self.limits.connections_max} connections")
            self._lost = True
            transport.abort()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=self.limits.send_buffer_high_bytes)
        log.info("%s: connected", self.peer)
        transport.write(self._handshake.data_to_send())
        self._handshake_timer = self._loop.call_later(self.limits.handshake_timeout_s, self._handshake_timed_out)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._reader is not None:
            return self._reader.get_buffer()
        return memoryview(self._handshake_buf)

    def buffer_updated(self, nbytes: int) -> None:
        if self._reader is not None:
            self._reader.buffer_updated(nbytes)
            self._pump()
            return
        if self._stopped:
            return
        hs = self._handshake
        hs.receive_data(bytes(self._handshake_buf[:nbytes]))
        out = hs.data_to_send()
        if out:
            self._transport.write(out)
        if hs.state is State.CLOSED:
            self._cancel_handshake_timer()
            if hs.client_aborted:
                log.info("%s: client aborted the handshake", self.peer)
            else:
                log.warning("%s: handshake failed: %s; closing this connection", self.peer, hs.close_reason)
            self.close(None)
        elif hs.state is State.TRANSMISSION:
            self._cancel_handshake_timer()
            self._export = self.server.exports[hs.export.name]
            self._size = self._export.size
            self._read_only = self._export.read_only
            self._reader = RequestReader()
            self._reader.feed(hs.leftover)
            log.info("%s: serving export %r (%d bytes%s)", self.peer, self._export.name, self._size,
                     ", read-only" if self._read_only else "")
            self._pump()

    def eof_received(self) -> bool:
        if self._reader is None and not self._stopped:
            log.warning("%s: client closed the connection during the handshake", self.peer)
        elif self._reader is not None and self._reader.mid_request and not self._stopped:
            log.warning("%s: client closed the connection in the middle of a request", self.peer)
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._stopped = True
        self._cancel_handshake_timer()
        self._out.clear()
        if exc is not None:
            log.info("%s: connection lost: %s", self.peer, exc)
        else:
            log.info("%s: disconnected", self.peer)
        if not self.tasks:
            self.server._forget(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._pump()

    # -- control ---------------------------------------------------------------------------

    def stop_reading(self) -> None:
        """Parse no more requests (server shutdown); in-flight ones finish."""
        if self._reader is None:
            self.close("server shutting down")
            return
        self._stopped = True
        self._update_reading()

    def close(self, reason: str | None) -> None:
        """Close after sending what is queued; in-flight tasks' replies are dropped."""
        if reason:
            log.info("%s: closing: %s", self.peer, reason)
        self._stopped = True
        if self._transport is not None and not self._lost and not self._closed:
            self._flush_out()
            self._closed = True
            self._transport.close()

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        log.warning("%s: handshake not finished within %.0f s; closing this connection",
                    self.peer, self.limits.handshake_timeout_s)
        self.close(None)

    def _cancel_handshake_timer(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    # -- transmission ----------------------------------------------------------------------

    def _over_limits(self) -> bool:
        return (len(self.tasks) >= self.limits.inflight_requests_max
                or self._inflight_bytes >= self.limits.inflight_bytes_max)

    def _pump(self) -> None:
        """Parse and dispatch buffered requests while the limits allow."""
        reader = self._reader
        while not self._stopped and not self._writing_paused and not self._over_limits():
            try:
                request = reader.next_request()
            except ProtocolError as exc:
                log.warning("%s: malformed request: %s; closing this connection", self.peer, exc)
                self.close(None)
                return
            if request is None:
                break
            self._dispatch(request)
        self._update_reading()

    def _update_reading(self) -> None:
        if self._lost or self._transport is None:
            return
        pause = self._stopped or self._writing_paused or self._over_limits()
        if pause and not self._reading_paused:
            self._transport.pause_reading()
            self._reading_paused = True
        elif not pause and self._reading_paused:
            self._transport.resume_reading()
            self._reading_paused = False

    def _dispatch(self, request: Request) -> None:
        if request.cmd == Cmd.DISC:
            log.info("%s: client sent NBD_CMD_DISC", self.peer)
            self._stopped = True
            if not self.tasks:
                self.close(None)
            return
        error = check(request, self._size, self._read_only)
        if error:
            log.debug("%s: %s -> %s", self.peer, request._replace(data=None), error.name)
            self._send(wire.simple_reply(error, request.cookie))
            return
        nbytes = request.length if request.cmd in (Cmd.READ, Cmd.WRITE) else 0
        self._inflight_bytes += nbytes
        task = self._loop.create_task(self._serve(request, nbytes))
        self.tasks.add(task)

    async def _serve(self, request: Request, nbytes: int) -> None:
        export = self._export
        cmd = request.cmd
        fua = bool(request.flags & wire.CMD_FLAG_FUA)
        data = None
        try:
            if cmd == Cmd.READ:
                data = await export.read(request.offset, request.length)
                assert len(data) == request.length, "export returned a short read"
            elif cmd == Cmd.WRITE:
                await export.write(request.offset, request.data, fua)
            elif cmd == Cmd.WRITE_ZEROES:
                await export.write_zeroes(request.offset, request.length, fua,
                                          bool(request.flags & wire.CMD_FLAG_NO_HOLE))
            elif cmd == Cmd.TRIM:
                await export.trim(request.offset, request.length, fua)
            elif cmd == Cmd.FLUSH:
                await export.flush()
            else:
                raise AssertionError(f"unchecked command {cmd}")
            error = Err.OK
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the export failed this one request: the client gets an errno
            error, unexpected = error_for(exc, cmd)
            if unexpected:
                log.exception("%s: %s failed", self.peer, request._replace(data=None))
            else:
                log.info("%s: %s -> %s: %s", self.peer, request._replace(data=None), error.name, exc)
            data = None
        finally:
            self._inflight_bytes -= nbytes
            self.tasks.discard(asyncio.current_task())
        self._send(wire.simple_reply(error, request.cookie), data)
        self._after_request()

    def _after_request(self) -> None:
        self.server._request_finished()
        if self._lost:
            if not self.tasks:
                self.server._forget(self)
            return
        if self._stopped:
            if not self.tasks and self._reader is not None and not self.server._closing:
                self.close(None)  # after NBD_CMD_DISC: everything answered
            return
        if self._reading_paused:
            self._pump()

    # -- replies ---------------------------------------------------------------------------

    def _send(self, header: bytes, data: bytes | None = None) -> None:
        """Queue a reply; replies completed in one loop iteration go out in one send."""
        if self._lost or self._closed:
            return
        self._out.append(header)
        if data:
            self._out.append(data)
        if not self._out_scheduled:
            self._out_scheduled = True
            self._loop.call_soon(self._flush_out)

    def _flush_out(self) -> None:
        self._out_scheduled = False
        if self._lost or self._closed or not self._out:
            self._out.clear()
            return
        out, self._out = self._out, []
        transport = self._transport
        small: list[bytes] = []
        for piece in out:
            if len(piece) <= _SMALL_REPLY_BYTES:
                small.append(piece)
                continue
            if small:
                transport.write(b"".join(small))
                small = []
            transport.write(piece)
        if small:
            transport.write(b"".join(small))
