"""`blockmirror primary`: address parsing, user errors, readiness, ordered shutdown."""

import re
import signal
import socket
import subprocess
import sys

import nbd
import pytest

from blockmirror.cli.primary import parse_host_port
from blockmirror.errors import ConfigError
from blockmirror.testing.daemon import Daemon


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:10809", ("127.0.0.1", 10809)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("localhost:65535", ("localhost", 65535)),
    ("[::1]:10809", ("::1", 10809)),
    ("[fe80::1%lo]:1", ("fe80::1%lo", 1)),
])
def test_parse_host_port_accepts(text, expected):
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", [
    "", "10809", "127.0.0.1", ":10809", "127.0.0.1:", "127.0.0.1:x", "127.0.0.1:65536", "127.0.0.1:-1",
    "::1:10809", "[::1]", "[::1]10809", "host:1:2", " host:1", "127.0.0.1:1 ", "127.0.0.1:123456",
])
def test_parse_host_port_rejects_with_a_hint(text):
    with pytest.raises(ConfigError) as info:
        parse_host_port(text)
    assert "HOST:PORT" in info.value.hint


def primary_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockmirror", "primary", *args],
                          capture_output=True, text=True, timeout=30)


def test_bad_address_is_a_clear_error(node_dir):
    proc = primary_cli(node_dir, "--nbd", "127.0.0.1:port")
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == "Error: --nbd '127.0.0.1:port': port 'port' is not a number from 0 to 65535"
    assert proc.stderr.splitlines()[1].startswith("Try: write the address as HOST:PORT")


def test_port_in_use_is_a_clear_error(node_dir):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = primary_cli(node_dir, "--nbd", f"127.0.0.1:{port}")
    assert proc.returncode == 1
    assert f"Error: cannot serve NBD on 127.0.0.1:{port}: the address is already in use" in proc.stderr
    assert "Try: choose another port" in proc.stderr


def test_address_not_on_this_machine_is_a_clear_error(node_dir):
    proc = primary_cli(node_dir, "--nbd", "192.0.2.1:10809")  # TEST-NET-1
    assert proc.returncode == 1 and "Error: cannot serve NBD on 192.0.2.1:10809" in proc.stderr
    assert "Try: use an address of this machine" in proc.stderr


def test_uninitialised_directory_is_a_clear_error(tmp_path):
    proc = primary_cli(str(tmp_path), "--nbd", "127.0.0.1:0")
    assert proc.returncode == 1
    assert "is not an initialised blockmirror node" in proc.stderr and "Try: blockmirror init" in proc.stderr


def test_missing_nbd_flag_is_a_usage_error(node_dir):
    proc = primary_cli(node_dir)
    assert proc.returncode == 2 and "--nbd" in proc.stderr


def test_a_node_is_served_by_one_primary_at_a_time(primary, node_dir):
    proc = primary_cli(node_dir, "--nbd", "127.0.0.1:0")
    assert proc.returncode == 1 and "in use by another blockmirror process" in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_in_order_and_data_survives_a_restart(node_dir, sig):
    first = Daemon("primary", node_dir, "--nbd", "127.0.0.1:0")
    assert first.lines == [f"serving 2 volumes on nbd://127.0.0.1:{first.nbd_port}"]
    h = nbd.NBD()
    h.connect_uri(first.uri("vol1"))
    h.pwrite(b"persist!" * 512, 8192)  # no flush: shutdown must flush
    assert first.stop(sig) == 0
    log = first.log()
    steps = ["serving volumes vol0, vol1", "shutting down", "flushing and closing the node", "stopped"]
    positions = [log.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), log
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} INFO ", log)  # timestamps on every line
    with pytest.raises(nbd.Error):
        h.pread(8, 0)  # the server is gone
    second = Daemon("primary", node_dir, "--nbd", "127.0.0.1:0")
    try:
        h = nbd.NBD()
        h.connect_uri(second.uri("vol1"))
        assert h.pread(4096, 8192) == b"persist!" * 512
        h.shutdown()
    finally:
        assert second.stop() == 0
