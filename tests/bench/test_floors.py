"""The bare-syscall floors of benchmarks 3 and 4 (bench/floors.py) do the
work they stand for: a floor that skipped some of it would make blockmirror
look slow against a lie. Content is checked, never time."""

import os
import random
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import floors  # noqa: E402

CHUNK = 64 << 10


def _file(path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_local_and_mirror_write_leave_every_byte_on_both_sides(tmp_path):
    size = 6 * floors.REQUEST + 4096  # a short last request too
    rng = random.Random(1)
    source = _file(tmp_path / "source", rng.randbytes(size))
    a = _file(tmp_path / "a", bytes(size))
    b = _file(tmp_path / "b", bytes(size))
    journal = _file(tmp_path / "journal", bytes(1 << 20))
    assert floors.local_write(source, a, size) > 0
    assert _read(a) == _read(source)
    _file(tmp_path / "a", bytes(size))
    assert floors.mirror_write(source, a, size, b, journal) > 0
    assert _read(a) == _read(source)
    assert _read(b) == _read(source)  # the secondary applied every record
    # Every record went through the journal first, in order, as received.
    j = _read(journal)
    off, length = floors.HEADER.unpack_from(j, 0)
    assert (off, length) == (0, floors.REQUEST)
    assert j[floors.HEADER.size:floors.HEADER.size + length] == _read(source)[:length]


def test_resync_copy_applies_the_chunks_and_preserves_their_originals(tmp_path):
    nchunks = 64
    rng = random.Random(2)
    src_data = rng.randbytes(nchunks * CHUNK)
    dst_data = rng.randbytes(nchunks * CHUNK)
    src = _file(tmp_path / "src", src_data)
    dst = _file(tmp_path / "dst", dst_data)
    chunks = sorted(rng.sample(range(nchunks), floors.GROUP // 8 + 5))
    scratch = _file(tmp_path / "scratch", bytes(len(chunks) * CHUNK))
    assert floors.resync_copy(src, dst, chunks, CHUNK, scratch) > 0
    out = _read(dst)
    for c in range(nchunks):
        want = src_data if c in chunks else dst_data
        assert out[c * CHUNK:(c + 1) * CHUNK] == want[c * CHUNK:(c + 1) * CHUNK], c
    kept = _read(scratch)  # the originals, in the order they were overwritten
    assert kept == b"".join(dst_data[c * CHUNK:(c + 1) * CHUNK] for c in chunks)


def test_resync_copy_in_several_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(floors, "GROUP", 4)  # the sender's grouping; the secondary takes what it is told
    nchunks = 32
    rng = random.Random(3)
    src_data = rng.randbytes(nchunks * CHUNK)
    src = _file(tmp_path / "src", src_data)
    dst = _file(tmp_path / "dst", bytes(nchunks * CHUNK))
    chunks = list(range(0, nchunks, 2))
    scratch = _file(tmp_path / "scratch", bytes(len(chunks) * CHUNK))
    floors.resync_copy(src, dst, chunks, CHUNK, scratch)
    out = _read(dst)
    for c in chunks:
        assert out[c * CHUNK:(c + 1) * CHUNK] == src_data[c * CHUNK:(c + 1) * CHUNK]
    assert _read(scratch) == bytes(len(chunks) * CHUNK)  # the originals were zeroes
