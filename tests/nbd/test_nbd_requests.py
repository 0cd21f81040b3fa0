"""Request framing parsed in place, and the error each bad request gets."""

import random
import struct

import pytest

from blockmirror.nbd import wire
from blockmirror.nbd.requests import ProtocolError, Request, RequestReader, check
from blockmirror.nbd.wire import Cmd, Err


def header(cmd, cookie, offset, length, flags=0, magic=0x25609513):
    return struct.pack(">IHHQQI", magic, flags, cmd, cookie, offset, length)


def deliver(reader: RequestReader, stream: bytes, rng: random.Random, max_piece: int) -> list[Request]:
    """Push `stream` through get_buffer/buffer_updated in random piece sizes,
    as a transport would, collecting every parsed request."""
    out = []
    pos = 0
    while pos < len(stream):
        target = reader.get_buffer()
        n = min(len(target), len(stream) - pos, rng.randint(1, max_piece))
        target[:n] = stream[pos:pos + n]
        reader.buffer_updated(n)
        pos += n
        while (request := reader.next_request()) is not None:
            out.append(request)
    return out


def test_exact_header_bytes():
    reader = RequestReader()
    reader.feed(bytes.fromhex("25609513" "0001" "0000" "0102030405060708" "0000000000001000" "00000200"))
    assert reader.next_request() == Request(Cmd.READ, wire.CMD_FLAG_FUA, 0x0102030405060708, 4096, 512)
    assert reader.next_request() is None and not reader.mid_request


@pytest.mark.parametrize("max_piece", [1, 7, 4096, 300_000])
def test_any_split_of_a_mixed_stream_parses_the_same(max_piece):
    rng = random.Random(max_piece)
    small = bytes(rng.randrange(256) for _ in range(4096))
    big = rng.randbytes(1 << 20)
    stream = (header(Cmd.WRITE, 1, 0, len(small)) + small
              + header(Cmd.READ, 2, 8192, 65536)
              + header(Cmd.WRITE, 3, 1 << 20, len(big)) + big
              + header(Cmd.FLUSH, 4, 0, 0)
              + header(Cmd.WRITE, 5, 0, 0)
              + header(Cmd.TRIM, 6, 0, 4096, flags=1))
    reader = RequestReader(buffer_bytes=64 << 10)
    got = deliver(reader, stream, rng, max_piece)
    assert [(r.cmd, r.cookie, r.offset, r.length) for r in got] == [
        (1, 1, 0, 4096), (0, 2, 8192, 65536), (1, 3, 1 << 20, 1 << 20), (3, 4, 0, 0), (1, 5, 0, 0), (4, 6, 0, 4096)]
    assert bytes(got[0].data) == small and bytes(got[2].data) == big and got[4].data == b""
    assert not reader.mid_request


def test_large_write_payload_is_received_in_place():
    """The part of a big payload not already received goes straight into the
    payload's own buffer: get_buffer() returns a view of it."""
    reader = RequestReader(buffer_bytes=64 << 10)
    payload = bytes(range(256)) * 4096  # 1 MiB
    reader.feed(header(Cmd.WRITE, 9, 0, len(payload)) + payload[:1000])
    assert reader.next_request() is None and reader.mid_request
    view = reader.get_buffer()
    assert len(view) == len(payload) - 1000
    view[:] = payload[1000:]
    reader.buffer_updated(len(view))
    request = reader.next_request()
    assert request.cookie == 9 and request.data == payload


def test_oversized_write_payload_is_dropped_without_buffering():
    rng = random.Random(1)
    length = wire.MAX_PAYLOAD_BYTES + 1
    stream = header(Cmd.WRITE, 7, 0, length) + bytes(length) + header(Cmd.READ, 8, 0, 512)
    reader = RequestReader(buffer_bytes=64 << 10)
    sizes = []
    orig = reader.get_buffer

    def spy():
        view = orig()
        sizes.append(len(view))
        return view
    reader.get_buffer = spy
    got = deliver(reader, stream, rng, 1 << 20)
    assert [(r.cmd, r.cookie, r.data) for r in got] == [(Cmd.WRITE, 7, None), (Cmd.READ, 8, None)]
    assert max(sizes) <= 64 << 10  # never a buffer for the oversized payload
    assert check(got[0], 1 << 40, False) == Err.EINVAL


def test_bad_magic_is_a_protocol_error():
    reader = RequestReader()
    reader.feed(header(Cmd.READ, 1, 0, 512, magic=0x12345678))
    with pytest.raises(ProtocolError, match="magic"):
        reader.next_request()


SIZE = 1 << 20


@pytest.mark.parametrize("request_, read_only, error", [
    (Request(Cmd.READ, 0, 1, 0, SIZE), False, Err.OK),
    (Request(Cmd.READ, 1, 1, SIZE - 1, 1), False, Err.OK),  # FUA is valid on every command
    (Request(Cmd.READ, 0, 1, SIZE - 1, 2), False, Err.EINVAL),
    (Request(Cmd.READ, 0, 1, (1 << 64) - 1, 1), False, Err.EINVAL),
    (Request(Cmd.READ, 0, 1, 0, wire.MAX_PAYLOAD_BYTES + 1), False, Err.EINVAL),
    (Request(Cmd.READ, wire.CMD_FLAG_DF, 1, 0, 512), False, Err.EINVAL),  # DF not advertised
    (Request(Cmd.READ, 0, 1, 0, 512), True, Err.OK),
    (Request(Cmd.WRITE, 0, 1, SIZE - 4, 4, b"abcd"), False, Err.OK),
    (Request(Cmd.WRITE, 0, 1, SIZE - 3, 4, b"abcd"), False, Err.ENOSPC),
    (Request(Cmd.WRITE, 0, 1, 0, 4, b"abcd"), True, Err.EPERM),
    (Request(Cmd.WRITE, wire.CMD_FLAG_NO_HOLE, 1, 0, 4, b"abcd"), False, Err.EINVAL),
    (Request(Cmd.WRITE_ZEROES, wire.CMD_FLAG_NO_HOLE | 1, 1, 0, SIZE), False, Err.OK),
    (Request(Cmd.WRITE_ZEROES, 0, 1, 1, SIZE), False, Err.ENOSPC),
    (Request(Cmd.WRITE_ZEROES, wire.CMD_FLAG_FAST_ZERO, 1, 0, 512), False, Err.EINVAL),
    (Request(Cmd.WRITE_ZEROES, 0, 1, 0, 512), True, Err.EPERM),
    (Request(Cmd.TRIM, 0, 1, 0, SIZE), False, Err.OK),
    (Request(Cmd.TRIM, 0, 1, SIZE, 1), False, Err.EINVAL),
    (Request(Cmd.TRIM, 0, 1, 0, 512), True, Err.EPERM),
    (Request(Cmd.FLUSH, 0, 1, 0, 0), True, Err.OK),
    (Request(Cmd.FLUSH, 0, 1, 0, 512), False, Err.EINVAL),
    (Request(Cmd.CACHE, 0, 1, 0, 512), False, Err.EINVAL),  # not advertised
    (Request(Cmd.BLOCK_STATUS, 0, 1, 0, 512), False, Err.EINVAL),
    (Request(99, 0, 1, 0, 0), False, Err.EINVAL),
])
def test_check(request_, read_only, error):
    assert check(request_, SIZE, read_only) == error


def test_large_payload_buffer_is_not_zeroed_but_every_byte_is_received():
    """Payload buffers are allocated without zero-filling
    (blockmirror.buffers.uninitialized): a request is handed on only once
    every byte arrived, so nothing left in reused memory can reach a volume."""
    rng = random.Random(5)
    for _ in range(20):
        junk = bytearray(b"\xff" * (1 << 20))  # freed below: malloc may hand this memory out again
        del junk
        reader = RequestReader(buffer_bytes=64 << 10)
        stream = header(Cmd.WRITE, 1, 0, 1 << 20) + bytes(1 << 20)
        pieces = deliver(reader, stream[:-1], rng, 100_000)
        assert pieces == [] and reader.mid_request  # one byte short: nothing handed on
        target = reader.get_buffer()
        target[:1] = b"\0"
        reader.buffer_updated(1)
        request = reader.next_request()
        assert request.data == bytes(1 << 20)
