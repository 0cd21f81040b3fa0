"""The daemon commands' user errors, help, status and config file."""

import json
import os
import socket
import subprocess
import sys

import pytest

from blockmirror.storage import Node
from blockmirror.testing.daemon import Daemon, converged
from blockmirror.testing.nodes import CHUNK, VOLUMES, make_nodes, primary_args, secondary_args
from blockmirror.testing.tools import qemu_io


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockmirror", *args], capture_output=True, text=True,
                          timeout=timeout)


def error_lines(proc) -> tuple[str, str]:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(("Error:", "Try:"))]
    assert len(lines) == 2 and lines[0].startswith("Error: ") and lines[1].startswith("Try: "), proc.stderr
    return lines[0], lines[1]


@pytest.fixture
def nodes(tmp_path):
    return make_nodes(tmp_path)


@pytest.mark.parametrize("command", ["secondary", "status", "primary"])
def test_help(command):
    proc = cli(command, "--help")
    assert proc.returncode == 0 and "usage: blockmirror " + command in proc.stdout
    if command != "status":
        assert "--secret-file" in proc.stdout and "--link-timeout" in proc.stdout


def test_secondary_needs_listen_and_secret(nodes):
    _, s, secret = nodes
    proc = cli("secondary", s, "--secret-file", secret)
    assert proc.returncode == 2 and "Error: the following arguments are required: --listen" in proc.stderr
    proc = cli("secondary", s, "--listen", "127.0.0.1:0")
    assert proc.returncode == 2 and "--secret-file" in proc.stderr


def test_bad_flags_are_clear_errors(nodes):
    p, s, secret = nodes
    proc = cli("primary", p, "--nbd", "127.0.0.1:0", "--peer", "127.0.0.1:1", "--secret-file", secret, "--mode", "fast")
    assert proc.returncode == 2 and "invalid choice: 'fast'" in proc.stderr
    proc = cli("primary", p, "--nbd", "127.0.0.1:0", "--peer", "127.0.0.1:1")
    err, hint = error_lines(proc)
    assert proc.returncode == 1 and err == "Error: --peer needs --secret-file" and "--secret-file FILE" in hint
    proc = cli("primary", p, "--nbd", "127.0.0.1:0", "--peer", "localhost", "--secret-file", secret)
    err, hint = error_lines(proc)
    assert err == "Error: --peer 'localhost' is not HOST:PORT" and "HOST:PORT" in hint
    proc = cli("secondary", s, "--listen", "127.0.0.1:0", "--secret-file", secret, "--link-timeout", "-1")
    assert proc.returncode == 2 and "--link-timeout" in proc.stderr


def test_secret_file_problems(nodes, tmp_path):
    _, s, _ = nodes
    empty = tmp_path / "empty"
    empty.write_text("\n")
    short = tmp_path / "short"
    short.write_text("tooshort\n")
    cases = [(str(tmp_path / "missing"), "does not exist"), (str(empty), "is empty"),
             (str(short), "is 8 bytes; at least 16 are needed"), (str(tmp_path), "is a directory")]
    if os.geteuid() != 0:  # root reads any file
        unreadable = tmp_path / "unreadable"
        unreadable.write_text("a" * 32)
        unreadable.chmod(0)
        cases.append((str(unreadable), "is not readable"))
    for path, what in cases:
        proc = cli("secondary", s, "--listen", "127.0.0.1:0", "--secret-file", path)
        err, hint = error_lines(proc)
        assert proc.returncode == 1
        assert err.startswith((f"Error: secret file {path} ", f"Error: secret in {path} ")) and what in err, err


def test_uninitialised_directory(tmp_path, nodes):
    _, _, secret = nodes
    proc = cli("secondary", str(tmp_path / "nothing"), "--listen", "127.0.0.1:0", "--secret-file", secret)
    err, hint = error_lines(proc)
    assert proc.returncode == 1 and "is not an initialised blockmirror node" in err
    assert hint.startswith("Try: blockmirror init")


def test_directory_already_served_and_port_in_use(nodes):
    p, s, secret = nodes
    d = Daemon("secondary", s, *secondary_args(secret))
    try:
        proc = cli("secondary", s, "--listen", "127.0.0.1:0", "--secret-file", secret)
        err, hint = error_lines(proc)
        assert proc.returncode == 1 and "in use by another blockmirror process" in err
        assert hint == f"Try: blockmirror status {s}"
        # The running secondary's port, for another node:
        proc = cli("primary", p, "--nbd", f"127.0.0.1:{d.listen[1]}", "--peer", "127.0.0.1:1", "--secret-file", secret)
        err, hint = error_lines(proc)
        assert proc.returncode == 1 and err == f"Error: cannot serve NBD on 127.0.0.1:{d.listen[1]}: the address is already in use"
    finally:
        assert d.stop() == 0
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = cli("secondary", s, "--listen", f"127.0.0.1:{port}", "--secret-file", secret)
    err, hint = error_lines(proc)
    assert err == f"Error: cannot listen for the primary on 127.0.0.1:{port}: the address is already in use"
    assert "--listen HOST:PORT" in hint


def test_status_without_a_daemon(nodes):
    p, _, _ = nodes
    proc = cli("status", p)
    err, hint = error_lines(proc)
    assert proc.returncode == 1 and err == f"Error: no blockmirror daemon is running on {p}"
    assert "blockmirror primary" in hint


def test_a_node_keeps_its_role_and_pair_after_a_handshake(nodes):
    p, s, secret = nodes
    d = Daemon("secondary", s, *secondary_args(secret))
    primary = Daemon("primary", p, *primary_args(secret, d.listen))
    primary.wait_for(converged, what="the first handshake and sync")
    assert primary.stop() == 0 and d.stop() == 0
    proc = cli("primary", s, *primary_args(secret, ("127.0.0.1", 1)))
    err, hint = error_lines(proc)
    assert proc.returncode == 1 and f"{s} is a secondary" in err and f"blockmirror promote {s}" in hint
    proc = cli("secondary", s, *secondary_args(secret, "--pair", "other"))
    err, hint = error_lines(proc)
    assert "belongs to pair 'default', not 'other'" in err and hint == "Try: start it with --pair default"


def test_status_json_and_table(tmp_path, nodes):
    p_dir, s_dir, secret = nodes
    config = tmp_path / "secondary.toml"
    config.write_text(f'listen = "127.0.0.1:0"\nsecret-file = "{secret}"\nnbd = "127.0.0.1:0"\n'
                      f'link-timeout = 1\npair = "db"\n')
    s = Daemon("secondary", s_dir, "--config", str(config))
    p = None
    try:
        p = Daemon("primary", p_dir, *primary_args(secret, s.listen, "--pair", "db", "--mode", "sync"))
        p.wait_for(converged, what="initial sync")
        qemu_io(p.uri("vol0"), "write -P 0x77 0 1M")
        p.wait_for(converged, what="mirroring")
        proc = cli("status", p_dir, "--json")
        assert proc.returncode == 0, proc.stderr
        st = json.loads(proc.stdout)
        assert st["role"] == "primary" and st["state"] == "mirroring" and st["peer_connected"] is True
        assert st["mode"] == "sync" and st["pair"]["name"] == "db"
        assert [(v["name"], v["size"]) for v in st["volumes"]] == list(VOLUMES.items())
        assert st["snapshots"] == []
        assert set(st["last_resync"]) >= {"chunks", "bytes", "seconds"}
        sst = json.loads(cli("status", s_dir, "--json").stdout)
        assert sst["role"] == "secondary" and sst["state"] == "mirroring" and sst["seq"] == st["seq"]
        table = cli("status", s_dir).stdout
        assert table.splitlines()[0].split() == ["role", "secondary"]
        assert table.splitlines()[1].split() == ["state", "mirroring"]
        assert any(line.split() == ["vol0", "16", "MiB"] for line in table.splitlines())
        assert "VOLUME" in table and "no snapshots" in table
    finally:
        if p is not None:
            assert p.stop() == 0
        assert s.stop() == 0


def test_volume_mismatch_is_refused_and_the_primary_keeps_serving(tmp_path):
    p_dir, s_dir, secret = make_nodes(tmp_path, secondary_volumes={"vol0": 16 << 20, "vol1": 8 << 20})
    s = Daemon("secondary", s_dir, *secondary_args(secret))
    p = Daemon("primary", p_dir, *primary_args(secret, s.listen))
    try:
        st = p.wait_for(lambda st: st["last_link_error"], timeout_s=10, what="a refused handshake")
        assert "volume 'vol1' is 4 MiB (4194304 bytes) on the primary but 8 MiB (8388608 bytes) on the secondary" \
            in st["last_link_error"]
        assert not st["peer_connected"]
        qemu_io(p.uri("vol1"), "write -P 0x66 0 64k", "read -P 0x66 0 64k")  # hosts are still served
        assert "VOLUME_MISMATCH" in p.log() and "volume 'vol1'" in s.log()
    finally:
        assert p.stop() == 0
        assert s.stop() == 0


def test_wrong_secret_is_refused(tmp_path):
    p_dir, s_dir, secret = make_nodes(tmp_path)
    other = tmp_path / "other-secret"
    other.write_text("a different secret of enough length\n")
    s = Daemon("secondary", s_dir, *secondary_args(str(other)))
    p = Daemon("primary", p_dir, *primary_args(secret, s.listen))
    try:
        st = p.wait_for(lambda st: st["last_link_error"], timeout_s=10, what="a refused handshake")
        # Another secret derives another pair UUID: refused before any data moves.
        assert "PAIR_MISMATCH" in st["last_link_error"] and "same secret file" in st["last_link_error"]
        assert "ERROR blockmirror.primary: the link to" in p.log()
        assert s.status()["seq"] == 0 and not s.status()["peer_connected"]
    finally:
        assert p.stop() == 0
        assert s.stop() == 0


def test_a_second_primary_is_refused_with_busy(tmp_path):
    p_dir, s_dir, secret = make_nodes(tmp_path)
    other_dir = str(tmp_path / "other-primary")
    Node.create(other_dir, VOLUMES, chunk_size=CHUNK).close()
    s = Daemon("secondary", s_dir, *secondary_args(secret))
    p = Daemon("primary", p_dir, *primary_args(secret, s.listen))
    other = None
    try:
        p.wait_for(converged, what="initial sync")
        # Another primary of the same pair (same name and secret) dials the same secondary.
        other = Daemon("primary", other_dir, *primary_args(secret, s.listen), log_name="other-primary.log")
        st = other.wait_for(lambda st: st["last_link_error"], timeout_s=10, what="a refused link")
        assert st["last_link_error"].startswith("the peer refused: BUSY: this secondary already serves a primary "
                                                "of pair 'default'"), st["last_link_error"]
        assert "a secondary serves one primary" in st["last_link_error"]
        assert "ERROR blockmirror.primary: the link to" in other.log() and "BUSY" in other.log()
        assert not st["peer_connected"]
        qemu_io(other.uri("vol0"), "write -P 0x0b 0 64k", "read -P 0x0b 0 64k")  # it still serves its host
        assert "refusing the connection from 127.0.0.1:" in s.log() and "with BUSY" in s.log()
        # The linked primary was never disturbed.
        qemu_io(p.uri("vol0"), "write -P 0x0a 0 64k")
        pst = p.wait_for(converged, what="mirroring beside the refused primary")
        assert pst["link_failures"] == 0
        sst = s.status()
        assert sst["busy_refusals"] >= 1 and sst["seq"] == pst["seq"]
        assert other.stop() == 0
        other = None
    finally:
        if other is not None:
            other.stop()
        assert p.stop() == 0
        assert s.stop() == 0
