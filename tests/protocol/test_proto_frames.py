"""Framing on the receive path: bad frames are refused (never delivered),
and any split or coalescing of good frames decodes identically."""

import pytest

from blockmirror.protocol import (
    FRAME_PAYLOAD_MAX_BYTES,
    WRITE_DATA_MAX_BYTES,
    ConnectionClosed,
    Error,
    ErrorCode,
    Heartbeat,
    MessageType,
    RemoteProtocolError,
    State,
    Write,
    WriteZeroes,
)
from blockmirror.protocol.frames import FrameDecoder, RECEIVE_BUFFER_BYTES_INITIAL

from proto_helpers import decode_all, established_pair, frame_bytes, raw_frame

ACK_PAYLOAD = bytes.fromhex("0000000000000000")


def stream_of_writes(primary, count=20):
    """Frames of various sizes as the primary's engine would send them."""
    sizes = [1, 7, 512, 4096, 65536, 3, 100000]
    msgs = []
    for seq in range(1, count + 1):
        if seq % 6 == 5:
            msgs.append(WriteZeroes(seq, 0, 0, 4096))
        else:
            msgs.append(Write(seq, seq % 2, 4096 * seq, bytes([seq % 251]) * sizes[seq % len(sizes)]))
        if seq % 9 == 0:
            msgs.append(Heartbeat(seq))
    data = b"".join(primary.send(m) for m in msgs)
    return msgs, data


def assert_refused(secondary, code, delivered_before=()):
    """next_event() delivers exactly `delivered_before`, then raises `code`
    once; afterwards nothing, and an Error frame with `code` is queued."""
    for expected in delivered_before:
        assert secondary.next_event() == expected
    with pytest.raises(RemoteProtocolError) as e:
        secondary.next_event()
    assert e.value.code is code
    assert secondary.state is State.ERROR
    assert secondary.next_event() is None
    sent = decode_all(secondary.data_to_send())
    assert len(sent) == 1 and isinstance(sent[0], Error) and sent[0].code is code
    return e.value


# --- refused frames ---------------------------------------------------------

def test_corrupt_payload_byte_fails_checksum_and_is_not_delivered():
    p, s = established_pair()
    good = p.send(Write(1, 0, 0, b"good"))
    bad = bytearray(p.send(Write(2, 0, 0, b"evil")))
    bad[-1] ^= 0x01
    s.receive_data(good + bytes(bad) + p.send(Heartbeat(1)))
    assert_refused(s, ErrorCode.BAD_CHECKSUM, delivered_before=[Write(1, 0, 0, b"good")])


@pytest.mark.parametrize("index", [2, 3, 4, 5, 6, 7, 8, 15, 16, 23])
def test_flipping_any_byte_of_a_frame_never_delivers_it(index):
    p, s = established_pair()
    frame = bytearray(p.send(Write(1, 0, 0, b"payload!")))
    frame[index] ^= 0x80
    s.receive_data(bytes(frame))
    s.receive_data(b"")  # EOF, so a frame whose length grew is reported too
    with pytest.raises(RemoteProtocolError) as e:
        s.next_event()
    assert e.value.code in {ErrorCode.BAD_CHECKSUM, ErrorCode.UNSUPPORTED_VERSION,
                            ErrorCode.UNKNOWN_MESSAGE_TYPE, ErrorCode.FRAME_TOO_LARGE,
                            ErrorCode.TRUNCATED_FRAME}
    assert s.next_event() is None and s.state is State.ERROR


def test_truncated_frame_at_eof_is_refused():
    p, s = established_pair()
    frame = p.send(Write(1, 0, 0, b"x" * 100))
    s.receive_data(frame[:-1])
    assert s.next_event() is None  # not an error yet: the rest may still come
    s.receive_data(b"")
    err = assert_refused(s, ErrorCode.TRUNCATED_FRAME)
    assert "of 134 frame bytes" in str(err)


def test_truncated_header_at_eof_is_refused():
    p, s = established_pair()
    s.receive_data(p.send(Heartbeat(1))[:5])
    s.receive_data(b"")
    assert_refused(s, ErrorCode.TRUNCATED_FRAME)


def test_unknown_type_is_refused_from_its_header_alone():
    p, s = established_pair()
    s.receive_data(raw_frame(0x55, b"abc")[:16])  # payload never sent
    err = assert_refused(s, ErrorCode.UNKNOWN_MESSAGE_TYPE)
    assert "0x55" in str(err)


def test_retired_flush_type_is_refused_as_unknown():
    p, s = established_pair()
    s.receive_data(raw_frame(0x12, bytes(8)))  # 0x12 was Flush; its code is never reused
    assert_refused(s, ErrorCode.UNKNOWN_MESSAGE_TYPE)


def test_oversized_length_is_refused_before_the_payload_arrives():
    p, s = established_pair()
    s.receive_data(raw_frame(MessageType.WRITE, b"", length=FRAME_PAYLOAD_MAX_BYTES + 1))
    err = assert_refused(s, ErrorCode.FRAME_TOO_LARGE)
    assert str(FRAME_PAYLOAD_MAX_BYTES) in str(err)


def test_largest_allowed_write_is_accepted():
    p, s = established_pair(volume_bytes=1 << 30)
    data = bytes(range(256)) * (WRITE_DATA_MAX_BYTES // 256)
    s.receive_data(p.send(Write(1, 0, 0, data)))
    event = s.next_event()
    assert isinstance(event, Write) and event.data == data


@pytest.mark.parametrize("version", [0, 2, 255])
def test_bad_version_is_refused_and_names_both_versions(version):
    p, s = established_pair()
    s.receive_data(raw_frame(MessageType.ACK, ACK_PAYLOAD, version=version))
    err = assert_refused(s, ErrorCode.UNSUPPORTED_VERSION)
    assert f"version {version}" in str(err) and "speaks 1" in str(err)


def test_bad_magic_is_refused():
    p, s = established_pair()
    s.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    err = assert_refused(s, ErrorCode.MALFORMED_FRAME)
    assert err.hint  # tells the user what to check


def test_wrong_checksum_with_valid_everything_else():
    p, s = established_pair()
    s.receive_data(raw_frame(MessageType.HEARTBEAT, ACK_PAYLOAD, checksum=0))
    assert_refused(s, ErrorCode.BAD_CHECKSUM)


def test_good_checksum_over_malformed_payload_is_refused():
    p, s = established_pair()
    s.receive_data(raw_frame(MessageType.HEARTBEAT, b"\x00" * 9))
    assert_refused(s, ErrorCode.MALFORMED_MESSAGE)


def test_nothing_after_a_refused_frame_is_processed():
    p, s = established_pair()
    bad = raw_frame(MessageType.HEARTBEAT, ACK_PAYLOAD, checksum=1)
    s.receive_data(bad + p.send(Write(1, 0, 0, b"later")))
    assert_refused(s, ErrorCode.BAD_CHECKSUM)
    s.receive_data(p.send(Write(2, 0, 0, b"even later")))
    assert s.next_event() is None


# --- splitting and coalescing -------------------------------------------------

def test_every_split_point_decodes_identically():
    p, s = established_pair()
    msgs = [Write(1, 0, 512, b"abcdef"), Heartbeat(7), WriteZeroes(2, 1, 0, 1024), Write(3, 1, 9, b"\x00" * 300)]
    data = b"".join(p.send(m) for m in msgs)
    for cut in range(len(data) + 1):
        _, s = established_pair()
        got = []
        for part in (data[:cut], data[cut:]):
            if part:
                s.receive_data(part)
            got.extend(s.events())
        assert got == msgs, f"split at byte {cut}"


def test_one_byte_at_a_time_decodes_identically():
    p, s = established_pair()
    msgs, data = stream_of_writes(p, count=8)
    got = []
    for i in range(len(data)):
        s.receive_data(data[i:i + 1])
        got.extend(s.events())
    assert got == msgs


def test_all_frames_in_one_chunk_decode_identically():
    p, s = established_pair()
    msgs, data = stream_of_writes(p, count=40)
    s.receive_data(data)
    assert list(s.events()) == msgs
    assert s.next_event() is None


@pytest.mark.parametrize("chunk", [3, 16, 17, 4096, 65537, 1 << 20])
def test_fixed_chunk_sizes_decode_identically(chunk):
    p, s = established_pair()
    msgs, data = stream_of_writes(p)
    got = []
    for i in range(0, len(data), chunk):
        s.receive_data(memoryview(data)[i:i + chunk])
        got.extend(s.events())
    assert got == msgs


@pytest.mark.parametrize("chunk", [1, 100, 70000, 1 << 20])
def test_buffered_protocol_path_decodes_identically(chunk):
    """get_buffer/buffer_updated, as asyncio.BufferedProtocol uses them."""
    p, s = established_pair()
    msgs, data = stream_of_writes(p, count=6 if chunk == 1 else 20)
    got, pos = [], 0
    held = []  # views the "runtime" keeps alive: must not break the decoder
    while pos < len(data):
        buf = s.get_buffer(chunk)
        held.append(buf)
        n = min(len(buf), chunk, len(data) - pos)
        buf[:n] = data[pos:pos + n]
        s.buffer_updated(n)
        pos += n
        got.extend(s.events())
    assert got == msgs


def test_received_data_is_never_overwritten_while_it_is_referenced():
    # Received data is a view into the receive buffer (no copy); the decoder
    # must continue in another buffer rather than overwrite bytes it refers to.
    p, s = established_pair()
    s.receive_data(p.send(Write(1, 0, 0, b"first")))
    first = s.next_event()
    kept = [first]
    for seq in range(2, 200):  # far more than one buffer's worth
        s.receive_data(p.send(Write(seq, 0, 0, bytes([seq % 251]) * 40000)))
        kept.append(s.next_event())
    assert first.data == b"first"
    for seq, msg in enumerate(kept[1:], start=2):
        assert msg.seq == seq and msg.data == bytes([seq % 251]) * 40000


def test_received_data_stays_intact_through_the_buffered_protocol_path():
    # The runtime's path: get_buffer / buffer_updated, events held while more
    # bytes arrive, some released early (their buffers may then be reused).
    p, s = established_pair()
    data = b"".join(p.send(Write(seq, 0, 0, bytes([seq % 251]) * (1000 + 37 * seq))) for seq in range(1, 400))
    got, pos, chunk = [], 0, 70001
    while pos < len(data):
        buf = s.get_buffer(chunk)
        n = min(len(buf), chunk, len(data) - pos)
        buf[:n] = data[pos:pos + n]
        del buf
        s.buffer_updated(n)
        pos += n
        got.extend(s.events())
        if len(got) > 150:
            del got[:50]  # the engine is done with the oldest
    for msg in got:
        assert msg.data == bytes([msg.seq % 251]) * (1000 + 37 * msg.seq)
    assert got[-1].seq == 399


def test_decoder_gives_back_memory_after_a_huge_chunk():
    decoder = FrameDecoder({MessageType.WRITE})
    frame = frame_bytes(Write(1, 0, 0, b"x" * WRITE_DATA_MAX_BYTES))
    decoder.feed(frame * 6)  # ~25 MB in one go
    frames = 0
    while decoder.next_frame() is not None:
        frames += 1
    assert frames == 6
    assert len(decoder._buf) == RECEIVE_BUFFER_BYTES_INITIAL


# --- end of stream ------------------------------------------------------------

def test_eof_between_frames_is_an_unclean_close():
    p, s = established_pair()
    s.receive_data(p.send(Write(1, 0, 0, b"x")))
    s.receive_data(b"")
    assert list(s.events()) == [Write(1, 0, 0, b"x"), ConnectionClosed(clean=False)]
    assert s.state is State.CLOSED
    assert s.next_event() is None
