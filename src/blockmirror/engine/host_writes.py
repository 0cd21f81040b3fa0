"""The primary's host-write path (a part of PrimaryNode, engine/primary.py):
each write is applied locally, in group-committed batches; while mirroring
it gets the next seq (one per wire message) and is queued for the
secondary. Async mode completes it once local, sync mode once the secondary
acknowledges it. The in-flight window bounds the lag: writes beyond it wait.
Outside a live phase writes stay local and the resync's diff carries them.
"""

from __future__ import annotations

from blockmirror.engine.events import HostFlush, HostRequests, HostWrite
from blockmirror.engine.phases import PRIMARY_LIVE
from blockmirror.engine.phases import PrimaryPhase as P
from blockmirror.errors import BlockmirrorError
from blockmirror.protocol import WRITE_DATA_MAX_BYTES, Write, WriteZeroes


class HostWrites:
    """Mixed into PrimaryNode: uses its node, config, phase, window, queues."""

    # -- host requests ---------------------------------------------------------------------
    def _on_host(self, now: float, event: HostRequests) -> None:
        for item in event.items:
            if isinstance(item, HostWrite):
                try:
                    self.node.volume(item.op.volume).check_range(item.op.offset, item.op.nbytes)
                except BlockmirrorError as exc:
                    self._out.completions.append((item.token, exc))
                    continue
            self.waiting.append(item)
        self._admit(now)

    def _admit(self, now: float) -> None:
        """Apply what the window has room for. A batch that failed (a full
        disk) took no room: the next one goes at once, or nothing would ever
        free room for it."""
        while self.waiting and self._admit_batch():
            pass

    def _admit_batch(self) -> bool:
        """One group-committed batch; False when nothing could be taken."""
        batch: list[HostWrite] = []
        batch_bytes = 0
        taken = False
        live = self.phase in PRIMARY_LIVE
        while self.waiting:
            item = self.waiting[0]
            if isinstance(item, HostFlush):
                if batch:
                    self._apply(batch)
                    batch, batch_bytes = [], 0
                self.waiting.popleft()
                self._flush(item.token)
                taken = True
                continue
            if live and self.window.full(len(batch), batch_bytes + item.op.nbytes):
                break
            batch.append(self.waiting.popleft())
            batch_bytes += item.op.nbytes
        if batch:
            self._apply(batch)
        return taken or bool(batch)

    def _flush(self, token) -> None:
        if "flush-not-durable" not in self.config.mutations:  # broken on purpose: the flush promises nothing
            self.node.flush()
        if self.config.mode == "sync" and self.window:
            self.window.add_flush(self.seq, token)
        else:
            self._out.completions.append((token, None))

    def _apply(self, batch: list[HostWrite]) -> None:
        index = self.geo.index
        extents = [(index[it.op.volume], it.op.offset, it.op.nbytes) for it in batch]
        live = self.phase in PRIMARY_LIVE
        if not live and self.round is not None:
            self.round.local_writes += len(batch)  # before the write: a failed one may have changed bytes
        if not live and self.unsynced_since is None:
            self.unsynced_since = self.now  # the oldest write the secondary lacks
        try:
            if live:
                self.activity.mark(extents)
            self.node.write_many([it.op for it in batch], fua=any(it.fua for it in batch))
            if live:
                self.node.pace_writeback(sum(e[2] for e in extents), self.config.writeback_kick_bytes)
        except BlockmirrorError as exc:
            if live:
                self.activity.release(extents)
            self._out.completions.extend((it.token, exc) for it in batch)
            return
        if live:
            self._mirror(batch, extents)
            return
        self._out.completions.extend((it.token, None) for it in batch)
        if self.observer:
            for it in batch:
                self.observer.applied(it.token, it.op, None, None)

    def _mirror(self, batch: list[HostWrite], extents) -> None:
        """Give each write its seqs (one per wire message: a write larger
        than a message spans several) and queue it for the secondary."""
        sync = self.config.mode == "sync"
        queue = self.live_queue if self.phase is P.FINAL_SENDING else self.outbox
        step = WRITE_DATA_MAX_BYTES
        gen = self.round.target_generation if self.round is not None else self.generation
        for it, (vol, _, _) in zip(batch, extents):
            op = it.op
            for pos in range(0, max(op.nbytes, 1), step):
                n = min(step, op.nbytes - pos)
                self.seq += 1
                if "reused-seq" in self.config.mutations and self.seq % 16 == 5:
                    self.seq -= 1  # broken on purpose: the sender's own stream check refuses the repeat
                if op.kind == "write":
                    data = memoryview(op.data)[pos:pos + n] if op.nbytes > step else op.data
                    queue.append(Write(self.seq, vol, op.offset + pos, data))
                else:
                    queue.append(WriteZeroes(self.seq, vol, op.offset + pos, n))
                last = pos + step >= op.nbytes
                self.window.add(self.seq, it.token if (sync and last) else None, (vol, op.offset + pos, n),
                                self.now)
            if not sync:
                self._out.completions.append((it.token, None))
            if self.observer:
                self.observer.applied(it.token, op, gen, self.seq)
