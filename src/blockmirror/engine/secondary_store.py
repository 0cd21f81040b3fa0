"""What the secondary keeps on disk, and how it stays consistent across a
crash: the committed point, the redo journal of live writes, and the open
resync round with its safety snapshot and resume point.

An interrupted round (link failure, crash, stop) stays open: its data up to
the recorded resume point is durable, the safety snapshot keeps serving the
pre-round image, and the primary may continue it from that point. It is
rolled back from the safety snapshot (incremental) or left inconsistent
(full) only when the primary starts another round instead, or at promote.
Recovery replays the journal from the last checkpoint: the volumes hold
writes 1..n of the committed generation, never n+1 without n.
"""

from __future__ import annotations

import dataclasses
import os
import uuid

from blockmirror.engine.config import SecondaryConfig
from blockmirror.engine.journal import KIND_WRITE, RedoJournal
from blockmirror.engine.records import (
    FULL, INCREMENTAL, CommittedPoint, LocalChanges, OpenRound, RecordStore, VolumePairing, extend_history,
)
from blockmirror.storage import Node, WriteOp

JOURNAL_NAME = "journal.log"


class SecondaryStore:
    def __init__(self, node: Node, config: SecondaryConfig, out):
        self.node = node
        self.config = config
        self.out = out  # the Output collecting the node's log lines
        self.records = RecordStore(node)
        self.names = list(node.volumes)  # wire volume index -> name (the primary's order once linked)
        self.point: CommittedPoint = self.records.committed_point()
        self.pairing: VolumePairing = self.records.volume_pairing()
        self.local_changes: LocalChanges | None = self.records.local_changes()  # a demoted node's own writes
        self.replaced_changes: LocalChanges | None = None  # ... once a commit replaced them
        self.round: OpenRound | None = None
        self._pending_writes: list[WriteOp] = []  # journaled, applied after the sync
        self._round_pos: tuple[str, int] | None = None  # end of the round's last applied extent
        self._round_unsynced = 0  # round bytes applied since the resume point was last recorded
        self._round_synced_at = 0.0
        self.applied_batches = 0  # batches written to the volumes (the simulator's checker watches it)
        self._recover()

    # -- recovery --------------------------------------------------------------------------
    def _recover(self) -> None:
        node = self.node
        jpath = os.path.join(node.path, JOURNAL_NAME)
        created = not node.fs.exists(jpath)
        jfile = node.fs.open(jpath, create=True)
        if created:
            node.fs.sync_dir(node.path)
        self.journal = RedoJournal(jfile, self.point.journal_epoch, self.point.journal_checkpoint)
        rnd = self.records.open_round()
        live = {s.id for s in node.snapshots()}
        if rnd is not None and rnd.kind == INCREMENTAL and rnd.safety not in live:
            # Deleted by hand: the pre-round image is gone and the volumes are torn.
            self.out.warning(f"the safety snapshot of interrupted round {rnd.id} is gone: the image is not "
                             f"consistent until a full sync")
            self.point = dataclasses.replace(self.point, consistent=False)
            self.records.save(self.point, delete=(OpenRound.KEY,))
            rnd = None
        if rnd is not None:
            self.round = rnd
            self.out.info(f"{rnd.kind} round {rnd.id} was interrupted; it stays open to resume at "
                          f"{rnd.cursor[0]}:{rnd.cursor[1]}" if rnd.cursor else
                          f"{rnd.kind} round {rnd.id} was interrupted; it stays open")
        # A safety snapshot with no open round is left from a crash after commit.
        for snap in node.snapshots():
            if snap.internal and (rnd is None or snap.id != rnd.safety):
                node.delete_snapshot(snap.id)
        seq, end, ops = self.point.seq, self.point.journal_checkpoint, []
        for rec in self.journal.replay(self.point.journal_checkpoint, self.point.seq):
            ops.append(self._record_op(rec.volume, rec.kind, rec.offset, rec.length, rec.data))
            seq, end = rec.seq, rec.end
        self.journal.tail = end
        if ops:
            # After a process death the page cache may hold records never synced
            # (nor acknowledged): make them durable before the volumes take them,
            # or a crash could keep their writes in the volumes and lose them.
            jfile.sync()
            node.write_many(ops)
            self.out.info(f"replayed {len(ops)} journal records up to seq {seq}")
        self.point = dataclasses.replace(self.point, seq=seq)
        self.journaled_seq = seq
        self.checkpoint(force=True)

    def abandon_round(self) -> None:
        """The open round will not be continued: roll an incremental one
        back to the pre-round image, leave a full one inconsistent."""
        rnd, self.round = self.round, None
        if rnd is None:
            return
        if rnd.kind == FULL:
            self.records.save(delete=(OpenRound.KEY,))
            self.out.warning(f"full sync round {rnd.id} is abandoned; the secondary stays inconsistent")
        elif "keep-open-round" in self.config.mutations:
            self.records.save(delete=(OpenRound.KEY,))  # broken on purpose: the half-applied round stays
        else:
            self._roll_back(rnd)
        if rnd.safety is not None:
            self.node.delete_snapshot(rnd.safety)

    def _roll_back(self, rnd: OpenRound) -> None:
        """Undo a half-applied incremental round: copy the safety snapshot's
        preserved chunks back, sync, then forget the round."""
        node = self.node
        if rnd.safety in {s.id for s in node.snapshots()}:
            ops = []
            for name, chunks in node.diff(rnd.safety).items():
                vol = node.volumes[name]
                for chunk in chunks:
                    off = chunk * node.chunk_size
                    ops.append(WriteOp(name, off, node.read_snapshot(rnd.safety, name, off, vol.chunk_bytes(chunk))))
            node.write_many(ops)
            node.flush()
        self.records.save(delete=(OpenRound.KEY,))
        self.round = None
        self.out.warning(f"rolled back interrupted resync round {rnd.id} to generation {self.point.generation}")

    def checkpoint(self, force: bool = False) -> None:
        """Volumes synced up to the journal's tail; restart the journal when
        it has grown past its bound."""
        if self._pending_writes or self.journal.pending_bytes:
            return
        if not force and self.journal.tail < self.config.journal_checkpoint_bytes:
            return
        self.node.flush()
        if self.journal.tail:
            self.journal.reset(self.journal.epoch + 1)
        self.point = dataclasses.replace(self.point, journal_epoch=self.journal.epoch,
                                         journal_checkpoint=self.journal.tail)
        self.records.save(self.point)

    def _record_op(self, volume: int, kind: int, offset: int, length: int, data) -> WriteOp:
        name = self.names[volume]
        if kind == KIND_WRITE:
            return WriteOp(name, offset, data)
        return WriteOp(name, offset, None, length, "zero")

    # -- live writes ---------------------------------------------------------------------------
    def append(self, seq: int, volume: int, kind: int, offset: int, length: int, data) -> None:
        """Journal a live write (synced at the end of the batch)."""
        self.journal.append(seq, volume, kind, offset, length, data)
        self._pending_writes.append(self._record_op(volume, kind, offset, length, data))
        self.journaled_seq = seq

    def apply(self, ops: list[WriteOp]) -> None:
        self.node.write_many(ops)
        self.applied_batches += 1

    def end_of_batch(self) -> int | None:
        """One journal sync for every record since the last batch, then apply
        them; the seq to acknowledge (None: nothing new)."""
        ack = None
        if self.journal.pending_bytes:
            if "ack-before-durable" in self.config.mutations:
                self.journal.write()  # broken on purpose: acknowledged before it is on stable storage
            else:
                self.journal.sync()
            ack = self.journaled_seq
        if self._pending_writes:
            ops, self._pending_writes = self._pending_writes, []
            self.apply(ops)
            self.point = dataclasses.replace(self.point, seq=self.journaled_seq)
            self.node.pace_writeback(sum(op.nbytes for op in ops), self.config.writeback_kick_bytes)
        self.checkpoint()
        return ack

    def link_down(self, now: float) -> None:
        """Records not yet synced were never acknowledged: drop them. An
        open round stays open, its progress made durable, to resume."""
        self.journal.discard_pending()
        self._pending_writes.clear()
        self.journaled_seq = self.point.seq
        if self.round is not None:
            self.sync_round(now)

    # -- round progress ------------------------------------------------------------------------
    def round_applied(self, pos: tuple[str, int], nbytes: int, now: float) -> None:
        """Round extents up to `pos` are applied (not yet synced); past the
        checkpoint bytes or seconds, make them durable with their resume point."""
        self._round_pos = pos
        self._round_unsynced += nbytes
        if (self._round_unsynced >= self.config.round_checkpoint_bytes
                or now - self._round_synced_at >= self.config.round_checkpoint_s):
            self.sync_round(now)

    def sync_round(self, now: float) -> None:
        """Volumes synced, then the resume point recorded: a crash after it
        resumes there."""
        rnd = self.round
        self._round_synced_at = now
        if rnd is None or self._round_pos is None or self._round_pos == rnd.cursor:
            return
        if "cursor-before-sync" not in self.config.mutations:
            self.node.flush()  # (broken on purpose by the mutation: a crash may lose what the point claims)
        self.round = dataclasses.replace(rnd, cursor=self._round_pos)
        self.records.save(self.round)
        self._round_unsynced = 0

    # -- rounds ------------------------------------------------------------------------------
    def resume_round(self, now: float) -> None:
        self.checkpoint(force=True)
        self._round_pos, self._round_unsynced, self._round_synced_at = self.round.cursor, 0, now
        self.out.info(f"{self.round.kind} round {self.round.id} resumes at {self.round.cursor[0]}:"
                      f"{self.round.cursor[1]}")

    def begin_round(self, round_id: int, kind: str, target: uuid.UUID, now: float, in_place: bool = False) -> None:
        if self.round is not None:
            self.abandon_round()
        self.checkpoint(force=True)
        start = (self.names[0], 0)
        self._round_pos, self._round_unsynced, self._round_synced_at = start, 0, now
        if kind == FULL:
            self.round = OpenRound(round_id, FULL, target, cursor=start)
            self.point = dataclasses.replace(self.point, consistent=False)
            self.records.save(self.round, self.point)
            self.out.info(f"full sync round {round_id} begins (target generation {target})")
        elif in_place:
            pass  # broken on purpose (a mutation): no safety snapshot, a torn round stays torn
        else:
            # A crash between these two commits leaves a stray snapshot and no
            # round: recovery deletes the snapshot, nothing was applied yet.
            safety = self.node.snapshot("resync-safety", internal=True)
            self.round = OpenRound(round_id, INCREMENTAL, target, safety.id, start)
            self.records.save(self.round)
            self.out.info(f"incremental round {round_id} begins ({self.point.generation} -> {target})")

    def commit_round(self, ops: list[WriteOp], generation: uuid.UUID, seq: int,
                     primary_uuids: dict[str, str]) -> OpenRound | None:
        """Sync the round's data, then commit the new point in one
        transaction; the safety snapshot goes last."""
        if ops:
            self.node.write_many(ops)
        self.node.flush()
        rnd = self.round
        history = extend_history(self.point.generation, self.point.history)
        self.point = CommittedPoint(generation, seq, self.journal.epoch, self.journal.tail, True, history)
        self.journaled_seq = seq
        recs = [self.point]
        if rnd is not None and rnd.kind == FULL:
            self.pairing = VolumePairing(dict(primary_uuids))
            recs.append(self.pairing)
        drop = (OpenRound.KEY,) if self.local_changes is None else (OpenRound.KEY, LocalChanges.KEY)
        self.records.save(*recs, delete=drop)
        if self.local_changes is not None:
            self.out.info(f"this node's own changes ({self.local_changes.chunks} chunks) are replaced by the "
                          f"primary's" + ("" if self.local_changes.discarded is None else
                                          f"; they are kept in snapshot {self.local_changes.discarded}"))
            self.local_changes, self.replaced_changes = None, self.local_changes
        self.round = None
        if rnd is not None and rnd.kind == INCREMENTAL:
            self.node.delete_snapshot(rnd.safety)
        return rnd
