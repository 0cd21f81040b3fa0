"""Python libnbd against a real `blockmirror primary` process: many requests
in flight, FUA, flush, trim, write-zeroes, and deliberately bad requests."""

import errno
import random

import nbd
import pytest
from nbd_helpers import VOL0_BYTES, wait_all

from blockmirror.testing.daemon import Daemon
from blockmirror.testing.host import connect
from blockmirror.testing.nodes import read_volume

MiB = 1 << 20


def test_hundreds_of_async_requests_in_flight(primary, node_dir):
    rng = random.Random(11)
    h = connect(primary.uri("vol0"))
    assert h.get_size() == VOL0_BYTES and h.can_flush() and h.can_fua() and h.can_trim() and h.can_zero()
    expected = bytearray(VOL0_BYTES)
    cookies = []
    for i in range(512):  # 512 writes of 4-128 KiB, random places, some FUA, all in flight at once
        length = rng.choice([4096, 65536, 131072])
        offset = rng.randrange(0, VOL0_BYTES - length, 4096)
        data = rng.randbytes(length)
        expected[offset:offset + length] = data  # no overlap ordering issue: wait before overlapping
        cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), offset,
                                    flags=nbd.CMD_FLAG_FUA if i % 7 == 0 else 0))
        if i % 64 == 63:  # overlapping writes in flight together have no defined order
            wait_all(h, cookies)
            cookies = []
    wait_all(h, cookies)
    h.flush()
    bufs = [(nbd.Buffer(MiB), off) for off in range(0, VOL0_BYTES, MiB)]
    cookies = [h.aio_pread(buf, off) for buf, off in bufs]
    assert h.aio_in_flight() == len(cookies)
    wait_all(h, cookies)
    assert b"".join(bytes(buf.to_bytearray()) for buf, _ in bufs) == expected
    h.shutdown()
    primary.stop()
    assert read_volume(node_dir, "vol0") == expected


def test_fua_flush_trim_and_write_zeroes(primary, node_dir):
    h = connect(primary.uri("vol1"))
    h.pwrite(b"\x77" * MiB, 0, nbd.CMD_FLAG_FUA)
    h.pwrite(b"\x88" * MiB, MiB)
    h.flush()
    h.zero(65536, 4096)
    h.zero(4096, MiB, nbd.CMD_FLAG_FUA | nbd.CMD_FLAG_NO_HOLE)
    h.trim(131072, 2 * MiB - 131072, nbd.CMD_FLAG_FUA)  # contents after a trim are unspecified
    h.pwrite(b"\x99" * 10, 3 * MiB)
    h.flush()
    assert h.pread(4096, 0) == b"\x77" * 4096
    assert h.pread(65536, 4096) == bytes(65536)
    assert h.pread(4096, MiB) == bytes(4096)
    assert h.pread(4096, MiB + 4096) == b"\x88" * 4096
    h.zero(16 * MiB, 0)  # the whole volume in one request (no payload, so no 32 MiB cap)
    assert h.pread(MiB, 15 * MiB) == bytes(MiB)
    h.shutdown()
    primary.stop()
    assert read_volume(node_dir, "vol1") == bytes(16 * MiB)


def test_bad_requests_get_the_specs_errors_and_change_nothing(primary, node_dir):
    size = VOL0_BYTES
    h = connect(primary.uri("vol0"), strict=False)
    pattern = random.Random(3).randbytes(MiB)
    h.pwrite(pattern, size - MiB)
    bad = [
        (lambda: h.pread(4096, size - 2048), errno.EINVAL),  # read past the end
        (lambda: h.pread(512, size), errno.EINVAL),
        (lambda: h.pwrite(b"x" * 4096, size - 2048), errno.ENOSPC),  # write past the end
        (lambda: h.pwrite(b"x" * 512, 1 << 62), errno.ENOSPC),
        (lambda: h.trim(8192, size - 4096), errno.EINVAL),  # trim past the end
        (lambda: h.zero(8192, size - 4096), errno.ENOSPC),  # write-zeroes past the end
        (lambda: h.pread(4096, 0, 1 << 4), errno.EINVAL),  # unknown command flag
        (lambda: h.pwrite(b"x" * 512, 0, nbd.CMD_FLAG_NO_HOLE), errno.EINVAL),  # flag not valid for WRITE
        (lambda: h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO), errno.EINVAL),  # not advertised
        (lambda: h.pread((32 << 20) + 1, 0), errno.EINVAL),  # over the payload limit
        (lambda: h.pwrite(b"x" * ((32 << 20) + 4096), 0), errno.EINVAL),  # payload dropped unread
    ]
    for attempt, code in bad:
        with pytest.raises(nbd.Error) as info:
            attempt()
        assert info.value.errnum == code, info.value
    # the connection survived all of it, and nothing changed
    assert h.pread(MiB, size - MiB) == pattern
    assert h.pread(MiB, 0) == bytes(MiB)
    h.shutdown()
    primary.stop()
    volume = read_volume(node_dir, "vol0")
    assert volume[-MiB:] == pattern and volume[:-MiB] == bytes(size - MiB)


def test_read_only_primary_refuses_writes_with_eperm(node_dir):
    primary = Daemon("primary", node_dir, "--nbd", "127.0.0.1:0", "--read-only")
    try:
        h = connect(primary.uri("vol0"), strict=False)
        assert h.is_read_only()
        for attempt in (lambda: h.pwrite(b"x" * 512, 0), lambda: h.zero(512, 0), lambda: h.trim(512, 0)):
            with pytest.raises(nbd.Error) as info:
                attempt()
            assert info.value.errnum == errno.EPERM
        assert h.pread(512, 0) == bytes(512)
        h.shutdown()
    finally:
        assert primary.stop() == 0
    assert read_volume(node_dir, "vol0", 0, 4096) == bytes(4096)


def test_multi_conn_flush_on_one_connection_covers_writes_of_another(primary, node_dir):
    a = connect(primary.uri("vol0"))
    b = connect(primary.uri("vol0"))
    assert a.can_multi_conn()
    a.pwrite(b"\x42" * 65536, 0)
    b.flush()
    assert b.pread(65536, 0) == b"\x42" * 65536
    a.shutdown()
    b.shutdown()
