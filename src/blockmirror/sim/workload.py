"""The hosts: writes, zeroes, trims and flushes to the primary (sequential,
random, hot overlapping rewrites, or batches spanning volumes), reads back
from the primary, and whole-image reads of the secondary's read-only export.

Host operations stop when the pair heals; export reads go on (the resync
rounds after healing are when an export is most likely to show a torn image).
"""

from __future__ import annotations

import random

from blockmirror.engine import HostFlush, HostWrite
from blockmirror.protocol import WRITE_DATA_MAX_BYTES
from blockmirror.sim.checker import Checker
from blockmirror.sim.cluster import Cluster
from blockmirror.sim.options import CHUNK_BYTES, Options
from blockmirror.sim.recorder import Recorder
from blockmirror.sim.views import ExportRefused
from blockmirror.storage import WriteOp

BIG_WRITES_MAX = 3  # per scenario: each costs a few MiB of copies and hashes


class Workload:
    def __init__(self, opts: Options, rng: random.Random, cluster: Cluster, recorder: Recorder, checker: Checker,
                 stats):
        self.opts = opts
        self.rng = rng
        self.cluster = cluster
        self.recorder = recorder
        self.checker = checker
        self.stats = stats
        self.tokens = 0
        self.seq_pos = 0
        self.big_writes = 0
        self.hot_chunks = [(rng.randrange(len(opts.sizes)), rng.randrange(4)) for _ in range(3)]
        self.next_host_at = rng.expovariate(opts.write_rate_per_s)
        self.next_read_at = rng.expovariate(opts.export_read_rate_per_s)
        self.last_export_view = None

    def next_time(self, healing: bool) -> float:
        return self.next_read_at if healing else min(self.next_host_at, self.next_read_at)

    def step(self, now: float, healing: bool) -> None:
        if not healing and now >= self.next_host_at:
            self.host_op()
            self.next_host_at = now + self.rng.expovariate(self.opts.write_rate_per_s)
        if now >= self.next_read_at:
            self.export_read()
            self.next_read_at = now + self.rng.expovariate(self.opts.export_read_rate_per_s)

    # -- writes -------------------------------------------------------------------------------
    def host_op(self) -> None:
        rng = self.rng
        if not self.cluster.primary_view().up:
            return  # the host sees its device gone; it retries later
        count = rng.randint(2, 5) if self.opts.workload == "spanning" else 1
        items = []
        for _ in range(count):
            vol, item = self._write()
            self.recorder.submitted(item.token, (vol, item.op.offset, item.op.nbytes, item.fua))
            items.append(item)
        if rng.random() < self.opts.flush_share:
            self.tokens += 1
            items.append(HostFlush(self.tokens))
            self.recorder.submitted(self.tokens, None)
        self.stats["host writes"] += count
        self.cluster.submit(items)
        if rng.random() < self.opts.primary_read_share:
            self.primary_read()

    def _write(self) -> tuple[int, HostWrite]:
        rng, opts = self.rng, self.opts
        vol = rng.randrange(len(opts.sizes))
        size = opts.sizes[vol]
        if opts.workload == "sequential":
            self.seq_pos = (self.seq_pos + rng.randint(512, 3 * CHUNK_BYTES)) % size
            offset = self.seq_pos
        elif opts.workload == "hot":
            vol, hc = rng.choice(self.hot_chunks)
            size = opts.sizes[vol]
            offset = min(size - 1, hc * CHUNK_BYTES + rng.randrange(CHUNK_BYTES))
        else:
            offset = rng.randrange(size)
        length_max = (16 if opts.big_volumes else 2) * CHUNK_BYTES + 100
        length = min(size - offset, rng.randint(1, length_max))
        if opts.big_writes and self.big_writes < BIG_WRITES_MAX and rng.random() < 0.05:
            # Larger than one wire frame: the primary gives it several seqs.
            self.big_writes += 1
            self.stats["writes spanning seqs"] += 1
            vol, offset = 0, rng.randrange(CHUNK_BYTES)
            length = rng.randint(WRITE_DATA_MAX_BYTES + 1, opts.sizes[0] - offset)
        self.tokens += 1
        r = rng.random()
        name = f"v{vol}"
        if r < 0.08:
            op = WriteOp(name, offset, None, length, "zero")
        elif r < 0.12:
            op = WriteOp(name, offset, None, length, "trim")
        else:
            op = WriteOp(name, offset, rng.randbytes(length))
        return vol, HostWrite(self.tokens, op, fua=rng.random() < opts.fua_share)

    # -- reads ---------------------------------------------------------------------------------
    def primary_read(self) -> None:
        vol = self.rng.randrange(len(self.opts.sizes))
        size = self.opts.sizes[vol]
        offset = self.rng.randrange(size)
        length = min(size - offset, self.rng.randint(1, 4 * CHUNK_BYTES))
        data = self.cluster.read_primary(vol, offset, length)
        if data is not None:
            self.stats["primary reads"] += 1
            self.checker.primary_read(vol, offset, data)

    def export_read(self) -> None:
        view = self.cluster.secondary_view()
        if not view.up or view == self.last_export_view:
            return  # nothing was applied since the last read: it would read the same bytes
        self.last_export_view = view
        try:
            image = self.cluster.read_export()
        except ExportRefused:
            self.stats["export reads refused"] += 1
            self.checker.export_read(view, None)
            return
        if image is not None:
            self.stats["export reads"] += 1
            self.checker.export_read(view, image)
