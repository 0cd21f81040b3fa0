"""The secondary: listens for its primary, feeds the SecondaryNode on its
own thread, and (optionally) serves its last consistent image read-only
over NBD.

One primary at a time. An accepted connection waits, not reading, until no
other link is active; then the node answers it with its committed point as
of that moment (so the Ready it sends is never stale). A link that does not
finish its handshake in time is closed; a waiting connection gives up when
the active link outlives its patience. When the primary reconnects after a
silent failure, the old link is usually already gone by the node's own link
timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections import deque

from blockmirror.engine import (
    Answer,
    NoConsistentImage,
    SecondaryConfig,
    SecondaryNode,
    Stop,
)
from blockmirror.errors import BlockmirrorError
from blockmirror.nbd.export import ExportError
from blockmirror.nbd.wire import Err
from blockmirror.protocol import Connection, ErrorCode
from blockmirror.runtime.driver import NodeDriver
from blockmirror.runtime.engine_export import SecondaryExport
from blockmirror.runtime.enginethread import EngineThread
from blockmirror.runtime.pairing import PairIdentity
from blockmirror.runtime.transport import LinkProtocol
from blockmirror.status import Status, wall_clock
from blockmirror.storage import Node

log = logging.getLogger("blockmirror.secondary")

WAITING_LINKS_MAX = 4
BUSY_HEARD_HEARTBEATS = 2  # a linked primary heard within this many heartbeat intervals is alive
TLS_PENDING_MAX = 8  # TLS handshakes at once; more connections are reset


class SecondaryDaemon(NodeDriver):
    role = "secondary"

    def __init__(self, storage: Node, config: SecondaryConfig, secret: bytes, pair: PairIdentity,
                 tls_context: ssl.SSLContext | None = None):
        super().__init__(EngineThread("secondary-engine"), log)
        self.tls_context = tls_context
        self._tls_pending: set[LinkProtocol] = set()  # TLS handshakes under way
        self._tls_errors_logged: set[str] = set()
        self.tls_failures = 0
        self.storage = storage
        self.config = config
        self.secret = secret
        self.pair = pair
        self.listener: asyncio.base_events.Server | None = None
        self.listen_text = ""
        self.active: LinkProtocol | None = None  # handshaking or linked (loop side)
        self.waiting: deque[LinkProtocol] = deque()
        self.exports: list[SecondaryExport] = []
        self.accepted_count = 0
        self.busy_refusals = 0
        self._closing = False
        self._inconsistent_logged = False

    async def open(self) -> None:
        self.node = await self.engine_thread.call(SecondaryNode, self.storage, self.config, time.monotonic(),
                                                  self.pair.uuid, self.pair.name)
        self.exports = [SecondaryExport(self, v.name, v.size) for v in self.storage.volumes.values()]

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.listener = await loop.create_server(self._new_link, host, port, reuse_address=True, backlog=16)
        name = self.listener.sockets[0].getsockname()
        self.listen_text = f"[{name[0]}]:{name[1]}" if ":" in name[0] else f"{name[0]}:{name[1]}"
        return name[0], name[1]

    # -- links ----------------------------------------------------------------------------------
    def _new_link(self) -> LinkProtocol:
        if self.tls_context is None:
            return LinkProtocol(self, on_made=self._accepted, peer_role="the primary")
        if len(self._tls_pending) >= TLS_PENDING_MAX or self._closing:
            def refuse(link):
                log.warning("refusing a connection from %s: %d TLS handshakes already under way", link.peer,
                            len(self._tls_pending))
                link.abort("too many TLS handshakes")
            return LinkProtocol(self, on_made=refuse)
        link = LinkProtocol(self, on_made=self._accepted, peer_role="the primary", tls_server=self.tls_context,
                            tls_timeout_s=self.config.link_timeout_s, on_tls_failed=self._tls_failed)
        self._tls_pending.add(link)
        return link

    def _tls_failed(self, link: LinkProtocol, peer: str, reason: str | None) -> None:
        self._tls_pending.discard(link)
        if reason is None:
            log.debug("the connection from %s closed right after its TLS handshake", peer)
            return
        self.tls_failures += 1
        if self._closing:
            return
        # Once per distinct reason: a misconfigured primary retries for ever.
        level = logging.ERROR if reason not in self._tls_errors_logged else logging.DEBUG
        self._tls_errors_logged.add(reason)
        log.log(level, "refused a connection from %s: %s", peer, reason)

    def _accepted(self, link: LinkProtocol) -> None:
        self._tls_pending.discard(link)
        self.accepted_count += 1
        if self._closing:
            link.abort("shutting down")
            return
        active = self.active
        if (active is not None and active.established and not active.closed
                and time.monotonic() - active.last_received < BUSY_HEARD_HEARTBEATS * self.config.heartbeat_interval_s):
            # The linked primary was heard just now: this is another one (or
            # a stray dial), not the same primary coming back after a failure.
            self._busy(link, f"the linked primary was heard {time.monotonic() - active.last_received:.2f}s ago")
            return
        waiting = [w for w in self.waiting if not w.closed]
        if len(waiting) >= WAITING_LINKS_MAX:
            self._busy(link, f"{len(waiting)} connections already wait")
            return
        link.hold()
        self.waiting.append(link)
        patience = 2 * self.config.link_timeout_s
        loop = asyncio.get_running_loop()

        def give_up():
            if link.conn is None and not link.closed:
                self._busy(link, f"another primary link stayed active for {patience:g}s")
        loop.call_later(patience, give_up)
        self._activate_next()

    def _busy(self, link: LinkProtocol, why: str) -> None:
        """Refuse a connection with a BUSY Error frame (one primary at a time)."""
        self.busy_refusals += 1
        log.warning("refusing the connection from %s with BUSY: %s", link.peer, why)
        link.refuse(ErrorCode.BUSY, f"this secondary already serves a primary of pair '{self.pair.name}'",
                    f"refused (BUSY): {why}")

    def _activate_next(self) -> None:
        if self.active is not None or self._closing:
            return
        while self.waiting:
            link = self.waiting.popleft()
            if link.closed:
                continue
            self.active = link
            # Queued behind any earlier link's end, so the committed point the
            # node answers with already includes that link's end.
            self.accepted(link)
            timeout = self.config.link_timeout_s

            def handshake_deadline():
                if not link.established and not link.closed:
                    link.abort(f"no handshake within {timeout:g}s")
            asyncio.get_running_loop().call_later(timeout + 1.0, handshake_deadline)
            return

    def on_link_closed(self, link: LinkProtocol, reason: str) -> None:
        if link is self.active:
            self.active = None
            if not link.established:
                log.warning("connection from %s ended before the handshake completed: %s", link.peer, reason)
            asyncio.get_running_loop().call_soon(self._activate_next)

    def start_link(self, answer: Answer) -> None:
        link = self.links.get(answer.link)
        if link is not None and not link.closed:
            link.start(Connection(answer.local, self.secret, os.urandom))

    # -- read-only export ---------------------------------------------------------------------------
    async def read_image(self, volume: str, offset: int, length: int) -> bytes:
        if self.fatal is not None:
            raise ExportError(Err.ESHUTDOWN, "the secondary stopped")
        return await self.engine_thread.call(self._read_image, volume, offset, length)

    def _read_image(self, volume: str, offset: int, length: int) -> bytes:
        try:
            data = self.node.read_image(volume, offset, length)
        except NoConsistentImage as exc:
            if not self._inconsistent_logged:
                log.warning("read of %s refused: %s", volume, exc)
                self._inconsistent_logged = True
            raise ExportError(Err.EIO, str(exc)) from None
        self._inconsistent_logged = False
        return data

    # -- status ---------------------------------------------------------------------------------------
    def current_link(self) -> LinkProtocol | None:
        return self.active

    async def add_status(self, st: Status, link: LinkProtocol | None) -> None:
        own = st.secondary
        own.listen = self.listen_text
        own.tls = self.tls_context is not None
        own.tls_failures = self.tls_failures
        own.connections_accepted = self.accepted_count
        own.busy_refusals = self.busy_refusals
        as_of = self.node.consistent_as_of
        if as_of is not None and own.consistent:
            own.consistent_at = wall_clock(time.monotonic() - as_of)

    # -- shutdown ------------------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop accepting, say goodbye to the primary, stop stepping, close."""
        self._closing = True
        if self.listener is not None:
            self.listener.close()
        for link in list(self.waiting):
            link.abort("shutting down")
        self.waiting.clear()
        for link in list(self._tls_pending):
            if link.tls_task is not None:
                link.tls_task.cancel()
        self._tls_pending.clear()
        await self.stop()
        if self.node is not None and self.fatal is None:
            try:
                await self.step_once([Stop()])
            except Exception as exc:  # noqa: BLE001 - a failing disk must not keep the node open
                log.error("stopping the node failed: %r", exc)
        link = self.active
        if link is not None and not link.closed:
            link.close("shutting down")

        def final():
            try:
                self.storage.flush()
            except BlockmirrorError as exc:
                log.error("final flush failed: %s", exc)
            self.storage.close()
        await self.engine_thread.call(final)
        self.engine_thread.shutdown()
