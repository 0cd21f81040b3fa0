"""The simulated link: one connection at a time, with latency, bandwidth,
cuts (both ends see the close), black holes (nothing gets through and
nobody is told; as with TCP, bytes are retransmitted and arrive once the
hole closes, if the connection has not timed out by then), partitions
(no new connection can be made) and corruption (one byte of a frame in
flight flipped; TCP's own checksum is weak, our frame checksum must catch it)."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Pipe:
    """One direction of a connection: bytes in flight with delivery times."""
    queue: deque = field(default_factory=deque)  # [deliver_at, bytes]
    busy_until: float = 0.0
    queued_bytes: int = 0

    def next_time(self) -> float | None:
        return self.queue[0][0] if self.queue else None

    def take_due(self, now: float) -> bytes:
        """The bytes that have arrived by `now`, in order."""
        due = []
        while self.queue and self.queue[0][0] <= now:
            due.append(self.queue.popleft()[1])
        nbytes = sum(len(d) for d in due)
        self.queued_bytes -= nbytes
        return b"".join(due) if len(due) != 1 else due[0]


@dataclass
class SimConn:
    id: int
    p_conn: object  # protocol Connection, primary side
    s_conn: object
    to_secondary: Pipe = field(default_factory=Pipe)
    to_primary: Pipe = field(default_factory=Pipe)
    p_link: int = 0  # the primary's id of this connection (its Dial's); `id` is the secondary's
    randbytes: object = None  # the nonce source of both Connections
    corrupted: bool = False  # a byte of this connection was flipped in flight


class SimNetwork:
    def __init__(self, latency_s: float, bandwidth_bps: float, fired: Callable[[str], None]):
        self.latency_s = latency_s
        self.bandwidth_bps = bandwidth_bps
        self.fired = fired  # a fault took effect (faults.FaultLog.fired)
        self.partitioned_until = 0.0
        self.blackhole_until = 0.0
        self.slow_until = 0.0
        self.delay_until = 0.0
        self.delay_extra_s = 0.0
        self.corrupt_next: random.Random | None = None  # armed: flip a byte of the next bytes sent
        self.conn: SimConn | None = None
        self.bytes_sent = 0

    def blackholed(self, now: float) -> bool:
        return now < self.blackhole_until

    def reachable(self, now: float) -> bool:
        return now >= self.partitioned_until and not self.blackholed(now)

    def partition(self, until: float) -> None:
        self.partitioned_until = max(self.partitioned_until, until)

    def send(self, now: float, pipe: Pipe, data: bytes) -> None:
        if not data:
            return
        slow = now < self.slow_until
        if slow:
            self.fired("slow")
        bw = self.bandwidth_bps / (20 if slow else 1)
        start = max(now, pipe.busy_until)
        size = len(data)
        pipe.busy_until = start + size / bw
        arrive = pipe.busy_until + self.latency_s
        if now < self.delay_until:  # a latency spike (a congested or rerouted path)
            arrive += self.delay_extra_s
            self.fired("delay")
        if self.blackholed(now):
            arrive = max(arrive, self.blackhole_until + self.latency_s)
            self.fired("blackhole")
        pipe.queue.append([arrive, data])
        pipe.queued_bytes += size
        self.bytes_sent += size
        if (self.corrupt_next is not None and self.conn is not None
                and (pipe is self.conn.to_secondary or pipe is self.conn.to_primary)):
            rng, self.corrupt_next = self.corrupt_next, None
            self._flip(rng, pipe.queue[-1])

    def corrupt(self, rng: random.Random) -> None:
        """Flip one byte somewhere in flight, or in the next bytes sent."""
        entries = []
        if self.conn is not None:
            entries = [e for pipe in (self.conn.to_secondary, self.conn.to_primary) for e in pipe.queue]
        if not entries:
            self.corrupt_next = rng
            return
        total = sum(len(e[1]) for e in entries)
        pick = rng.randrange(total)
        for entry in entries:
            if pick < len(entry[1]):
                self._flip(rng, entry, pick)
                return
            pick -= len(entry[1])

    def _flip(self, rng: random.Random, entry: list, pos: int | None = None) -> None:
        data = bytearray(entry[1])
        pos = rng.randrange(len(data)) if pos is None else pos
        data[pos] ^= 1 << rng.randrange(8)
        entry[1] = bytes(data)
        self.conn.corrupted = True
        self.fired("corrupt")

    def hold_in_flight(self, until: float) -> None:
        """A black hole opens: nothing in flight arrives before it closes."""
        if self.conn is not None:
            self.fired("blackhole")
            for pipe in (self.conn.to_primary, self.conn.to_secondary):
                pipe.queue = deque([max(t, until + self.latency_s), d] for t, d in pipe.queue)
                pipe.busy_until = max(pipe.busy_until, until)

    def drop_in_flight(self) -> None:
        if self.conn is not None:
            for pipe in (self.conn.to_primary, self.conn.to_secondary):
                pipe.queue.clear()
                pipe.queued_bytes = 0

    def heal(self) -> None:
        self.partitioned_until = self.blackhole_until = self.slow_until = self.delay_until = 0.0
        self.corrupt_next = None

    def next_time(self) -> float | None:
        if self.conn is None:
            return None
        times = [t for t in (self.conn.to_primary.next_time(), self.conn.to_secondary.next_time()) if t is not None]
        return min(times) if times else None
