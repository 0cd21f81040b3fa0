"""Every message type against exact bytes, both ways, plus the field rules.

Each row is (message, header, payload): header = magic "BM", version 01,
type, payload length, xxh3_64 checksum; the payload is spelled field by field
in the order docs/PROTOCOL.md gives.
"""

import uuid

import pytest

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
    MessageType,
    Ready,
    RemoteProtocolError,
    ResyncBegin,
    ResyncCommit,
    ResyncCommitted,
    ResyncData,
    ResyncZeroes,
    VerifyReply,
    VerifyRequest,
    Role,
    VolumeInfo,
    Write,
    WriteZeroes,
)
from blockmirror.protocol.codec import NIL_UUID
from blockmirror.protocol.frames import WRITE_DATA_MAX_BYTES
from blockmirror.protocol.handshake import VOLUMES_MAX
from blockmirror.protocol.messages import ERROR_TEXT_BYTES_MAX, MESSAGE_CLASSES, decode_message, encode_message

from proto_helpers import decode_all, frame_bytes

G1 = uuid.UUID("11111111-1111-4111-8111-111111111111")
G2 = uuid.UUID("22222222-2222-4222-8222-222222222222")
NODE = uuid.UUID("aaaaaaaa-0000-4000-8000-000000000001")
PAIR = uuid.UUID("0c0ffee0-0000-4000-8000-000000000001")
V1 = VolumeInfo("db", uuid.UUID("d0d0d0d0-0000-4000-8000-000000000001"), 1 << 20)
V2 = VolumeInfo("logs", uuid.UUID("10910910-0000-4000-8000-000000000002"), 2 << 20)
NONCE = bytes(range(32))
MAC = bytes(range(0x40, 0x60))

# (message, header hex, payload hex with one group per field)
TABLE = [
    (Hello(Role.PRIMARY, NODE, PAIR, "pair-a", NONCE),
     "424d 01 01 00000049 4ad0f423a4abaec2",
     "01 aaaaaaaa000040008000000000000001 0c0ffee0000040008000000000000001"
     " 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f 0006 706169722d61"),
    (AuthProof(MAC),
     "424d 01 02 00000020 b67d85162fc061f1",
     "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"),
    (Attach((V1, V2)),
     "424d 01 03 0000003c 0c036023aa9ddbb0",
     "0002"
     " d0d0d0d0000040008000000000000001 0000000000100000 0002 6462"
     " 10910910000040008000000000000002 0000000000200000 0004 6c6f6773"),
    (Ready(G1, 7, (V1,)),
     "424d 01 04 00000036 399e3e2b48a0d8d5",
     "11111111111141118111111111111111 0000000000000007 0001"
     " d0d0d0d0000040008000000000000001 0000000000100000 0002 6462"),
    (Write(1, 0, 4096, b"\xde\xad\xbe\xef"),
     "424d 01 10 00000016 10e24e651887fd89",
     "0000000000000001 0000 0000000000001000 deadbeef"),
    (WriteZeroes(2, 1, 8192, 65536),
     "424d 01 11 0000001a a1ad4f17f70e8f47",
     "0000000000000002 0001 0000000000002000 0000000000010000"),
    (Ack(2), "424d 01 13 00000008 63cf34949148ea9a", "0000000000000002"),
    (Heartbeat(0x0102030405060708), "424d 01 20 00000008 f12abaf883048e8f", "0102030405060708"),
    (HeartbeatAck(0x0102030405060708), "424d 01 21 00000008 3e4e3e4af895fa7d", "0102030405060708"),
    (ResyncBegin(3, G1, G2, 10, 655360),
     "424d 01 30 00000038 f4c483d78213e609",
     "0000000000000003 11111111111141118111111111111111 22222222222242228222222222222222"
     " 000000000000000a 00000000000a0000"),
    (ResyncBegin(3, G1, G2, 10, 655360, (1, 65536)),  # resumes an open round at volume 1, offset 64 KiB
     "424d 01 30 00000042 deab66238521b479",
     "0000000000000003 11111111111141118111111111111111 22222222222242228222222222222222"
     " 000000000000000a 00000000000a0000 0001 0000000000010000"),
    (ResyncData(3, 1, 512, b"abc"),
     "424d 01 31 00000015 4ff71ddbb7a38b03",
     "0000000000000003 0001 0000000000000200 616263"),
    (ResyncZeroes(3, 0, 0, 1 << 20),
     "424d 01 32 0000001a 03ea1416ccf1e823",
     "0000000000000003 0000 0000000000000000 0000000000100000"),
    (ResyncCommit(3, G2, 9, 2, 3),
     "424d 01 33 00000030 b660420edd4bb95c",
     "0000000000000003 22222222222242228222222222222222 0000000000000009 0000000000000002 0000000000000003"),
    (ResyncCommitted(3, G2, 9),
     "424d 01 34 00000020 41cbc8b48c94c990",
     "0000000000000003 22222222222242228222222222222222 0000000000000009"),
    (VerifyRequest(5, 1, 65536, 131072, 65536),
     "424d 01 40 0000001e b53005812c3cbeed",
     "0000000000000005 0001 0000000000010000 0000000000020000 00010000"),
    (VerifyReply(5, (b"\xab" * 16, b"\xcd" * 16)),
     "424d 01 41 00000028 d9c09016bf9cb9bf",
     "0000000000000005 abababababababababababababababab cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"),
    (Error(ErrorCode.VOLUME_MISMATCH, "volume 'db'"),
     "424d 01 7e 0000000f 948f5e5c410f3cd0",
     "000b 000b 766f6c756d652027646227"),
    (Error(999, "new"),  # a code from a newer peer still decodes
     "424d 01 7e 00000007 78e53cad9575160c",
     "03e7 0003 6e6577"),
    (Goodbye(), "424d 01 7f 00000000 5db5bcf44f27fef7", ""),
]


def test_table_covers_every_message_type():
    assert {type(m).TYPE for m, _, _ in TABLE} == set(MessageType)


@pytest.mark.parametrize("msg,header,payload", TABLE, ids=[type(r[0]).__name__ for r in TABLE])
def test_encode_gives_exact_bytes(msg, header, payload):
    assert frame_bytes(msg).hex() == bytes.fromhex(header + payload).hex()


@pytest.mark.parametrize("msg,header,payload", TABLE, ids=[type(r[0]).__name__ for r in TABLE])
def test_decode_exact_bytes(msg, header, payload):
    assert decode_all(bytes.fromhex(header + payload)) == [msg]


def test_header_length_field_matches_payload():
    for msg, header, payload in TABLE:
        assert int(header.split()[3], 16) == len(bytes.fromhex(payload)), type(msg).__name__


def test_unknown_error_code_is_kept_as_number_and_known_one_as_enum():
    assert decode_all(frame_bytes(Error(999, "x")))[0].code == 999
    assert decode_all(frame_bytes(Error(11, "x")))[0].code is ErrorCode.VOLUME_MISMATCH


def test_write_data_is_handed_to_the_transport_uncopied():
    data = bytearray(b"z" * 65536)
    buffers = encode_message(Write(5, 0, 0, data))
    assert len(buffers) == 2 and buffers[1] is data
    assert len(buffers[0]) == 16 + 18  # header + seq, volume, offset


def test_write_accepts_memoryview_of_other_item_size():
    import array
    arr = array.array("I", [1, 2, 3, 4])
    msg = Write(1, 0, 0, memoryview(arr))
    assert msg.length_bytes == 16
    assert decode_all(frame_bytes(msg))[0].data == arr.tobytes()


@pytest.mark.parametrize("make", [
    lambda: Write(-1, 0, 0, b"x"),
    lambda: Write(1 << 64, 0, 0, b"x"),
    lambda: Write(1, 1 << 16, 0, b"x"),
    lambda: Write(1, 0, 0, b""),
    lambda: Write(1, 0, 0, b"x" * (WRITE_DATA_MAX_BYTES + 1)),
    lambda: Write(1, 0, (1 << 64) - 1, b"xy"),
    lambda: Write(True, 0, 0, b"x"),
    lambda: Write(1, 0, 0, "text"),
    lambda: WriteZeroes(1, 0, 0, 0),
    lambda: ResyncZeroes(1, 0, 0, 0),
    lambda: Hello(Role.PRIMARY, NODE, PAIR, "p", b"short"),
    lambda: Hello(Role.PRIMARY, NODE, PAIR, "", NONCE),
    lambda: Hello(Role.PRIMARY, NODE, PAIR, "x" * 256, NONCE),
    lambda: Hello(3, NODE, PAIR, "p", NONCE),
    lambda: Hello(Role.PRIMARY, "not-a-uuid", PAIR, "p", NONCE),
    lambda: AuthProof(b"\x00" * 31),
    lambda: Attach(()),
    lambda: Attach((V1, V1)),
    lambda: Attach([V1]),
    lambda: Attach(tuple(VolumeInfo(f"v{i}", NODE, 1) for i in range(VOLUMES_MAX + 1))),
    lambda: VolumeInfo("v", NODE, 0),
    lambda: ResyncBegin(1, G1, G1, 0, 0),
    lambda: ResyncBegin(1, G1, NIL_UUID, 0, 0),
    lambda: Error(1 << 16, "x"),
    lambda: Error(1, "x" * (ERROR_TEXT_BYTES_MAX + 1)),
])
def test_invalid_messages_cannot_be_built(make):
    with pytest.raises((ValueError, TypeError)):
        make()


def test_error_make_cuts_text_on_a_character_boundary():
    e = Error.make(ErrorCode.INTERNAL, "é" * ERROR_TEXT_BYTES_MAX)
    assert len(e.text.encode()) <= ERROR_TEXT_BYTES_MAX and set(e.text) == {"é"}


def test_messages_are_immutable():
    msg = Ack(1)
    with pytest.raises(AttributeError):
        msg.seq = 2


@pytest.mark.parametrize("msg_type,payload,why", [
    (MessageType.ACK, "00000000000001", "short u64"),
    (MessageType.ACK, "000000000000000100", "trailing byte"),
    (MessageType.GOODBYE, "00", "Goodbye with payload"),
    (MessageType.WRITE, "0000000000000001 0000 0000000000000000", "write without data"),
    (MessageType.WRITE, "00000000000000010000", "write shorter than its fixed fields"),
    (MessageType.HELLO, "03" + "00" * 64 + "0001 61", "unknown role 3"),
    (MessageType.HELLO, "01" + "00" * 64 + "0002 ff61", "pair name not UTF-8"),
    (MessageType.HELLO, "01" + "00" * 64 + "0005 61", "name length beyond payload"),
    (MessageType.ATTACH, "0000", "no volumes"),
    (MessageType.ATTACH, "0001 " + "00" * 16 + "0000000000000000 0001 61", "volume of size 0"),
    (MessageType.ERROR, "0001 0003 6162", "text cut short"),
    (MessageType.RESYNC_BEGIN, "00" * 8 + "11" * 16 + "11" * 16 + "00" * 16, "target == base"),
    (MessageType.WRITE_ZEROES, "00" * 26, "zero length"),
])
def test_malformed_payloads_are_remote_errors(msg_type, payload, why):
    with pytest.raises(RemoteProtocolError) as e:
        decode_message(msg_type, memoryview(bytes.fromhex(payload)))
    assert e.value.code is ErrorCode.MALFORMED_MESSAGE, why
    assert MESSAGE_CLASSES[msg_type].__name__ in str(e.value)


def test_repr_of_a_write_does_not_dump_the_data():
    assert "data" not in repr(Write(1, 0, 0, b"\x00" * 65536))
    assert len(repr(Write(1, 0, 0, b"\x00" * 65536))) < 100
