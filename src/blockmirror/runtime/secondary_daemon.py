"""The secondary: listens for its primary, feeds the SecondaryEngine on its
own thread, and (optionally) serves its last consistent image read-only
over NBD.

One primary at a time. An accepted connection waits, not reading, until no
other link is active; then its handshake starts with the engine's committed
point taken at that moment (so the Ready it sends is never stale). A link
that does not finish its handshake in time is closed; a waiting connection
gives up when the active link outlives its patience. When the primary
reconnects after a silent failure, the old link is usually already gone by
the engine's own link timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
import uuid
from collections import deque

from blockmirror.engine import SecondaryConfig, SecondaryEngine
from blockmirror.errors import BlockmirrorError
from blockmirror.nbd.export import ExportError
from blockmirror.nbd.wire import Err
from blockmirror.protocol import (
    NIL_UUID,
    Connection,
    ErrorCode,
    Goodbye,
    LocalNode,
    ResyncBegin,
    ResyncCommit,
    ResyncData,
    ResyncZeroes,
    Role,
    VolumeInfo,
)
from blockmirror.runtime.driver import EngineDriver, StepResult
from blockmirror.runtime.engine_export import SecondaryExport
from blockmirror.runtime.enginethread import EngineThread
from blockmirror.runtime.pairing import PairIdentity
from blockmirror.runtime.progress import add_rate
from blockmirror.runtime.transport import LinkProtocol
from blockmirror.storage import Node

log = logging.getLogger("blockmirror.secondary")

WAITING_LINKS_MAX = 4
BUSY_HEARD_HEARTBEATS = 2  # a linked primary heard within this many heartbeat intervals is alive
TLS_PENDING_MAX = 8  # TLS handshakes at once; more connections are reset


class _RoundStats:
    def __init__(self, round_id: int, kind: str, started: float):
        self.round_id = round_id
        self.kind = kind
        self.started = started
        self.chunks = 0
        self.bytes = 0
        self.extents = 0
        self.bytes_max = 0


class SecondaryDaemon(EngineDriver):
    role = "secondary"

    def __init__(self, node: Node, config: SecondaryConfig, secret: bytes, pair: PairIdentity,
                 tls_context: ssl.SSLContext | None = None):
        super().__init__(EngineThread("secondary-engine"), log)
        self.tls_context = tls_context
        self._tls_pending: set[LinkProtocol] = set()  # TLS handshakes under way
        self._tls_errors_logged: set[str] = set()
        self.tls_failures = 0
        self.node = node
        self.config = config
        self.secret = secret
        self.pair = pair
        self.engine: SecondaryEngine | None = None
        self.listener: asyncio.base_events.Server | None = None
        self.listen_text = ""
        self.active: LinkProtocol | None = None  # handshaking or linked (loop side)
        self.waiting: deque[LinkProtocol] = deque()
        self._engine_link: LinkProtocol | None = None
        self._round: _RoundStats | None = None
        self.last_resync = {"round": 0, "kind": "", "chunks": 0, "bytes": 0, "seconds": 0.0}
        self.exports: list[SecondaryExport] = []
        self.accepted = 0
        self.busy_refusals = 0
        self._closing = False
        self._inconsistent_logged = False

    async def open(self) -> None:
        self.engine = await self.engine_thread.call(SecondaryEngine, self.node, self.config, time.monotonic())
        self.exports = [SecondaryExport(self, v.name, v.size) for v in self.node.volumes.values()]

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
        self.accepted += 1
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
            # Queued behind any earlier link's end, so the engine's committed
            # point it reads already includes that link_down.
            self._events.append((link, "activate", None))
            self._wake.set()
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

    # -- steps -----------------------------------------------------------------------------------
    def _local_node(self) -> LocalNode:
        eng = self.engine
        gen, seq = (NIL_UUID, 0) if eng.inconsistent else (eng.generation, eng.seq)
        return LocalNode(Role.SECONDARY, uuid.UUID(self.node.node_uuid), self.pair.uuid, self.pair.name,
                         tuple(VolumeInfo(n, u, s) for n, u, s in eng.volume_infos()), gen, seq)

    def step(self, now: float, events: list, inputs) -> StepResult:
        eng = self.engine
        res = StepResult()
        res.extra["activate"] = []
        got = False
        for link, kind, payload in events:
            if kind == "activate":
                res.extra["activate"].append((link, self._local_node()))
            elif kind == "up":
                assert self._engine_link is None, "two links up at once"
                eng.link_up(now, payload)
                self._engine_link = link
                res.reasons.append(f"link up from {link.peer}")
            elif kind == "msg":
                if link is self._engine_link:
                    self._observe(now, payload)
                    eng.on_message(now, payload)
                    got = True
                    if isinstance(payload, ResyncBegin):
                        res.reasons.append(f"resync round {payload.round_id} begins")
                    elif isinstance(payload, ResyncCommit):
                        res.reasons.append(f"resync round {payload.round_id} committed")
            elif kind == "closed":
                reason, _ = payload
                if link is self._engine_link and got:
                    got = False
                    self._end_batch(now, res)  # what arrived before the close is still good
                if link is self._engine_link:
                    eng.link_down(now, reason)
                    self._engine_link = None
                    self._round = None
                    res.reasons.append(f"link down: {reason}")
        if got and self._engine_link is not None:
            self._end_batch(now, res)
        nt = eng.next_timer()
        if nt is not None and nt <= now and not eng.on_timer(now):
            link = self._engine_link
            reason = f"nothing heard from the primary for {self.config.link_timeout_s:g}s (link silent)"
            eng.link_down(now, reason)
            self._engine_link = None
            self._round = None
            res.kill.append((link, reason))
            res.reasons.append(f"link down: {reason}")
        res.send = eng.take_outbox()
        res.link = self._engine_link
        res.next_timer = eng.next_timer()
        res.state = self._state()
        return res

    def _end_batch(self, now: float, res: StepResult) -> bool:
        """Group commit; a disk that cannot take the data fails the link."""
        try:
            self.engine.end_of_batch(now)
            return True
        except BlockmirrorError as exc:
            link = self._engine_link
            reason = f"cannot store the primary's data: {exc}"
            self.engine.link_down(now, reason)
            self._engine_link = None
            self._round = None
            res.kill.append((link, reason))
            res.reasons.append(f"link down: {reason}")
            return False

    def _observe(self, now: float, msg) -> None:
        """Resync statistics for status (the engine keeps none)."""
        now = time.monotonic()  # a round may begin and end within one step
        chunk = self.node.chunk_size
        if isinstance(msg, ResyncBegin):
            kind = "full" if msg.base_generation == NIL_UUID else "incremental"
            self._round = _RoundStats(msg.round_id, kind, now)
            self._round.bytes_max = msg.data_bytes_max
        elif isinstance(msg, (ResyncData, ResyncZeroes)) and self._round is not None:
            length = len(msg.data) if isinstance(msg, ResyncData) else msg.length_bytes
            self._round.extents += 1
            if isinstance(msg, ResyncData):  # like the primary: zero extents (holes) are not counted
                self._round.chunks += -(-length // chunk)
                self._round.bytes += length
        elif isinstance(msg, ResyncCommit) and self._round is not None:
            r = self._round
            self.last_resync = {"round": r.round_id, "kind": r.kind, "chunks": r.chunks, "bytes": r.bytes,
                                "seconds": round(now - r.started, 6)}
            self._round = None

    def _state(self) -> str:
        eng = self.engine
        if not eng.linked:
            return "disconnected"
        rnd = eng.round_open
        if eng.inconsistent or eng.generation == NIL_UUID or (rnd is not None and rnd["kind"] == "full"):
            return "initial-sync"
        if rnd is not None:
            return "resyncing"
        return "mirroring"

    def apply(self, res: StepResult) -> bool:
        for link, local in res.extra["activate"]:
            if link.closed:
                continue
            link.start(Connection(local, self.secret, os.urandom))
        return False

    # -- read-only export ---------------------------------------------------------------------------
    async def read_image(self, volume: str, offset: int, length: int) -> bytes:
        if self.fatal is not None:
            raise ExportError(Err.ESHUTDOWN, "the secondary stopped")
        return await self.engine_thread.call(self._read_image, volume, offset, length)

    def _read_image(self, volume: str, offset: int, length: int) -> bytes:
        eng = self.engine
        if eng.inconsistent:
            if not self._inconsistent_logged:
                log.warning("read of %s refused: no consistent image yet (the first full sync is under way)", volume)
                self._inconsistent_logged = True
            raise ExportError(Err.EIO, "no consistent image yet: the first full sync is under way")
        self._inconsistent_logged = False
        return eng.read_image(volume, offset, length)

    # -- status ---------------------------------------------------------------------------------------
    def _status(self) -> dict:
        eng = self.engine
        st = eng.status()
        rnd = eng.round_open
        space = {s.id: s for s in self.node.snapshot_space()}
        progress = None
        if self._round is not None:
            r = self._round
            progress = add_rate({"round": r.round_id, "kind": r.kind, "chunks_done": r.chunks, "bytes_done": r.bytes,
                                 "bytes_max": r.bytes_max}, r.started, time.monotonic())
        return {
            "role": "secondary",
            "state": self._state(),
            "peer_connected": eng.linked,
            "generation": None if st.generation == NIL_UUID else str(st.generation),
            "seq": st.seq,
            "consistent": not st.inconsistent and st.generation != NIL_UUID,
            "round_open": None if rnd is None else {"id": rnd["id"], "kind": rnd["kind"]},
            "journal_bytes": st.journal_bytes,
            "last_resync": dict(self.last_resync),
            "resync_progress": progress,
            "snapshots": [{"id": s.id, "label": s.label, "space_bytes": space[s.id].data_bytes,
                           "exceptions": space[s.id].exceptions} for s in self.node.snapshots()],
            "volumes": [{"name": n, "size": s, "uuid": str(u)} for n, u, s in eng.volume_infos()],
        }

    async def status(self) -> dict:
        st = await self.engine_thread.call(self._status)
        st["pair"] = {"name": self.pair.name, "uuid": str(self.pair.uuid)}
        st["listen"] = self.listen_text
        st["node"] = self.node.path
        link = self.active
        st["link"] = None if link is None else {
            "peer": link.peer, "established": link.established, "tls": link.tls,
            "bytes_sent": link.bytes_sent, "bytes_received": link.bytes_received}
        st["tls"] = self.tls_context is not None
        st["tls_failures"] = self.tls_failures
        st["state_seconds"] = round(time.monotonic() - self.state_since, 3)
        st["connections_accepted"] = self.accepted
        st["busy_refusals"] = self.busy_refusals
        st["engine_steps"] = self.steps
        return st

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
        link = self.active
        if link is not None and not link.closed:
            if link.established:
                link.send([Goodbye()])
            link.close("shutting down")

        def final():
            try:
                self.engine.link_down(time.monotonic(), "shutting down")
            except Exception as exc:  # noqa: BLE001 - a failing disk must not keep the node open
                log.error("engine link_down at shutdown failed: %r", exc)
            try:
                self.node.flush()
            except BlockmirrorError as exc:
                log.error("final flush failed: %s", exc)
            self.node.close()
        if self.engine is not None:
            await self.engine_thread.call(final)
        else:
            await self.engine_thread.call(self.node.close)
        self.engine_thread.shutdown()
