"""The one place the simulator touches the code under test (with its
connection half, links.py): the nodes (PrimaryNode, SecondaryNode) it
drives exactly as the daemons do, with typed events in and each step's
Output applied; the protocol Connections; the storage Nodes' lifecycle.

Everything else (workload, faults, checker, scenario) uses this interface:
host operations in (`submit`, `read_primary`, `read_export`), the network
and node faults (`net`, `cut`, `arm`, `filesystem`, `damage_secondary`),
`blockmirror verify` (`start_verify`), the main loop's steps
(`restart_due`, `deliver`, `run_nodes`, `next_time`), and facts out:
`primary_view()` / `secondary_view()` (small frozen dataclasses), images,
crash probes, and the ClusterEvents callbacks (the verify's observer calls
among them). The checker reads node state only through these.

A SimulatedCrash inside any call crashes that node (its disk loses its
cache). A BlockmirrorError (a full disk) escaping a step is what a daemon
treats as fatal ("engine step failed; stopping"): the node's process stops
(its page cache survives) and restarts after a delay.
"""

from __future__ import annotations

import contextlib
import random
import uuid

from pyroaring import BitMap

from blockmirror.engine import (
    HostRequests, NoConsistentImage, PrimaryNode, PrimaryPhase, SecondaryNode, StartVerify, Stop,
)
from blockmirror.engine.phases import PRIMARY_LIVE
from blockmirror.engine.records import INCREMENTAL, OpenRound, RecordStore
from blockmirror.errors import BlockmirrorError, NoSpace
from blockmirror.protocol import WRITE_DATA_MAX_BYTES, ProtocolError
from blockmirror.sim.faults import RECOVERY_STEPS_AHEAD_MAX
from blockmirror.sim.links import Links
from blockmirror.sim.network import SimNetwork
from blockmirror.sim.options import CHUNK_BYTES, Options
from blockmirror.sim.views import ClusterEvents, DiskProbe, ExportRefused, PrimaryView, RoundStart, SecondaryView
from blockmirror.storage import Node, WriteOp
from blockmirror.storage.crashfs import CrashFileSystem, SimulatedCrash


PAIR_NAME = "simpair"


class SimNode:
    """One node of the pair: its disk, and while its process runs, its
    storage Node and engine."""

    def __init__(self, name: str, fs: CrashFileSystem, path: str):
        self.name = name
        self.fs = fs
        self.path = path
        self.node: Node | None = None
        self.engine = None
        self.up = False
        self.restart_at = 0.0
        self.events: list = []  # the node's next step's events
        self.armed = "crash"  # what the armed I/O step (fs.crash_at_step) does: 'crash' or 'kill'
        self.armed_on_restart: tuple[str, int] | None = None  # (what, I/O steps into the restart)


class _Observer:
    """The callbacks the engines make, turned into ClusterEvents."""

    def __init__(self, names: list[str], events: ClusterEvents):
        self.names = names
        self.events = events

    def applied(self, token, op: WriteOp, generation, seq) -> None:
        first = None
        if seq is not None:
            first = seq - max(1, -(-op.nbytes // WRITE_DATA_MAX_BYTES)) + 1
        self.events.write_applied(token, self.names.index(op.volume), op.offset,
                                  bytes(op.data) if op.kind == "write" else None, op.nbytes,
                                  None if generation is None else str(generation), first, seq)

    def round_started(self, target_gen, base_gen, commit_seq, kind, chunks) -> None:
        self.events.round_started(RoundStart(kind, str(target_gen), str(base_gen), commit_seq, chunks))

    def round_resumed(self, target_gen, base_gen, commit_seq, kind, chunks, start) -> None:
        self.events.round_resumed(RoundStart(kind, str(target_gen), str(base_gen), commit_seq, chunks), start)

    def secondary_committed(self, generation, seq) -> None:
        self.events.round_committed(str(generation))  # the checker sees the image after the batch

    def target_taken(self, target_gen) -> None:
        self.events.target_taken(str(target_gen))

    def verify_started(self, run_id) -> None:
        self.events.verify_started()

    def verify_repair(self, differ, repaired) -> None:
        self.events.verify_repair([BitMap(c) for c in differ], [BitMap(c) for c in repaired])

    def verify_done(self, run_id, differ, result) -> None:
        self.events.verify_done([BitMap(c) for c in differ], result)


class Cluster(Links):
    """A primary and a secondary node on CrashFileSystems, joined by a SimNetwork."""

    def __init__(self, opts: Options, rng: random.Random, events: ClusterEvents, trace, fired, stats):
        self.opts = opts
        self.rng = rng
        self.events = events
        self.trace = trace  # trace(text): one line of the scenario's event trace
        self.fired = fired  # fired(kind): a fault took effect (faults.FaultLog.fired)
        self.stats = stats  # Counter of things that happened (crashes in recovery, process stops, ...)
        self.now = 0.0
        self.names = [f"v{i}" for i in range(len(opts.sizes))]
        self.sizes = list(opts.sizes)
        self.pconfig = opts.primary_config()
        self.sconfig = opts.secondary_config()
        self.net = SimNetwork(opts.latency_s, opts.bandwidth_bps, fired)
        self.pair_uuid = uuid.UUID(int=rng.getrandbits(128), version=4)
        self.observer = _Observer(self.names, events)
        self._conn_ids = 0
        self._verifies = 0
        self.primary = SimNode("primary", CrashFileSystem(rng.randrange(1 << 30)), "/sim/primary")
        self.secondary = SimNode("secondary", CrashFileSystem(rng.randrange(1 << 30)), "/sim/secondary")

    def start(self) -> None:
        """Create both nodes' volumes and start them."""
        uuids = iter(uuid.UUID(int=self.rng.getrandbits(128), version=4) for _ in range(100))
        for side in (self.primary, self.secondary):
            Node.create(side.path, dict(zip(self.names, self.sizes)), chunk_size=CHUNK_BYTES, fs=side.fs,
                        new_uuid=lambda: str(next(uuids)), clock_ns=self._clock_ns, monotonic_ns=self._clock_ns,
                        meta_synchronous="OFF").close()
            self._start(side)

    def _clock_ns(self) -> int:
        return int(self.now * 1e9)

    def _side(self, name: str) -> SimNode:
        return self.primary if name == "primary" else self.secondary

    # -- node lifecycle ----------------------------------------------------------------------
    def _start(self, side: SimNode) -> None:
        armed = side.armed_on_restart
        if armed is not None:
            side.armed, steps_ahead = armed
            side.fs.crash_at_step = side.fs.steps + steps_ahead
            side.armed_on_restart = None
        side.events = []
        try:
            side.node = Node.open(side.path, fs=side.fs, clock_ns=self._clock_ns, monotonic_ns=self._clock_ns,
                                  meta_synchronous="OFF", pipeline=self.opts.pipeline)
            if side is self.primary:
                side.engine = PrimaryNode(side.node, self.pconfig, random.Random(self.rng.random()), self.now,
                                          self.pair_uuid, PAIR_NAME, observer=self.observer)
            else:
                side.engine = SecondaryNode(side.node, self.sconfig, self.now, self.pair_uuid, PAIR_NAME,
                                            observer=self.observer)
        except SimulatedCrash:
            self.stats["crashes in recovery" if side.armed == "crash" else "kills in recovery"] += 1
            self._died(side, "during recovery")
            return
        except ProtocolError:
            raise
        except BlockmirrorError as exc:
            self._stop(side, f"restart failed: {exc!r}", exc)
            return
        if armed is not None:
            side.fs.crash_at_step = None  # the restart finished before the armed step
        side.up = True
        self.trace(f"{side.name} up")
        if side is self.primary:
            if side.engine.recovered_hot:
                self.events.recovered_hot(list(side.engine.recovered_hot))
        else:
            self.events.secondary_changed("after recovery")

    def restart_due(self) -> None:
        for side in (self.primary, self.secondary):
            if not side.up and self.now >= side.restart_at:
                self._start(side)

    def _died(self, side: SimNode, where: str) -> None:
        """The armed I/O step was reached (a SimulatedCrash)."""
        self.trace(f"{side.name} {side.armed.upper()} {where} ({side.fs.trace[-1:]})")
        self.fired(f"{side.armed}-{side.name}")
        if side.armed == "kill":
            side.fs.crash_at_step = None
            self._lose(side, "stop")
            return
        # Power failure: the disk keeps, drops or tears what it had not synced.
        side.up = False
        side.fs.crash(self.rng)  # before the peer hears of it: nothing of the process runs after
        if self.rng.random() < self.opts.recrash_share:
            side.armed_on_restart = ("crash", self.rng.randint(0, RECOVERY_STEPS_AHEAD_MAX))
        self._lose(side, "crash")

    def _stop(self, side: SimNode, reason: str, exc: BaseException) -> None:
        """A daemon's fatal engine error: its process stops; the page cache survives."""
        self.trace(f"{side.name} STOP: {reason}")
        self.stats["process stops (fatal error)"] += 1
        if isinstance(exc, NoSpace):
            self.events.no_space(side.name)
        self._lose(side, "stop")

    def _lose(self, side: SimNode, how: str) -> None:
        """The node's process is gone (`how`: 'crash' or 'stop'); it restarts after a delay."""
        side.up = False
        side.events = []
        self.stats["process stops"] += how == "stop"
        if self.net.conn is not None:
            self._close_conn(side, f"peer {side.name} went away")
        if side.node is not None:
            try:
                side.node.meta.close()
            except Exception:  # noqa: BLE001 - the process is gone, whatever state it left
                pass
        side.node = side.engine = None
        side.restart_at = self.now + self.rng.uniform(0.3, 3.0)
        if side is self.primary:
            self.events.primary_lost(self._disk_image(side.fs, side.path), how)
        else:
            self.events.secondary_lost(how)

    def stop_node(self, name: str) -> bool:
        """An orderly stop (SIGTERM) of `name`, as its daemon does it: the
        node's Stop step applied (goodbye, the stop recorded), then the
        storage closed; it restarts after a delay. False if it was down."""
        side = self._side(name)
        if not side.up:
            return False
        side.events.append(Stop())
        self.run_node(side)
        if not side.up:
            return True  # died or stopped on its own in the attempt
        self.trace(f"{side.name} STOPPED in order")
        try:
            side.node.close()
        except SimulatedCrash:
            self._died(side, "close")
            return True
        except BlockmirrorError as exc:
            self.trace(f"{side.name}: closing failed: {exc!r}")
        side.node = None
        self._lose(side, "stop")
        return True

    def arm(self, what: str, name: str, steps_ahead: int, restart_steps_ahead: int) -> None:
        """`what` ('crash' or 'kill') `name` at one of its next I/O steps; a
        node that is down gets it during its restart instead."""
        side = self._side(name)
        if side.up:
            side.armed = what
            side.fs.crash_at_step = side.fs.steps + steps_ahead
        else:
            side.armed_on_restart = (what, restart_steps_ahead)

    def disarm(self) -> None:
        for side in (self.primary, self.secondary):
            side.fs.crash_at_step = None
            side.armed_on_restart = None

    # -- role changes (rolechange.py) -------------------------------------------------------------
    def crash_now(self, name: str, what: str = "crash") -> None:
        """A power failure ('crash') or kill -9 ('kill') of `name` now, if it is up."""
        side = self._side(name)
        if side.up:
            side.armed = what
            self._died(side, "(role change)")
        side.armed_on_restart = None

    @contextlib.contextmanager
    def open_disk(self, side: SimNode):
        """The storage of a node whose process is down (its recovery runs)."""
        assert not side.up and side.node is None
        node = Node.open(side.path, fs=side.fs, clock_ns=self._clock_ns, monotonic_ns=self._clock_ns,
                         meta_synchronous="OFF", pipeline=self.opts.pipeline)
        try:
            yield node
        finally:
            node.close()

    def image_of(self, node: Node) -> bytes:
        return self._image(node)

    def committed_image_of(self, node: Node) -> bytes:
        """A stopped secondary's committed image (an open round's pre-round image)."""
        return self._committed_image(RecordStore(node).open_round(), node)

    def snapshot_image(self, node: Node, snap: int) -> bytes:
        return b"".join(node.read_snapshot(snap, n, 0, size) for n, size in zip(self.names, self.sizes))

    def swap_roles(self) -> None:
        self.primary, self.secondary = self.secondary, self.primary
        self.primary.name, self.secondary.name = "primary", "secondary"

    def restart_soon(self) -> None:
        for side in (self.primary, self.secondary):
            if not side.up:
                side.restart_at = self.now + self.rng.uniform(0.1, 0.5)

    def filesystem(self, name: str) -> CrashFileSystem:
        return self._side(name).fs

    def close(self) -> None:
        for side in (self.primary, self.secondary):
            if side.node is not None:
                try:
                    side.node.close()
                except Exception:  # noqa: BLE001 - the scenario is over; its outcome is decided
                    pass
            side.fs.close()

    def _call(self, side: SimNode, fn, *args, on_error=None):
        """Run an engine call. A SimulatedCrash inside it crashes the node; a
        BlockmirrorError stops its process, or goes to `on_error`."""
        if not side.up:
            return None
        try:
            return fn(*args)
        except SimulatedCrash:
            self._died(side, getattr(fn, "__name__", "call"))
        except ProtocolError:
            raise
        except BlockmirrorError as exc:
            if on_error is None:
                self._stop(side, f"{getattr(fn, '__name__', 'call')} failed: {exc!r}", exc)
            else:
                if isinstance(exc, NoSpace):
                    self.events.no_space(side.name)
                on_error(exc)
        return None

    def _completed(self, completions) -> None:
        eng = self.primary.engine
        mirroring = eng.phase is PrimaryPhase.MIRRORING
        for token, err in completions:
            if isinstance(err, NoSpace):
                self.events.no_space("primary")
            self.events.host_completed(token, err, mirroring)

    # -- verify and a faulty disk ---------------------------------------------------------------
    def start_verify(self, repair: bool, rate_bps: int | None = None) -> bool:
        """`blockmirror verify [--repair] [--rate]` on the primary; False if it
        is down or a verify is under way or asked for."""
        view = self.primary_view()
        if not view.up or view.verifying:
            return False
        self._verifies += 1
        self.primary.events.append(StartVerify(("sim-verify", self._verifies), repair=repair,
                                                rate_bps=rate_bps))
        self.trace(f"verify{' --repair' if repair else ''}{f' --rate {rate_bps}' if rate_bps else ''} asked for")
        return True

    def damage_secondary(self, damages: list[tuple[int, int, bytes]]) -> bool:
        """A faulty disk: (volume, offset, bytes) change in the secondary's
        volume files behind its engine's back, each within one chunk; only
        while it holds a committed image with no round open (False if not)."""
        s = self.secondary
        if not self.secondary_view().holds_point:
            return False
        chunks = [BitMap() for _ in self.names]
        for vol, offset, data in damages:
            s.node.volumes[self.names[vol]].file.rot(offset, data)
            chunks[vol].add(offset // CHUNK_BYTES)
        self.trace("DAMAGE " + ", ".join(f"v{v} chunks {list(c)}" for v, c in enumerate(chunks) if c))
        self.events.secondary_damaged(chunks)
        return True

    # -- images and probes ---------------------------------------------------------------------
    def _disk_image(self, fs: CrashFileSystem, path: str) -> bytes:
        """The volumes as a restart will find them, read on a copy of the
        disk, so the real restart runs its own recovery."""
        clone = fs.clone(self.rng.randrange(1 << 30))
        try:
            node = Node.open(path, fs=clone, meta_synchronous="OFF")
            try:
                return self._image(node)
            finally:
                node.close()
        finally:
            clone.close()

    def _image(self, node: Node) -> bytes:
        """Every volume of `node`, concatenated in volume order."""
        return b"".join(node.volumes[n].read(0, size) for n, size in zip(self.names, self.sizes))

    def primary_image(self) -> bytes:
        return self._image(self.primary.node)

    def _committed_image(self, rnd: OpenRound | None, node: Node) -> bytes:
        """The image the secondary's point names: while an incremental round
        (`rnd`) is open (cut, kept to resume), its safety snapshot's; else the volumes."""
        if rnd is not None and rnd.kind == INCREMENTAL:
            return self.snapshot_image(node, rnd.safety)
        return self._image(node)

    def secondary_committed_image(self) -> bytes | None:
        s = self.secondary
        return self._call(s, self._committed_image, s.engine.round_open, s.node)

    def secondary_image(self) -> bytes | None:
        """None if the node died in the read (a crash armed in a deferred
        copy-on-write job: a demoted node keeps a user snapshot)."""
        s = self.secondary
        return self._call(s, self._image, s.node)

    def probe_secondary(self) -> DiskProbe:
        """Crash a copy of the secondary's disk and recover it with the engine."""
        side = self.secondary
        clone = side.fs.clone(self.rng.randrange(1 << 30))
        node = None
        try:
            clone.crash(random.Random(self.rng.random()))
            node = Node.open(side.path, fs=clone, meta_synchronous="OFF")
            eng = SecondaryNode(node, self.sconfig, self.now, self.pair_uuid, PAIR_NAME)
            image = self._committed_image(eng.round_open, node)
            return DiskProbe(str(eng.generation), eng.seq, eng.inconsistent, image,
                             eng.store.local_changes is not None)
        finally:
            if node is not None:
                node.close()
            clone.close()

    # -- host operations --------------------------------------------------------------------------
    def submit(self, items: list) -> bool:
        """Host writes and flushes to the primary; False if it is down."""
        p = self.primary
        if not p.up:
            return False
        p.events.append(HostRequests(items))
        self.run_node(p)  # applied at once, as a daemon's next step would
        return True

    def read_primary(self, vol: int, offset: int, length: int) -> bytes | None:
        """A host read of the primary's volume (None: the node is down or died in it)."""
        p = self.primary
        if not p.up:
            return None
        return self._call(p, p.node.volumes[self.names[vol]].read, offset, length)

    def read_export(self) -> bytes | None:
        """The secondary's read-only export, whole image (None: the node is
        down or died in it). Raises ExportRefused when there is nothing to serve."""
        s = self.secondary
        if not s.up:
            return None
        def refused(exc: BlockmirrorError):
            if isinstance(exc, NoConsistentImage):  # the node's own rule: nothing before the first sync
                raise ExportRefused(str(exc)) from None
            self._stop(s, f"read_image failed: {exc!r}", exc)

        parts = []
        for name, size in zip(self.names, self.sizes):
            parts.append(self._call(s, s.engine.read_image, name, 0, size, on_error=refused))
            if not s.up:
                return None
        return b"".join(parts)

    # -- views ---------------------------------------------------------------------------------------
    def primary_view(self) -> PrimaryView:
        p = self.primary
        if not p.up:
            return PrimaryView(False)
        e = p.engine
        verifying = e.verify is not None or any(isinstance(ev, StartVerify) for ev in p.events)
        return PrimaryView(True, e.state.value, e.linked, e.phase in PRIMARY_LIVE, e.seq, e.acked,
                           tuple(e.window.entries()), len(e.waiting), verifying)

    def secondary_view(self) -> SecondaryView:
        s = self.secondary
        if not s.up:
            return SecondaryView(False)
        e = s.engine
        return SecondaryView(True, str(e.generation), e.seq, e.inconsistent, e.round_open is not None,
                             e.applied_batches, e.store.local_changes is not None)

    def next_time(self) -> float:
        times = [self.net.next_time()]
        for side in (self.primary, self.secondary):
            if side.up and side.events:
                times.append(self.now)
            times.append(side.engine.next_timer() if side.up else side.restart_at)
        return min(t for t in times if t is not None)
