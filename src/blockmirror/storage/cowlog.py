"""The record format of a COW file.

Each batch of originals that one `write_many` preserves in one COW file is
written as one record: a header of whole 4 KiB blocks, then the originals
of the chunks that hold data, one chunk-sized slot each. The header names
the snapshot (the file's id), the volume, the chunks (a flag marks a chunk
whose original was all zeroes: no slot), the writer's epoch, and an xxh3
digest of header and data. A record is therefore durable, exception-table
rows included, with the one sync of the COW file that copy-on-write needs
anyway; the rows reach SQLite later, in bulk. After a crash, `Node.open`
reads the records past each file's committed tail and keeps every whole
one (the digest rejects torn or stale ones; the epoch, bumped at every
open, rejects records a previous recovery already discarded)."""

from __future__ import annotations

import struct

import xxhash

BLOCK = 4096
MAGIC = b"BMCOWR01"
ZERO_FLAG = 1 << 63
ENTRIES_MAX = 1 << 22
# magic, file, vol, entries, epoch, header blocks, data slots, digest (last: zero while hashing)
_HEAD = struct.Struct("<8sQIIQIIQ")
_DIGEST_AT = _HEAD.size - 8


def header_blocks(entries: int) -> int:
    return -(-(_HEAD.size + 8 * entries) // BLOCK)


def encode_header(file: int, vol: int, epoch: int, chunks: list[int], has_data: list[bool],
                  data: list) -> bytearray:
    """The header of a record whose data slots are `data` (the originals of
    the chunks with `has_data`, in order)."""
    n = len(chunks)
    head = bytearray(header_blocks(n) * BLOCK)
    _HEAD.pack_into(head, 0, MAGIC, file, vol, n, epoch, header_blocks(n), len(data), 0)
    struct.pack_into(f"<{n}Q", head, _HEAD.size,
                     *(c if d else c | ZERO_FLAG for c, d in zip(chunks, has_data)))
    h = xxhash.xxh3_64(head)
    for d in data:
        h.update(d)
    struct.pack_into("<Q", head, _DIGEST_AT, h.intdigest())
    return head


def read_record(f, block: int, file: int, vol: int, epoch: int, chunk_size: int):
    """The record at `block` (in 4 KiB blocks) if it is whole and was
    written by (file, vol, epoch): ([(chunk, slot or None)], next block);
    else None. Slots are in 4 KiB blocks."""
    head = f.pread(block * BLOCK, BLOCK)
    magic, fid, vid, n, ep, hb, nd, digest = _HEAD.unpack_from(head)
    if (magic != MAGIC or fid != file or vid != vol or ep != epoch or not 0 < n <= ENTRIES_MAX
            or hb != header_blocks(n) or nd > n):
        return None
    if hb > 1:
        head += f.pread((block + 1) * BLOCK, (hb - 1) * BLOCK)
    entries = struct.unpack_from(f"<{n}Q", head, _HEAD.size)
    if sum(1 for e in entries if not e & ZERO_FLAG) != nd:
        return None
    data = f.pread((block + hb) * BLOCK, nd * chunk_size)
    zeroed = bytearray(head)
    struct.pack_into("<Q", zeroed, _DIGEST_AT, 0)
    h = xxhash.xxh3_64(zeroed)
    h.update(data)
    if h.intdigest() != digest:
        return None
    rows, slot, step = [], block + hb, chunk_size // BLOCK
    for e in entries:
        if e & ZERO_FLAG:
            rows.append((e & ~ZERO_FLAG, None))
        else:
            rows.append((e, slot))
            slot += step
    return rows, slot
