"""The simulated link: one connection at a time, with latency, bandwidth,
cuts (both ends see the close), black holes (nothing gets through and
nobody is told; as with TCP, bytes are retransmitted and arrive once the
hole closes, if the connection has not timed out by then) and partitions
(no new connection can be made)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

EOF_MARK = None


@dataclass
class Pipe:
    """One direction of a connection: bytes in flight with delivery times."""
    queue: deque = field(default_factory=deque)  # (deliver_at, bytes or EOF_MARK)
    busy_until: float = 0.0
    queued_bytes: int = 0

    def next_time(self) -> float | None:
        return self.queue[0][0] if self.queue else None


@dataclass
class SimConn:
    id: int
    p_conn: object  # protocol Connection, primary side
    s_conn: object
    to_secondary: Pipe = field(default_factory=Pipe)
    to_primary: Pipe = field(default_factory=Pipe)
    primary_open: bool = True
    secondary_open: bool = True
    secondary_attached: bool = False  # the secondary engine was told link_up


class SimNetwork:
    def __init__(self, latency_s: float, bandwidth_bps: float):
        self.latency_s = latency_s
        self.bandwidth_bps = bandwidth_bps
        self.partitioned_until = 0.0
        self.blackhole_until = 0.0
        self.slow_until = 0.0
        self.delay_until = 0.0
        self.delay_extra_s = 0.0
        self.conn: SimConn | None = None
        self.bytes_sent = 0

    def blackholed(self, now: float) -> bool:
        return now < self.blackhole_until

    def reachable(self, now: float) -> bool:
        return now >= self.partitioned_until and not self.blackholed(now)

    def send(self, now: float, pipe: Pipe, data: bytes | None) -> None:
        if data is not None and not data:
            return
        bw = self.bandwidth_bps / (20 if now < self.slow_until else 1)
        start = max(now, pipe.busy_until)
        size = len(data) if data is not None else 0
        pipe.busy_until = start + size / bw
        arrive = pipe.busy_until + self.latency_s
        if now < self.delay_until:  # a latency spike (a congested or rerouted path)
            arrive += self.delay_extra_s
        if self.blackholed(now):
            arrive = max(arrive, self.blackhole_until + self.latency_s)
        pipe.queue.append((arrive, data))
        pipe.queued_bytes += size
        self.bytes_sent += size

    def hold_in_flight(self, until: float) -> None:
        """A black hole opens: nothing in flight arrives before it closes."""
        if self.conn is not None:
            for pipe in (self.conn.to_primary, self.conn.to_secondary):
                pipe.queue = deque((max(t, until + self.latency_s), d) for t, d in pipe.queue)
                pipe.busy_until = max(pipe.busy_until, until)

    def drop_in_flight(self) -> None:
        if self.conn is not None:
            for pipe in (self.conn.to_primary, self.conn.to_secondary):
                pipe.queue.clear()
                pipe.queued_bytes = 0

    def next_time(self) -> float | None:
        if self.conn is None:
            return None
        times = [t for t in (self.conn.to_primary.next_time(), self.conn.to_secondary.next_time()) if t is not None]
        return min(times) if times else None
