"""Faults: the kinds, each seed's swarm weights, when they strike, what
counts as having fired, and healing.

The "verify" kind runs `blockmirror verify` on the primary (mostly with
--repair), about half of the time after a faulty disk changed a few bytes in
1..6 random chunks of the secondary's volumes behind its engine's back (only
while it holds a committed image with no round open). Damage is outstanding
until a verify started after the newest damage ends identical or repaired,
or a full round commits; meanwhile a verify with --repair runs whenever the
primary can take one (`verify_damage`, healing too), so it never stays.

A fault is *drawn* at a random time; it *fires* when it takes effect, which
depends on its kind (FIRED_MEANS). The summary counts fired faults, so a
crash drawn for a node that never reached the armed I/O step, or a full
disk no write hit, is not counted as exercised.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import TYPE_CHECKING

from blockmirror.storage.crashfs import CrashFileSystem

if TYPE_CHECKING:
    from blockmirror.sim.cluster import Cluster
    from blockmirror.sim.options import Options

FAULT_KINDS = ("cut", "blackhole", "partition", "slow", "delay", "corrupt", "crash-primary", "crash-secondary",
               "kill-primary", "kill-secondary", "stop-primary", "stop-secondary", "disk-full", "metadata-full",
               "verify")

FIRED_MEANS = {
    "cut": "a connection was open and the cut closed it",
    "blackhole": "a connection was open, or bytes were sent, while it lasted",
    "partition": "a connection attempt was refused while it lasted",
    "slow": "bytes were sent while it lasted",
    "delay": "bytes were sent while it lasted",
    "corrupt": "a byte in flight was flipped",
    "crash-primary": "the node reached the armed I/O step and crashed (at work or while restarting)",
    "crash-secondary": "the node reached the armed I/O step and crashed (at work or while restarting)",
    "kill-primary": "the node reached the armed I/O step and its process died (kill -9: the page cache survives)",
    "kill-secondary": "the node reached the armed I/O step and its process died (kill -9: the page cache survives)",
    "stop-primary": "the node was up and stopped in order (SIGTERM: goodbye, its stop recorded clean), then restarted",
    "stop-secondary": "the node was up and stopped in order (SIGTERM: goodbye, its stop recorded clean), then restarted",
    "disk-full": "a write or an engine step of that node failed with NoSpace while it lasted",
    "metadata-full": "a metadata commit of that node failed with NoSpace while it lasted",
    "verify": "the primary was up with no verify under way and one was asked for (about half of the time after "
              "damaging the secondary, if it held a committed image with no round open)",
    "outage": "a long outage (large case) cut a connection or refused one",
}

CRASH_STEPS_AHEAD_MAX = 40  # a crash is armed at one of the node's next I/O steps
RECOVERY_STEPS_AHEAD_MAX = 30  # ...or of its restart (storage recovery, journal replay, round rollback)
DAMAGED_CHUNKS_MAX = 6  # a damage changes bytes in 1..6 chunks: at times more than a final round's worth
DAMAGE_BYTES = (16, 200)  # bytes changed in each
VERIFY_REPAIR_SHARE = 0.8  # of "verify" faults run with --repair
VERIFY_RATED_SHARE = 0.5  # ...with a --rate that spreads the run over VERIFY_RATED_S (host writes and faults
VERIFY_RATED_S = (1.0, 5.0)  # meet it; a link that delivers a write and a request together tests stream order)


def set_metadata_full(fs: CrashFileSystem, full: bool) -> None:
    """The metadata store refuses commits (SQLITE_FULL, rolled back), apart
    from `disk_full` (volume, COW and journal files)."""
    fs.meta_full = full


def draw_fault_weights(rng: random.Random) -> dict[str, int]:
    """Swarm testing: each scenario weights the faults differently."""
    weights = {kind: rng.choice((0, 1, 1, 3)) for kind in FAULT_KINDS}
    if not any(weights.values()):
        weights["cut"] = 1
    return weights


class FaultLog:
    """Faults drawn and faults fired, per kind. `fired(kind)` counts the
    newest drawn fault of that kind once, the first time it takes effect."""

    def __init__(self):
        self.drawn: Counter = Counter()
        self.fired_count: Counter = Counter()
        self._unfired: set[str] = set()

    def draw(self, kind: str) -> None:
        self.drawn[kind] += 1
        self._unfired.add(kind)

    def fired(self, kind: str) -> None:
        if kind in self._unfired:
            self._unfired.discard(kind)
            self.fired_count[kind] += 1


class FaultInjector:
    def __init__(self, opts: Options, rng: random.Random, cluster: Cluster, log: FaultLog, trace):
        self.opts = opts
        self.rng = rng
        self.cluster = cluster
        self.log = log
        self.trace = trace
        self.kinds = [kind for kind, w in opts.fault_weights.items() for _ in range(w)]
        self.next_at = self._draw_time(0.0)
        self.full_until: dict[tuple[str, str], float] = {}  # (node, 'disk-full' | 'metadata-full') -> end
        self.outage_at = rng.uniform(0.5, 3.0) if opts.outage_s else None

    def _draw_time(self, now: float) -> float:
        return now + self.rng.expovariate(self.opts.fault_rate_per_s)

    def next_time(self) -> float:
        times = [self.next_at, *self.full_until.values()]
        if self.outage_at is not None:
            times.append(self.outage_at)
        return min(times)

    def step(self, now: float) -> None:
        for key, until in list(self.full_until.items()):
            if now >= until:
                self._set_full(key, False)
        if self.outage_at is not None and now >= self.outage_at:
            self.outage_at = None
            self._outage(now)
        if now >= self.next_at:
            self.inject(now)
            self.next_at = self._draw_time(now)

    def no_space(self, node: str) -> None:
        """A write or an engine step of `node` failed with NoSpace."""
        for (name, kind) in self.full_until:
            if name == node:
                self.log.fired(kind)

    def inject(self, now: float) -> None:
        rng, net = self.rng, self.cluster.net
        kind = rng.choice(self.kinds)
        self.log.draw(kind)
        duration = rng.uniform(0.2, 6.0)
        self.trace(f"FAULT {kind} for {duration:.2f}s")
        if kind == "cut":
            if net.conn is not None:
                self.log.fired("cut")
            net.drop_in_flight()
            net.partition(now + rng.uniform(0, duration))
            self.cluster.cut("link cut")
        elif kind == "partition":
            net.partition(now + duration)
        elif kind == "blackhole":
            net.blackhole_until = max(net.blackhole_until, now + duration)
            net.hold_in_flight(net.blackhole_until)
        elif kind == "slow":
            net.slow_until = now + duration
        elif kind == "delay":
            net.delay_until = now + duration
            net.delay_extra_s = rng.uniform(0.05, 2.5)  # past link_timeout_s at times
        elif kind == "corrupt":
            net.corrupt(rng)
        elif kind.startswith("stop-"):
            if self.cluster.stop_node(kind.split("-")[1]):
                self.log.fired(kind)
        elif kind.startswith(("crash-", "kill-")):
            what, node = kind.split("-")
            self.cluster.arm(what, node, rng.randint(0, CRASH_STEPS_AHEAD_MAX), rng.randint(0, RECOVERY_STEPS_AHEAD_MAX))
        elif kind == "verify":
            self._verify(rng)
        else:  # disk-full, metadata-full
            key = (rng.choice(("primary", "secondary")), kind)
            self.full_until[key] = now + duration
            self._set_full(key, True)

    def _verify(self, rng: random.Random) -> None:
        if rng.random() < 0.5:
            self.cluster.damage_secondary(self._damages(rng))
        repair = rng.random() < VERIFY_REPAIR_SHARE
        rate = None
        if rng.random() < VERIFY_RATED_SHARE:
            rate = int(sum(self.opts.sizes) / rng.uniform(*VERIFY_RATED_S))
        if self.cluster.start_verify(repair, rate):
            self.log.fired("verify")

    def _damages(self, rng: random.Random) -> list[tuple[int, int, bytes]]:
        """(volume, offset, bytes) in 1..DAMAGED_CHUNKS_MAX random chunks."""
        from blockmirror.sim.options import CHUNK_BYTES  # options imports this module
        out = []
        for _ in range(rng.randint(1, DAMAGED_CHUNKS_MAX)):
            vol = rng.randrange(len(self.opts.sizes))
            size = self.opts.sizes[vol]
            start = rng.randrange(-(-size // CHUNK_BYTES)) * CHUNK_BYTES
            end = min(size, start + CHUNK_BYTES)
            nbytes = min(end - start, rng.randint(*DAMAGE_BYTES))
            out.append((vol, rng.randint(start, end - nbytes), rng.randbytes(nbytes)))
        return out

    def verify_damage(self, outstanding: bool) -> None:
        """Damage never stays: while some is `outstanding`, a verify with
        --repair starts whenever the primary is up with none under way."""
        if outstanding:
            self.cluster.start_verify(repair=True)

    def _set_full(self, key: tuple[str, str], full: bool) -> None:
        fs = self.cluster.filesystem(key[0])
        if key[1] == "disk-full":
            fs.disk_full = full
        else:
            set_metadata_full(fs, full)
        if not full:
            del self.full_until[key]

    def _outage(self, now: float) -> None:
        """A large case's long outage: a partition or a black hole of
        30-120 s, starting with a cut of the connection."""
        net, until = self.cluster.net, now + self.opts.outage_s
        self.log.draw("outage")
        self.trace(f"OUTAGE for {self.opts.outage_s:.0f}s")
        if net.conn is not None:
            self.log.fired("outage")
        if self.rng.random() < 0.5:
            net.drop_in_flight()
            net.partition(until)
            self.cluster.cut("long outage")
        else:
            net.blackhole_until = max(net.blackhole_until, until)
            net.hold_in_flight(until)
            net.partition(until)  # no new connection either

    def end_full(self) -> None:
        """Every full disk has room again."""
        for key in list(self.full_until):
            self._set_full(key, False)

    def heal(self) -> None:
        self.cluster.net.heal()
        self.cluster.disarm()
        for key in list(self.full_until):
            self._set_full(key, False)
        self.outage_at = None
