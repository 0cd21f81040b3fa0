"""Hypothesis properties of the codec: every valid message survives
encode -> decode unchanged, however the bytes are cut, and no damaged frame
is ever delivered."""

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockmirror.protocol import (
    Ack,
    Attach,
    AuthProof,
    Error,
    ErrorCode,
    Goodbye,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Ready,
    RemoteProtocolError,
    ResyncBegin,
    ResyncCommit,
    ResyncCommitted,
    VerifyReply,
    VerifyRequest,
    ResyncData,
    ResyncZeroes,
    Role,
    VolumeInfo,
    Write,
    WriteZeroes,
)
from blockmirror.protocol.codec import MessageType
from blockmirror.protocol.frames import FrameDecoder
from blockmirror.protocol.messages import ERROR_TEXT_BYTES_MAX, MESSAGE_CLASSES, decode_message

from proto_helpers import decode_all, frame_bytes

U64 = st.integers(0, (1 << 64) - 1)
U16 = st.integers(0, (1 << 16) - 1)
UUIDS = st.builds(lambda n: uuid.UUID(int=n), st.integers(0, (1 << 128) - 1))
NAMES = st.text(min_size=1, max_size=60).filter(lambda s: 1 <= len(s.encode()) <= 255)
DATA = st.binary(min_size=1, max_size=5000)
OFFSETS = st.integers(0, (1 << 62))  # leaves room for any length below


@st.composite
def volume_lists(draw):
    names = draw(st.lists(NAMES, min_size=1, max_size=8, unique=True))
    return tuple(VolumeInfo(n, draw(UUIDS), draw(st.integers(1, (1 << 64) - 1))) for n in names)


@st.composite
def resync_begins(draw):
    base = draw(UUIDS)
    target = draw(UUIDS.filter(lambda u: u.int != 0 and u != base))
    return ResyncBegin(draw(U64), base, target, draw(U64), draw(U64))


STRATEGIES = {
    MessageType.HELLO: st.builds(Hello, st.sampled_from(Role), UUIDS, UUIDS, NAMES,
                                 st.binary(min_size=32, max_size=32)),
    MessageType.AUTH_PROOF: st.builds(AuthProof, st.binary(min_size=32, max_size=32)),
    MessageType.ATTACH: st.builds(Attach, volume_lists()),
    MessageType.READY: st.builds(Ready, UUIDS, U64, volume_lists()),
    MessageType.WRITE: st.builds(Write, U64, U16, OFFSETS, DATA),
    MessageType.WRITE_ZEROES: st.builds(WriteZeroes, U64, U16, OFFSETS, st.integers(1, 1 << 61)),
    MessageType.ACK: st.builds(Ack, U64),
    MessageType.HEARTBEAT: st.builds(Heartbeat, U64),
    MessageType.HEARTBEAT_ACK: st.builds(HeartbeatAck, U64),
    MessageType.RESYNC_BEGIN: resync_begins(),
    MessageType.RESYNC_DATA: st.builds(ResyncData, U64, U16, OFFSETS, DATA),
    MessageType.RESYNC_ZEROES: st.builds(ResyncZeroes, U64, U16, OFFSETS, st.integers(1, 1 << 61)),
    MessageType.RESYNC_COMMIT: st.builds(ResyncCommit, U64, UUIDS, U64, U64, U64),
    MessageType.RESYNC_COMMITTED: st.builds(ResyncCommitted, U64, UUIDS, U64),
    MessageType.VERIFY_REQUEST: st.builds(VerifyRequest, U64, U16, OFFSETS, st.integers(1, 1 << 20),
                                          st.integers(256, 1 << 20)),
    MessageType.VERIFY_REPLY: st.builds(VerifyReply, U64, st.lists(st.binary(min_size=16, max_size=16),
                                                                   max_size=20).map(tuple)),
    MessageType.ERROR: st.builds(Error, U16, st.text(max_size=200)),
    MessageType.GOODBYE: st.just(Goodbye()),
}
MESSAGES = st.one_of(*STRATEGIES.values())


def test_strategies_cover_every_message_type():
    assert set(STRATEGIES) == set(MessageType) == set(MESSAGE_CLASSES)


@given(MESSAGES)
def test_round_trip(msg):
    data = frame_bytes(msg)
    assert decode_all(data) == [msg]
    assert frame_bytes(decode_all(data)[0]) == data  # and re-encodes to the same bytes


@given(st.lists(MESSAGES, min_size=1, max_size=8), st.data())
def test_any_chunking_decodes_identically(msgs, data):
    stream = b"".join(frame_bytes(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder(MESSAGE_CLASSES)
    got, prev = [], 0
    for cut in cuts + [len(stream)]:
        if cut > prev:
            decoder.feed(stream[prev:cut])
            prev = cut
        while (frame := decoder.next_frame()) is not None:
            got.append(decode_message(frame.msg_type, frame.payload))
    assert got == msgs


@settings(max_examples=300)
@given(MESSAGES, st.data())
def test_damaged_frame_is_never_delivered(msg, data):
    frame = bytearray(frame_bytes(msg))
    index = data.draw(st.integers(0, len(frame) - 1))
    frame[index] ^= data.draw(st.integers(1, 255))
    decoder = FrameDecoder(MESSAGE_CLASSES)
    decoder.feed(bytes(frame))
    decoder.feed(b"")  # EOF: a frame that now claims to be longer is truncated
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


@given(st.binary(max_size=200))
def test_random_bytes_are_refused_or_wait_never_crash(junk):
    decoder = FrameDecoder(MESSAGE_CLASSES)
    decoder.feed(junk)
    try:
        frame = decoder.next_frame()
    except RemoteProtocolError:
        return
    # Only possible if junk happens to hold a valid frame (or too few bytes).
    if frame is not None:
        try:
            decode_message(frame.msg_type, frame.payload)
        except RemoteProtocolError as e:
            assert e.code is ErrorCode.MALFORMED_MESSAGE


@given(st.integers(0, (1 << 16) - 1), st.text(max_size=ERROR_TEXT_BYTES_MAX * 2))
def test_error_make_always_fits_the_wire(code, text):
    msg = Error.make(code, text)
    assert decode_all(frame_bytes(msg)) == [msg]
