"""blockmirror.buffers.uninitialized: a real bytearray of the asked size,
writable and usable as a receive/read target."""

import os

from blockmirror.buffers import uninitialized


def test_uninitialized_is_a_writable_bytearray_of_the_size(tmp_path):
    for n in (0, 1, 4096, 5 << 20):
        b = uninitialized(n)
        assert type(b) is bytearray and len(b) == n
    path = tmp_path / "f"
    path.write_bytes(b"\x42" * 8192)
    buf = uninitialized(8192)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.preadv(fd, [memoryview(buf)], 0) == 8192
    finally:
        os.close(fd)
    assert buf == b"\x42" * 8192
