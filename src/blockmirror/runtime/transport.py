"""One replication link over TCP: an asyncio BufferedProtocol around a
sans-IO protocol `Connection`.

The kernel receives straight into the Connection's frame buffer
(`get_buffer`/`buffer_updated`); frames are parsed on the event loop thread
and handed to a `LinkSink` (the daemon) as events, in order. The Connection
is only ever touched on the loop thread; the engine, on its own thread, sees
decoded messages (received `data` is a view into a receive buffer that is
not reused while the view lives: protocol/frames.py) and returns
messages that the daemon sends with `send()`.

Back-pressure both ways:
- sending: the transport's write buffer has a high-water mark; the daemon
  asks `send_budget()` before polling the engine for more, and the sink hears
  `link_writable()` when the buffer drains;
- receiving: the daemon calls `pause_receiving()` while its queue of events
  not yet taken by the engine is large, `resume_receiving()` when it drains.

Sending on a plain TCP link does not copy: asyncio 3.11's `writelines`
joins its buffers and its write buffer copies what the kernel did not take
at once, so the link keeps its own queue of the frames' buffers (the
message data itself, not copies) and writes them with `os.writev` on the
socket's fd, many frames per system call, from the loop thread. TLS links
use the transport's write path.

Every link reports exactly one terminal event: `closed`, with a reason and
whether it had been established.

TLS: the primary dials with `ssl=` (asyncio wraps the socket before the link
sees it); the secondary accepts plain TCP and upgrades each connection with
`start_tls` itself (`tls_server=`), so a failed TLS handshake is an error it
can log with the peer's address and a hint (asyncio's own TLS server drops
them silently). A link whose TLS handshake fails never starts: `on_made` is
not called and no `closed` event is sent; `on_tls_failed` is.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import logging
import os
import socket
import ssl
import struct
import termios
import time
from typing import Protocol

from blockmirror.protocol import (
    Connection,
    ConnectionClosed,
    Error,
    ErrorCode,
    Established,
    LocalProtocolError,
    RemoteProtocolError,
)
from blockmirror.protocol.errors import error_code_name
from blockmirror.protocol.messages import encode_message
from blockmirror.runtime import tls

log = logging.getLogger("blockmirror.link")

SEND_BUFFER_HIGH_BYTES = 8 << 20  # transport write buffer that stops polling the engine
SEND_BUFFER_LOW_BYTES = 2 << 20
_PRESTART_BYTES_MAX = 64 << 10  # bytes a not-yet-started link may receive (a Hello is far smaller)
_TLS_RECORD_FIRST_BYTES = (0x15, 0x16)  # a TLS alert or handshake record: the peer speaks TLS
# The daemons derive the pair UUID from the pair name and the secret (pairing.py).
_RUNTIME_HINTS = {
    ErrorCode.PAIR_MISMATCH: "give both nodes the same --pair name and the same secret file "
                             "(the pair UUID is derived from both)",
    ErrorCode.BUSY: "another primary is linked to this secondary: stop it, or give this primary its own "
                    "secondary (a secondary serves one primary)",
}
REFUSE_LINGER_S = 2.0  # a refused connection is read (and dropped) this long for the peer to close first
_IOV_MAX = os.sysconf("SC_IOV_MAX")  # buffers per writev


class LinkSink(Protocol):
    def link_event(self, link: LinkProtocol, kind: str, payload) -> None:
        """kind: 'up' (Established), 'msg' (a message), 'closed' (reason str)."""

    def link_writable(self, link: LinkProtocol) -> None: ...


class LinkProtocol(asyncio.BufferedProtocol):
    """A replication link; `start(conn)` attaches the protocol Connection
    (at once on the primary; on the secondary once the link may proceed)."""

    _ids = 0

    def __init__(self, sink: LinkSink, on_made=None, peer_role: str = "the peer",
                 tls_server: ssl.SSLContext | None = None, tls_timeout_s: float = 5.0, on_tls_failed=None):
        LinkProtocol._ids += 1
        self.id = LinkProtocol._ids
        self.node_link = self.id  # the id the node knows this link by (the primary's: its Dial's)
        self.sink = sink
        self._on_made = on_made
        self.conn: Connection | None = None
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.established = False
        self.closed = False
        self.peer_error_code: int | None = None  # the code of an Error frame the peer refused the link with
        self.close_reason = ""
        self._prestart = bytearray()
        self._scratch = bytearray(16 << 10)
        self._writing_paused = False
        self._recv_paused = False
        self.bytes_received = 0
        self.bytes_sent = 0
        self.last_received = 0.0  # time.monotonic() of the last bytes from the peer
        self.peer_role = peer_role  # "the primary" / "the secondary", for messages
        self.first_byte: int | None = None
        self._buf: memoryview | None = None
        self._tls_server = tls_server
        self._tls_timeout_s = tls_timeout_s
        self._on_tls_failed = on_tls_failed
        self.tls_task: asyncio.Task | None = None
        self.tls: dict | None = None  # version, cipher, peer subject once TLS is up
        self._refusing = False
        # Plain TCP: our own send queue of uncopied buffers (see the module doc).
        # While it holds anything, the transport's own buffer is empty and
        # nothing is written through the transport, so the order is kept.
        self._fd: int | None = None
        self._out: collections.deque = collections.deque()
        self._out_bytes = 0
        self._out_writer = False  # the loop watches the fd for writability

    def __repr__(self) -> str:
        return f"<link #{self.id} {self.peer}>"

    # -- asyncio callbacks -----------------------------------------------------------
    def connection_made(self, transport) -> None:
        if self._tls_server is not None and self.tls_task is None:
            transport.pause_reading()  # nothing is read until the TLS layer takes over
            self.tls_task = asyncio.get_running_loop().create_task(self._accept_tls(transport))
            return
        self.transport = transport
        self.tls = tls.describe(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}"
        transport.set_write_buffer_limits(high=SEND_BUFFER_HIGH_BYTES, low=SEND_BUFFER_LOW_BYTES)
        loop = asyncio.get_running_loop()
        if (self.tls is None and sock is not None and transport.get_extra_info("sslcontext") is None
                and hasattr(loop, "_add_writer") and hasattr(loop, "_remove_writer")):
            self._fd = sock.fileno()
        if self._on_made is not None:
            self._on_made(self)

    async def _accept_tls(self, raw) -> None:
        peer = raw.get_extra_info("peername")
        text = f"{peer[0]}:{peer[1]}" if peer else "?"
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(raw, self, self._tls_server, server_side=True,
                                             ssl_handshake_timeout=self._tls_timeout_s)
        except asyncio.CancelledError:
            raw.abort()
            self.closed = True
            raise
        except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
            raw.abort()
            self.closed = True
            if isinstance(exc, asyncio.TimeoutError):
                reason = f"no TLS handshake within {self._tls_timeout_s:g}s"
            elif isinstance(exc, ssl.SSLError):
                reason = tls.explain(exc, self.peer_role)
            else:
                detail = tls.reason(exc)
                reason = (f"{self.peer_role} closed the connection during the TLS handshake"
                          f"{': ' + detail if detail else ''} (try: if {self.peer_role} verifies certificates "
                          f"(--tls-ca), issue this node's --tls-cert from that CA; {self.peer_role}'s log says why)")
            if self._on_tls_failed is not None:
                self._on_tls_failed(self, text, reason)
            return
        if self.closed:  # the peer left right after the handshake
            transport.abort()
            if self._on_tls_failed is not None:
                self._on_tls_failed(self, text, None)
            return
        self.connection_made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.conn is None:
            buf = memoryview(self._scratch)
        else:
            buf = self.conn.get_buffer(sizehint)
        if self.first_byte is None:
            self._buf = buf
        return buf

    def buffer_updated(self, nbytes: int) -> None:
        if self.first_byte is None and nbytes > 0 and self._buf is not None:
            self.first_byte = self._buf[0]
            self._buf = None
        self.bytes_received += nbytes
        self.last_received = time.monotonic()
        if self.closed or self._refusing:
            return
        if self.conn is None:
            self._prestart += self._scratch[:nbytes]
            if len(self._prestart) > _PRESTART_BYTES_MAX:
                self.abort("peer sent too much before the handshake")
            return
        self.conn.buffer_updated(nbytes)
        self._drain()

    def eof_received(self) -> bool:
        if self._refusing:
            return False
        if self.conn is not None and not self.closed:
            self.conn.receive_data(b"")
            self._drain()
        return False  # close our side too

    def connection_lost(self, exc) -> None:
        self._drop_out()  # the fd is still open here; the transport closes it after us
        if self.transport is None and self._tls_server is not None:
            self.closed = True  # during or right after the TLS handshake: _accept_tls reports it
            return
        if isinstance(exc, ssl.SSLError):
            reason = tls.explain(exc, self.peer_role) if not self.established else f"TLS error: {tls.reason(exc)}"
        elif exc is not None:
            reason = self._early_close(f"{exc.strerror or exc}" if isinstance(exc, OSError) else str(exc), True)
        else:
            reason = self._early_close("the peer closed the connection")
        self._finish(self.close_reason if self._refusing else reason)

    def _early_close(self, reason: str, reset: bool = False) -> str:
        """A close before the peer sent a single byte of the protocol
        handshake: say what may be wrong."""
        if self.established or self.conn is None or self.bytes_received:
            return reason
        if self.tls is not None:
            # A TLS 1.3 server checks the client's certificate after the
            # client's handshake is done, and asyncio sends no alert.
            return (f"{reason} right after the TLS handshake (try: if {self.peer_role} verifies certificates "
                    f"(--tls-ca), issue this node's --tls-cert from that CA; {self.peer_role}'s log says why)")
        if reset:
            return reason  # a proxy whose target is gone, a busy or stopping peer: nothing to add
        # A TLS server closes a connection that does not start with a TLS handshake.
        return f"{reason} during the handshake (if it uses TLS, give this node --tls-cert and --tls-key too)"

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if not self.closed:
            self.sink.link_writable(self)

    # -- daemon side -------------------------------------------------------------------
    def start(self, conn: Connection) -> None:
        """Attach the protocol Connection and begin (the primary has already
        called `conn.initiate()`)."""
        if self.closed:
            return
        self.conn = conn
        self._write(conn.data_to_send())
        if self._prestart:
            data, self._prestart = bytes(self._prestart), bytearray()
            conn.receive_data(data)
            self._drain()
        self.resume_receiving()

    def send(self, messages) -> None:
        """Encode and write messages in order; a message the Connection
        refuses (a local bug) fails the link."""
        if self.closed or self.conn is None:
            return
        bufs: list = []
        try:
            for msg in messages:
                bufs += self.conn.send_buffers(msg)
        except LocalProtocolError as exc:
            self._write_bufs(bufs)  # the messages before the refused one, in order
            log.error("%r: refusing to send %s: %s", self, type(msg).__name__, exc)
            self._write(self.conn.data_to_send())
            self.close(f"local protocol error: {exc}")
            return
        self._write_bufs(bufs)

    def send_budget(self) -> int:
        if self.closed or self.transport is None:
            return 0
        return max(0, SEND_BUFFER_HIGH_BYTES - self.transport.get_write_buffer_size() - self._out_bytes)

    def queued_bytes(self) -> int:
        """Bytes sent by us but not yet acknowledged by the peer's TCP: our
        transport's buffer plus the socket's send queue (SIOCOUTQ)."""
        if self.transport is None or self.closed:
            return 0
        n = self.transport.get_write_buffer_size() + self._out_bytes
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                n += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
            except OSError:
                pass
        return n

    @property
    def writable(self) -> bool:
        return not self.closed and not self._writing_paused

    def pause_receiving(self) -> None:
        if not self._recv_paused and not self.closed:
            self._recv_paused = True
            self.transport.pause_reading()

    def resume_receiving(self) -> None:
        if self._recv_paused and not self.closed:
            self._recv_paused = False
            self.transport.resume_reading()

    def hold(self) -> None:
        """Do not read until start(): the link waits for its turn."""
        self._recv_paused = True
        # asyncio adds the reader right after connection_made; pause after that.
        asyncio.get_running_loop().call_soon(self._hold_now)

    def _hold_now(self) -> None:
        if self._recv_paused and not self.closed and self.conn is None:
            self.transport.pause_reading()

    def refuse(self, code: ErrorCode, text: str, reason: str) -> None:
        """Answer a link that never started with a protocol Error frame:
        write it, half-close, and read (dropping the peer's bytes) until
        the peer closes, so that unread bytes do not turn our close into a
        reset that could destroy the frame before the peer reads it."""
        if self.closed or self.transport is None:
            return
        self._refusing = True
        self.close_reason = reason
        self._write(b"".join(bytes(b) for b in encode_message(Error.make(code, text))))
        self._spill()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._recv_paused = False
        self.transport.resume_reading()
        asyncio.get_running_loop().call_later(REFUSE_LINGER_S, self.abort, reason)

    def close(self, reason: str) -> None:
        """Orderly: write what is queued, then close (FIN)."""
        if self.transport is not None and not self.transport.is_closing():
            self._spill()
            self.transport.close()
        self._finish(reason)

    def abort(self, reason: str) -> None:
        """At once: drop what is queued, reset the connection."""
        self._drop_out()
        if self.transport is not None:
            self.transport.abort()
        self._finish(reason)

    # -- internals ---------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if data:
            self._write_bufs([data])

    def _write_bufs(self, bufs: list) -> None:
        """Write buffers in order, uncopied on a plain TCP link."""
        if not bufs or self.transport is None or self.transport.is_closing():
            return
        n = 0
        for b in bufs:
            n += memoryview(b).nbytes
        self.bytes_sent += n
        if self._fd is None or (not self._out and self.transport.get_write_buffer_size()):
            # TLS, or the transport still holds earlier bytes: its path keeps the order.
            self.transport.writelines(bufs)
            return
        out = self._out
        for b in bufs:
            out.append(b if isinstance(b, memoryview) else memoryview(b))
        self._out_bytes += n
        if not self._out_writer:
            self._flush_out()
            if self._out and not self.closed:
                asyncio.get_running_loop()._add_writer(self._fd, self._on_fd_writable)
                self._out_writer = True
        if self._out_bytes > SEND_BUFFER_HIGH_BYTES and not self._writing_paused:
            self._writing_paused = True

    def _flush_out(self) -> None:
        """writev as much of our queue as the socket takes now."""
        out = self._out
        fd = self._fd
        while out:
            bufs = list(out) if len(out) <= _IOV_MAX else [out[i] for i in range(_IOV_MAX)]
            try:
                n = os.writev(fd, bufs)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._drop_out()
                # The transport sees the same error on its side and closes.
                log.debug("%r: send failed: %s", self, exc)
                self.transport.abort()
                self._finish(f"{exc.strerror or exc}")
                return
            self._out_bytes -= n
            while n:
                head = out[0]
                if n >= head.nbytes:
                    n -= head.nbytes
                    out.popleft()
                else:
                    out[0] = head[n:]
                    n = 0

    def _on_fd_writable(self) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            self._drop_out()
            return
        self._flush_out()
        if not self._out:
            self._remove_out_writer()
        if self._writing_paused and self._out_bytes <= SEND_BUFFER_LOW_BYTES and not self.closed:
            self.resume_writing()

    def _remove_out_writer(self) -> None:
        if self._out_writer:
            self._out_writer = False
            try:
                asyncio.get_running_loop()._remove_writer(self._fd)
            except (OSError, ValueError):
                pass

    def _drop_out(self) -> None:
        self._remove_out_writer()
        self._out.clear()
        self._out_bytes = 0

    def _spill(self) -> None:
        """Hand what our queue still holds to the transport (before it
        writes EOF or closes: it flushes its own buffer first)."""
        if self._out:
            data = b"".join(self._out)
            self._drop_out()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(data)

    def _drain(self) -> None:
        conn = self.conn
        try:
            for event in conn.events():
                if isinstance(event, Established):
                    self.established = True
                    self.sink.link_event(self, "up", event)
                elif isinstance(event, ConnectionClosed):
                    self.close("the peer said goodbye and closed the connection" if event.clean
                               else self._early_close("the peer closed the connection"))
                    return
                elif isinstance(event, Error):
                    self.peer_error_code = event.code
                    self.close(_peer_error_text(event))
                    return
                else:
                    self.sink.link_event(self, "msg", event)
                if self.closed:
                    return
        except RemoteProtocolError as exc:
            self._write(conn.data_to_send())  # the Error frame for the peer
            hint = _RUNTIME_HINTS.get(exc.code, exc.hint)
            if self.first_byte in _TLS_RECORD_FIRST_BYTES and self.tls is None and not self.established:
                hint = (f"{self.peer_role} speaks TLS: give this node --tls-cert and --tls-key (and --tls-ca) "
                        "too, or drop TLS on both")
            hint = f" (try: {hint})" if hint else ""
            self.close(f"protocol error: {exc}{hint}")
            return
        self._write(conn.data_to_send())  # handshake replies

    def _finish(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.sink.link_event(self, "closed", reason)


def _peer_error_text(err: Error) -> str:
    text = f"the peer refused: {error_code_name(err.code)}: {err.text}"
    try:
        code = ErrorCode(err.code)
        hint = _RUNTIME_HINTS.get(code, RemoteProtocolError(code, err.text).hint)
    except ValueError:
        hint = None
    return text + (f" (try: {hint})" if hint else "")
