"""The primary's in-flight window: writes sent to the secondary and not yet
acknowledged, in seq order (step 68 records them at a link failure).

It bounds the lag: beyond `window_bytes_max` or `window_writes_max` new host
writes wait (a single write larger than the window is admitted alone). In
sync mode a host write completes when the Ack that covers its last seq
arrives, and a host flush when every seq sent before it is acknowledged.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from blockmirror.engine.records import Extent


@dataclass(slots=True)
class _Entry:
    token: Any  # sync mode: the host write that completes with this seq; else None
    extent: Extent
    nbytes: int
    at: float  # when it was sent (the lag is the age of the oldest)


class InflightWindow:
    def __init__(self, bytes_max: int, writes_max: int):
        self.bytes_max = bytes_max
        self.writes_max = writes_max
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self.nbytes = 0
        self._flushes: list[tuple[int, Any]] = []  # (seq, token): completes once seq is acknowledged

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def full(self, batch_writes: int, more_bytes: int) -> bool:
        """Would one more write, making `more_bytes` with the `batch_writes`
        being admitted with it, go past the bound? A single write larger
        than the window goes alone."""
        if not self._entries and not batch_writes:
            return False
        return (self.nbytes + more_bytes > self.bytes_max
                or len(self._entries) + batch_writes >= self.writes_max)

    def add(self, seq: int, token: Any, extent: Extent, at: float = 0.0) -> None:
        n = extent[2]
        self._entries[seq] = _Entry(token, extent, n, at)
        self.nbytes += n

    def add_flush(self, seq: int, token: Any) -> None:
        self._flushes.append((seq, token))

    def acknowledge(self, seq: int) -> tuple[list[Extent], list[Any]]:
        """Release every entry up to `seq`: (their extents, the host tokens
        that complete now)."""
        extents: list[Extent] = []
        tokens: list[Any] = []
        entries = self._entries
        while entries:
            first = next(iter(entries))
            if first > seq:
                break
            entry = entries.pop(first)
            self.nbytes -= entry.nbytes
            extents.append(entry.extent)
            if entry.token is not None:
                tokens.append(entry.token)
        while self._flushes and self._flushes[0][0] <= seq:
            tokens.append(self._flushes.pop(0)[1])
        return extents, tokens

    def entries(self) -> list[tuple[int, int]]:
        """(seq, bytes) of every write in flight."""
        return [(seq, e.nbytes) for seq, e in self._entries.items()]

    def oldest_at(self) -> float | None:
        """When the oldest write in flight was sent (None: none is)."""
        return next(iter(self._entries.values())).at if self._entries else None

    def extents(self) -> list[Extent]:
        return [e.extent for e in self._entries.values()]

    def clear(self) -> tuple[list[Extent], list[Any]]:
        """The link failed: drop every entry; (their extents, every waiting
        host token: the writes are durable locally, which is all a
        disconnected pair promises)."""
        extents = self.extents()
        tokens = [e.token for e in self._entries.values() if e.token is not None]
        tokens += [t for _, t in self._flushes]
        self._entries.clear()
        self._flushes.clear()
        self.nbytes = 0
        return extents, tokens
