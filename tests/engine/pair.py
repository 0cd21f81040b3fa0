"""Two engines on real node directories joined by an in-memory link that
carries real protocol bytes; the test decides when bytes move."""

import random
import uuid

from blockmirror.engine import HostWrite, PrimaryConfig, PrimaryEngine, SecondaryConfig, SecondaryEngine
from blockmirror.protocol import Connection, ConnectionClosed, Established, LocalNode, Role, VolumeInfo
from blockmirror.storage import Node, WriteOp

SECRET = b"engine test secret, long enough"
PAIR = uuid.UUID(int=7, version=4)


class Pair:
    def __init__(self, tmp_path, volumes: dict[str, int], chunk_size: int = 4096, **config):
        self.pnode = Node.create(str(tmp_path / "p"), volumes, chunk_size=chunk_size)
        self.snode = Node.create(str(tmp_path / "s"), volumes, chunk_size=chunk_size)
        self.now = 0.0
        self.primary = PrimaryEngine(self.pnode, PrimaryConfig(**config), random.Random(1), self.now)
        self.secondary = SecondaryEngine(self.snode, SecondaryConfig(), self.now)
        self.tokens = 0
        self.done: dict[int, object] = {}
        self.conns = None

    def connect(self):
        p, s = self.primary, self.secondary
        ploc = LocalNode(Role.PRIMARY, uuid.UUID(self.pnode.node_uuid), PAIR, "t",
                         tuple(VolumeInfo(*v) for v in p.volume_infos()))
        sloc = LocalNode(Role.SECONDARY, uuid.UUID(self.snode.node_uuid), PAIR, "t",
                         tuple(VolumeInfo(*v) for v in s.volume_infos()),
                         uuid.UUID(int=0) if s.inconsistent else s.generation, 0 if s.inconsistent else s.seq)
        rng = random.Random(2)
        self.conns = (Connection(ploc, SECRET, rng.randbytes), Connection(sloc, SECRET, rng.randbytes))
        p.connecting(self.now)
        self.conns[0].initiate()
        self._to_s = bytearray(self.conns[0].data_to_send())
        self._to_p = bytearray()
        self.run()

    def run(self, deliver_acks: bool = True, rounds: int = 200):
        """Move bytes both ways until nothing is left to move."""
        pc, sc = self.conns
        for _ in range(rounds):
            moved = False
            for msg in self.primary.poll_transmit(self.now):
                self._to_s += pc.send(msg)
            self._to_s += pc.data_to_send()
            if self._to_s:
                data, self._to_s = bytes(self._to_s), bytearray()
                sc.receive_data(data)
                for ev in sc.events():
                    if isinstance(ev, Established):
                        self.secondary.link_up(self.now, ev)
                    elif not isinstance(ev, ConnectionClosed):
                        self.secondary.on_message(self.now, ev)
                self.secondary.end_of_batch(self.now)
                moved = True
            for msg in self.secondary.take_outbox():
                self._to_p += sc.send(msg)
            self._to_p += sc.data_to_send()
            if self._to_p and deliver_acks:
                data, self._to_p = bytes(self._to_p), bytearray()
                pc.receive_data(data)
                for ev in pc.events():
                    if isinstance(ev, Established):
                        self.primary.link_up(self.now, ev)
                    elif not isinstance(ev, ConnectionClosed):
                        self.primary.on_message(self.now, ev)
                moved = True
            self._collect()
            if not moved:
                return

    def cut(self):
        """The link fails: both ends learn it; bytes in flight are lost."""
        self._to_s, self._to_p = bytearray(), bytearray()
        self.primary.link_down(self.now, "test cut")
        self.secondary.link_down(self.now, "test cut")
        self.conns = None
        self._collect()

    def write(self, volume: str, offset: int, data: bytes, fua: bool = False) -> int:
        self.tokens += 1
        self.primary.submit(self.now, [HostWrite(self.tokens, WriteOp(volume, offset, data), fua)])
        self._collect()
        return self.tokens

    def _collect(self):
        for token, err in self.primary.take_completions():
            self.done[token] = err

    def image(self, node: Node, volume: str) -> bytes:
        v = node.volumes[volume]
        return v.read(0, v.size)

    def close(self):
        self.pnode.close()
        self.snode.close()
