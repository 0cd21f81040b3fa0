"""Two nodes on real node directories joined by an in-memory link that
carries real protocol bytes; the test decides when bytes move. It drives
`PrimaryNode`/`SecondaryNode` exactly as the daemons do: events in, Output
applied."""

import random
import uuid

from blockmirror.engine import (
    Accepted, HostRequests, HostWrite, LinkClosed, LinkUp, PrimaryConfig, PrimaryNode, Received, SecondaryConfig,
    SecondaryNode,
)
from blockmirror.protocol import Connection, ConnectionClosed, Error, Established
from blockmirror.storage import Node, WriteOp

SECRET = b"engine test secret, long enough"
PAIR = uuid.UUID(int=7, version=4)


class Pair:
    def __init__(self, tmp_path, volumes: dict[str, int], chunk_size: int = 4096, **config):
        self.tmp_path = tmp_path
        self.pnode = Node.create(str(tmp_path / "p"), volumes, chunk_size=chunk_size)
        self.snode = Node.create(str(tmp_path / "s"), volumes, chunk_size=chunk_size)
        self.now = 0.0
        self.config = config
        self.primary = PrimaryNode(self.pnode, PrimaryConfig(**config), random.Random(1), self.now, PAIR, "t")
        self.secondary = SecondaryNode(self.snode, SecondaryConfig(), self.now, PAIR, "t")
        self.tokens = 0
        self.done: dict[int, object] = {}
        self.conns = None  # (primary Connection, secondary Connection, link id)
        self.send_budget = 1 << 62  # 0: the primary's link takes nothing (not writable)
        self._p_events: list = []
        self._s_events: list = []
        self.primary_out = None  # the last primary Output

    # -- driving ------------------------------------------------------------------------
    def restart_primary(self, **config) -> None:
        """Reopen the primary's node as after kill -9 (no Stop)."""
        self.pnode = Node.open(str(self.tmp_path / "p"))
        self.primary = PrimaryNode(self.pnode, PrimaryConfig(**(config or self.config)), random.Random(3),
                                   self.now, PAIR, "t")

    def step_primary(self, events=()):
        out = self.primary.step(self.now, list(events), self.send_budget)
        self.primary_out = out
        for token, err in out.completions:
            self.done[token] = err
        for dial in out.start:
            rng = random.Random(2)
            pc = Connection(dial.local, SECRET, rng.randbytes)
            pc.initiate()
            self.conns = [pc, None, dial.link, bytearray(pc.data_to_send()), bytearray()]
            self._s_events.append(Accepted(dial.link))
        if out.send and self.conns is not None:
            for msg in out.send:
                self.conns[3] += self.conns[0].send(msg)
        for close in out.close:  # a refusal's last words (an Error) still reach the peer
            if self.conns is not None and close.link == self.conns[2]:
                for msg in close.last:
                    self.conns[3] += self.conns[0].send(msg)
        return out

    def step_secondary(self, events=()):
        out = self.secondary.step(self.now, list(events))
        for ans in out.start:
            sc = Connection(ans.local, SECRET, random.Random(4).randbytes)
            self.conns[1] = sc
        if out.send and self.conns is not None and self.conns[1] is not None:
            for msg in out.send:
                self.conns[4] += self.conns[1].send(msg)
        return out

    def connect(self):
        """Dial (past any reconnect backoff) and run until quiet."""
        if self.conns is None:
            self.now += self.primary.config.reconnect_max_s
            self.step_primary()
        self.run()

    def run(self, deliver_acks: bool = True, rounds: int = 200):
        """Move bytes both ways until nothing is left to move."""
        for _ in range(rounds):
            self.step_primary(self._take(self._p_events))
            self.step_secondary(self._take(self._s_events))
            moved = False
            if self.conns is None:
                return
            pc, sc, link, to_s, to_p = self.conns
            if to_s and sc is not None:
                data = bytes(to_s)
                to_s.clear()
                self._s_events += self._receive(sc, link, data)
                moved = True
            if sc is not None:
                to_p += sc.data_to_send()
            if to_p and deliver_acks:
                data = bytes(to_p)
                to_p.clear()
                self._p_events += self._receive(pc, link, data)
                moved = True
            to_s += pc.data_to_send()
            if not moved and not self._p_events and not self._s_events:
                return

    @staticmethod
    def _take(events: list) -> list:
        out = list(events)
        events.clear()
        return out

    @staticmethod
    def _receive(conn: Connection, link: int, data: bytes) -> list:
        conn.receive_data(data)
        events, msgs = [], []
        for ev in conn.events():
            if isinstance(ev, Established):
                events.append(LinkUp(link, ev))
            elif isinstance(ev, (ConnectionClosed, Error)):
                events.append(LinkClosed(link, f"peer closed ({ev})", ev.code if isinstance(ev, Error) else None))
            else:
                msgs.append(ev)
        if msgs:
            events.append(Received(link, msgs))
        return events

    def cut(self):
        """The link fails: both ends learn it; bytes in flight are lost."""
        link = self.conns[2]
        self.conns = None
        self._p_events.clear()
        self._s_events.clear()
        self.step_primary([LinkClosed(link, "test cut")])
        self.step_secondary([LinkClosed(link, "test cut")])

    def write(self, volume: str, offset: int, data: bytes, fua: bool = False) -> int:
        self.tokens += 1
        self.step_primary([HostRequests([HostWrite(self.tokens, WriteOp(volume, offset, data), fua)])])
        return self.tokens

    def status(self, which: str = "primary") -> dict:
        node = self.primary if which == "primary" else self.secondary
        return node.status(self.now).as_dict()

    def image(self, node: Node, volume: str) -> bytes:
        v = node.volumes[volume]
        return v.read(0, v.size)

    def close(self):
        self.pnode.close()
        self.snode.close()
