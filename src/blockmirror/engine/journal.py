"""The secondary's redo journal: the prefix property for live writes.

Writes are appended as checksummed records in sequence order and synced per
batch; the secondary acknowledges up to the last durable record and applies
records to its volumes behind the journal. After a crash, replay from the
last checkpoint re-applies records in order and stops at the first torn or
stale one, so the volumes hold writes 1..n and never n+1 without n.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator

import xxhash

from blockmirror.storage.fileio import File

# epoch, seq, volume index, kind, offset, length
_HEADER = struct.Struct(">IQHBQI")
_CHECKSUM = struct.Struct(">Q")
KIND_WRITE = 1
KIND_ZERO = 2
RECORD_DATA_MAX_BYTES = 32 << 20


@dataclass(frozen=True, slots=True)
class JournalRecord:
    seq: int
    volume: int
    kind: int
    offset: int
    length: int
    data: bytes | None
    end: int  # journal position after this record


class RedoJournal:
    def __init__(self, file: File, epoch: int, start: int):
        self.file = file
        self.epoch = epoch
        self.tail = start
        self._pending: list = []  # record pieces, written with one pwritev (no copy of the data)
        self._pending_bytes = 0

    def append(self, seq: int, volume: int, kind: int, offset: int, length: int, data=None) -> None:
        header = _HEADER.pack(self.epoch, seq, volume, kind, offset, length)
        h = xxhash.xxh3_64(header)
        self._pending.append(header)
        size = len(header) + _CHECKSUM.size
        if kind == KIND_WRITE:
            assert data is not None and len(data) == length
            h.update(data)
            self._pending.append(data)
            size += length
        self._pending.append(_CHECKSUM.pack(h.intdigest()))
        self._pending_bytes += size

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def sync(self) -> None:
        """Make every appended record durable (one write, one fdatasync)."""
        self.write()
        self.file.sync()

    def write(self) -> None:
        """Write the appended records (to the page cache: not yet durable)."""
        if self._pending:
            self.file.pwritev(self.tail, self._pending)
            self.tail += self._pending_bytes
            self.discard_pending()

    def discard_pending(self) -> None:
        self._pending = []
        self._pending_bytes = 0

    def reset(self, epoch: int) -> None:
        """Start over at position 0; records of older epochs no longer replay."""
        assert not self._pending
        self.epoch = epoch
        self.tail = 0

    def replay(self, start: int, after_seq: int) -> Iterator[JournalRecord]:
        """Valid records from `start` whose seqs follow `after_seq` in order."""
        pos = start
        expect = after_seq + 1
        size = self.file.size()
        while pos + _HEADER.size + _CHECKSUM.size <= size:
            header = self.file.pread(pos, _HEADER.size)
            epoch, seq, volume, kind, offset, length = _HEADER.unpack(header)
            if epoch != self.epoch or seq != expect or kind not in (KIND_WRITE, KIND_ZERO):
                return
            if length > RECORD_DATA_MAX_BYTES:
                return
            body = length if kind == KIND_WRITE else 0
            if pos + _HEADER.size + body + _CHECKSUM.size > size:
                return
            data = self.file.pread(pos + _HEADER.size, body) if body else None
            (checksum,) = _CHECKSUM.unpack(self.file.pread(pos + _HEADER.size + body, _CHECKSUM.size))
            h = xxhash.xxh3_64(header)
            if data:
                h.update(data)
            if h.intdigest() != checksum:
                return
            pos += _HEADER.size + body + _CHECKSUM.size
            yield JournalRecord(seq, volume, kind, offset, length, data, pos)
            expect += 1
