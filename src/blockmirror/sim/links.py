"""The connection half of the cluster glue (cluster.py holds the nodes'
half): connection attempts and handshakes through real protocol
Connections, delivery of the bytes that arrived, the engines' messages and
timers, and link failures as each end sees them. A mixin of Cluster: the
two modules are the only ones that call the engines or Connections."""

from __future__ import annotations

import random
import uuid
from typing import TYPE_CHECKING

from blockmirror.protocol import (
    NIL_UUID,
    Ack,
    Connection,
    ConnectionClosed,
    Error,
    Established,
    LocalNode,
    ProtocolError,
    Role,
    VolumeInfo,
)
from blockmirror.sim.network import SimConn

if TYPE_CHECKING:
    from blockmirror.sim.cluster import SimNode

SECRET = b"simulated pair secret, 32 bytes!"


class Links:
    """Connection handling for Cluster, which provides the nodes (`primary`,
    `secondary`), `net`, `now`, `_call` and the event sinks."""

    def connect(self) -> None:
        p, s = self.primary, self.secondary
        if not (p.up and p.engine.want_connect(self.now)) or self.net.conn is not None:
            return
        if not s.up or not self.net.reachable(self.now):
            if s.up and self.now < self.net.partitioned_until:
                self.fired("partition")
                self.fired("outage")
            if s.up and self.net.blackholed(self.now):
                self.fired("blackhole")
            self._call(p, p.engine.connect_failed, self.now, "unreachable")
            return
        self._conn_ids += 1
        prim, sec = p.engine, s.engine
        ploc = LocalNode(Role.PRIMARY, uuid.UUID(p.node.node_uuid), self.pair_uuid, "simpair",
                         tuple(VolumeInfo(n, u, sz) for n, u, sz in prim.volume_infos()))
        gen, seq = (NIL_UUID, 0) if sec.inconsistent else (sec.generation, sec.seq)
        sloc = LocalNode(Role.SECONDARY, uuid.UUID(s.node.node_uuid), self.pair_uuid, "simpair",
                         tuple(VolumeInfo(n, u, sz) for n, u, sz in sec.volume_infos()), gen, seq)
        rb = random.Random(self.rng.random()).randbytes
        verify = "no-frame-checksum" not in self.opts.mutations
        conn = SimConn(self._conn_ids, Connection(ploc, SECRET, rb, verify_checksums=verify),
                       Connection(sloc, SECRET, rb, verify_checksums=verify))
        self.net.conn = conn
        prim.connecting(self.now)
        conn.p_conn.initiate()
        self.net.send(self.now, conn.to_secondary, conn.p_conn.data_to_send())
        self.trace(f"connect #{conn.id}")

    def cut(self, reason: str) -> None:
        """The network closes the connection: both ends see it."""
        self._close_conn(None, reason)

    def _close_conn(self, side: SimNode | None, reason: str) -> None:
        """`side` closes its end (None: the network cut both ends); a node
        that is down hears nothing."""
        conn = self.net.conn
        if conn is None:
            return
        self.net.conn = None
        self.trace(f"close #{conn.id} by {side.name if side else 'network'}: {reason}")
        for s in (self.primary, self.secondary):
            attached = conn.secondary_attached if s is self.secondary else True
            if not s.up or not attached:
                continue
            # A cut or a crash reaches the other end at once here; a black hole never does,
            # and that end finds out by its own timeout (the engines' link_timeout_s).
            if s is not side and side is not None and self.net.blackholed(self.now):
                self._orphans.add(s.name)
                continue
            if s is self.primary and not s.engine.linked:
                if s is side or self.net.conn is None:
                    self._call(s, s.engine.connect_failed, self.now, reason)
                continue
            self._call(s, s.engine.link_down, self.now, reason)
        if self.secondary.up:
            self.events.secondary_changed("after the link closed")  # a round rolled back

    def deliver(self) -> None:
        """Everything due arrives; each end takes what arrived as one batch
        (as a daemon takes one read of its socket)."""
        conn = self.net.conn
        if conn is None:
            return
        for pipe, side, pconn in ((conn.to_secondary, self.secondary, conn.s_conn),
                                  (conn.to_primary, self.primary, conn.p_conn)):
            arrived = pipe.take_due(self.now)
            if side.up and arrived:
                self._receive(side, pconn, conn, arrived)
            if self.net.conn is not conn:
                return

    def _receive(self, side: SimNode, pconn: Connection, conn: SimConn, data: bytes) -> None:
        pconn.receive_data(data)
        eng = side.engine
        try:
            for event in pconn.events():
                if isinstance(event, Established):
                    if side is self.secondary:
                        conn.secondary_attached = True
                    else:
                        self.events.link_established(str(event.committed_generation), event.committed_seq)
                    self._call(side, eng.link_up, self.now, event)
                elif isinstance(event, (ConnectionClosed, Error)):
                    self._close_conn(side, f"peer closed ({event})")
                    return
                else:
                    self._call(side, eng.on_message, self.now, event)
                if not side.up or self.net.conn is not conn:
                    return
                if side is self.secondary and "ack-before-durable" in self.opts.mutations:
                    self.pump()
        except ProtocolError as exc:
            self.trace(f"protocol error at {side.name}: {exc}")
            if not conn.corrupted:
                self.events.protocol_error(side.name, exc)
            # The receiver caught the corruption: it drops the link, as a cut would.
            self._close_conn(None, f"corrupt frame at {side.name}: {exc}")
            return
        if side is self.secondary:
            self._call(side, eng.end_of_batch, self.now,
                       on_error=lambda exc: self._close_conn(side, f"secondary cannot store: {exc}"))
            if side.up and self.net.conn is conn and eng.round_open is None:
                self.events.secondary_changed("after a batch")

    def _send_budget(self, conn: SimConn) -> int:
        budget = self.opts.send_budget_bytes
        if self.opts.send_budget_random:
            budget = self.rng.randint(1, budget)
        return max(0, budget - conn.to_secondary.queued_bytes)

    def pump(self) -> None:
        conn = self.net.conn
        if conn is None:
            return
        p, s = self.primary, self.secondary
        if p.up:
            msgs = self._call(p, p.engine.poll_transmit, self.now, self._send_budget(conn)) or []
            if self.net.conn is not conn:
                return
            for msg in msgs:
                self.net.send(self.now, conn.to_secondary, conn.p_conn.send(msg))
            self.net.send(self.now, conn.to_secondary, conn.p_conn.data_to_send())
        if s.up and conn.secondary_attached:
            for msg in s.engine.take_outbox():
                if isinstance(msg, Ack):
                    self.events.secondary_acked(msg.seq)
                    if self.net.conn is not conn:
                        return
                self.net.send(self.now, conn.to_primary, conn.s_conn.send(msg))
        if s.up:
            self.net.send(self.now, conn.to_primary, conn.s_conn.data_to_send())

    def timers(self) -> None:
        for side in (self.primary, self.secondary):
            due = side.engine.next_timer() if side.up else None
            if due is None or due > self.now:
                continue
            if self._call(side, side.engine.on_timer, self.now) is not False:
                continue
            if side is self.primary and not side.engine.linked:
                self._orphans.discard(side.name)
                if self.net.conn is not None:
                    self._close_conn(side, "handshake timed out")
                else:
                    self._call(side, side.engine.connect_failed, self.now, "handshake timed out")
            elif side.name in self._orphans:
                self._orphans.discard(side.name)
                self._call(side, side.engine.link_down, self.now, "link silent")
            else:
                self._close_conn(side, "link silent (timeout)")
