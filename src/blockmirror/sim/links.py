"""The connection half of the cluster glue (cluster.py holds the nodes'
half): each node's step with its queued events, its Output applied as a
daemon applies it (dial, answer, send, close), real protocol Connections,
delivery of the bytes that arrived, and link failures as each end sees them.
A mixin of Cluster: the two modules are the only ones that call the nodes
or Connections."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from blockmirror.engine import Accepted, Answer, Dial, LinkClosed, LinkUp, Output, Received
from blockmirror.protocol import Ack, Connection, ConnectionClosed, Error, Established, ProtocolError
from blockmirror.sim.network import SimConn

if TYPE_CHECKING:
    from blockmirror.sim.cluster import SimNode

SECRET = b"simulated pair secret, 32 bytes!"
STEPS_PER_RUN_MAX = 8  # node steps per simulated instant before time moves on


class Links:
    """Connection handling for Cluster, which provides the nodes (`primary`,
    `secondary`), `net`, `now`, `_call` (a call that may crash or stop the node) and the event sinks."""

    # -- steps ---------------------------------------------------------------------------------
    def run_nodes(self) -> None:
        """Step both nodes until neither has events left (a step may queue
        some for the other), as the daemons' drivers would."""
        for _ in range(STEPS_PER_RUN_MAX):
            self.run_node(self.primary)
            self.run_node(self.secondary)
            if not (self.primary.events or self.secondary.events):
                return

    def run_node(self, side: SimNode) -> None:
        if not side.up:
            side.events = []
            return
        events, side.events = side.events, []
        conn = self.net.conn
        budget = 0
        if side is self.primary and conn is not None and conn.p_link == side.engine.link:
            budget = self._send_budget(conn)
        out = self._call(side, side.engine.step, self.now, events, budget)
        if out is None:
            return  # the node died or stopped in it
        self._apply(side, out)
        if side is self.secondary and side.up and events:
            closed = any(isinstance(e, LinkClosed) for e in events) or out.close
            self.events.secondary_changed("after the link closed" if closed else "after a batch")

    def _apply(self, side: SimNode, out: Output) -> None:
        for line in out.logs:
            self.trace(f"{side.name}: {line.text}")
        if side is self.primary:
            self._completed(out.completions)
        for close in out.close:
            conn = self.net.conn
            if conn is not None and self._link_of(side, conn) == close.link:
                if close.last:
                    self._send(side, conn, list(close.last))
                self._close_conn(side, close.reason, tell_self=False)
        for start in out.start:
            if isinstance(start, Dial):
                self._dial(start)
            elif isinstance(start, Answer):
                self._answer(start)
        conn = self.net.conn
        if out.send and conn is not None and self._link_of(side, conn) == out.link:
            self._send(side, conn, out.send)

    def _link_of(self, side: SimNode, conn: SimConn) -> int:
        """The id `side`'s node knows `conn` by: the primary's own attempt
        number (it starts over with each process), the secondary's a number
        unique in the scenario (as a daemon's accepted links are)."""
        return conn.p_link if side is self.primary else conn.id

    def _send(self, side: SimNode, conn: SimConn, messages: list) -> None:
        if side is self.primary:
            for msg in messages:
                self.net.send(self.now, conn.to_secondary, conn.p_conn.send(msg))
            return
        if conn.s_conn is None:
            return
        for msg in messages:
            if isinstance(msg, Ack):
                self.events.secondary_acked(msg.seq)
                if self.net.conn is not conn:
                    return
            self.net.send(self.now, conn.to_primary, conn.s_conn.send(msg))

    def _send_budget(self, conn: SimConn) -> int:
        budget = self.opts.send_budget_bytes
        if self.opts.send_budget_random:
            budget = self.rng.randint(1, budget)
        return max(0, budget - conn.to_secondary.queued_bytes)

    # -- connections ---------------------------------------------------------------------------
    def _dial(self, dial: Dial) -> None:
        p, s = self.primary, self.secondary
        if self.net.conn is not None or not s.up or not self.net.reachable(self.now):
            if s.up and self.now < self.net.partitioned_until:
                self.fired("partition")
                self.fired("outage")
            if s.up and self.net.blackholed(self.now):
                self.fired("blackhole")
            p.events.append(LinkClosed(dial.link, "unreachable"))
            return
        rb = random.Random(self.rng.random()).randbytes
        verify = "no-frame-checksum" not in self.opts.mutations
        self._conn_ids += 1
        conn = SimConn(self._conn_ids, Connection(dial.local, SECRET, rb, verify_checksums=verify), None,
                       p_link=dial.link, randbytes=rb)
        self.net.conn = conn
        conn.p_conn.initiate()
        self.net.send(self.now, conn.to_secondary, conn.p_conn.data_to_send())
        s.events.append(Accepted(conn.id))
        self.trace(f"connect #{conn.id}")

    def _answer(self, answer: Answer) -> None:
        conn = self.net.conn
        if conn is not None and conn.id == answer.link and conn.s_conn is None:
            verify = "no-frame-checksum" not in self.opts.mutations
            conn.s_conn = Connection(answer.local, SECRET, conn.randbytes, verify_checksums=verify)

    def cut(self, reason: str) -> None:
        """The network closes the connection: both ends see it."""
        self._close_conn(None, reason)

    def _close_conn(self, side: SimNode | None, reason: str, tell_self: bool = True,
                    refused: int | None = None) -> None:
        """`side` closes its end (None: the network cut both ends). A node
        that closed it itself (`tell_self` False) already knows; a node that
        is down hears nothing; across a black hole the other end is not told
        and finds out by its own timeout."""
        conn = self.net.conn
        if conn is None:
            return
        self.net.conn = None
        self.trace(f"close #{conn.id} by {side.name if side else 'network'}: {reason}")
        for s in (self.primary, self.secondary):
            if not s.up or (s is side and not tell_self):
                continue
            if s is not side and side is not None and self.net.blackholed(self.now):
                continue
            s.events.append(LinkClosed(self._link_of(s, conn), reason, refused if s is side else None))

    def deliver(self) -> None:
        """Everything due arrives; each end takes what arrived as one batch
        (as a daemon takes one read of its socket)."""
        conn = self.net.conn
        if conn is None:
            return
        for pipe, side in ((conn.to_secondary, self.secondary), (conn.to_primary, self.primary)):
            arrived = pipe.take_due(self.now)
            pconn = conn.s_conn if side is self.secondary else conn.p_conn
            if side.up and arrived and pconn is not None:
                self._receive(side, pconn, conn, arrived)
            if self.net.conn is not conn:
                return

    def _receive(self, side: SimNode, pconn: Connection, conn: SimConn, data: bytes) -> None:
        pconn.receive_data(data)
        msgs: list = []
        try:
            for event in pconn.events():
                if isinstance(event, (ConnectionClosed, Error)):
                    self._queue(side, conn, msgs)
                    self._close_conn(side, f"peer closed ({event})",
                                     refused=event.code if isinstance(event, Error) else None)
                    return
                if isinstance(event, Established):
                    self._queue(side, conn, msgs)
                    msgs = []
                    if side is self.primary:
                        self.events.link_established(str(event.committed_generation), event.committed_seq,
                                                     event.peer_round)
                    side.events.append(LinkUp(self._link_of(side, conn), event))
                else:
                    msgs.append(event)
        except ProtocolError as exc:
            self.trace(f"protocol error at {side.name}: {exc}")
            if not conn.corrupted:
                self.events.protocol_error(side.name, exc)
            self._queue(side, conn, msgs)
            # The receiver caught the corruption: it drops the link, as a cut would.
            self._close_conn(None, f"corrupt frame at {side.name}: {exc}")
            return
        self._queue(side, conn, msgs)
        other = conn.to_secondary if side is self.primary else conn.to_primary
        self.net.send(self.now, other, pconn.data_to_send())

    def _queue(self, side: SimNode, conn: SimConn, msgs: list) -> None:
        if msgs:
            side.events.append(Received(self._link_of(side, conn), msgs))
