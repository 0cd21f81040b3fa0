"""The primary's activity log: the regions that may differ between the two
nodes after a primary crash.

A region becomes hot, durably, before the first write to it that the
secondary has not acknowledged; it cools once every such write is acknowledged,
the volume has been synced locally, and it has not been written for a whole
checkpoint period. After an unclean stop, the hot
regions are added to the resync (like DRBD's activity log): one metadata
commit when a region first turns hot, not one per write.
"""

from __future__ import annotations

from collections import Counter

from blockmirror.engine.records import ActivityRecord, RecordStore
from blockmirror.storage import Node


class ActivityLog:
    def __init__(self, node: Node, region_bytes: int, records: RecordStore):
        self.node = node
        self.records = records
        self.region_bytes = region_bytes
        self.durable: set[tuple[int, int]] = set(records.activity().regions)
        self._pending = Counter()  # (volume index, region) -> unacknowledged writes
        self._recent: set[tuple[int, int]] = set()  # marked since the last checkpoint

    def regions(self, volume: int, offset: int, length: int) -> range:
        if length <= 0:
            return range(0)
        return range(offset // self.region_bytes, (offset + length - 1) // self.region_bytes + 1)

    def mark(self, extents: list[tuple[int, int, int]]) -> None:
        """Before these writes are issued: make their regions durably hot."""
        new = set()
        for vol, off, length in extents:
            for r in self.regions(vol, off, length):
                key = (vol, r)
                self._pending[key] += 1
                self._recent.add(key)
                if key not in self.durable:
                    new.add(key)
        if new:
            # Hot in memory only once durable: after a failed commit (a full
            # store) the next write there must try again.
            self.records.save(ActivityRecord(tuple(sorted(self.durable | new))))
            self.durable |= new

    def release(self, extents: list[tuple[int, int, int]]) -> None:
        """These writes are acknowledged (or now covered by a snapshot's record)."""
        for vol, off, length in extents:
            for r in self.regions(vol, off, length):
                key = (vol, r)
                self._pending[key] -= 1
                if self._pending[key] <= 0:
                    del self._pending[key]

    def checkpoint(self) -> bool:
        """Cool the regions with nothing pending, after a local sync. True if
        anything changed."""
        # A region written since the last checkpoint stays hot one more period:
        # a region in use would otherwise cost a commit each time it turns hot again.
        cold = {k for k in self.durable if k not in self._pending and k not in self._recent}
        self._recent = set()
        if not cold:
            return False
        self.node.flush()
        hot = self.durable - cold
        if hot:
            self.records.save(ActivityRecord(tuple(sorted(hot))))
        else:
            self.records.save(delete=(ActivityRecord.KEY,))
        self.durable = hot
        return True

    def hot_extents(self, sizes: list[int]) -> list[tuple[int, int, int]]:
        out = []
        for vol, r in sorted(self.durable):
            off = r * self.region_bytes
            if vol < len(sizes) and off < sizes[vol]:
                out.append((vol, off, min(self.region_bytes, sizes[vol] - off)))
        return out

    def clear(self) -> None:
        self.durable.clear()
        self._pending.clear()
        self._recent.clear()
