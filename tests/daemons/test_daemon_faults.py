"""kill -9 of either daemon during the very first sync while a host writes;
a high-latency link; the fault proxy as a process driven over its control
socket."""

import os
import re
import subprocess
import time

import pytest
from test_daemon_rounds import RATE_BPS

from blockmirror.testing.daemon import Daemon, converged, in_round
from blockmirror.testing.host import HotAreaWriter
from blockmirror.testing.nodes import make_nodes, primary_args, secondary_args, write_pattern
from blockmirror.testing.proxy import ProxyProcess
from blockmirror.testing.tools import assert_identical, qemu_io


def test_kill9_of_the_secondary_during_initial_sync(new_pair):
    pair = new_pair()
    write_pattern(pair.p_dir, b"first sync, secondary killed")
    pair.start_secondary()
    pair.proxy.rate(RATE_BPS)
    pair.start_primary()
    p, s = pair.primary, pair.secondary
    p.wait_for(in_round, timeout_s=10, what="an initial sync under way")
    writer = HotAreaWriter(p.uri("vol0"), area_bytes=2 << 20, seed=21)
    try:
        writer.wait_writes(10)
        s.kill9()
        p.wait_for(lambda st: not st["peer_connected"], timeout_s=10, what="link-down detection")
        writer.wait_writes(20)  # the primary keeps serving its host
        pair.proxy.cut()  # keep the primary away while the restarted secondary is looked at
        pair.proxy.rate(0)
        s.restart()  # on its port
        sst = s.status()
        assert not sst["consistent"] and sst["generation"] is None, "a half-done first sync is no image"
        proc = subprocess.run(["nbdcopy", s.uri("vol0"), "-"], capture_output=True, timeout=30)
        assert proc.returncode != 0, "the secondary must not serve a torn first sync"
        pair.proxy.heal()
        writer.wait_writes(20)
    finally:
        writer.stop()
    st = p.wait_for(converged, timeout_s=30, what="convergence after kill -9 of the secondary during initial sync")
    assert st["last_resync"]["kind"] == "full", "no common base yet: the first sync starts over"
    assert s.status()["consistent"]
    assert_identical(p, s)


def test_kill9_of_the_primary_during_initial_sync(new_pair):
    pair = new_pair()
    write_pattern(pair.p_dir, b"first sync, primary killed")
    pair.start_secondary()
    pair.proxy.rate(RATE_BPS)
    pair.start_primary()
    p, s = pair.primary, pair.secondary
    p.wait_for(in_round, timeout_s=10, what="an initial sync under way")
    writer = HotAreaWriter(p.uri("vol0"), area_bytes=2 << 20, seed=22)
    try:
        writer.wait_writes(10)
        p.kill9()
    finally:
        writer.stop(errors_expected=True)  # the host lost its device
    sst = s.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what="the secondary noticing")
    assert not sst["consistent"], "the interrupted first sync left no image"
    pair.proxy.rate(0)
    p.restart()
    st = p.wait_for(converged, timeout_s=30, what="convergence after kill -9 of the primary during initial sync")
    assert st["last_resync"]["kind"] == "full" and st["snapshots"] == []
    # The restarted primary resumes the first sync where the secondary had made it durable.
    assert p.log().count("full sync: no common base") == 1
    assert re.search(r"round 1 resumed at \d+%", p.log()), p.log()
    writer = HotAreaWriter(p.uri("vol0"), area_bytes=2 << 20, seed=23)
    try:
        writer.wait_writes(20)
    finally:
        writer.stop()
    p.wait_for(converged, timeout_s=30, what="mirroring after the restart")
    assert s.status()["consistent"]
    assert_identical(p, s)


def test_high_latency_link_converges_and_sync_writes_wait_for_it(new_pair):
    delay_s = 0.1  # each way: a 200 ms round trip
    pair = new_pair(mode="sync", primary_extra=["--link-timeout", "2"], secondary_extra=["--link-timeout", "2"])
    pair.start_secondary()
    pair.proxy.delay(delay_s)
    pair.start_primary()
    p, s = pair.primary, pair.secondary
    p.wait_for(converged, timeout_s=20, what="initial sync over a slow link")
    t0 = time.monotonic()
    qemu_io(p.uri("vol0"), *(f"write -P {0x80 + i} {i}M 64k" for i in range(4)))
    took_s = time.monotonic() - t0
    assert took_s >= 4 * 2 * delay_s, f"4 sync writes took {took_s:.2f}s over a {2 * delay_s}s round trip"
    assert "link silent" not in p.log(), "heartbeats keep a slow link up"
    pair.proxy.cut()
    p.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what="link-down detection")
    qemu_io(p.uri("vol1"), "write -P 0x99 0 192k")  # sync mode, link down: completes locally
    pair.proxy.heal()
    st = p.wait_for(converged, timeout_s=30, what="resync over a slow link")
    assert st["last_resync"]["kind"] == "incremental" and st["last_resync"]["bytes"] == 192 << 10
    assert_identical(p, s)


def test_fault_proxy_process_and_control_socket(tmp_path):
    p_dir, s_dir, secret = make_nodes(tmp_path)
    s = Daemon("secondary", s_dir, *secondary_args(secret))
    ctl = str(tmp_path / "proxy.sock")
    proxy = ProxyProcess(s.listen, ctl, str(tmp_path / "proxy.log"))
    p = None
    try:
        assert re.fullmatch(rf"proxy on 127\.0\.0\.1:{proxy.address[1]} -> 127\.0\.0\.1:{s.listen[1]}",
                            proxy.ready_line), proxy.ready_line
        p = Daemon("primary", p_dir, *primary_args(secret, proxy.address))
        p.wait_for(converged, what="initial sync through the proxy process")
        st = proxy.command("status")
        assert st["mode"] == "pass" and st["connections"] == 1 and st["bytes_forwarded"] > 0

        assert proxy.command("blackhole")["mode"] == "blackhole"
        qemu_io(p.uri("vol0"), "write -P 0x71 0 128k")
        p.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what="black-hole detection")
        assert proxy.command("heal")["mode"] == "pass"
        st = p.wait_for(converged, timeout_s=20, what="convergence after the black hole")
        assert st["last_resync"]["bytes"] == 128 << 10

        assert proxy.command("cut")["mode"] == "down"
        p.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what="cut detection")
        assert proxy.command("status")["resets"] >= 1
        qemu_io(p.uri("vol1"), "write -P 0x72 1M 64k")
        proxy.heal()
        proxy.delay(0.05)
        st = p.wait_for(converged, timeout_s=20, what="convergence after the cut, through a delay")
        assert st["last_resync"]["bytes"] == 64 << 10 and proxy.status()["delay_s"] == 0.05
        assert_identical(p, s)
        with pytest.raises(ValueError, match="unknown command 'explode'"):
            proxy.command("explode")
    finally:
        if p is not None:
            assert p.stop() == 0
        assert proxy.stop() == 0, (tmp_path / "proxy.log").read_text()
        assert s.stop() == 0
    assert not os.path.exists(ctl), "the proxy removes its control socket"
