"""A TCP fault proxy for tests and the demo: sits between the primary and
the secondary and breaks the link on command.

    primary --peer--> [proxy listen] ==forward==> [target: secondary --listen]

Modes:
- pass: bytes are forwarded as they come (after `delay_s`, if set);
- cut: every connection is reset on both sides (RST) at once, and new
  connections are reset too until `heal()`;
- blackhole: connections stay open but nothing moves: the proxy stops
  reading both sides (the senders' buffers fill, as with a silent path) and
  holds back closes; new connections are accepted and go nowhere. `heal()`
  lets the held bytes and closes through, as TCP would once a path returns.
- delay: every chunk is delivered `delay_s` later, in order;
- rate: each direction is limited to `rate_bps` bytes per second.

In-process: `FaultProxyThread(target)` runs it on its own event loop thread
(tests, the demo). As a process: `python -m blockmirror.faultproxy --listen
127.0.0.1:0 --target HOST:PORT --control PATH`, then one line per command on
the Unix socket PATH: `cut`, `blackhole`, `delay SECONDS`, `rate
BYTES_PER_S`, `heal`, `status` (answers one JSON line);
`blockmirror.testing.proxy.ProxyProcess` drives it with the methods of
FaultProxyThread.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import struct
import sys
import threading
from collections import deque

PASS, DOWN, BLACKHOLE = "pass", "down", "blackhole"
QUEUE_BYTES_MAX = 1 << 20  # per direction; beyond it the proxy stops reading


def _reset(transport: asyncio.BaseTransport | None) -> None:
    """Close with RST, not FIN."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Side(asyncio.Protocol):
    """One socket of a proxied connection; forwards into `other`."""

    def __init__(self, pair: _Pair, name: str):
        self.pair = pair
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.other: _Side | None = None
        self.queue: deque = deque()  # (due, data or None for EOF) not yet written to `other`
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.reset_seen = False
        self.reset_on_connect = False
        self.write_blocked = False
        self.queued_bytes = 0
        self._last_due = 0.0
        self._reading = True

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.reset_on_connect:  # the link is down: refuse, as a reset
            _reset(transport)
            return
        with contextlib.suppress(OSError):
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Pause after asyncio has added the reader (it does so right after this call).
        asyncio.get_running_loop().call_soon(self.pair.proxy._apply_reading, self)

    def data_received(self, data: bytes) -> None:
        self.pair.proxy.bytes_forwarded += len(data)
        self._enqueue(data)

    def eof_received(self) -> bool:
        self._enqueue(None)
        return True  # keep our write side open until the other side's EOF

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.reset_seen = exc is not None
        self.pair.side_lost(self)

    def pause_writing(self) -> None:  # our socket is full: stop reading the other side
        self.write_blocked = True
        self.other.update_reading()

    def resume_writing(self) -> None:
        self.write_blocked = False
        self.other.update_reading()

    def _enqueue(self, data) -> None:
        proxy = self.pair.proxy
        due = asyncio.get_running_loop().time() + proxy.delay_s
        if proxy.rate_bps and data:
            # A slow link: each chunk leaves after the previous one, at the rate.
            due = max(due, self._last_due) + len(data) / proxy.rate_bps
            self._last_due = due
        self.queue.append((due, data))
        if data:
            self.queued_bytes += len(data)
        if self.queued_bytes > QUEUE_BYTES_MAX:
            self.update_reading()
        self.pump()

    def pump(self) -> None:
        """Write due data to the other side (not while black-holed)."""
        proxy = self.pair.proxy
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if proxy.mode != PASS:
            return
        other = self.other
        if other is None or other.transport is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self.queue:
            due, data = self.queue[0]
            if due > now:
                self._timer = loop.call_at(due, self.pump)
                break
            self.queue.popleft()
            if data:
                self.queued_bytes -= len(data)
            if other.closed:
                continue
            if data is None:
                with contextlib.suppress(OSError, RuntimeError):
                    other.transport.write_eof()
            else:
                other.transport.write(data)
        self.update_reading()

    def update_reading(self) -> None:
        """Read while the link passes bytes, our queue is short and the
        other side's socket takes them."""
        on = (self.pair.proxy.mode == PASS and self.queued_bytes <= QUEUE_BYTES_MAX
              and not (self.other is not None and self.other.write_blocked))
        if self.transport is None or self.closed or on == self._reading:
            return
        self._reading = on
        with contextlib.suppress(RuntimeError, AttributeError):
            (self.transport.resume_reading if on else self.transport.pause_reading)()


class _Pair:
    def __init__(self, proxy: FaultProxy):
        self.proxy = proxy
        self.client = _Side(self, "client")
        self.server = _Side(self, "server")
        self.client.other, self.server.other = self.server, self.client
        self.connecting = False

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.connecting = True
        try:
            await loop.create_connection(lambda: self.server, *self.proxy.target)
        except OSError:
            _reset(self.client.transport)
            self.proxy.pairs.discard(self)
            return
        finally:
            self.connecting = False
        self.client.pump()

    def side_lost(self, side: _Side) -> None:
        if self.proxy.mode == BLACKHOLE:
            return  # the close is held like the bytes; heal() lets it through
        self._propagate(side)

    def _propagate(self, side: _Side) -> None:
        other = side.other
        if other.transport is not None and not other.closed:
            # Forward what is queued, then close the other side the same way.
            side.pump()
            if side.reset_seen:
                _reset(other.transport)
            else:
                other.transport.close()  # FIN after what is buffered
        if self.client.closed and (self.server.closed or self.server.transport is None):
            self.proxy.pairs.discard(self)

    def reset(self) -> None:
        for side in (self.client, self.server):
            side.queue.clear()
            _reset(side.transport)
        self.proxy.pairs.discard(self)


class FaultProxy:
    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.mode = PASS
        self.delay_s = 0.0
        self.rate_bps = 0.0  # 0: unlimited
        self.pairs: set[_Pair] = set()
        self.server: asyncio.base_events.Server | None = None
        self.address: tuple[str, int] | None = None
        self.accepted = 0
        self.resets = 0
        self.bytes_forwarded = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        self.server = await asyncio.get_running_loop().create_server(self._accept, host, port, reuse_address=True)
        self.address = self.server.sockets[0].getsockname()[:2]
        return self.address

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for pair in list(self.pairs):
            pair.reset()

    def _accept(self) -> _Side:
        pair = _Pair(self)
        self.accepted += 1
        if self.mode == DOWN:
            self.resets += 1
            pair.client.reset_on_connect = True
            return pair.client
        self.pairs.add(pair)
        if self.mode == PASS:
            asyncio.get_running_loop().create_task(pair.connect())
        return pair.client

    def _apply_reading(self, side: _Side) -> None:
        side.update_reading()

    # -- commands -------------------------------------------------------------------------------
    def cut(self) -> None:
        """Reset every connection on both sides; refuse new ones (reset at
        once) until heal()."""
        self.mode = DOWN
        for pair in list(self.pairs):
            self.resets += 1
            pair.reset()

    def blackhole(self) -> None:
        self.mode = BLACKHOLE
        for pair in self.pairs:
            for side in (pair.client, pair.server):
                side.update_reading()

    def delay(self, seconds: float) -> None:
        self.delay_s = max(0.0, seconds)

    def rate(self, bytes_per_s: float) -> None:
        """Limit each direction of each connection to this rate (0: no limit)."""
        self.rate_bps = max(0.0, bytes_per_s)

    def heal(self) -> None:
        was = self.mode
        self.mode = PASS
        for pair in list(self.pairs):
            if pair.server.transport is None and not pair.connecting:
                if pair.client.closed:
                    self.pairs.discard(pair)
                    continue
                asyncio.get_running_loop().create_task(pair.connect())
            for side in (pair.client, pair.server):
                side.update_reading()
                side.pump()
            if was == BLACKHOLE:
                for side in (pair.client, pair.server):
                    if side.closed:
                        pair._propagate(side)

    def status(self) -> dict:
        return {"mode": self.mode, "delay_s": self.delay_s, "rate_bps": self.rate_bps, "connections": len(self.pairs),
                "accepted": self.accepted, "resets": self.resets, "bytes_forwarded": self.bytes_forwarded,
                "listen": list(self.address) if self.address else None, "target": list(self.target)}

    def command(self, line: str) -> dict:
        words = line.split()
        if not words:
            raise ValueError("empty command")
        cmd, rest = words[0], words[1:]
        if cmd == "cut":
            self.cut()
        elif cmd == "blackhole":
            self.blackhole()
        elif cmd == "delay":
            self.delay(float(rest[0]) if rest else 0.0)
        elif cmd == "rate":
            self.rate(float(rest[0]) if rest else 0.0)
        elif cmd == "heal":
            self.heal()
        elif cmd != "status":
            raise ValueError(f"unknown command {cmd!r}: cut, blackhole, delay SECONDS, rate BPS, heal, status")
        return self.status()


class FaultProxyThread:
    """A FaultProxy on its own event loop thread; methods are thread-safe."""

    def __init__(self, target: tuple[str, int]):
        self.proxy = FaultProxy(target)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy", daemon=True)
        self._thread.start()
        self.address = self._run(self.proxy.start())
        self.port = self.address[1]

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def _call(self, fn, *args):
        async def wrapper():
            return fn(*args)
        return self._run(wrapper())

    def cut(self) -> None:
        self._call(self.proxy.cut)

    def blackhole(self) -> None:
        self._call(self.proxy.blackhole)

    def delay(self, seconds: float) -> None:
        self._call(self.proxy.delay, seconds)

    def rate(self, bytes_per_s: float) -> None:
        self._call(self.proxy.rate, bytes_per_s)

    def heal(self) -> None:
        self._call(self.proxy.heal)

    def status(self) -> dict:
        return self._call(self.proxy.status)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._run(self.proxy.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


def control(path: str, command: str, timeout_s: float = 5.0) -> dict:
    """Send one command to a proxy process's control socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(path)
        sock.sendall(command.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    reply = json.loads(data)
    if "error" in reply:
        raise ValueError(reply["error"])
    return reply


async def _main(args) -> int:
    from blockmirror.cli._daemon import parse_address

    listen = parse_address(args.listen, "--listen")
    target = parse_address(args.target, "--target")
    proxy = FaultProxy(target)
    host, port = await proxy.start(*listen)

    async def serve(reader, writer):
        try:
            line = (await reader.readline()).decode().strip()
            try:
                reply = proxy.command(line)
            except (ValueError, IndexError) as exc:
                reply = {"error": str(exc)}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()

    ctl = None
    if args.control:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.control)
        ctl = await asyncio.start_unix_server(serve, args.control)
    print(f"proxy on {host}:{port} -> {target[0]}:{target[1]}", flush=True)
    stop = asyncio.Event()
    import signal
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await proxy.close()
    if ctl is not None:
        ctl.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.control)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blockmirror.faultproxy",
                                     description="TCP fault proxy: cut, black-hole or delay a link on command.")
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    parser.add_argument("--target", required=True, metavar="HOST:PORT")
    parser.add_argument("--control", metavar="PATH", help="Unix socket for commands (cut, blackhole, delay S, rate BPS, heal, status)")
    return asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
