"""The primary's resync bases: snapshots whose record names a point of the
secondary's history (`ResyncBase`: its generation and acknowledged seq, and
the writes sent but never acknowledged at that point).

A base is made by the link-down snapshot (step 66, with step 68's list), by
a restart with no base, and by every round's target once its commit is on
its way. A reconnect resyncs from the base that matches the secondary; the
others go. Snapshots without a record (a user's, the target of a round that
never sent its commit) are not bases; only internal ones are deleted, never
a `pinned` one (the target of the round under way, which may resume).
"""

from __future__ import annotations

import uuid

from blockmirror.engine.records import RecordStore, ResyncBase
from blockmirror.protocol import NIL_UUID


class ResyncBases:
    def __init__(self, node, records: RecordStore):
        self.node = node
        self.records = records
        self.pinned: set[int] = set()  # snapshots kept when their base record goes (a resumable round's target)

    def all(self) -> dict[int, ResyncBase]:
        return self.records.resync_bases()

    def restore(self, hot: list) -> dict[int, ResyncBase]:
        """At open: drop snapshots and records that are not bases (a crash
        between a snapshot and its record, a round target whose commit never
        left); after an unclean stop the hot regions join every base's
        unacknowledged writes. Returns the rows to commit and the bases."""
        bases = self.all()
        for snap in self.node.snapshots():
            if snap.internal and snap.id not in bases and snap.id not in self.pinned:
                self.node.delete_snapshot(snap.id)
        stale = tuple(k for k in self.records.base_keys() if int(k[len(ResyncBase.PREFIX):]) not in bases)
        return RecordStore.rows(*(b.with_unacked(hot) for b in bases.values() if hot), delete=stale), bases

    def lost(self) -> list[int]:
        """Bases whose record outlived their snapshot: deleted by hand
        (`snapshot delete --force`). What changed since them is unknown."""
        live = {s.id for s in self.node.snapshots()}
        return [sid for sid in (int(k[len(ResyncBase.PREFIX):]) for k in self.records.base_keys()) if sid not in live]

    def keep(self, base: ResyncBase) -> None:
        self.records.save(base)

    def drop(self, snapshot: int) -> None:
        self.records.save(delete=(f"{ResyncBase.PREFIX}{snapshot}",))
        if snapshot not in self.pinned:
            self.node.delete_snapshot(snapshot)

    def find(self, peer_gen: uuid.UUID, peer_seq: int, peer_changed: bool = False,
             bases: dict | None = None) -> ResyncBase | None:
        """The base `choose` would take, changing nothing."""
        bases = self.all() if bases is None else bases
        fits = [b for b in bases.values() if peer_gen != NIL_UUID and b.generation == peer_gen
                and (b.acked_seq <= peer_seq or peer_changed)]
        return max(fits, key=lambda b: b.snapshot) if fits else None

    def own_writes(self, base: ResyncBase) -> int:
        """Chunks this node wrote since `base` (its diff), and before it as a
        demoted node (carried in the record)."""
        return sum(len(chunks) for chunks in self.node.diff(base.snapshot).values()) + base.own_chunks

    def choose(self, ours: uuid.UUID | None, peer_gen: uuid.UUID, peer_seq: int,
               peer_changed: bool = False) -> tuple[ResyncBase | None, str]:
        """Step 74's starting point: the newest base whose record names the
        secondary's generation at or before its seq; every other base goes.
        None (a full round) when none matches; the reason says why. A
        secondary that lists its own changes (a demoted primary: they cover
        every write of its after `peer_seq`) matches any base of its
        generation."""
        bases = self.all()
        base = self.find(peer_gen, peer_seq, peer_changed, bases)
        for sid in bases:
            if base is None or sid != base.snapshot:
                self.drop(sid)
        if base is not None:
            return base, f"incremental resync from snapshot {base.snapshot} (generation {peer_gen})"
        if ours is None:
            return None, "full sync: no common base: first sync"
        if peer_gen == NIL_UUID:
            return None, "full sync: the secondary holds no consistent image"
        return None, f"full sync: the secondary is at generation {peer_gen}, which no snapshot here matches"
