"""Sync-mode durability, ordered shutdown and restart, HTTP status and metrics."""

import json
import signal
import subprocess
import sys
import time
import uuid
import urllib.request

from blockmirror.engine import SecondaryConfig, SecondaryNode
from blockmirror.storage import Node
from blockmirror.testing.daemon import Daemon, converged
from blockmirror.testing.host import HotAreaWriter
from blockmirror.testing.nodes import VOLUMES, make_nodes, primary_args, secondary_args
from blockmirror.testing.tools import assert_identical, qemu_io


def test_sync_mode_write_is_on_the_secondary_when_acknowledged(tmp_path):
    p_dir, s_dir, secret = make_nodes(tmp_path)
    s = Daemon("secondary", s_dir, *secondary_args(secret))
    p = Daemon("primary", p_dir, *primary_args(secret, s.listen, "--mode", "sync"))
    try:
        p.wait_for(converged, what="initial sync")
        qemu_io(p.uri("vol0"), "write -P 0xd7 4096 8192", "write -P 0xd8 1M 64k")
        # qemu-io returned: both writes were acknowledged. Crash both nodes at once.
        s.kill9()
        p.kill9()
    finally:
        for d in (p, s):
            if d.proc.poll() is None:
                d.kill9()
    with Node.open(s_dir) as node:
        eng = SecondaryNode(node, SecondaryConfig(), 0.0, uuid.UUID(int=1), "default")  # recovery: journal replay
        assert eng.read_image("vol0", 4096, 8192) == b"\xd7" * 8192
        assert eng.read_image("vol0", 1 << 20, 65536) == b"\xd8" * 65536


def test_sigterm_stops_in_order_and_a_restart_resumes(pair):
    p, s = pair.primary, pair.secondary
    p.wait_for(converged, what="initial sync")
    writer = HotAreaWriter(p.uri("vol0"), area_bytes=1 << 20, seed=17)
    writer.wait_writes(30)
    writer.stop()
    assert p.stop(signal.SIGINT) == 0
    log = p.log()
    assert "shutting down" in log and "recording the stop" in log and log.rstrip().endswith("stopped")
    s.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what="the secondary seeing the goodbye")
    assert "the peer said goodbye" in s.log()
    p.restart()
    st = p.wait_for(converged, timeout_s=20, what="mirroring after the restart")
    # A clean stop with everything acknowledged leaves nothing to resend.
    assert st["last_resync"]["kind"] == "incremental" and st["last_resync"]["bytes"] == 0
    assert "unclean stop" not in p.log()
    assert_identical(p, s)


def test_http_status_and_metrics(tmp_path):
    p_dir, s_dir, secret = make_nodes(tmp_path)
    s = Daemon("secondary", s_dir, *secondary_args(secret, "--http", "127.0.0.1:0"))
    p = Daemon("primary", p_dir, *primary_args(secret, s.listen, "--http", "127.0.0.1:0"))
    try:
        p.wait_for(converged, what="initial sync")
        urls = {}
        for d in (p, s):
            line = next(ln for ln in d.lines if ln.startswith("http on "))
            urls[d.role] = line.split()[-1]
        st = json.load(urllib.request.urlopen(urls["primary"] + "/status", timeout=10))
        assert st["role"] == "primary" and st["state"] == "mirroring"
        text = urllib.request.urlopen(urls["secondary"] + "/metrics", timeout=10).read().decode()
        assert 'blockmirror_state{state="mirroring"} 1' in text
        assert 'blockmirror_state{state="disconnected"} 0' in text
        assert "blockmirror_peer_connected 1" in text
        assert f'blockmirror_volume_size_bytes{{volume="vol0"}} {VOLUMES["vol0"]}' in text
        assert "# TYPE blockmirror_last_resync_bytes gauge" in text
    finally:
        assert p.stop() == 0
        assert s.stop() == 0


def _utc(text: str) -> float:
    import calendar
    return calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")) + int(text[20:23]) / 1000


def _metric(text: str, name: str) -> float:
    import re
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_out_of_sync_and_lag_are_visible_during_an_outage(tmp_path):
    """During an outage the primary shows what the secondary lacks (the
    chunks written since, in bytes), how old the oldest of them is, and after
    the resync what it cost (totals.resync_bytes)."""
    p_dir, s_dir, secret = make_nodes(tmp_path)
    s = Daemon("secondary", s_dir, *secondary_args(secret))
    p = Daemon("primary", p_dir, *primary_args(secret, s.listen, "--http", "127.0.0.1:0", "--rpo-warn", "0.3"))
    try:
        p.wait_for(converged, what="initial sync")
        url = next(ln for ln in p.lines if ln.startswith("http on ")).split()[-1]
        st = p.status()
        assert (st["out_of_sync_bytes"], st["out_of_sync_chunks"], st["lag_seconds"], st["unacked_bytes"]) == (
            0, 0, 0, 0), st
        now = time.time()
        assert abs(_utc(st["secondary_consistent_at"]) - now) < 5
        assert abs(_utc(s.wait_for(lambda x: x["consistent_at"] is not None, what="the secondary's time")
                        ["consistent_at"]) - now) < 5
        assert s.stop() == 0
        p.wait_for(lambda st: st["state"] == "disconnected", what="the link down")
        qemu_io(p.uri("vol0"), "write -P 0x21 1M 320K")  # 5 chunks
        qemu_io(p.uri("vol1"), "write -P 0x22 0 64K")  # 1 chunk
        text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
        assert _metric(text, "blockmirror_out_of_sync_bytes") == 6 * 65536
        assert _metric(text, "blockmirror_out_of_sync_chunks") == 6
        assert _metric(text, "blockmirror_lag_seconds") > 0
        assert "# HELP blockmirror_lag_seconds " in text and "# TYPE blockmirror_resync_bytes_total counter" in text
        st = p.wait_for(lambda st: st["rpo_exceeded"], what="the lag past --rpo-warn")
        assert time.time() - _utc(st["secondary_consistent_at"]) >= st["lag_seconds"] - 0.5
        assert "exceeds --rpo-warn 0.3s" in p.log() and _metric(
            urllib.request.urlopen(url + "/metrics", timeout=10).read().decode(), "blockmirror_rpo_exceeded") == 1
        assert st["out_of_sync_bytes"] == 6 * 65536 and st["lag_seconds"] > 0.3 and st["unacked_bytes"] == 0
        table = subprocess.run([sys.executable, "-m", "blockmirror", "status", p_dir], capture_output=True,
                               text=True, timeout=30).stdout
        assert "out of sync  384 KiB (6 chunks)" in table, table
        before = st["totals"]["resync_bytes"]
        s.restart()
        st = p.wait_for(converged, what="the resync")
        assert st["totals"]["resync_bytes"] - before == 6 * 65536 == st["last_resync"]["bytes"]
        assert (st["out_of_sync_bytes"], st["lag_seconds"]) == (0, 0)
        assert not p.wait_for(lambda st: not st["rpo_exceeded"], what="the lag back under")["rpo_exceeded"]
        assert_identical(p, s)
    finally:
        assert p.stop() == 0
        assert s.stop() == 0
