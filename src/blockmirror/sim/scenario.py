"""One simulated scenario, fully determined by its seed.

A safety phase runs host writes under seeded faults (link cuts, black holes,
partitions, slow links, crashes of either node between any two I/O steps,
disk full); a liveness phase then heals everything and demands convergence.
The checker runs throughout:

- consistency: after every batch the secondary applies, and after every
  recovery of its disk from a crash, its image equals the primary's image at
  the point its (generation, seq) names, one point for all volumes, never
  moving backwards;
- durability: in sync mode, a write acknowledged to the host while mirroring
  is never missing from the secondary after a crash;
- minimal resync: a round never names a chunk outside the chunks written
  since its base (plus the hot regions of an unclean primary restart);
- convergence: after healing, both nodes byte-identical within a bound.
"""

from __future__ import annotations

import logging
import random
import uuid

import xxhash
from dataclasses import dataclass, field

from pyroaring import BitMap

from blockmirror.engine import (
    Accepted,
    Answer,
    Dial,
    HostFlush,
    HostRequests,
    HostWrite,
    LinkClosed,
    LinkUp,
    PrimaryConfig,
    PrimaryNode,
    PrimaryPhase,
    Received,
    SecondaryConfig,
    SecondaryNode,
)
from blockmirror.protocol import (
    Ack,
    Connection,
    ConnectionClosed,
    Error,
    Established,
    ProtocolError,
)
from blockmirror.sim.model import HistoryModel
from blockmirror.sim.network import EOF_MARK, SimConn, SimNetwork
from blockmirror.storage import Node, WriteOp
from blockmirror.storage.crashfs import CrashFileSystem, SimulatedCrash

CHUNK = 4096
SECRET = b"simulated pair secret, 32 bytes!"
WORKLOADS = ("sequential", "random", "hot", "spanning")
FAULTS = ("cut", "blackhole", "partition", "slow", "delay", "crash-primary", "crash-secondary", "disk-full")


class Violation(Exception):
    pass


@dataclass
class Result:
    seed: int
    ok: bool
    violation: str = ""
    mode: str = ""
    workload: str = ""
    faults: dict = field(default_factory=dict)
    rounds: int = 0
    resync_chunks: int = 0
    bytes_sent: int = 0
    host_writes: int = 0
    trace: list = field(default_factory=list)


class _Side:
    def __init__(self, name: str, fs: CrashFileSystem, path: str):
        self.name = name
        self.fs = fs
        self.path = path
        self.node: Node | None = None
        self.engine = None
        self.up = False
        self.restart_at = 0.0
        self.events: list = []  # the node's next step's events


class Scenario:
    def __init__(self, seed: int, mutations: frozenset = frozenset(), safety_s: float = 7.0,
                 liveness_s: float = 400.0):
        self.seed = seed
        self.rng = random.Random(seed)
        # Odd seeds run the nodes' first-write pipeline deferred (a batch's
        # record sync and overwrites run when the next batch is queued, or
        # when something reads or flushes), even seeds inline.
        self.pipeline = "deferred" if seed % 2 else "inline"
        rng = self.rng
        self.mutations = mutations
        self.safety_s = safety_s
        self.liveness_s = liveness_s
        self.mode = rng.choice(("sync", "async"))
        self.workload = rng.choice(WORKLOADS)
        nvol = rng.randint(1, 3)
        self.sizes = [rng.randint(6, 24) * CHUNK for _ in range(nvol)]
        self.names = [f"v{i}" for i in range(nvol)]
        # Swarm testing: each scenario weights the faults differently.
        self.fault_weights = {f: rng.choice((0, 1, 1, 3)) for f in FAULTS}
        if not any(self.fault_weights.values()):
            self.fault_weights["cut"] = 1
        self.fault_rate = rng.uniform(0.1, 0.8)  # faults per second
        self.write_rate = rng.uniform(3, 15)  # host ops per second
        self.pconfig = PrimaryConfig(
            mode=self.mode, window_bytes_max=rng.choice((8, 32, 128)) * 1024,
            window_writes_max=rng.choice((4, 16, 64)), heartbeat_interval_s=0.5, link_timeout_s=2.0,
            reconnect_min_s=0.2, reconnect_max_s=3.0, final_round_bytes_max=rng.choice((4, 16, 64)) * 1024,
            rounds_max=4, resync_extent_bytes_max=rng.choice((4, 16)) * 1024,
            activity_region_bytes=rng.choice((1, 2, 4)) * CHUNK, activity_checkpoint_s=1.0,
            mutations=mutations)
        self.sconfig = SecondaryConfig(heartbeat_interval_s=0.5, link_timeout_s=2.0,
                                       journal_checkpoint_bytes=rng.choice((16, 64)) * 1024,
                                       journal_checkpoint_s=2.0, mutations=mutations)
        self.net = SimNetwork(latency_s=rng.uniform(0.0005, 0.02), bandwidth_bps=rng.uniform(2e5, 5e6))
        self.model = HistoryModel(self.sizes, CHUNK)
        self.pair_uuid = uuid.UUID(int=rng.getrandbits(128), version=4)
        self.now = 0.0
        self.trace: list[str] = []
        self.faults: dict[str, int] = {}
        self.conn_ids = 0
        self.tokens = 0
        self.token_info: dict[int, tuple] = {}
        self.pending_ops: dict[int, WriteOp] = {}
        self.sync_acked_point = 0
        self.claimed = ("", 0)  # (generation, seq) the secondary last acknowledged
        self.probes = 0
        self._last_checked = None
        self.probe_rate = rng.choice((0.0, 0.02, 0.05))
        self.secondary_point = 0
        self.crashed_hot: list[BitMap] = [BitMap() for _ in self.sizes]
        self.host_writes = 0
        self.healing = False
        self.next_host = 0.0
        self.next_fault = self._draw_fault_time(0.0)
        self.seq_pos = 0
        self.hot_chunks = [(rng.randrange(nvol), rng.randrange(4)) for _ in range(3)]
        self.primary = _Side("primary", CrashFileSystem(rng.randrange(1 << 30)), "/sim/primary")
        self.secondary = _Side("secondary", CrashFileSystem(rng.randrange(1 << 30)), "/sim/secondary")
        volumes = dict(zip(self.names, self.sizes))
        uuids = iter(uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(100))
        for side in (self.primary, self.secondary):
            node = Node.create(side.path, volumes, chunk_size=CHUNK, fs=side.fs, new_uuid=lambda: str(next(uuids)),
                               clock_ns=lambda: int(self.now * 1e9), monotonic_ns=lambda: int(self.now * 1e9),
                               meta_synchronous="OFF")
            node.close()
            self._start(side)

    # -- tracing -------------------------------------------------------------------------
    def log(self, text: str) -> None:
        self.trace.append(f"{self.now:9.4f} {text}")
        if len(self.trace) > 60:
            del self.trace[:20]

    # -- node lifecycle --------------------------------------------------------------------
    def _start(self, side: _Side) -> None:
        side.events = []
        try:
            side.node = Node.open(side.path, fs=side.fs, clock_ns=lambda: int(self.now * 1e9),
                                  monotonic_ns=lambda: int(self.now * 1e9), meta_synchronous="OFF",
                                  pipeline=self.pipeline)
            if side is self.primary:
                side.engine = PrimaryNode(side.node, self.pconfig, random.Random(self.rng.random()), self.now,
                                          self.pair_uuid, "simpair", observer=self)
                if side.engine.recovered_hot:
                    hot = [BitMap() for _ in self.sizes]
                    for vol, off, length in side.engine.recovered_hot:
                        hot[vol].add_range(off // CHUNK, (off + length - 1) // CHUNK + 1)
                    self.crashed_hot = [a | b for a, b in zip(self.crashed_hot, hot)]
            else:
                side.engine = SecondaryNode(side.node, self.sconfig, self.now, self.pair_uuid, "simpair",
                                            observer=self)
                self._check_secondary("after recovery")
        except SimulatedCrash:
            self._crash(side, "during recovery")
            return
        side.up = True
        self.log(f"{side.name} up")

    def _crash(self, side: _Side, where: str) -> None:
        self.log(f"{side.name} CRASH {where} ({side.fs.trace[-1:]})")
        if self.net.conn is not None:
            self._close_conn(side, "peer crashed", local_notice=False)
        if side.node is not None:
            try:
                side.node.meta.close()
            except Exception:
                pass
        side.fs.crash(self.rng)
        side.node = side.engine = None
        side.up = False
        side.restart_at = self.now + self.rng.uniform(0.3, 3.0)
        if side is self.primary:
            # Writes the host issued and never saw complete may or may not have
            # landed (and their chunks may be preserved): a resync may name them.
            for op in self.pending_ops.values():
                vol = self.names.index(op.volume)
                if op.nbytes:
                    self.crashed_hot[vol].add_range(op.offset // CHUNK, (op.offset + op.nbytes - 1) // CHUNK + 1)
            self.pending_ops.clear()
            # The primary's history continues from what its disk kept.
            node = Node.open(side.path, fs=side.fs, meta_synchronous="OFF")
            image = b"".join(node.volumes[n].read(0, s) for n, s in zip(self.names, self.sizes))
            node.close()
            self.model.reset(image)

    def _run_node(self, side: _Side) -> None:
        """One step of a node with its queued events; apply its Output."""
        if not side.up:
            side.events = []
            return
        events, side.events = side.events, []
        conn = self.net.conn
        budget = 0
        if side is self.primary and conn is not None and conn.id == side.engine.link:
            budget = max(0, 64 * 1024 - conn.to_secondary.queued_bytes)
        try:
            out = side.engine.step(self.now, events, budget)
        except SimulatedCrash:
            self._crash(side, "step")
            return
        for line in out.logs:
            self.log(f"{side.name}: {line.text}")
        if side is self.primary:
            self._take_completions(out.completions)
        for close in out.close:
            if self.net.conn is not None and self.net.conn.id == close.link:
                self._close_conn(side, close.reason)
        for start in out.start:
            if isinstance(start, Dial):
                self._dial(start)
            elif isinstance(start, Answer):
                self._answer(start)
        conn = self.net.conn
        if out.send and conn is not None and conn.id == out.link:
            self._send(side, conn, out.send)
        if side is self.secondary and side.up and side.engine.round_open is None:
            eng = side.engine
            state = (eng.generation, eng.seq, eng.applied_batches)
            if state != self._last_checked:  # nothing to check after heartbeats alone
                self._last_checked = state
                self._check_secondary("after a batch")

    # -- observer (called by the engines) ---------------------------------------------------
    def applied(self, token, op: WriteOp, generation, seq) -> None:
        vol = self.names.index(op.volume)
        self.model.apply(vol, op.offset, bytes(op.data) if op.kind == "write" else None, op.nbytes)
        point = self.model.point
        if seq is not None:
            self.model.seq_point[(str(generation), seq)] = point
        self.token_info[token] = (point, seq)

    def round_started(self, target_gen, base_gen, commit_seq, kind, chunks) -> None:
        self.model.target_point[str(target_gen)] = self.model.point
        self.model.seq_point[(str(target_gen), commit_seq)] = self.model.point
        if kind == "incremental":
            base_point = self.model.target_point.get(str(base_gen))
            if base_point is None:
                raise Violation(f"round from unknown generation {base_gen}")
            allowed = self.model.touched_since(base_point)
            for vol, c in enumerate(chunks):
                extra = c - allowed[vol] - self.crashed_hot[vol]
                if extra:
                    raise Violation(f"resync names chunks {list(extra)[:8]} of v{vol} that were not written "
                                    f"since its base")
        self.log(f"round {kind} {sum(len(c) for c in chunks)} chunks")

    def secondary_committed(self, generation, seq) -> None:
        pass

    def _take_completions(self, completions) -> None:
        eng = self.primary.engine
        for token, err in completions:
            self.pending_ops.pop(token, None)
            info = self.token_info.pop(token, None)
            if (self.mode == "sync" and err is None and info is not None and info[1] is not None
                    and eng.linked and eng.phase is PrimaryPhase.MIRRORING):
                self.sync_acked_point = max(self.sync_acked_point, info[0])

    # -- checker ----------------------------------------------------------------------------
    def _secondary_image(self) -> bytes:
        node = self.secondary.node
        return b"".join(node.volumes[n].read(0, s) for n, s in zip(self.names, self.sizes))

    def _check_secondary(self, when: str) -> None:
        eng = self.secondary.engine
        if eng.inconsistent or eng.round_open is not None:
            return
        gen = str(eng.generation)
        if eng.generation.int == 0:
            return
        point = self.model.point_of(gen, eng.seq)
        if point is None:
            raise Violation(f"{when}: secondary at generation {gen} seq {eng.seq}, a point the primary never had")
        if xxhash.xxh3_64_intdigest(self._secondary_image()) != self.model.hashes[point]:
            raise Violation(f"{when}: secondary image is not the primary's image at point {point} "
                            f"(generation {gen[:8]} seq {eng.seq})")
        if point < self.secondary_point:
            raise Violation(f"{when}: secondary moved backwards from point {self.secondary_point} to {point}")
        if when == "after recovery" and point < self.sync_acked_point:
            raise Violation(f"{when}: sync-mode write acknowledged at point {self.sync_acked_point} is missing "
                            f"(secondary recovered to point {point})")
        self.secondary_point = point

    def _probe_secondary(self) -> None:
        """What would a crash of the secondary right now leave? Crash a copy
        of its disk, recover it, and check it holds every write it has
        acknowledged, at a point of the primary's history."""
        self.probes += 1
        side = self.secondary
        clone = side.fs.clone(self.rng.randrange(1 << 30))
        node = None
        try:
            clone.crash(random.Random(self.rng.random()))
            node = Node.open(side.path, fs=clone, meta_synchronous="OFF")
            eng = SecondaryNode(node, self.sconfig, self.now, self.pair_uuid, "simpair")
            gen, seq = str(eng.generation), eng.seq
            if gen == self.claimed[0] and seq < self.claimed[1]:
                raise Violation(f"the secondary acknowledged seq {self.claimed[1]} but a crash now "
                                f"recovers it to seq {seq}")
            if not eng.inconsistent and eng.generation.int:
                point = self.model.point_of(gen, seq)
                image = b"".join(node.volumes[n].read(0, s) for n, s in zip(self.names, self.sizes))
                if point is None or xxhash.xxh3_64_intdigest(image) != self.model.hashes[point]:
                    raise Violation(f"a crash of the secondary now would leave an image that is no point "
                                    f"of the primary's history (generation {gen[:8]} seq {seq})")
        finally:
            if node is not None:
                node.close()
            clone.close()

    # -- connections -------------------------------------------------------------------------
    def _dial(self, dial: Dial) -> None:
        p = self.primary
        if self.net.conn is not None or not self.secondary.up or not self.net.reachable(self.now):
            p.events.append(LinkClosed(dial.link, "unreachable"))
            return
        rb = random.Random(self.rng.random()).randbytes
        conn = SimConn(dial.link, Connection(dial.local, SECRET, rb), None)
        conn.randbytes = rb
        self.net.conn = conn
        conn.p_conn.initiate()
        self.net.send(self.now, conn.to_secondary, conn.p_conn.data_to_send())
        self.secondary.events.append(Accepted(dial.link))
        self.log(f"connect #{conn.id}")

    def _answer(self, answer: Answer) -> None:
        conn = self.net.conn
        if conn is not None and conn.id == answer.link and conn.s_conn is None:
            conn.s_conn = Connection(answer.local, SECRET, conn.randbytes)

    def _close_conn(self, side: _Side | None, reason: str, local_notice: bool = True) -> None:
        """`side` closes its end (None: the network cut both ends)."""
        conn = self.net.conn
        if conn is None:
            return
        self.net.conn = None
        self._last_checked = None  # a rolled-back round must be checked again
        self.log(f"close #{conn.id} by {side.name if side else 'network'}: {reason}")
        for s in (self.primary, self.secondary):
            if not s.up or (s is side and not local_notice):
                continue
            # A cut or a crash reaches the other end at once here; a black hole never does,
            # and that end finds out by its own timeout (the nodes' link_timeout_s).
            if s is not side and side is not None and self.net.blackholed(self.now):
                continue
            s.events.append(LinkClosed(conn.id, reason))

    def _deliver(self) -> None:
        conn = self.net.conn
        if conn is None:
            return
        for pipe, side, which in ((conn.to_secondary, self.secondary, "s_conn"),
                                  (conn.to_primary, self.primary, "p_conn")):
            while pipe.queue and pipe.queue[0][0] <= self.now and self.net.conn is conn:
                _, data = pipe.queue.popleft()
                pipe.queued_bytes -= len(data) if data is not EOF_MARK else 0
                pconn = getattr(conn, which)
                if not side.up or pconn is None:
                    continue
                self._receive(side, pconn, conn, data)
                if self.net.conn is not conn:
                    return

    def _receive(self, side: _Side, pconn, conn: SimConn, data) -> None:
        pconn.receive_data(b"" if data is EOF_MARK else data)
        msgs: list = []
        try:
            for event in pconn.events():
                if isinstance(event, (ConnectionClosed, Error)):
                    if msgs:
                        side.events.append(Received(conn.id, msgs))
                    self._close_conn(side, f"peer closed ({event})")
                    return
                if isinstance(event, Established):
                    if side is self.secondary:
                        conn.secondary_attached = True
                    side.events.append(LinkUp(conn.id, event))
                else:
                    msgs.append(event)
        except ProtocolError as exc:
            self.log(f"protocol error at {side.name}: {exc}")
            raise Violation(f"protocol error at {side.name}: {exc}") from exc
        if msgs:
            side.events.append(Received(conn.id, msgs))
        other = conn.to_secondary if side is self.primary else conn.to_primary
        self.net.send(self.now, other, pconn.data_to_send())

    def _send(self, side: _Side, conn: SimConn, messages: list) -> None:
        if side is self.primary:
            for msg in messages:
                self.net.send(self.now, conn.to_secondary, conn.p_conn.send(msg))
            return
        if conn.s_conn is None:
            return
        for msg in messages:
            if isinstance(msg, Ack) and msg.seq > self.claimed[1]:
                self.claimed = (str(side.engine.generation), msg.seq)
                if self.rng.random() < self.probe_rate:
                    self._probe_secondary()
            self.net.send(self.now, conn.to_primary, conn.s_conn.send(msg))

    # -- host workload ------------------------------------------------------------------------
    def _host_op(self) -> None:
        rng = self.rng
        p = self.primary
        if not p.up:
            return  # the host sees its device gone; it retries later
        items = []
        count = rng.randint(2, 5) if self.workload == "spanning" else 1
        for _ in range(count):
            vol = rng.randrange(len(self.sizes))
            size = self.sizes[vol]
            if self.workload == "sequential":
                self.seq_pos = (self.seq_pos + rng.randint(512, 3 * CHUNK)) % size
                offset = self.seq_pos
            elif self.workload == "hot":
                hv, hc = rng.choice(self.hot_chunks)
                vol, size = hv, self.sizes[hv]
                offset = min(size - 1, hc * CHUNK + rng.randrange(CHUNK))
            else:
                offset = rng.randrange(size)
            length = min(size - offset, rng.randint(1, 2 * CHUNK + 100))
            self.tokens += 1
            r = rng.random()
            if r < 0.08:
                op = WriteOp(self.names[vol], offset, None, length, "zero")
            elif r < 0.12:
                op = WriteOp(self.names[vol], offset, None, length, "trim")
            else:
                op = WriteOp(self.names[vol], offset, rng.randbytes(length))
            items.append(HostWrite(self.tokens, op, fua=rng.random() < 0.1))
        if rng.random() < 0.05:
            self.tokens += 1
            items.append(HostFlush(self.tokens))
        self.host_writes += count
        for it in items:
            if isinstance(it, HostWrite):
                self.pending_ops[it.token] = it.op
        p.events.append(HostRequests(items))

    # -- faults --------------------------------------------------------------------------------
    def _draw_fault_time(self, now: float) -> float:
        return now + self.rng.expovariate(self.fault_rate)

    def _fault(self) -> None:
        rng = self.rng
        kinds = [f for f, w in self.fault_weights.items() for _ in range(w)]
        kind = rng.choice(kinds)
        self.faults[kind] = self.faults.get(kind, 0) + 1
        duration = rng.uniform(0.2, 6.0)
        self.log(f"FAULT {kind} for {duration:.2f}s")
        if kind == "cut":
            self.net.drop_in_flight()
            self.net.partitioned_until = self.now + rng.uniform(0, duration)
            self._close_conn(None, "link cut")
        elif kind == "partition":
            self.net.partitioned_until = self.now + duration
        elif kind == "blackhole":
            self.net.blackhole_until = self.now + duration
            self.net.hold_in_flight(self.net.blackhole_until)
        elif kind == "slow":
            self.net.slow_until = self.now + duration
        elif kind == "delay":
            self.net.delay_until = self.now + duration
            self.net.delay_extra_s = rng.uniform(0.05, 2.5)  # past link_timeout_s at times
        elif kind.startswith("crash-"):
            side = self.primary if kind == "crash-primary" else self.secondary
            if side.up:
                side.fs.crash_at_step = side.fs.steps + rng.randint(0, 40)
        elif kind == "disk-full":
            side = rng.choice((self.primary, self.secondary))
            side.fs.disk_full = True
            self._disk_full_until = (side, self.now + duration)

    # -- main loop --------------------------------------------------------------------------------
    def _next_time(self) -> float:
        times = [self.net.next_time()]
        for side in (self.primary, self.secondary):
            if side.up:
                times.append(side.engine.next_timer())
            else:
                times.append(side.restart_at)
        if not self.healing:
            times.append(self.next_host)
            times.append(self.next_fault)
        if self._disk_full_until is not None:
            times.append(self._disk_full_until[1])
        return min(t for t in times if t is not None)

    def _step(self) -> None:
        now = self.now
        if self._disk_full_until is not None and now >= self._disk_full_until[1]:
            self._disk_full_until[0].fs.disk_full = False
            self._disk_full_until = None
        for side in (self.primary, self.secondary):
            if not side.up and now >= side.restart_at:
                self._start(side)
        if not self.healing and now >= self.next_fault:
            self._fault()
            self.next_fault = self._draw_fault_time(now)
        self._deliver()
        if not self.healing and now >= self.next_host:
            self._host_op()
            self.next_host = now + self.rng.expovariate(self.write_rate)
        for _ in range(4):  # until neither node has events left (a step may queue some for the other)
            self._run_node(self.primary)
            self._run_node(self.secondary)
            if not (self.primary.events or self.secondary.events):
                break

    def _converged(self) -> bool:
        p, s = self.primary, self.secondary
        if not (p.up and s.up):
            return False
        e = p.engine
        return (e.phase is PrimaryPhase.MIRRORING and not e.window and not e.waiting
                and not s.engine.inconsistent and s.engine.seq == e.seq and s.engine.round_open is None)

    def run(self) -> Result:
        self._orphans: set[str] = set()
        self._disk_full_until = None
        try:
            self.next_host = self.rng.expovariate(self.write_rate)
            while self.now < self.safety_s:
                self._step()
                self.now = max(self.now + 1e-6, self._next_time())
            # Liveness: heal everything, stop the host, demand convergence.
            self.healing = True
            self.log("HEAL")
            self.net.partitioned_until = self.net.blackhole_until = self.net.slow_until = 0.0
            self.net.delay_until = 0.0
            for side in (self.primary, self.secondary):
                side.fs.crash_at_step = None
                side.fs.disk_full = False
            self._disk_full_until = None
            deadline = self.now + self.liveness_s
            while not self._converged():
                if self.now > deadline:
                    e = self.primary.engine
                    raise Violation(f"no convergence within {self.liveness_s:.0f}s of healing "
                                    f"(primary {e.state if e else 'down'})")
                self._step()
                self.now = max(self.now + 1e-6, self._next_time())
            prim = self.primary.node
            primary_image = b"".join(prim.volumes[n].read(0, s) for n, s in zip(self.names, self.sizes))
            if primary_image != bytes(self.model.image):
                raise Violation("the primary's volumes differ from the writes it acknowledged")
            if self._secondary_image() != primary_image:
                raise Violation("after healing, the secondary's volumes differ from the primary's")
            self._check_secondary("at the end")
            ok, violation = True, ""
        except Violation as exc:
            ok, violation = False, str(exc)
        except AssertionError as exc:
            ok, violation = False, f"assertion: {exc}"
        finally:
            for side in (self.primary, self.secondary):
                if side.node is not None:
                    try:
                        side.node.close()
                    except Exception:
                        pass
                side.fs.close()
        e = self.primary.engine
        return Result(self.seed, ok, violation, self.mode, self.workload, dict(self.faults),
                      rounds=e._round_ids if e else 0, resync_chunks=e.resync_chunks_total if e else 0,
                      bytes_sent=self.net.bytes_sent, host_writes=self.host_writes,
                      trace=list(self.trace[-25:]) if not ok else [])


def run_seed(seed: int, mutations: frozenset = frozenset()) -> Result:
    logging.getLogger("blockmirror").setLevel(logging.CRITICAL)
    return Scenario(seed, mutations).run()
