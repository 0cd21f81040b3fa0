"""The primary engine, sans-IO: the method of Fig. 2 (steps 62-80).

All volumes of the node are one consistency group with one sequence space.
The driver (asyncio runtime or simulator) feeds it host writes, link events,
peer messages and timer ticks with `now`, and takes out messages to send
(`poll_transmit`) and host completions (`take_completions`).

- Mirroring: each host write is applied locally, given the next seq and
  sent; async mode completes it once local, sync mode once the secondary
  acknowledges it. The window of unacknowledged writes is bounded; beyond it
  host writes wait.
- Link failure (EOF, reset, or silence past `link_timeout_s`): one pause of
  the whole group, a snapshot of every volume, and the unacknowledged writes
  recorded with it in one commit (steps 64-70); writes go on locally.
- Reconnect: choose the base snapshot whose generation the secondary holds;
  then resync rounds, each from a fresh stable snapshot T: send diff(base) +
  unacknowledged chunks read from T's image, in disk order; on commit T
  becomes the base and the old base is deleted (step 80). The first round
  small enough ends in live mirroring: writes after its T are queued behind
  its commit in the same ordered stream.
- No common base (first sync, unknown generation): a full round of the
  allocated chunks; holes skipped.
- Unclean restart: the activity log's hot regions join the resync.
"""

from __future__ import annotations

import functools
import logging
import random
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pyroaring import BitMap

from blockmirror.engine.activity import K_ACTIVITY, ActivityLog
from blockmirror.engine.config import PrimaryConfig
from blockmirror.errors import BlockmirrorError
from blockmirror.protocol import (
    NIL_UUID,
    WRITE_DATA_MAX_BYTES,
    Ack,
    Established,
    Goodbye,
    Heartbeat,
    HeartbeatAck,
    ResyncBegin,
    ResyncCommit,
    ResyncCommitted,
    ResyncData,
    ResyncZeroes,
    Write,
    WriteZeroes,
)
from blockmirror.storage import Node, WriteOp

log = logging.getLogger("blockmirror.primary")

K_GENERATION = "primary.generation"
K_CLEAN = "primary.clean"
K_BASE = "primary.base."
ZERO_EXTENT_BYTES_MAX = 1 << 30  # + snapshot id: the record that makes it a resync base

INITIAL_SYNC = "initial-sync"
MIRRORING = "mirroring"
DISCONNECTED = "disconnected"
RESYNCING = "resyncing"


class HostWrite(NamedTuple):
    token: Any
    op: WriteOp
    fua: bool = False


class HostFlush(NamedTuple):
    token: Any


@dataclass
class _Inflight:
    token: Any  # sync mode: completes on ack; None once completed
    extent: tuple[int, int, int]  # (volume index, offset, length)
    nbytes: int


@dataclass
class ResyncStats:
    """One resync: every round from a reconnect until mirroring."""
    rounds: int = 0
    kind: str = ""  # 'full' if any round had no common base, else 'incremental'
    chunks: int = 0
    bytes: int = 0
    seconds: float = 0.0
    started: float = 0.0


@dataclass
class _Round:
    id: int
    kind: str  # 'full' or 'incremental'
    base: int | None  # snapshot id
    base_generation: uuid.UUID
    target: int  # snapshot id of the stable image
    target_generation: uuid.UUID
    final: bool
    commit_seq: int
    chunks: list[BitMap]  # per volume index
    started: float
    total_chunks: int = 0
    total_bytes: int = 0
    extents_sent: int = 0
    data_bytes_sent: int = 0
    chunks_sent: int = 0
    commit_sent: bool = False
    local_writes: int = 0  # host writes applied (not mirrored) since T, while not final
    cursor: Any = None
    sent: list[BitMap] = field(default_factory=list)


def _extents_to_chunks(extents, sizes: list[int], chunk_size: int) -> list[BitMap]:
    sets = [BitMap() for _ in sizes]
    for vol, off, length in extents:
        if length > 0 and vol < len(sizes):
            end = min(off + length, sizes[vol])
            if end > off:
                sets[vol].add_range(off // chunk_size, (end - 1) // chunk_size + 1)
    return sets


class PrimaryEngine:
    def __init__(self, node: Node, config: PrimaryConfig, rng: random.Random, now: float,
                 observer=None, monotonic=time.monotonic):
        self.node = node
        self.config = config
        self.rng = rng
        self.observer = observer
        self.names = list(node.volumes)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.sizes = [node.volumes[n].size for n in self.names]
        self.chunk_size = node.chunk_size
        self.activity = ActivityLog(node, config.activity_region_bytes)
        self.linked = False
        self.state = INITIAL_SYNC
        self.seq = 0
        self.acked = 0
        self.outbox: deque = deque()
        self.live_queue: deque = deque()
        self.inflight: OrderedDict[int, _Inflight] = OrderedDict()
        self.inflight_bytes = 0
        self.waiting: deque = deque()
        self.completions: list[tuple[Any, BaseException | None]] = []
        self.round: _Round | None = None
        self.live = False  # writes get seqs and go to the peer
        self.rounds_this_link = 0
        self.last_resync = ResyncStats()
        self._episode = ResyncStats()
        self.resync_chunks_total = 0
        self.last_pause_ns = 0
        self.link_failures = 0
        self._round_ids = 0
        self._last_heard = now
        self._next_heartbeat = now
        self._reconnect_at = now
        self._attempts = 0
        self._connect_deadline: float | None = None
        self._next_activity_checkpoint = now + config.activity_checkpoint_s
        self._pending_flushes: list[tuple[int, Any]] = []
        self._recover(now)

    # -- startup ---------------------------------------------------------------------
    def _recover(self, now: float) -> None:
        node = self.node
        clean = node.get_state(K_CLEAN, True)
        self.recovered_hot: list = []
        gen = node.get_state(K_GENERATION)
        self.generation = uuid.UUID(gen) if gen else None
        records = self._records()
        update: dict = {K_CLEAN: False}
        if self.generation is None and not records:
            for snap in node.snapshots():  # leftovers of an interrupted full sync
                node.delete_snapshot(snap.id)
            update.update({k: None for k in node.state_keys(K_BASE)})
            self.state = INITIAL_SYNC
        else:
            # With no generation yet, a record is the target of a first sync whose
            # commit was sent: the secondary may hold it, so it stays a base.
            for snap in node.snapshots():
                if snap.id not in records:  # the target of a round that never committed
                    node.delete_snapshot(snap.id)
            records = self._records()
            hot = [] if clean else self.activity.hot_extents(self.sizes)
            self.recovered_hot = hot
            if not clean:
                log.warning("unclean stop: %d hot regions join the resync", len(hot))
            if not records:
                info = self._snapshot("restart", self.generation, 0, hot)
                records = {info.id: None}
            elif hot:
                for sid, rec in records.items():
                    rec["unacked"] = rec["unacked"] + [list(e) for e in hot]
                    update[K_BASE + str(sid)] = rec
            self.state = DISCONNECTED if self.generation is not None else INITIAL_SYNC
        update[K_ACTIVITY] = None
        node.set_state(update)
        self.activity.clear()

    def _records(self) -> dict[int, dict]:
        out = {}
        live = {s.id for s in self.node.snapshots()}
        for key in self.node.state_keys(K_BASE):
            sid = int(key[len(K_BASE):])
            if sid in live:
                out[sid] = self.node.get_state(key)
        return out

    def _snapshot(self, label: str, generation: uuid.UUID | None, acked: int, unacked) -> Any:
        """Steps 64-70 in one call: pause, snapshot all, record, resume."""
        state = None
        if generation is not None:
            state = {K_BASE + "{snap}": {"generation": str(generation), "acked_seq": acked,
                                         "unacked": [list(e) for e in unacked]}}
        info = self.node.snapshot(label, state)
        self.last_pause_ns = info.pause_ns
        return info

    # -- host side -------------------------------------------------------------------
    def submit(self, now: float, items) -> None:
        """Host writes and flushes, in the order the host issued them."""
        for item in items:
            if isinstance(item, HostWrite):
                try:
                    self.node.volume(item.op.volume).check_range(item.op.offset, item.op.nbytes)
                except BlockmirrorError as exc:
                    self.completions.append((item.token, exc))
                    continue
            self.waiting.append(item)
        self._admit(now)

    def _window_full(self, batch_writes: int, nbytes: int) -> bool:
        """Would a write of `nbytes` (with the batch being admitted) overflow
        the window? A single write larger than the window goes alone."""
        if not self.inflight and not batch_writes:
            return False
        return (self.inflight_bytes + nbytes > self.config.window_bytes_max
                or len(self.inflight) + batch_writes >= self.config.window_writes_max)

    def _admit(self, now: float) -> None:
        batch: list[HostWrite] = []
        batch_bytes = 0
        while self.waiting:
            item = self.waiting[0]
            if isinstance(item, HostFlush):
                if batch:
                    self._apply(now, batch)
                    batch, batch_bytes = [], 0
                self.waiting.popleft()
                self._flush(item.token)
                continue
            if self.live and self._window_full(len(batch), batch_bytes + item.op.nbytes):
                break
            batch.append(self.waiting.popleft())
            batch_bytes += item.op.nbytes
        if batch:
            self._apply(now, batch)

    def _flush(self, token) -> None:
        if "flush-not-durable" not in self.config.mutations:  # broken on purpose: the flush promises nothing
            self.node.flush()
        if self.config.mode == "sync" and self.inflight:
            self._pending_flushes.append((self.seq, token))
        else:
            self.completions.append((token, None))

    def _apply(self, now: float, batch: list[HostWrite]) -> None:
        extents = [(self.index[it.op.volume], it.op.offset, it.op.nbytes) for it in batch]
        if not self.live and self.round is not None:
            self.round.local_writes += len(batch)  # counted before the write: a failed one may have changed bytes
        try:
            if self.live:
                self.activity.mark(extents)
            self.node.write_many([it.op for it in batch], fua=any(it.fua for it in batch))
            if self.live:
                self.node.pace_writeback(sum(it.op.nbytes for it in batch), self.config.writeback_kick_bytes)
        except BlockmirrorError as exc:
            if self.live:
                self.activity.release(extents)
            for it in batch:
                self.completions.append((it.token, exc))
            return
        for it, extent in zip(batch, extents):
            if not self.live:
                self.completions.append((it.token, None))
                if self.observer:
                    self.observer.applied(it.token, it.op, None, None)
                continue
            op = it.op
            sync = self.config.mode == "sync"
            # One seq per wire message; a host write larger than a message spans several.
            step = WRITE_DATA_MAX_BYTES
            for pos in range(0, max(op.nbytes, 1), step):
                n = min(step, op.nbytes - pos)
                self.seq += 1
                if "reused-seq" in self.config.mutations and self.seq % 16 == 5:
                    self.seq -= 1  # broken on purpose: the sender's own stream check refuses the repeat
                if op.kind == "write":
                    msg = Write(self.seq, extent[0], op.offset + pos, memoryview(op.data)[pos:pos + n] if op.nbytes > step
                                else op.data)
                else:
                    msg = WriteZeroes(self.seq, extent[0], op.offset + pos, n)
                if self.round is not None and not self.round.commit_sent:
                    self.live_queue.append(msg)
                else:
                    self.outbox.append(msg)
                last = pos + step >= op.nbytes
                self.inflight[self.seq] = _Inflight(it.token if (sync and last) else None,
                                                    (extent[0], op.offset + pos, n), n)
                self.inflight_bytes += n
            if not sync:
                self.completions.append((it.token, None))
            if self.observer:
                gen = self.round.target_generation if self.round is not None else self.generation
                self.observer.applied(it.token, op, gen, self.seq)

    def take_completions(self) -> list:
        out, self.completions = self.completions, []
        return out

    # -- link ----------------------------------------------------------------------------
    def want_connect(self, now: float) -> bool:
        return not self.linked and now >= self._reconnect_at

    def connecting(self, now: float) -> None:
        """The driver started a connection attempt; no reconnect timer until
        it ends (link_up, or connect_failed). A handshake that has not
        finished within link_timeout_s is given up (on_timer returns False)."""
        self._reconnect_at = float("inf")
        self._connect_deadline = now + self.config.link_timeout_s

    def connect_failed(self, now: float, reason: str) -> None:
        self._connect_deadline = None
        self._schedule_reconnect(now)
        log.info("connect failed: %s; next try in %.2fs", reason, self._reconnect_at - now)

    def _schedule_reconnect(self, now: float) -> None:
        delay = min(self.config.reconnect_max_s, self.config.reconnect_min_s * (2 ** min(self._attempts, 20)))
        self._attempts += 1
        self._reconnect_at = now + delay * (0.5 + self.rng.random() / 2)

    def link_up(self, now: float, est: Established) -> None:
        """Step 72: the link is back; choose how to bring the secondary up."""
        assert [v.name for v in est.volumes] == self.names, "volume order is the primary's"
        self.linked = True
        self._connect_deadline = None
        self._attempts = 0
        self._last_heard = now
        self._next_heartbeat = now + self.config.heartbeat_interval_s
        self.seq = self.acked = est.committed_seq
        self.rounds_this_link = 0
        self._episode = ResyncStats(started=now)
        peer_gen = est.committed_generation
        # Whatever self.generation says: a first sync's commit may have landed
        # unconfirmed, and its target's record is then the common base.
        fits = [] if peer_gen == NIL_UUID else [
            sid for sid, rec in self._records().items()
            if rec["generation"] == str(peer_gen) and rec["acked_seq"] <= est.committed_seq]
        base = max(fits) if fits else None
        if self.generation is None:
            reason = "no common base: first sync"
        elif peer_gen == NIL_UUID:
            reason = "the secondary holds no consistent image"
        else:
            reason = f"the secondary is at generation {peer_gen}, which no snapshot here matches"
        if base is None:
            log.warning("full sync: %s", reason)
            for snap in self.node.snapshots():
                self.node.delete_snapshot(snap.id)
            self.node.set_state({k: None for k in self.node.state_keys(K_BASE)})
        else:
            for snap in self.node.snapshots():
                if snap.id != base:
                    self.node.delete_snapshot(snap.id)
                    self.node.set_state({K_BASE + str(snap.id): None})
            log.info("incremental resync from snapshot %d (generation %s)", base, peer_gen)
        self._start_round(now, base)

    def _start_round(self, now: float, base: int | None) -> None:
        self._round_ids += 1
        record = self._records().get(base) if base is not None else None
        info = self._snapshot("resync-target", None, 0, [])
        if base is None:
            chunks = [BitMap() for _ in self.names]
            for i, name in enumerate(self.names):
                for off, length in self.node.volumes[name].allocated_extents():
                    chunks[i].add_range(off // self.chunk_size, (off + length - 1) // self.chunk_size + 1)
            base_gen = NIL_UUID
            kind = "full"
        else:
            diff = self.node.diff(base)
            unacked = [] if "skip-unacked" in self.config.mutations else record["unacked"]
            chunks = _extents_to_chunks(unacked, self.sizes, self.chunk_size)
            for i, name in enumerate(self.names):
                chunks[i] |= diff[name]
            base_gen = uuid.UUID(record["generation"])
            kind = "incremental"
        total_chunks = sum(len(c) for c in chunks)
        total_bytes = sum(self._chunk_bytes(i, c) for i, cs in enumerate(chunks) for c in cs)
        self.rounds_this_link += 1
        final = (total_bytes <= self.config.final_round_bytes_max
                 or self.rounds_this_link >= self.config.rounds_max)
        target_gen = uuid.UUID(int=self.rng.getrandbits(128), version=4)
        rnd = _Round(self._round_ids, kind, base, base_gen, info.id, target_gen, final, self.seq, chunks, now,
                     total_chunks=total_chunks, total_bytes=total_bytes)
        rnd.cursor = self._extents(rnd)
        extent_count = sum(1 for _ in self._extents(rnd))
        self.round = rnd
        self.live = final
        self.state = INITIAL_SYNC if kind == "full" else RESYNCING
        self.outbox.append(ResyncBegin(rnd.id, base_gen, target_gen, max(extent_count, 1), total_bytes))
        if self.observer:
            self.observer.round_started(target_gen, base_gen, self.seq, kind, chunks)
        log.info("round %d (%s%s): %d chunks, %d bytes", rnd.id, kind, ", final" if final else "",
                 total_chunks, total_bytes)

    @staticmethod
    @functools.lru_cache(maxsize=8)
    def _zeros(length: int) -> bytes:
        return bytes(length)

    def _chunk_bytes(self, vol: int, chunk: int) -> int:
        return min(self.chunk_size, self.sizes[vol] - chunk * self.chunk_size)

    def _runs(self, chunks: BitMap):
        """(first, count) runs of consecutive chunks, each at most one extent."""
        step_max = max(1, self.config.resync_extent_bytes_max // self.chunk_size)
        run_start = run_len = None
        for c in chunks:
            if run_start is not None and c == run_start + run_len and run_len < step_max:
                run_len += 1
                continue
            if run_start is not None:
                yield run_start, run_len
            run_start, run_len = c, 1
        if run_start is not None:
            yield run_start, run_len

    def _extents(self, rnd: _Round):
        """The round's extents in disk order: ('data', vol, first, count)
        read from the stable image T; a full round also covers every hole with
        ('zero', ...) so stale data on the secondary is cleared without
        sending zero bytes."""
        for vol, chunks in enumerate(rnd.chunks):
            pos = 0
            for first, count in self._runs(chunks):
                if rnd.kind == "full" and first > pos:
                    yield from self._zero_runs(vol, pos, first)
                yield "data", vol, first, count
                pos = first + count
            if rnd.kind == "full":
                yield from self._zero_runs(vol, pos, -(-self.sizes[vol] // self.chunk_size))

    def _zero_runs(self, vol: int, first: int, end: int):
        step = max(1, ZERO_EXTENT_BYTES_MAX // self.chunk_size)
        for c in range(first, end, step):
            yield "zero", vol, c, min(step, end - c)

    def poll_transmit(self, now: float, budget_bytes: int = 1 << 62) -> list:
        """Messages to send now, in stream order, up to about `budget_bytes`."""
        if not self.linked:
            return []
        out = []
        while self.outbox and budget_bytes > 0:
            msg = self.outbox.popleft()
            out.append(msg)
            budget_bytes -= len(getattr(msg, "data", b"")) + 64
        rnd = self.round
        if rnd is not None and not rnd.commit_sent and not self.outbox:
            while budget_bytes > 0:
                nxt = next(rnd.cursor, None)
                if nxt is None:
                    if not rnd.final and rnd.local_writes == 0:
                        # No host write since T: the image this commit gives the
                        # secondary is the primary's current one, so this round
                        # is the last (the next would be empty). Writes from now
                        # on are live and follow the commit in the stream.
                        assert self.seq == rnd.commit_seq, "a write got a seq during a non-final round"
                        rnd.final = True
                        self.live = True
                        log.info("round %d: no host write since its snapshot, so it is the last", rnd.id)
                    # Before the commit leaves: if it lands and we crash, T must
                    # still be known as the base of the secondary's new generation.
                    self.node.set_state({K_BASE + str(rnd.target): {
                        "generation": str(rnd.target_generation), "acked_seq": rnd.commit_seq, "unacked": []}})
                    out.append(ResyncCommit(rnd.id, rnd.target_generation, rnd.commit_seq,
                                            rnd.extents_sent, rnd.data_bytes_sent))
                    rnd.commit_sent = True
                    if "delete-base-early" in self.config.mutations and rnd.base is not None:
                        # Broken on purpose: the base goes before the secondary confirms the commit.
                        self.node.set_state({K_BASE + str(rnd.base): None})
                        self.node.delete_snapshot(rnd.base)
                        rnd.base = None
                    # Live writes taken since T follow the commit in the stream.
                    self.outbox.extend(self.live_queue)
                    self.live_queue.clear()
                    break
                kind, vol, first, count = nxt
                off = first * self.chunk_size
                length = min(count * self.chunk_size, self.sizes[vol] - off)
                rnd.extents_sent += 1
                if kind == "zero":
                    out.append(ResyncZeroes(rnd.id, vol, off, length))
                    budget_bytes -= 64
                    continue
                data = self.node.read_snapshot(rnd.target, self.names[vol], off, length)
                rnd.chunks_sent += count
                if data == self._zeros(len(data)):  # memcmp stops at the first non-zero byte
                    out.append(ResyncZeroes(rnd.id, vol, off, length))
                else:
                    out.append(ResyncData(rnd.id, vol, off, data))
                    rnd.data_bytes_sent += length
                    budget_bytes -= length
                budget_bytes -= 64
            while self.outbox and budget_bytes > 0 and rnd.commit_sent:
                msg = self.outbox.popleft()
                out.append(msg)
                budget_bytes -= len(getattr(msg, "data", b"")) + 64
        return out

    def on_message(self, now: float, msg) -> None:
        self._last_heard = now
        if isinstance(msg, Ack):
            self._on_ack(now, msg.seq)
        elif isinstance(msg, ResyncCommitted):
            self._on_committed(now, msg)
        elif isinstance(msg, Heartbeat):
            self.outbox.append(HeartbeatAck(msg.token))
        elif isinstance(msg, (HeartbeatAck, Goodbye)):
            pass
        else:
            raise AssertionError(f"unexpected message {type(msg).__name__}")

    def _on_ack(self, now: float, seq: int) -> None:
        released = []
        while self.inflight:
            first = next(iter(self.inflight))
            if first > seq:
                break
            entry = self.inflight.pop(first)
            self.inflight_bytes -= entry.nbytes
            released.append(entry.extent)
            if entry.token is not None:
                self.completions.append((entry.token, None))
        self.acked = max(self.acked, seq)
        self.activity.release(released)
        while self._pending_flushes and self._pending_flushes[0][0] <= self.acked:
            self.completions.append((self._pending_flushes.pop(0)[1], None))
        self._admit(now)

    def _on_committed(self, now: float, msg: ResyncCommitted) -> None:
        rnd = self.round
        assert rnd is not None and msg.round_id == rnd.id, "commit confirmation of another round"
        # Step 80: the new generation is the secondary's; T is the new base.
        self.generation = rnd.target_generation
        update = {K_GENERATION: str(rnd.target_generation),
                  K_BASE + str(rnd.target): {"generation": str(rnd.target_generation),
                                             "acked_seq": rnd.commit_seq, "unacked": []}}
        if rnd.base is not None:
            update[K_BASE + str(rnd.base)] = None
        self.node.set_state(update)
        if rnd.base is not None:
            self.node.delete_snapshot(rnd.base)
        seconds = now - rnd.started
        ep = self._episode
        ep.rounds += 1
        ep.kind = "full" if "full" in (ep.kind, rnd.kind) else "incremental"
        ep.chunks += rnd.chunks_sent
        ep.bytes += rnd.data_bytes_sent
        self.resync_chunks_total += rnd.chunks_sent
        log.info("round %d committed: %d chunks, %d bytes in %.3fs", rnd.id, rnd.chunks_sent,
                 rnd.data_bytes_sent, seconds)
        self.round = None
        if rnd.final:
            self.node.set_state({K_BASE + str(rnd.target): None})
            self.node.delete_snapshot(rnd.target)
            ep.seconds = now - ep.started
            self.last_resync = ep
            self.state = MIRRORING
            log.info("mirroring (generation %s)", self.generation)
        else:
            self._start_round(now, rnd.target)

    def link_down(self, now: float, reason: str) -> None:
        """Step 62 detected: record what the secondary may lack, go on locally."""
        if not self.linked:
            return
        self.linked = False
        self.link_failures += 1
        self._schedule_reconnect(now)
        rnd = self.round
        unacked = [e.extent for e in self.inflight.values()]
        if "no-pause" in self.config.mutations:
            # Broken on purpose: writes slip in between the failure and the snapshot.
            self.live = False
            self._admit(now)
        if rnd is None:
            if self.generation is not None:
                self._snapshot("link-down", self.generation, self.acked, unacked)
        elif not rnd.commit_sent:
            # The round never committed: T merges into the base, which still
            # tracks every change since the secondary's generation.
            self.node.delete_snapshot(rnd.target)
        else:
            # The commit may or may not have landed: T is the base if it did.
            self.node.set_state({K_BASE + str(rnd.target): {"generation": str(rnd.target_generation),
                                                            "acked_seq": rnd.commit_seq, "unacked": []}})
        for entry in self.inflight.values():
            if entry.token is not None:
                self.completions.append((entry.token, None))
        for _, token in self._pending_flushes:
            self.completions.append((token, None))
        self._pending_flushes.clear()
        self.activity.release(unacked)
        self.inflight.clear()
        self.inflight_bytes = 0
        self.outbox.clear()
        self.live_queue.clear()
        self.round = None
        self.live = False
        self.state = DISCONNECTED if self.generation is not None else INITIAL_SYNC
        log.warning("link down (%s): %d unacknowledged writes recorded; writes continue locally",
                    reason, len(unacked))
        self._admit(now)

    # -- timers ----------------------------------------------------------------------------
    def next_timer(self) -> float:
        t = self._next_activity_checkpoint
        if self.linked:
            t = min(t, self._next_heartbeat, self._last_heard + self.config.link_timeout_s)
        elif self._connect_deadline is not None:
            t = min(t, self._connect_deadline)
        else:
            t = min(t, self._reconnect_at)
        return t

    def on_timer(self, now: float) -> bool:
        """Returns False when the link has gone silent too long: the driver
        closes the connection and calls link_down."""
        if now >= self._next_activity_checkpoint:
            self._next_activity_checkpoint = now + self.config.activity_checkpoint_s
            self.activity.checkpoint()
        if not self.linked:
            # A connection attempt that never finished its handshake.
            return self._connect_deadline is None or now < self._connect_deadline
        if now >= self._last_heard + self.config.link_timeout_s:
            return False
        if now >= self._next_heartbeat:
            self.outbox.append(Heartbeat(int(now * 1000) & 0xFFFFFFFFFFFFFFFF))
            self._next_heartbeat = now + self.config.heartbeat_interval_s
        return True

    def shutdown(self, now: float) -> None:
        """Orderly stop: record what the secondary lacks, mark the stop clean."""
        if self.linked:
            self.link_down(now, "shutting down")
        self.node.flush()
        self.activity.clear()
        self.node.set_state({K_CLEAN: True, K_ACTIVITY: None})

    def volume_infos(self) -> list[tuple[str, uuid.UUID, int]]:
        return [(v.name, uuid.UUID(v.uuid), v.size) for v in self.node.volumes.values()]

    # -- status ----------------------------------------------------------------------------
    def status(self) -> dict:
        space = {s.id: s for s in self.node.snapshot_space()}
        return {
            "role": "primary",
            "state": self.state,
            "mode": self.config.mode,
            "peer_connected": self.linked,
            "generation": str(self.generation) if self.generation else None,
            "seq": self.seq,
            "acked_seq": self.acked,
            "inflight_writes": len(self.inflight),
            "inflight_bytes": self.inflight_bytes,
            "waiting_writes": len(self.waiting),
            "lag_writes": self.seq - self.acked,
            "write_pause_ms": self.last_pause_ns / 1e6,
            "link_failures": self.link_failures,
            # After an unclean stop: the regions that joined the resync because
            # the primary could not know what the secondary had.
            "unclean_restart_hot_bytes": sum(e[2] for e in self.recovered_hot),
            "last_resync": {"rounds": self.last_resync.rounds, "kind": self.last_resync.kind,
                            "chunks": self.last_resync.chunks, "bytes": self.last_resync.bytes,
                            "seconds": self.last_resync.seconds},
            "resync_progress": None if self.round is None else {
                "round": self.round.id, "kind": self.round.kind, "chunks_done": self.round.chunks_sent,
                "chunks_total": self.round.total_chunks, "bytes_total": self.round.total_bytes},
            "snapshots": [{"id": s.id, "label": s.label, "space_bytes": space[s.id].data_bytes,
                           "exceptions": space[s.id].exceptions} for s in self.node.snapshots()],
        }
