"""kill -9 of either daemon during the very first sync while a host writes;
a high-latency link; the fault proxy as a process driven over its control
socket."""

import os
import re
import signal
import subprocess
import sys
import time

from daemon_helpers import Daemon, HostWriter, assert_identical, converged, make_nodes, primary_args, qemu_io, \
    secondary_args
from test_daemon_rounds import RATE_BPS, in_round, prefill, read_export

from blockmirror.faultproxy import control


def test_kill9_of_the_secondary_during_initial_sync(new_pair):
    pair = new_pair()
    prefill(pair.p_dir, b"first sync, secondary killed")
    pair.start_secondary()
    pair.proxy.rate(RATE_BPS)
    pair.start_primary()
    p, s = pair.primary, pair.secondary
    p.wait_for(in_round, timeout_s=10, what="an initial sync under way")
    writer = HostWriter(p.uri("vol0"), area_bytes=2 << 20, seed=21)
    try:
        writer.wait_writes(10)
        s.kill9()
        p.wait_for(lambda st: not st["peer_connected"], timeout_s=10, what="link-down detection")
        writer.wait_writes(20)  # the primary keeps serving its host
        pair.proxy.cut()  # keep the primary away while the restarted secondary is looked at
        pair.proxy.rate(0)
        s.restart(*secondary_args(pair.secret, listen=f"127.0.0.1:{s.listen[1]}"))
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
    prefill(pair.p_dir, b"first sync, primary killed")
    pair.start_secondary()
    pair.proxy.rate(RATE_BPS)
    pair.start_primary()
    p, s = pair.primary, pair.secondary
    p.wait_for(in_round, timeout_s=10, what="an initial sync under way")
    writer = HostWriter(p.uri("vol0"), area_bytes=2 << 20, seed=22)
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
    # No generation was ever committed: the restarted primary starts the first sync over.
    assert p.log().count("full sync: no common base") == 2
    writer = HostWriter(p.uri("vol0"), area_bytes=2 << 20, seed=23)
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
    proxy = subprocess.Popen([sys.executable, "-m", "blockmirror.faultproxy", "--listen", "127.0.0.1:0",
                              "--target", f"127.0.0.1:{s.listen[1]}", "--control", ctl],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p = None
    try:
        line = proxy.stdout.readline().strip()
        m = re.match(r"proxy on 127\.0\.0\.1:(\d+) -> 127\.0\.0\.1:(\d+)$", line)
        assert m and int(m.group(2)) == s.listen[1], line
        p = Daemon("primary", p_dir, *primary_args(secret, ("127.0.0.1", int(m.group(1)))))
        p.wait_for(converged, what="initial sync through the proxy process")
        st = control(ctl, "status")
        assert st["mode"] == "pass" and st["connections"] == 1 and st["bytes_forwarded"] > 0

        assert control(ctl, "blackhole")["mode"] == "blackhole"
        qemu_io(p.uri("vol0"), "write -P 0x71 0 128k")
        p.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what="black-hole detection")
        assert control(ctl, "heal")["mode"] == "pass"
        st = p.wait_for(converged, timeout_s=20, what="convergence after the black hole")
        assert st["last_resync"]["bytes"] == 128 << 10

        assert control(ctl, "cut")["mode"] == "down"
        p.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what="cut detection")
        assert control(ctl, "status")["resets"] >= 1
        qemu_io(p.uri("vol1"), "write -P 0x72 1M 64k")
        control(ctl, "heal")
        control(ctl, "delay 0.05")
        st = p.wait_for(converged, timeout_s=20, what="convergence after the cut, through a delay")
        assert st["last_resync"]["bytes"] == 64 << 10 and control(ctl, "status")["delay_s"] == 0.05
        assert_identical(p, s)
        try:
            control(ctl, "explode")
            raise AssertionError("an unknown command must be an error")
        except ValueError as exc:
            assert "unknown command 'explode'" in str(exc)
    finally:
        if p is not None:
            assert p.stop() == 0
        proxy.send_signal(signal.SIGTERM)
        assert proxy.wait(10) == 0, proxy.stderr.read()
        assert s.stop() == 0
    assert not os.path.exists(ctl), "the proxy removes its control socket"
