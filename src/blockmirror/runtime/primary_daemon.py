"""The replicating primary: NBD for the hosts, one outgoing link to the
secondary, the PrimaryEngine on its own thread.

Host writes from every NBD connection queue in the driver; each step hands
all of them to `engine.submit` at once (group commit) and completes the NBD
requests whose tokens the engine completes. The link is dialled whenever the
engine says `want_connect` (its reconnect backoff); a link that fails before
the handshake ends is `connect_failed`, one that fails later is `link_down`.
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
import uuid

from blockmirror.engine import HostFlush, HostWrite, PrimaryConfig, PrimaryEngine
from blockmirror.errors import BlockmirrorError
from blockmirror.nbd.export import ExportError
from blockmirror.nbd.wire import Err
from blockmirror.protocol import Connection, Goodbye, LocalNode, ResyncCommitted, Role, VolumeInfo
from blockmirror.runtime.driver import EngineDriver, StepResult
from blockmirror.runtime.engine_export import PrimaryExport
from blockmirror.runtime.enginethread import EngineThread
from blockmirror.runtime import tls
from blockmirror.runtime.pairing import PairIdentity
from blockmirror.runtime.progress import add_rate
from blockmirror.runtime.transport import LinkProtocol
from blockmirror.storage import Node, WriteOp

log = logging.getLogger("blockmirror.primary")

READ_THREADS = 4
DRAIN_S = 5.0  # at shutdown, wait this long for the secondary to acknowledge everything


class PrimaryDaemon(EngineDriver):
    role = "primary"
    replies_first = True

    def __init__(self, node: Node, config: PrimaryConfig, peer: tuple[str, int], secret: bytes,
                 pair: PairIdentity, tls_context: ssl.SSLContext | None = None):
        super().__init__(EngineThread("primary-engine"), log)
        self.tls_context = tls_context
        self.node = node
        self.config = config
        self.peer = peer
        self.peer_text = f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}"
        self.secret = secret
        self.pair = pair
        self.engine: PrimaryEngine | None = None
        self.local: LocalNode | None = None
        self.link: LinkProtocol | None = None  # the current attempt or link (loop side)
        self._engine_link: LinkProtocol | None = None  # engine thread side
        self._attempts = 0  # engine thread: connection attempts started
        self._attempt_open: int | None = None  # engine thread: the attempt the engine waits for
        self._host: list = []
        self._futures: dict[int, asyncio.Future] = {}
        self._tokens = itertools.count(1)
        self._closing = False
        self._connect_task: asyncio.Task | None = None
        self._reader = concurrent.futures.ThreadPoolExecutor(READ_THREADS, thread_name_prefix="nbd-read")
        self.exports: list[PrimaryExport] = []
        self.last_link_error: str | None = None
        self.connects = 0
        self._round_seen: tuple[int, float] | None = None  # engine thread: (round id, monotonic start)
        self.host_writes = 0
        self.host_batches = 0

    async def open(self) -> None:
        """Recover the engine (disk I/O, on the engine thread)."""
        self.engine = await self.engine_thread.call(
            PrimaryEngine, self.node, self.config, random.Random(), time.monotonic())
        self.local = LocalNode(Role.PRIMARY, uuid.UUID(self.node.node_uuid), self.pair.uuid, self.pair.name,
                               tuple(VolumeInfo(n, u, s) for n, u, s in self.engine.volume_infos()))
        self.exports = [PrimaryExport(self, vol, self._reader) for vol in self.node.volumes.values()]

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
        self._host.append(make(token))
        self._wake.set()
        await future

    # -- the link ---------------------------------------------------------------------------
    def on_link_closed(self, link: LinkProtocol, reason: str) -> None:
        if link is self.link:
            self.link = None
        if not link.established:
            if reason != self.last_link_error and any(w in reason for w in ("refused", "protocol error", "TLS")):
                log.error("the link to %s was refused: %s", self.peer_text, reason)
            self.last_link_error = reason

    async def _connect(self, attempt: int) -> None:
        link = LinkProtocol(self, peer_role="the secondary")
        link.attempt = attempt
        self.link = link
        self.connects += 1
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
        if self._closing:
            link.close("shutting down")
            return
        conn = Connection(self.local, self.secret, os.urandom)
        conn.initiate()
        link.start(conn)
        log.debug("connected to %s, handshake under way", self.peer_text)  # the engine times the handshake

    # -- steps --------------------------------------------------------------------------------
    def take_inputs(self):
        host, self._host = self._host, []
        link = self.link
        budget = link.send_budget() if link is not None and link.established and link.writable else 0
        return host, budget

    def step(self, now: float, events: list, inputs) -> StepResult:
        eng = self.engine
        host, budget = inputs
        res = StepResult()
        for link, kind, payload in events:
            if kind == "up":
                if link.attempt != self._attempt_open:
                    continue  # the engine gave up on this attempt; it is being closed
                self._attempt_open = None
                eng.link_up(now, payload)
                self._engine_link = link
                res.reasons.append(f"link up to {link.peer}")
            elif kind == "msg":
                if link is self._engine_link:
                    eng.on_message(now, payload)
                    if isinstance(payload, ResyncCommitted):
                        res.reasons.append(f"the secondary committed resync round {payload.round_id}")
            elif kind == "closed":
                reason, established = payload
                if link is self._engine_link:
                    eng.link_down(now, reason)
                    self._engine_link = None
                    res.reasons.append(f"link down: {reason}")
                elif not established and link.attempt == self._attempt_open:
                    self._attempt_open = None
                    eng.connect_failed(now, reason)
        if host:
            eng.submit(now, host)
        if eng.next_timer() <= now and not eng.on_timer(now):
            if self._engine_link is not None:
                reason = f"nothing heard from the secondary for {self.config.link_timeout_s:g}s (link silent)"
                eng.link_down(now, reason)
                res.kill.append((self._engine_link, reason))
                self._engine_link = None
                res.reasons.append(f"link down: {reason}")
            else:  # a connection attempt whose handshake never finished
                reason = f"no handshake with {self.peer_text} within {self.config.link_timeout_s:g}s"
                eng.connect_failed(now, reason)
                res.extra["kill_attempt"] = (self._attempt_open, reason)
                self._attempt_open = None
        if self._engine_link is not None and budget > 0:
            res.send = eng.poll_transmit(now, budget)
        res.link = self._engine_link
        res.extra["completions"] = eng.take_completions()
        res.extra["connect"] = None
        if not self._closing and eng.want_connect(now):
            eng.connecting(now)
            self._attempts += 1
            self._attempt_open = self._attempts
            res.extra["connect"] = self._attempt_open
        rnd = eng.round
        if rnd is not None and (self._round_seen is None or self._round_seen[0] != rnd.id):
            self._round_seen = (rnd.id, now)
        res.next_timer = eng.next_timer()
        res.state = eng.state
        return res

    def apply(self, res: StepResult) -> bool:
        for token, exc in res.extra["completions"]:
            future = self._futures.pop(token, None)
            if future is None or future.done():
                continue
            if exc is None:
                future.set_result(None)
            else:
                future.set_exception(exc)
        kill = res.extra.get("kill_attempt")
        if kill is not None and self.link is not None and self.link.attempt == kill[0]:
            log.warning("closing link %r: %s", self.link, kill[1])
            self.link.abort(kill[1])
        if res.extra["connect"] is not None and not self._closing:
            self._connect_task = asyncio.get_running_loop().create_task(self._connect(res.extra["connect"]))
        return False

    # -- status -------------------------------------------------------------------------------
    async def status(self) -> dict:
        st = await self.engine_thread.call(self.engine.status)
        st["volumes"] = [{"name": n, "size": s, "uuid": str(u)} for n, u, s in self.engine.volume_infos()]
        st["pair"] = {"name": self.pair.name, "uuid": str(self.pair.uuid)}
        st["peer"] = self.peer_text
        st["node"] = self.node.path
        link = self.link
        st["link"] = None if link is None else {
            "peer": link.peer, "established": link.established, "tls": link.tls,
            "bytes_sent": link.bytes_sent, "bytes_received": link.bytes_received}
        if st.get("resync_progress") and link is not None:
            # Chunks "done" are handed to the socket; what still sits in our
            # buffers has not reached the secondary yet.
            st["resync_progress"]["bytes_queued"] = link.queued_bytes()
        prog = st.get("resync_progress")
        if prog:
            seen = self._round_seen
            add_rate(prog, seen[1] if seen is not None and seen[0] == prog["round"] else None, time.monotonic())
        st["last_link_error"] = self.last_link_error
        st["state_seconds"] = round(time.monotonic() - self.state_since, 3)
        st["connect_attempts"] = self.connects
        st["engine_steps"] = self.steps
        return st

    async def drain(self, timeout_s: float = DRAIN_S) -> bool:
        """Wait (bounded) until the secondary has acknowledged every write."""
        deadline = time.monotonic() + timeout_s
        eng = self.engine
        while time.monotonic() < deadline:
            done, in_round = await self.engine_thread.call(
                lambda: (not eng.linked or (eng.state == "mirroring" and eng.acked >= eng.seq and not eng.waiting),
                         eng.round is not None))
            if done:
                return True
            if in_round:
                # The secondary rolls an unfinished round back, and a clean stop
                # records what it lacks: waiting could only save a resend.
                log.info("stopping during resync round %s: it is resent after the restart", eng.round.id)
                return True
            await asyncio.sleep(0.02)
        return False

    async def close(self) -> None:
        """Stop stepping, mark the engine's stop clean, say goodbye, close."""
        self._closing = True
        await self.stop()
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        leftovers = []
        if self.fatal is None:
            def final():
                self.engine.shutdown(time.monotonic())
                return self.engine.take_completions()
            try:
                leftovers = await self.engine_thread.call(final)
            except BaseException as exc:
                log.error("engine shutdown failed: %r", exc)
        for token, exc in leftovers:
            future = self._futures.pop(token, None)
            if future is not None and not future.done():
                future.set_result(None) if exc is None else future.set_exception(exc)
        for future in self._futures.values():
            if not future.done():
                future.set_exception(ExportError(Err.ESHUTDOWN, "the primary is shutting down"))
        self._futures.clear()
        link = self.link
        if link is not None and not link.closed:
            if link.established:
                link.send([Goodbye()])
            link.close("shutting down")
        await self.engine_thread.call(self._close_node)
        self.engine_thread.shutdown()
        self._reader.shutdown(wait=True)

    def _close_node(self) -> None:
        try:
            self.node.flush()
        except BlockmirrorError as exc:
            log.error("final flush failed: %s", exc)
        self.node.close()
