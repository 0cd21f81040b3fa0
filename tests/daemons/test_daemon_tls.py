"""TLS on the replication link: mirroring and resync over TLS; a peer
without TLS, or with a certificate from another CA, is refused with a clear
error while the primary keeps serving its hosts; bad certificate files are
one `Error:` line with a hint."""

import re
import subprocess
import sys

import pytest
from tls_certs import CertAuthority

from blockmirror.testing.daemon import Daemon, converged
from blockmirror.testing.nodes import make_nodes, primary_args, secondary_args
from blockmirror.testing.tools import assert_identical, qemu_io


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tls"))
    ca, rogue = CertAuthority(d, "pair"), CertAuthority(d, "rogue")
    return {"primary": ca.issue("primary"), "secondary": ca.issue("secondary"),
            "rogue": rogue.issue("intruder")}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockmirror", *args], capture_output=True, text=True, timeout=30)


def error_lines(proc) -> tuple[str, str]:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(("Error:", "Try:"))]
    assert proc.returncode == 1 and len(lines) == 2, proc.stderr
    assert lines[0].startswith("Error: ") and lines[1].startswith("Try: "), proc.stderr
    return lines[0], lines[1]


def wait_log(d: Daemon, pattern: str, timeout_s: float = 10) -> str:
    """The first log line matching `pattern` (a regex)."""
    import time
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = re.search(pattern, d.log())
        if m:
            return d.log()[m.start():].splitlines()[0]
        time.sleep(0.05)
    raise AssertionError(f"{d.role}: no log line like {pattern!r}; log:\n{d.log()}")


def test_mirroring_and_resync_over_tls(new_pair, certs, tmp_path):
    s_cert = certs["secondary"]
    config = tmp_path / "secondary-tls.toml"  # the TLS keys work from the config file too
    config.write_text(f'tls-cert = "{s_cert.cert}"\ntls-key = "{s_cert.key}"\ntls-ca = "{s_cert.ca}"\n')
    pair = new_pair(primary_extra=certs["primary"].flags(), secondary_extra=["--config", str(config)])
    pair.start_secondary()
    assert pair.secondary.lines[0].endswith("(TLS, primary verified)")
    pair.start_primary()
    p, s = pair.primary, pair.secondary
    st = p.wait_for(converged, what="initial sync over TLS")
    assert st["link"]["tls"]["version"] in ("TLSv1.3", "TLSv1.2")
    assert st["link"]["tls"]["peer_subject"] == "commonName=secondary"
    sst = s.status()
    assert sst["link"]["tls"]["peer_subject"] == "commonName=primary" and sst["tls_failures"] == 0
    table = cli("status", p.node_dir).stdout.splitlines()
    assert any(re.match(r"tls +TLSv1\.[23] \S+, peer commonName=secondary$", line) for line in table), table
    qemu_io(p.uri("vol0"), "write -P 0x3c 0 2M", "write -P 0xc3 9M 64k")
    p.wait_for(converged, what="mirroring over TLS")
    assert_identical(p, s)
    pair.proxy.cut()  # the TLS session breaks; a new one carries the resync
    p.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what="link-down detection")
    qemu_io(p.uri("vol1"), "write -P 0x5e 1M 256k")
    pair.proxy.heal()
    st = p.wait_for(converged, timeout_s=20, what="resync over a new TLS session")
    assert st["last_resync"]["kind"] == "incremental" and st["last_resync"]["bytes"] == 256 << 10
    assert_identical(p, s)


def refused(p: Daemon, s: Daemon) -> dict:
    """The primary logs the refusal, shows it in status and keeps serving."""
    st = p.wait_for(lambda st: st["last_link_error"] and "TLS" in st["last_link_error"], timeout_s=10,
                    what="a refused TLS link")
    assert not st["peer_connected"] and st["state"] in ("initial-sync", "disconnected")
    qemu_io(p.uri("vol1"), "write -P 0x66 0 64k", "read -P 0x66 0 64k")  # hosts are still served
    assert s.status()["seq"] == 0 and not s.status()["peer_connected"]
    return st


def test_a_primary_without_tls_is_refused(tmp_path, certs):
    p_dir, s_dir, secret = make_nodes(tmp_path)
    s = Daemon("secondary", s_dir, *secondary_args(secret, *certs["secondary"].flags()))
    p = Daemon("primary", p_dir, *primary_args(secret, s.listen))
    try:
        st = refused(p, s)
        line = wait_log(s, r"ERROR blockmirror\.secondary: refused a connection from 127\.0\.0\.1:\d+: TLS")
        assert "the primary does not speak TLS" in line, line
        assert "if it uses TLS, give this node --tls-cert and --tls-key too" in st["last_link_error"]
        assert "ERROR blockmirror.primary: the link to" in p.log()
    finally:
        assert p.stop() == 0
        assert s.stop() == 0


def test_a_secondary_without_tls_is_refused(tmp_path, certs):
    p_dir, s_dir, secret = make_nodes(tmp_path)
    s = Daemon("secondary", s_dir, *secondary_args(secret))
    p = Daemon("primary", p_dir, *primary_args(secret, s.listen, *certs["primary"].flags()))
    try:
        st = refused(p, s)
        assert "the secondary does not speak TLS" in st["last_link_error"], st["last_link_error"]
        line = wait_log(s, r"WARNING blockmirror\.secondary: connection from .* ended before the handshake")
        assert "the primary speaks TLS: give this node --tls-cert and --tls-key" in line, line
    finally:
        assert p.stop() == 0
        assert s.stop() == 0


@pytest.mark.parametrize("intruder", ["primary", "secondary"])
def test_a_certificate_from_another_ca_is_refused(tmp_path, certs, intruder):
    p_dir, s_dir, secret = make_nodes(tmp_path)
    p_cert = certs["rogue"] if intruder == "primary" else certs["primary"]
    s_cert = certs["rogue"] if intruder == "secondary" else certs["secondary"]
    # Each node verifies with the pair's CA; the intruder's certificate is from another CA.
    s = Daemon("secondary", s_dir, *secondary_args(secret, "--tls-cert", s_cert.cert, "--tls-key", s_cert.key,
                                                   "--tls-ca", certs["secondary"].ca))
    p = Daemon("primary", p_dir, *primary_args(secret, s.listen, "--tls-cert", p_cert.cert, "--tls-key",
                                               p_cert.key, "--tls-ca", certs["primary"].ca))
    try:
        st = refused(p, s)
        err = st["last_link_error"]
        if intruder == "secondary":
            assert "CERTIFICATE_VERIFY_FAILED" in err and "the secondary's certificate is not signed by the CA" in err
            line = wait_log(s, r"ERROR blockmirror\.secondary: refused a connection from .*: the primary closed")
            assert "during the TLS handshake" in line and "the primary's log says why" in line, line
        else:
            line = wait_log(s, r"ERROR blockmirror\.secondary: refused a connection from .*: TLS handshake failed")
            assert "CERTIFICATE_VERIFY_FAILED" in line and "the primary's certificate is not signed by the CA" in line
            assert "right after the TLS handshake" in err and "issue this node's --tls-cert from that CA" in err, err
    finally:
        assert p.stop() == 0
        assert s.stop() == 0


def test_bad_tls_files_are_one_error_line(tmp_path, certs):
    p_dir, s_dir, secret = make_nodes(tmp_path)
    good = certs["secondary"]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    missing = str(tmp_path / "missing.pem")
    cases = [
        (["--tls-cert", good.cert], "Error: --tls-cert needs both --tls-cert and --tls-key", "--tls-key FILE"),
        (["--tls-ca", good.ca], "Error: --tls-ca needs both --tls-cert and --tls-key", "--tls-cert FILE"),
        (["--tls-cert", missing, "--tls-key", good.key], f"Error: TLS certificate file {missing} does not exist",
         "--tls-cert FILE"),
        (["--tls-cert", str(garbage), "--tls-key", good.key],
         f"Error: TLS certificate file {garbage} holds no PEM certificate", "BEGIN CERTIFICATE"),
        (["--tls-cert", good.cert, "--tls-key", good.cert], f"Error: TLS key file {good.cert} holds no PEM private key",
         "--tls-key"),
        (["--tls-cert", good.cert, "--tls-key", certs["primary"].key],
         f"Error: TLS key {certs['primary'].key} does not belong to the certificate {good.cert}", "private key"),
        (["--tls-cert", good.cert, "--tls-key", good.key, "--tls-ca", good.key],
         f"Error: TLS CA file {good.key} holds no PEM certificate", "--tls-ca"),
    ]
    for flags, want_err, want_hint in cases:
        proc = cli("secondary", s_dir, "--listen", "127.0.0.1:0", "--secret-file", secret, *flags)
        err, hint = error_lines(proc)
        assert err == want_err and want_hint in hint, (flags, err, hint)
        proc = cli("primary", p_dir, *primary_args(secret, ("127.0.0.1", 1), *flags))
        err, hint = error_lines(proc)
        assert err == want_err and want_hint in hint, (flags, err, hint)
    config = tmp_path / "primary.toml"
    config.write_text(f'tls-cert = "{missing}"\ntls-key = "{good.key}"\n')
    proc = cli("primary", p_dir, *primary_args(secret, ("127.0.0.1", 1), "--config", str(config)))
    err, hint = error_lines(proc)
    assert err == f"Error: TLS certificate file {missing} does not exist"
    proc = cli("primary", p_dir, "--nbd", "127.0.0.1:0", *good.flags())
    err, hint = error_lines(proc)
    assert err == "Error: --tls-cert needs --peer"
