"""Handshake edge cases and malformed requests from a raw socket, against a
real `blockmirror primary`: a broken client loses its own connection only;
every other connection keeps working and no volume byte changes."""

import os
import socket
import struct
import time

from nbd_helpers import (is_closed, raw_connect, raw_go, read_option_reply, read_simple_reply,
                         recv_exactly, send_option, send_request)

from blockmirror.testing.nodes import read_volume

MiB = 1 << 20
CMD_READ, CMD_WRITE, CMD_DISC = 0, 1, 2
REP_ACK, REP_SERVER, REP_ERR_UNSUP, REP_ERR_INVALID = 1, 2, 0x80000001, 0x80000003


def still_serves(port: int) -> None:
    """A fresh client can still connect, write, read back and disconnect."""
    sock = raw_connect(port)
    raw_go(sock, "vol1")
    send_request(sock, CMD_WRITE, 1, 0, 4, data=b"live")
    assert read_simple_reply(sock) == (0, 1, b"")
    send_request(sock, CMD_READ, 2, 0, 4)
    assert read_simple_reply(sock, 4) == (0, 2, b"live")
    send_request(sock, CMD_DISC, 3, 0, 0)
    assert is_closed(sock)


def wait_for_log(primary, text: str, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in primary.log():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{primary.log()}"
        time.sleep(0.05)


def test_unknown_and_unsupported_options_get_err_unsup_then_go_works(primary):
    sock = raw_connect(primary.nbd_port)
    for option in (5, 8, 9, 10, 11, 99, 0x40000000):  # STARTTLS, STRUCTURED_REPLY, meta contexts, unknown
        send_option(sock, option, b"some data")
        assert read_option_reply(sock)[:2] == (option, REP_ERR_UNSUP)
    send_option(sock, 3)
    names = []
    while (reply := read_option_reply(sock))[1] == REP_SERVER:
        names.append(reply[2][4:].decode())
    assert reply[1] == REP_ACK and names == ["vol0", "vol1"]
    assert raw_go(sock, "vol1") == (16 * MiB, 0x016D)
    send_request(sock, CMD_READ, 7, 0, 8)
    assert read_simple_reply(sock, 8) == (0, 7, bytes(8))


def test_oversized_option_closes_that_connection_only(primary):
    other = raw_connect(primary.nbd_port)
    sock = raw_connect(primary.nbd_port)
    sock.sendall(struct.pack(">QII", 0x49484156454F5054, 99, 1 << 30))
    assert is_closed(sock)
    wait_for_log(primary, "over the 65536-byte limit")
    assert raw_go(other, "vol0")[0] == 64 * MiB
    still_serves(primary.nbd_port)


def test_premature_close_in_the_handshake_is_logged_and_harmless(primary):
    sock = socket.create_connection(("127.0.0.1", primary.nbd_port))
    recv_exactly(sock, 18)
    sock.close()  # before the client flags
    sock = raw_connect(primary.nbd_port)
    sock.sendall(struct.pack(">QII", 0x49484156454F5054, 7, 100) + b"vol0")  # half an option
    sock.close()
    wait_for_log(primary, "closed the connection during the handshake")
    still_serves(primary.nbd_port)


def test_old_style_export_name_with_and_without_zeroes(primary):
    for client_flags, padding in ((3, 0), (1, 124)):
        sock = raw_connect(primary.nbd_port, client_flags)
        send_option(sock, 1, b"vol1")
        size, flags = struct.unpack(">QH", recv_exactly(sock, 10))
        assert (size, flags) == (16 * MiB, 0x016D)
        assert recv_exactly(sock, padding) == bytes(padding)
        send_request(sock, CMD_READ, 5, 0, 16)
        assert read_simple_reply(sock, 16) == (0, 5, bytes(16))
        sock.close()
    sock = raw_connect(primary.nbd_port)
    send_option(sock, 1, b"nope")  # EXPORT_NAME cannot be refused but by hanging up
    assert is_closed(sock)


def test_abort_is_acknowledged_then_closed(primary):
    sock = raw_connect(primary.nbd_port)
    send_option(sock, 2)
    assert read_option_reply(sock) == (2, REP_ACK, b"")
    assert is_closed(sock)


def test_unknown_client_flags_and_bad_option_magic_close(primary):
    sock = raw_connect(primary.nbd_port, client_flags=0x10)
    assert is_closed(sock)
    sock = raw_connect(primary.nbd_port)
    sock.sendall(b"IHAVEOPX" + struct.pack(">II", 7, 0))
    assert is_closed(sock)
    wait_for_log(primary, "bad option magic")
    still_serves(primary.nbd_port)


def test_malformed_request_closes_only_that_connection_and_changes_no_byte(primary, node_dir):
    good = raw_connect(primary.nbd_port)
    raw_go(good, "vol0")
    pattern = os.urandom(MiB)
    send_request(good, CMD_WRITE, 1, 0, MiB, data=pattern)
    assert read_simple_reply(good)[0] == 0

    bad = raw_connect(primary.nbd_port)
    raw_go(bad, "vol0")
    send_request(bad, CMD_WRITE, 2, 0, 4096, data=b"\xee" * 4096, magic=0xDEADBEEF)
    assert is_closed(bad)
    wait_for_log(primary, "bad request magic 0xdeadbeef")

    half = raw_connect(primary.nbd_port)  # a write whose payload never fully arrives
    raw_go(half, "vol0")
    send_request(half, CMD_WRITE, 3, 0, 65536, data=b"\xdd" * 1000)
    half.close()
    wait_for_log(primary, "in the middle of a request")

    unknown = raw_connect(primary.nbd_port)  # an unknown command is an error, not a hang-up
    raw_go(unknown, "vol0")
    send_request(unknown, 99, 4, 0, 4096)
    assert read_simple_reply(unknown) == (22, 4, b"")
    send_request(unknown, CMD_READ, 5, 0, 16)
    assert read_simple_reply(unknown, 16) == (0, 5, pattern[:16])

    send_request(good, CMD_READ, 6, 0, MiB)
    assert read_simple_reply(good, MiB) == (0, 6, pattern)
    for sock in (good, unknown):
        send_request(sock, CMD_DISC, 7, 0, 0)
        assert is_closed(sock)
    primary.stop()
    volume = read_volume(node_dir, "vol0")
    assert volume[:MiB] == pattern and volume[MiB:] == bytes(63 * MiB)


def test_replies_are_matched_by_cookie_and_cookies_are_opaque(primary):
    sock = raw_connect(primary.nbd_port)
    raw_go(sock, "vol1")
    cookies = [0, 1, 2 ** 64 - 1, 0x0123456789ABCDEF]
    for i, cookie in enumerate(cookies):
        send_request(sock, CMD_WRITE, cookie, i * 4096, 4096, data=bytes([i + 1]) * 4096)
    replies = {read_simple_reply(sock)[1] for _ in cookies}
    assert replies == set(cookies)
    send_request(sock, CMD_READ, 2 ** 64 - 1, 4096 * 2, 4096)
    assert read_simple_reply(sock, 4096) == (0, 2 ** 64 - 1, b"\x03" * 4096)
