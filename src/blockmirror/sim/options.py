"""Everything a scenario derives from its seed before it starts.

Swarm testing (TigerBeetle's VOPR): each seed draws its own mode, workload,
volume sizes, fault mix, rates and engine settings, so the seeds together
cover combinations no single configuration reaches. A share of the seeds are
large cases: MiB-sized volumes, host writes larger than a wire frame (one
write, several seqs), a long outage, or a small random send budget per step
(writes queue behind a round's unsent commit).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from blockmirror.engine import PrimaryConfig, SecondaryConfig
from blockmirror.protocol import WRITE_DATA_MAX_BYTES
from blockmirror.sim.faults import draw_fault_weights

CHUNK_BYTES = 4096
WORKLOADS = ("sequential", "random", "hot", "spanning")
SEND_BUDGET_BYTES_DEFAULT = 64 * 1024  # per step, less what is still queued in the pipe
SAFETY_S = 7.0
LIVENESS_S = 400.0


@dataclass(frozen=True)
class Options:
    seed: int
    mutations: frozenset
    mode: str  # 'sync' or 'async'
    workload: str
    pipeline: str  # the storage nodes' first-write pipeline: 'inline' or 'deferred'
    sizes: tuple[int, ...]  # bytes per volume
    fault_weights: dict = field(hash=False)
    fault_rate_per_s: float = 0.5
    write_rate_per_s: float = 5.0
    flush_share: float = 0.05  # of host operations that end with a FLUSH
    fua_share: float = 0.1  # of host writes sent with FUA
    export_read_rate_per_s: float = 1.0  # whole-image reads of the secondary's export
    primary_read_share: float = 0.1  # of host operations that read back a range
    probe_share: float = 0.05  # of the secondary's acknowledgements followed by a crash probe
    recrash_share: float = 0.2  # of crashes whose restart is crashed again
    latency_s: float = 0.005
    bandwidth_bps: float = 1e6
    send_budget_bytes: int = SEND_BUDGET_BYTES_DEFAULT
    send_budget_random: bool = False  # each step draws its budget in 1..send_budget_bytes
    big_volumes: bool = False
    big_writes: bool = False  # some host writes span several wire frames (seqs)
    outage_s: float = 0.0  # a long outage (partition + cut) early in the safety phase
    window_bytes_max: int = 32 * 1024
    window_writes_max: int = 16
    final_round_bytes_max: int = 16 * 1024
    resync_extent_bytes_max: int = 16 * 1024
    activity_region_bytes: int = 2 * CHUNK_BYTES
    journal_checkpoint_bytes: int = 64 * 1024
    initial_sync: str = "full"  # PrimaryConfig.initial_sync: a third of the seeds run checksum syncs
    compare_suspect_chunks_min: int = 1 << 30  # half of the seeds compare suspect chunks from 2 on
    round_checkpoint_bytes: int = 8 * 1024
    safety_s: float = SAFETY_S
    liveness_s: float = LIVENESS_S

    @property
    def large(self) -> bool:
        return self.big_volumes or self.big_writes or self.outage_s > 0 or self.send_budget_random

    def primary_config(self) -> PrimaryConfig:
        return PrimaryConfig(
            mode=self.mode, window_bytes_max=self.window_bytes_max, window_writes_max=self.window_writes_max,
            heartbeat_interval_s=0.5, link_timeout_s=2.0, reconnect_min_s=0.2, reconnect_max_s=3.0,
            final_round_bytes_max=self.final_round_bytes_max, rounds_max=4,
            resync_extent_bytes_max=self.resync_extent_bytes_max,
            activity_region_bytes=self.activity_region_bytes, activity_checkpoint_s=1.0,
            initial_sync=self.initial_sync, compare_suspect_chunks_min=self.compare_suspect_chunks_min,
            mutations=self.mutations)

    def secondary_config(self) -> SecondaryConfig:
        return SecondaryConfig(heartbeat_interval_s=0.5, link_timeout_s=2.0,
                               journal_checkpoint_bytes=self.journal_checkpoint_bytes, journal_checkpoint_s=2.0,
                               round_checkpoint_bytes=self.round_checkpoint_bytes, round_checkpoint_s=0.5,
                               mutations=self.mutations)

    def describe(self) -> list[str]:
        """Every derived option, for a failing seed's report and `simulate -v`."""
        d = asdict(self)
        d.pop("seed")
        d["mutations"] = ",".join(sorted(self.mutations)) or "none"
        d["sizes"] = "+".join(_size(s) for s in self.sizes)
        d["fault_weights"] = " ".join(f"{k}:{v}" for k, v in self.fault_weights.items() if v) or "none"
        lines, line = [], ""
        for key, value in d.items():
            text = f"{key}={_fmt(value)}"
            if line and len(line) + len(text) > 100:
                lines.append(line)
                line = ""
            line = f"{line} {text}" if line else text
        return lines + [line]


def _size(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.1f}MiB" if nbytes >= 1 << 20 else f"{nbytes // 1024}KiB"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def derive(seed: int, rng: random.Random, mutations: frozenset) -> Options:
    """Draw a scenario's options from its seeded rng (the same rng then runs
    the scenario, so the seed alone replays everything)."""
    big_volumes = rng.random() < 0.08
    big_writes = big_volumes and rng.random() < 0.4
    outage_s = rng.uniform(30, 120) if rng.random() < 0.06 else 0.0
    send_budget_random = rng.random() < 0.3
    nvol = rng.randint(1, 3)
    if big_volumes:
        sizes = [rng.randint(64, 384) * CHUNK_BYTES for _ in range(nvol)]
        if big_writes:  # room for a write larger than one wire frame
            sizes[0] = WRITE_DATA_MAX_BYTES + rng.randint(16, 512) * CHUNK_BYTES
    else:
        sizes = [rng.randint(6, 24) * CHUNK_BYTES for _ in range(nvol)]
    return Options(
        seed=seed, mutations=mutations,
        mode=rng.choice(("sync", "async")),
        workload=rng.choice(WORKLOADS),
        # Odd seeds run the nodes' first-write pipeline deferred (a batch's record
        # sync and overwrites run when the next batch is queued, or when something
        # reads or flushes), even seeds inline.
        pipeline="deferred" if seed % 2 else "inline",
        initial_sync="checksum" if seed % 3 == 0 else "full",  # not drawn: the other draws stay as they were
        compare_suspect_chunks_min=2 if seed % 4 < 2 else 1 << 30,
        sizes=tuple(sizes),
        fault_weights=draw_fault_weights(rng),
        fault_rate_per_s=rng.uniform(0.1, 0.8),
        write_rate_per_s=rng.uniform(0.5, 3) if outage_s else rng.uniform(3, 15),
        flush_share=rng.choice((0.05, 0.05, 0.3)),
        fua_share=rng.choice((0.02, 0.1, 0.3)),
        export_read_rate_per_s=rng.choice((0.5, 2.0, 6.0)),
        primary_read_share=rng.choice((0.05, 0.2)),
        probe_share=rng.choice((0.02, 0.05, 0.15)),
        recrash_share=rng.choice((0.0, 0.3, 0.6)),
        latency_s=rng.uniform(0.0005, 0.02),
        bandwidth_bps=rng.uniform(2e7, 1e8) if big_volumes else rng.uniform(2e5, 5e6),
        send_budget_bytes=rng.choice((1024, 4096, 16384)) if send_budget_random else SEND_BUDGET_BYTES_DEFAULT,
        send_budget_random=send_budget_random,
        big_volumes=big_volumes,
        big_writes=big_writes,
        outage_s=outage_s,
        window_bytes_max=rng.choice((8, 32, 128)) * 1024,
        window_writes_max=rng.choice((4, 16, 64)),
        final_round_bytes_max=rng.choice((4, 16, 64)) * 1024 * (16 if big_volumes else 1),
        resync_extent_bytes_max=rng.choice((4, 16)) * 1024 * (16 if big_volumes else 1),
        activity_region_bytes=rng.choice((1, 2, 4)) * CHUNK_BYTES,
        journal_checkpoint_bytes=rng.choice((16, 64)) * 1024,
        safety_s=SAFETY_S + (outage_s + 5.0 if outage_s else 0.0),
    )
