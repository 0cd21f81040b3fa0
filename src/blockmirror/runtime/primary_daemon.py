"""The replicating primary: NBD for the hosts, outgoing links to the
secondary, the PrimaryNode on its own thread.

Host writes from every NBD connection queue in the driver; each step hands
all of them to the node at once (group commit) and resolves the NBD
requests the node completes. The node decides when to dial (its reconnect
backoff) and which link it works with; this daemon only connects, with TLS
where configured, and reports what became of each attempt.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import random
import ssl
import time

from blockmirror.engine import (
    Dial,
    StartVerify,
    TakeSnapshot,
    HostFlush,
    HostWrite,
    PrimaryConfig,
    PrimaryNode,
    Stop,
)
from blockmirror.errors import BlockmirrorError
from blockmirror.nbd.export import ExportError
from blockmirror.nbd.wire import Err
from blockmirror.protocol import Connection
from blockmirror.runtime import tls
from blockmirror.runtime.driver import NodeDriver
from blockmirror.runtime.engine_export import PrimaryExport
from blockmirror.runtime.enginethread import EngineThread
from blockmirror.runtime.control import snapshot_reply
from blockmirror.runtime.pairing import PairIdentity
from blockmirror.runtime.transport import LinkProtocol
from blockmirror.status import Status, wall_clock
from blockmirror.storage import Node, WriteOp

log = logging.getLogger("blockmirror.primary")

READ_THREADS = 4
DRAIN_S = 5.0  # at shutdown, wait this long for the secondary to acknowledge everything


class PrimaryDaemon(NodeDriver):
    role = "primary"
    replies_first = True

    def __init__(self, storage: Node, config: PrimaryConfig, peer: tuple[str, int], secret: bytes,
                 pair: PairIdentity, tls_context: ssl.SSLContext | None = None):
        super().__init__(EngineThread("primary-engine"), log)
        self.tls_context = tls_context
        self.storage = storage
        self.config = config
        self.peer = peer
        self.peer_text = f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}"
        self.secret = secret
        self.pair = pair
        self.link: LinkProtocol | None = None  # the newest attempt or link
        self._futures: dict[int, asyncio.Future] = {}
        self._tokens = itertools.count(1)
        self._closing = False
        self._connects: set[asyncio.Task] = set()
        self._reader = concurrent.futures.ThreadPoolExecutor(READ_THREADS, thread_name_prefix="nbd-read")
        self.exports: list[PrimaryExport] = []
        self.last_link_error: str | None = None
        self.connects = 0

    async def open(self) -> None:
        """Recover the node (disk I/O, on the engine thread)."""
        self.node = await self.engine_thread.call(
            PrimaryNode, self.storage, self.config, random.Random(), time.monotonic(), self.pair.uuid, self.pair.name)
        self.exports = [PrimaryExport(self, vol, self._reader) for vol in self.storage.volumes.values()]

    # -- host side (NBD exports) -----------------------------------------------------------
    async def host_write(self, op: WriteOp, fua: bool) -> None:
        await self._host_item(lambda token: HostWrite(token, op, fua))

    async def host_flush(self) -> None:
        await self._host_item(HostFlush)

    async def _host_item(self, make) -> None:
        if self._stopping or self.fatal is not None:
            raise ExportError(Err.ESHUTDOWN, "the primary is shutting down")
        token = next(self._tokens)
        future = asyncio.get_running_loop().create_future()
        self._futures[token] = future
        self.host_request(make(token))
        await future

    def complete(self, completions) -> None:
        for token, exc in completions:
            future = self._futures.pop(token, None)
            if future is None or future.done():
                continue
            if exc is None:
                future.set_result(None)
            else:
                future.set_exception(exc)

    # -- the link ---------------------------------------------------------------------------
    async def user_snapshot(self, label: str) -> dict:
        """One pause of every volume, on the engine's thread between two
        steps; a user snapshot, listed and exportable like any other."""
        try:
            info = await self.admin(lambda token: TakeSnapshot(token, label))
        except BlockmirrorError as exc:
            return {"error": f"the snapshot was not taken: {exc}", "hint": exc.hint}
        return snapshot_reply(info)

    async def start_verify(self, req: dict) -> dict:
        volumes = req.get("volumes") or []
        rate = req.get("rate_bps")
        if not isinstance(volumes, list) or not all(isinstance(v, str) for v in volumes) or not (
                rate is None or (isinstance(rate, int) and rate > 0)):
            return {"error": "bad verify request", "hint": "blockmirror verify DIR [--volume NAME] [--rate BYTES/S]"}
        try:
            return await self.admin(lambda token: StartVerify(token, tuple(volumes), bool(req.get("repair")), rate))
        except BlockmirrorError as exc:
            return {"error": f"the verify did not start: {exc}", "hint": exc.hint}

    def send_budget(self) -> int:
        link = self.links.get(self.node.link) if self.node is not None and self.node.link is not None else None
        if link is None or not link.established or not link.writable:
            return 0
        return link.send_budget()

    def on_link_closed(self, link: LinkProtocol, reason: str) -> None:
        if link is self.link:
            self.link = None
        if not link.established:
            if reason != self.last_link_error and any(w in reason for w in ("refused", "protocol error", "TLS")):
                log.error("the link to %s was refused: %s", self.peer_text, reason)
            self.last_link_error = reason

    def start_link(self, dial: Dial) -> None:
        if self._closing:
            return
        link = LinkProtocol(self, peer_role="the secondary")
        link.node_link = dial.link
        self.links[dial.link] = link
        self.link = link
        self.connects += 1
        task = asyncio.get_running_loop().create_task(self._connect(link, dial))
        self._connects.add(task)
        task.add_done_callback(self._connects.discard)

    async def _connect(self, link: LinkProtocol, dial: Dial) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.peer
        timeout = self.config.link_timeout_s
        kw = {} if self.tls_context is None else {"ssl": self.tls_context, "ssl_handshake_timeout": timeout}
        try:
            await asyncio.wait_for(loop.create_connection(lambda: link, host, port, **kw), timeout)
        except asyncio.TimeoutError:
            link._finish(f"connecting to {self.peer_text} timed out after {timeout:g}s")
            return
        except ssl.SSLError as exc:
            link._finish(tls.explain(exc, "the secondary"))
            return
        except ConnectionError as exc:
            if self.tls_context is not None and not isinstance(exc, ConnectionRefusedError):
                # reset or closed in the middle of the TLS handshake
                link._finish(f"the secondary closed the connection during the TLS handshake: {tls.reason(exc)} "
                             "(try: check that the secondary runs with --tls-cert and --tls-key and trusts this "
                             "node's certificate; its log says why)")
            else:
                link._finish(f"cannot connect to {self.peer_text}: {exc.strerror or exc}")
            return
        except OSError as exc:
            link._finish(f"cannot connect to {self.peer_text}: {exc.strerror or exc}")
            return
        if self._closing or link.closed:
            link.close("shutting down")
            return
        conn = Connection(dial.local, self.secret, os.urandom)
        conn.initiate()
        link.start(conn)
        log.debug("connected to %s, handshake under way", self.peer_text)  # the node times the handshake

    # -- status -------------------------------------------------------------------------------
    def current_link(self) -> LinkProtocol | None:
        return self.link

    async def add_status(self, st: Status, link: LinkProtocol | None) -> None:
        prog = st.resync_progress
        if prog is not None:
            # Chunks "done" are handed to the socket; what still sits in our
            # buffers has not reached the secondary yet.
            prog.bytes_queued = link.queued_bytes() if link is not None else 0
            prog.bytes_done = max(0, prog.bytes_done - prog.bytes_queued)
            started = await self.engine_thread.call(self.node.round_started_at)
            if started is not None:
                prog.timed(started, time.monotonic())
        own = st.primary
        if st.generation is not None:  # the secondary holds a point: as old as the oldest write it lacks
            own.secondary_consistent_at = wall_clock(own.lag_seconds)
        own.peer = self.peer_text
        own.last_link_error = self.last_link_error
        own.connect_attempts = self.connects

    async def drain(self, timeout_s: float = DRAIN_S) -> bool:
        """Wait (bounded) until the secondary has acknowledged every write."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done, round_id = await self.engine_thread.call(self.node.drained)
            if done:
                return True
            if round_id is not None:
                # The secondary rolls an unfinished round back, and a clean stop
                # records what it lacks: waiting could only save a resend.
                log.info("stopping during resync round %s: it is resent after the restart", round_id)
                return True
            await asyncio.sleep(0.02)
        return False

    async def close(self) -> None:
        """Stop stepping, stop the node (its stop is recorded clean), say
        goodbye, close."""
        self._closing = True
        await self.stop()
        for task in list(self._connects):
            task.cancel()
        if self.fatal is None:
            try:
                await self.step_once([Stop()])
            except BaseException as exc:
                log.error("engine shutdown failed: %r", exc)
        for future in self._futures.values():
            if not future.done():
                future.set_exception(ExportError(Err.ESHUTDOWN, "the primary is shutting down"))
        self._futures.clear()
        for link in list(self.links.values()):
            if not link.closed:
                link.close("shutting down")
        await self.engine_thread.call(self._close_storage)
        self.engine_thread.shutdown()
        self._reader.shutdown(wait=True)

    def _close_storage(self) -> None:
        try:
            self.storage.flush()
        except BlockmirrorError as exc:
            log.error("final flush failed: %s", exc)
        self.storage.close()
