"""The handshake state machine against tables of exact bytes (no sockets)."""

import struct

import pytest

from blockmirror.nbd import wire
from blockmirror.nbd.handshake import ExportInfo, Handshake, State

FLAGS_RW = 0x016D  # HAS_FLAGS|SEND_FLUSH|SEND_FUA|SEND_TRIM|SEND_WRITE_ZEROES|CAN_MULTI_CONN
EXPORTS = {
    "vol0": ExportInfo("vol0", 65536, FLAGS_RW),
    "vol1": ExportInfo("vol1", 4096, wire.transmission_flags(read_only=True, multi_conn=False)),
}
GREETING = bytes.fromhex("4e42444d41474943" "49484156454f5054" "0003")


def option(opt: int, data: bytes = b"") -> bytes:
    return bytes.fromhex("49484156454f5054") + struct.pack(">II", opt, len(data)) + data


def reply(opt: int, rep: int, data: bytes = b"") -> bytes:
    return bytes.fromhex("0003e889045565a9") + struct.pack(">III", opt, rep, len(data)) + data


def go_data(name: bytes, *infos: int) -> bytes:
    return struct.pack(">I", len(name)) + name + struct.pack(f">H{len(infos)}H", len(infos), *infos)


def started(client_flags: int = 3) -> Handshake:
    hs = Handshake(EXPORTS)
    assert hs.data_to_send() == GREETING
    hs.receive_data(struct.pack(">I", client_flags))
    assert hs.state is State.OPTIONS
    return hs


def test_flags_match_spec_bits():
    assert wire.transmission_flags(read_only=False, multi_conn=True) == FLAGS_RW
    assert wire.transmission_flags(read_only=True, multi_conn=False) == 0x000F


def test_go_replies_export_and_block_size_then_ack():
    hs = started()
    hs.receive_data(option(7, go_data(b"vol0", 3)))
    assert hs.data_to_send() == (
        reply(7, 3, bytes.fromhex("0000" "0000000000010000" "016d"))
        + reply(7, 3, bytes.fromhex("0003" "00000001" "00001000" "02000000"))
        + reply(7, 1))
    assert hs.state is State.TRANSMISSION and hs.export.name == "vol0"


def test_info_keeps_haggling_and_name_info_is_canonical():
    hs = started()
    hs.receive_data(option(6, go_data(b"", 1)))  # default export = first volume
    out = hs.data_to_send()
    assert reply(6, 3, b"\x00\x01vol0") in out and out.endswith(reply(6, 1))
    assert hs.state is State.OPTIONS


def test_go_unknown_export_is_an_error_reply_not_a_hangup():
    hs = started()
    hs.receive_data(option(7, go_data(b"nope")))
    out = hs.data_to_send()
    opt, rep = struct.unpack_from(">II", out, 8)
    assert (opt, rep) == (7, wire.Rep.ERR_UNKNOWN)
    assert b"nope" in out and hs.state is State.OPTIONS


@pytest.mark.parametrize("data", [
    b"",  # shorter than the fixed part
    struct.pack(">I", 100) + b"vol0" + b"\x00\x00",  # name length beyond the data
    go_data(b"vol0") + b"\x00\x03",  # info count says 0, two bytes extra
    struct.pack(">I", 4) + b"vol0" + struct.pack(">H", 2) + b"\x00\x03",  # count 2, one item
])
def test_malformed_go_gets_err_invalid(data):
    hs = started()
    hs.receive_data(option(7, data))
    out = hs.data_to_send()
    assert struct.unpack_from(">I", out, 12)[0] == wire.Rep.ERR_INVALID
    assert hs.state is State.OPTIONS


def test_list_names_every_volume_in_order():
    hs = started()
    hs.receive_data(option(3))
    assert hs.data_to_send() == (reply(3, 2, b"\x00\x00\x00\x04vol0") + reply(3, 2, b"\x00\x00\x00\x04vol1")
                                 + reply(3, 1))
    hs.receive_data(option(3, b"x"))
    assert struct.unpack_from(">I", hs.data_to_send(), 12)[0] == wire.Rep.ERR_INVALID


@pytest.mark.parametrize("opt", [5, 8, 9, 10, 11, 4, 12, 0x7FFF_FFFF])
def test_other_options_get_err_unsup_and_haggling_goes_on(opt):
    hs = started()
    hs.receive_data(option(opt, b"abc"))
    out = hs.data_to_send()
    assert out.startswith(reply(opt, wire.Rep.ERR_UNSUP)[:16])
    assert hs.state is State.OPTIONS
    hs.receive_data(option(7, go_data(b"vol1")))
    assert hs.state is State.TRANSMISSION and hs.export.name == "vol1"


@pytest.mark.parametrize("client_flags, tail", [(3, b""), (1, bytes(124))])
def test_export_name_old_style(client_flags, tail):
    hs = started(client_flags)
    hs.receive_data(option(1, b"vol1") + b"REQUEST-BYTES")
    assert hs.data_to_send() == struct.pack(">QH", 4096, 0x000F) + tail
    assert hs.state is State.TRANSMISSION and hs.leftover == b"REQUEST-BYTES"


def test_export_name_unknown_hangs_up():
    hs = started()
    hs.receive_data(option(1, b"nope"))
    assert hs.state is State.CLOSED and "unknown export" in hs.close_reason
    assert hs.data_to_send() == b""


def test_abort_acks_then_closes():
    hs = started()
    hs.receive_data(option(2))
    assert hs.data_to_send() == reply(2, 1)
    assert hs.state is State.CLOSED and hs.client_aborted


@pytest.mark.parametrize("client_flags", [4, 0x80000000])
def test_unknown_client_flags_close(client_flags):
    hs = Handshake(EXPORTS)
    hs.receive_data(struct.pack(">I", client_flags))
    assert hs.state is State.CLOSED and "flags" in hs.close_reason


def test_bad_option_magic_closes():
    hs = started()
    hs.receive_data(b"NOTMAGIC" + struct.pack(">II", 7, 0))
    assert hs.state is State.CLOSED and "magic" in hs.close_reason


def test_oversized_option_closes_before_reading_its_data():
    hs = started()
    hs.receive_data(bytes.fromhex("49484156454f5054") + struct.pack(">II", 99, wire.MAX_OPTION_DATA_BYTES + 1))
    assert hs.state is State.CLOSED and "limit" in hs.close_reason


def test_option_count_is_limited():
    hs = started()
    hs.receive_data(option(3) * wire.MAX_OPTIONS_PER_CONNECTION)
    assert hs.state is State.OPTIONS
    hs.receive_data(option(3))
    assert hs.state is State.CLOSED


def test_bytes_may_arrive_one_at_a_time():
    whole = struct.pack(">I", 3) + option(8) + option(7, go_data(b"vol0", 3))
    hs = Handshake(EXPORTS)
    hs.data_to_send()
    out = b""
    for i in range(len(whole)):
        hs.receive_data(whole[i:i + 1])
        out += hs.data_to_send()
    assert hs.state is State.TRANSMISSION and out.endswith(reply(7, 1))
