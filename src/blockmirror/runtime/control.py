"""The control socket: DIR/blockmirror.sock, a Unix stream socket that
answers one JSON request per connection.

Request: one line, `status` (or a JSON object {"command": "status"}), or
{"command": "snapshot", "label": L}: a user snapshot of every volume of a
running primary (one pause), answered with its id, label and pause.
Reply: one line of JSON, then the server closes. `blockmirror status DIR`
is the client. The socket is created by the daemon that holds the node's
lock, so a socket file left by a killed daemon is stale and replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket

from blockmirror.errors import NodeError

log = logging.getLogger("blockmirror.control")

SOCKET_NAME = "blockmirror.sock"
REQUEST_BYTES_MAX = 4096
_SUN_PATH_MAX = 100  # sockaddr_un holds 108 bytes; keep a margin


def socket_path(node_dir: str) -> str:
    return os.path.join(node_dir, SOCKET_NAME)


@contextlib.contextmanager
def _short_path(path: str):
    """A path to the same file that fits in sockaddr_un: long paths go
    through /proc/self/fd/N of an open directory."""
    if len(path.encode()) <= _SUN_PATH_MAX:
        yield path
        return
    fd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{os.path.basename(path)}"
    finally:
        os.close(fd)


class ControlServer:
    def __init__(self, node_dir: str, handler):
        self.path = socket_path(node_dir)
        self._handler = handler  # async (command: str, request: dict) -> dict
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # stale: we hold the node's lock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _short_path(self.path) as p:
                sock.bind(p)
            os.chmod(self.path, 0o660)
            sock.listen(16)
        except OSError:
            sock.close()
            raise
        self._server = await asyncio.start_unix_server(self._serve, sock=sock)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            text = line[:REQUEST_BYTES_MAX].decode("utf-8", "replace").strip()
            command, req = text, {}
            if text.startswith("{"):
                req = json.loads(text)
                command = req.get("command", "")
            try:
                reply = await self._handler(command, req)
            except KeyError:
                reply = {"error": f"unknown command {command!r}; try: status"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except Exception as exc:  # a client's mistake never stops the daemon
            log.debug("control request failed: %r", exc)
        finally:
            writer.close()


def request(node_dir: str, command: str = "status", timeout_s: float = 10.0) -> dict:
    """Ask the daemon running on `node_dir` (blocking client)."""
    path = socket_path(node_dir)
    hint_start = (f"start one with `blockmirror primary {node_dir} ...` or `blockmirror secondary {node_dir} ...`; "
                  f"`blockmirror info {node_dir}` reads a stopped node")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            with _short_path(path) as p:
                sock.connect(p)
        except FileNotFoundError:
            if not os.path.isdir(node_dir):
                raise NodeError(f"{node_dir} does not exist", hint="give the node directory of a running daemon") from None
            raise NodeError(f"no blockmirror daemon is running on {node_dir}", hint=hint_start) from None
        except ConnectionRefusedError:
            raise NodeError(f"no blockmirror daemon is running on {node_dir} (stale control socket)",
                            hint=hint_start) from None
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise NodeError(f"cannot reach the daemon on {node_dir}: permission denied",
                                hint="run as the daemon's user (or root)") from None
            raise NodeError(f"cannot reach the daemon on {node_dir}: {exc.strerror or exc}") from None
        sock.sendall(command.encode() + b"\n")
        buf = bytearray()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    except socket.timeout:
        raise NodeError(f"the daemon on {node_dir} did not answer within {timeout_s:.0f}s",
                        hint="it may be busy or stuck; check its log") from None
    finally:
        sock.close()
    if not buf:
        raise NodeError(f"the daemon on {node_dir} closed the control connection without answering")
    return json.loads(buf)


def snapshot_reply(info) -> dict:
    """The answer to a `snapshot` request."""
    return {"id": info.id, "label": info.label, "pause_ms": round(info.pause_ns / 1e6, 3)}
