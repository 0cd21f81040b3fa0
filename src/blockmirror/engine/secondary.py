"""The secondary engine, sans-IO: takes the primary's messages, makes them
durable in order, acknowledges cumulatively, and applies resync rounds
atomically.

- Live writes go through the redo journal (journal.py): appended per batch,
  one fdatasync, Ack up to the last durable seq, then applied to the volumes.
- An incremental round is applied in place under a safety snapshot taken at
  ResyncBegin (the storage engine's copy-on-write keeps the pre-round image);
  ResyncCommit syncs the volumes and commits the new generation, then drops
  the snapshot. A crash mid-round rolls the volumes back from the snapshot.
- A full round (no common base) writes in place with the node marked
  inconsistent until its commit.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass

from blockmirror.engine.config import SecondaryConfig
from blockmirror.engine.journal import KIND_WRITE, KIND_ZERO, RedoJournal
from blockmirror.protocol import (
    NIL_UUID,
    Ack,
    Established,
    Flush,
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
from blockmirror.protocol.errors import ErrorCode, RemoteProtocolError
from blockmirror.storage import Node, WriteOp

log = logging.getLogger("blockmirror.secondary")

JOURNAL_NAME = "journal.log"

K_GENERATION = "secondary.generation"
K_SEQ = "secondary.seq"
K_EPOCH = "journal.epoch"
K_CHECKPOINT = "journal.checkpoint"
K_ROUND = "secondary.round"
K_INCONSISTENT = "secondary.inconsistent"
K_PAIRED = "secondary.paired_uuids"  # volume name -> the primary volume's UUID it mirrors


@dataclass
class SecondaryStatus:
    generation: uuid.UUID
    seq: int
    inconsistent: bool
    round_id: int | None
    linked: bool
    journal_bytes: int

    def as_dict(self) -> dict:
        return {"role": "secondary", "generation": str(self.generation), "seq": self.seq,
                "inconsistent": self.inconsistent, "round": self.round_id, "peer_connected": self.linked,
                "journal_bytes": self.journal_bytes}


class SecondaryEngine:
    def __init__(self, node: Node, config: SecondaryConfig, now: float, observer=None):
        self.node = node
        self.config = config
        self.observer = observer
        self.outbox: list = []
        self._names = list(node.volumes)  # index -> name, the primary's order once linked
        self.linked = False
        self._last_heard = now
        self._next_heartbeat = now
        self._last_checkpoint = now
        self._pending_writes: list[WriteOp] = []  # journaled, to apply after the sync
        self._round_ops: list[WriteOp] = []
        self._journaled_seq = 0
        self._primary_uuids: dict[str, str] = {}
        self._round: dict | None = None  # mirrors K_ROUND in the node's state
        self.applied_batches = 0  # batches written to the volumes (observability)
        self._ack_due = False
        self._recover()

    # -- recovery ----------------------------------------------------------------
    def _recover(self) -> None:
        node = self.node
        self.generation = uuid.UUID(node.get_state(K_GENERATION, str(NIL_UUID)))
        self.seq = node.get_state(K_SEQ, 0)
        self.inconsistent = node.get_state(K_INCONSISTENT, False)
        epoch = node.get_state(K_EPOCH, 0)
        checkpoint = node.get_state(K_CHECKPOINT, 0)
        jpath = os.path.join(node.path, JOURNAL_NAME)
        created = not node.fs.exists(jpath)
        jfile = node.fs.open(jpath, create=True)
        if created:
            node.fs.sync_dir(node.path)
        self.journal = RedoJournal(jfile, epoch, checkpoint)
        rnd = node.get_state(K_ROUND)
        self._round = rnd
        if rnd is not None:
            if rnd["kind"] == "incremental":
                self._roll_back(rnd)
            else:
                log.warning("full sync round %s was interrupted; the secondary stays inconsistent", rnd["id"])
                node.set_state({K_ROUND: None})
                self._round = None
        # A safety snapshot with no open round is left from a crash after commit.
        for snap in node.snapshots():
            node.delete_snapshot(snap.id)
        # Replay the journal from the checkpoint: the prefix that is durable.
        replayed = 0
        end = checkpoint
        ops = []
        for rec in self.journal.replay(checkpoint, self.seq):
            ops.append(self._record_op(rec.volume, rec.kind, rec.offset, rec.length, rec.data))
            self.seq = rec.seq
            end = rec.end
            replayed += 1
        self.journal.tail = end
        if ops:
            # After a process death the page cache may hold records never synced
            # (nor acknowledged): make them durable before the volumes take them,
            # or a crash could keep their writes in the volumes and lose them.
            jfile.sync()
            node.write_many(ops)
        self._journaled_seq = self.seq
        if replayed:
            log.info("replayed %d journal records up to seq %d", replayed, self.seq)
        self._checkpoint(force=True)

    def _roll_back(self, rnd: dict) -> None:
        """Undo a half-applied incremental round: copy the safety snapshot's
        preserved chunks back, sync, then forget the round."""
        node = self.node
        safety = rnd["safety"]
        if safety in {s.id for s in node.snapshots()}:
            diff = node.diff(safety)
            ops = []
            for name, chunks in diff.items():
                vol = node.volumes[name]
                for chunk in chunks:
                    off = chunk * node.chunk_size
                    ops.append(WriteOp(name, off, node.read_snapshot(safety, name, off, vol.chunk_bytes(chunk))))
            node.write_many(ops)
            node.flush()
        node.set_state({K_ROUND: None})
        self._round = None
        log.warning("rolled back interrupted resync round %s to generation %s", rnd["id"], self.generation)

    def _checkpoint(self, force: bool = False) -> None:
        """Volumes synced up to the journal's tail; restart the journal when it
        has grown past its bound."""
        if self._pending_writes or self.journal.pending_bytes:
            return
        if not force and self.journal.tail < self.config.journal_checkpoint_bytes:
            return
        self.node.flush()
        if self.journal.tail:
            self.journal.reset(self.journal.epoch + 1)
        self.node.set_state({K_SEQ: self.seq, K_GENERATION: str(self.generation),
                             K_EPOCH: self.journal.epoch, K_CHECKPOINT: self.journal.tail})

    def _record_op(self, volume: int, kind: int, offset: int, length: int, data) -> WriteOp:
        name = self._names[volume]
        if kind == KIND_WRITE:
            return WriteOp(name, offset, data)
        return WriteOp(name, offset, None, length, "zero")

    # -- status --------------------------------------------------------------------
    @property
    def round_open(self) -> dict | None:
        return self._round

    def status(self) -> SecondaryStatus:
        rnd = self.round_open
        return SecondaryStatus(self.generation, self.seq, self.inconsistent, rnd and rnd["id"], self.linked,
                               self.journal.tail)

    def volume_infos(self) -> list[tuple[str, uuid.UUID, int]]:
        """What the handshake says of our volumes: a nil UUID until the first
        full sync pairs a volume with the primary's."""
        paired = self.node.get_state(K_PAIRED, {})
        return [(v.name, uuid.UUID(paired[v.name]) if v.name in paired else NIL_UUID, v.size)
                for v in self.node.volumes.values()]

    def read_image(self, volume: str, offset: int, length: int) -> bytes:
        """The last consistent image: during an incremental round, the
        pre-round image held by the safety snapshot."""
        rnd = self.round_open
        if (rnd is not None and rnd["kind"] == "incremental"
                and "export-ignores-round" not in self.config.mutations):  # broken on purpose when set
            return self.node.read_snapshot(rnd["safety"], volume, offset, length)
        return self.node.volumes[volume].read(offset, length)

    # -- link ---------------------------------------------------------------------------
    def link_up(self, now: float, established: Established) -> None:
        self.linked = True
        self._names = [v.name for v in established.volumes]
        self._primary_uuids = {v.name: str(v.uuid) for v in established.volumes}
        self._last_heard = now
        self._next_heartbeat = now + self.config.heartbeat_interval_s

    def link_down(self, now: float, reason: str) -> None:
        if self.linked:
            log.info("link down: %s", reason)
        self.linked = False
        self.outbox.clear()
        self._round_ops.clear()
        # Records not yet synced were never acknowledged: drop them.
        self.journal.discard_pending()
        self._pending_writes.clear()
        self._journaled_seq = self.seq
        rnd = self.round_open
        if rnd is not None and rnd["kind"] == "incremental":
            self._roll_back(rnd)
            self.node.delete_snapshot(rnd["safety"])

    def on_message(self, now: float, msg) -> None:
        self._last_heard = now
        if isinstance(msg, Write):
            self._journal(msg.seq, msg.volume, KIND_WRITE, msg.offset, len(msg.data), msg.data)
        elif isinstance(msg, WriteZeroes):
            self._journal(msg.seq, msg.volume, KIND_ZERO, msg.offset, msg.length_bytes, None)
        elif isinstance(msg, Flush):
            self._ack_due = True
        elif isinstance(msg, Heartbeat):
            self.outbox.append(HeartbeatAck(msg.token))
        elif isinstance(msg, HeartbeatAck):
            pass
        elif isinstance(msg, ResyncBegin):
            self._begin(msg)
        elif isinstance(msg, ResyncData):
            self._round_ops.append(WriteOp(self._names[msg.volume], msg.offset, msg.data))
        elif isinstance(msg, ResyncZeroes):
            self._round_ops.append(WriteOp(self._names[msg.volume], msg.offset, None, msg.length_bytes, "zero"))
        elif isinstance(msg, ResyncCommit):
            self._commit(msg)
        elif isinstance(msg, Goodbye):
            pass
        else:
            raise AssertionError(f"unexpected message {type(msg).__name__}")

    def _journal(self, seq, volume, kind, offset, length, data) -> None:
        # A peer that breaks these is refused (the driver closes the link); nothing is written.
        if self.inconsistent:
            raise RemoteProtocolError(ErrorCode.REFUSED, "live write to a secondary that holds no consistent "
                                                         "image; a full sync must come first")
        if seq != self._journaled_seq + 1:
            raise RemoteProtocolError(ErrorCode.SEQUENCE_ERROR, f"write seq {seq} does not follow seq "
                                                                f"{self._journaled_seq}")
        self.journal.append(seq, volume, kind, offset, length, data)
        self._pending_writes.append(self._record_op(volume, kind, offset, length, data))
        self._journaled_seq = seq
        if "ack-before-durable" in self.config.mutations:
            self.outbox.append(Ack(seq))  # broken on purpose: not yet on stable storage

    def end_of_batch(self, now: float) -> None:
        """Group commit: one journal sync for every record received since the
        last batch, then the cumulative Ack, then apply to the volumes."""
        if self._round_ops:
            ops, self._round_ops = self._round_ops, []
            self.node.write_many(ops)
            self.applied_batches += 1
        if self.journal.pending_bytes:
            self.journal.sync()
            self._ack_due = True
        if self._ack_due and self.linked:
            self.outbox.append(Ack(self._journaled_seq))
        self._ack_due = False
        if self._pending_writes:
            ops, self._pending_writes = self._pending_writes, []
            self.node.write_many(ops)
            self.applied_batches += 1
            self.seq = self._journaled_seq
            self.node.pace_writeback(sum(op.nbytes for op in ops), self.config.writeback_kick_bytes)
        self._checkpoint()

    def _begin(self, msg: ResyncBegin) -> None:
        # The round starts from a clean journal: everything before it applied and synced.
        self.end_of_batch(self._last_heard)
        self._checkpoint(force=True)
        if msg.base_generation == NIL_UUID:
            self._round = {"id": msg.round_id, "kind": "full", "target": str(msg.target_generation)}
            self.node.set_state({K_INCONSISTENT: True, K_ROUND: self._round})
            self.inconsistent = True
            log.info("full sync round %d begins (target generation %s)", msg.round_id, msg.target_generation)
        elif "round-in-place" in self.config.mutations:
            pass  # broken on purpose: no safety snapshot, a torn round stays torn
        else:
            if msg.base_generation != self.generation:
                raise RemoteProtocolError(ErrorCode.REFUSED, f"round {msg.round_id} starts from generation "
                                                             f"{msg.base_generation}; this secondary holds "
                                                             f"{self.generation}")
            # A crash between these two commits leaves a stray snapshot and no
            # round: recovery deletes the snapshot, nothing was applied yet.
            safety = self.node.snapshot("resync-safety")
            self._round = {"id": msg.round_id, "kind": "incremental", "safety": safety.id,
                           "target": str(msg.target_generation)}
            self.node.set_state({K_ROUND: self._round})
            log.info("incremental round %d begins (%s -> %s)", msg.round_id, msg.base_generation,
                     msg.target_generation)

    def _commit(self, msg: ResyncCommit) -> None:
        if self._round_ops:
            ops, self._round_ops = self._round_ops, []
            self.node.write_many(ops)
        self.node.flush()
        rnd = self.round_open
        self.generation = msg.generation
        self.seq = msg.seq
        self._journaled_seq = msg.seq
        self.inconsistent = False
        update = {K_GENERATION: str(msg.generation), K_SEQ: msg.seq, K_INCONSISTENT: None,
                  K_ROUND: None, K_EPOCH: self.journal.epoch, K_CHECKPOINT: self.journal.tail}
        if rnd is not None and rnd["kind"] == "full":
            update[K_PAIRED] = self._primary_uuids
        self.node.set_state(update)
        self._round = None
        if rnd is not None and rnd["kind"] == "incremental":
            self.node.delete_snapshot(rnd["safety"])
        if self.observer is not None:
            self.observer.secondary_committed(msg.generation, msg.seq)
        log.info("round %d committed: generation %s at seq %d", msg.round_id, msg.generation, msg.seq)
        self.outbox.append(ResyncCommitted(msg.round_id, msg.generation, msg.seq))

    # -- timers -------------------------------------------------------------------------
    def next_timer(self) -> float | None:
        if not self.linked:
            return self._last_checkpoint + self.config.journal_checkpoint_s
        return min(self._next_heartbeat, self._last_heard + self.config.link_timeout_s,
                   self._last_checkpoint + self.config.journal_checkpoint_s)

    def on_timer(self, now: float) -> bool:
        """Returns False when the link has timed out (the driver closes it)."""
        if now >= self._last_checkpoint + self.config.journal_checkpoint_s:
            self._last_checkpoint = now
            self._checkpoint(force=self.journal.tail > 0)
        if not self.linked:
            return True
        if now >= self._last_heard + self.config.link_timeout_s:
            return False
        if now >= self._next_heartbeat:
            self.outbox.append(Heartbeat(int(now * 1000) & 0xFFFFFFFFFFFFFFFF))
            self._next_heartbeat = now + self.config.heartbeat_interval_s
        return True

    def take_outbox(self) -> list:
        out, self.outbox = self.outbox, []
        return out
