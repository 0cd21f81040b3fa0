"""Faults during initial sync and during resync, on a slow link (the fault
proxy limits the rate so a round lasts long enough to be hit)."""

import re
import subprocess
import sys
import time

import pytest

from blockmirror.testing.daemon import converged, in_round
from blockmirror.testing.host import HotAreaWriter
from blockmirror.testing.nodes import VOLUMES, write_pattern
from blockmirror.testing.tools import assert_identical, qemu_io, read_export

RATE_BPS = 12 << 20  # a 16 MiB sync takes over a second


def fault_while_writing(pair, p, fault: str, uri: str, seed: int, what: str) -> None:
    """A host writes to `uri` while `fault` ('cut' or 'blackhole') breaks the
    link; the primary notices, writes go on, the link heals at full speed."""
    writer = HotAreaWriter(uri, area_bytes=1 << 20, seed=seed)
    try:
        getattr(pair.proxy, fault)()
        p.wait_for(lambda st: not st["peer_connected"], timeout_s=10, what=what)
        writer.wait_writes(20)
        pair.proxy.rate(0)
        pair.proxy.heal()
        writer.wait_writes(20)
    finally:
        writer.stop()


def outage_then_slow_resync(pair, p, qemu_write: str) -> None:
    """Cut the link, change the primary while it is down, then heal on a slow
    link and wait until a resync round is under way."""
    pair.proxy.cut()
    p.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what="link-down detection")
    qemu_io(p.uri("vol0"), qemu_write)
    pair.proxy.rate(RATE_BPS)
    pair.proxy.heal()
    p.wait_for(in_round, timeout_s=10, what="a resync under way")


def test_link_cut_during_initial_sync(new_pair):
    pair = new_pair()
    write_pattern(pair.p_dir, b"initial")
    pair.start_secondary()
    pair.proxy.rate(RATE_BPS)
    pair.start_primary()
    p, s = pair.primary, pair.secondary
    st = p.wait_for(in_round, timeout_s=10, what="an initial sync under way")
    assert st["state"] == "initial-sync"
    writer = HotAreaWriter(p.uri("vol0"), area_bytes=1 << 20, seed=11)
    try:
        pair.proxy.cut()
        p.wait_for(lambda st: not st["peer_connected"], timeout_s=10, what="link-down detection")
        sst = s.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what="secondary link-down")
        assert not sst["consistent"], "a half-done first sync is not a consistent image"
        proc = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", p.uri("vol0"), s.uri("vol0")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0, "the secondary must not serve a torn first sync as an image"
        writer.wait_writes(20)
        pair.proxy.rate(0)
        pair.proxy.heal()
        writer.wait_writes(20)
    finally:
        writer.stop()
    st = p.wait_for(converged, timeout_s=30, what="convergence after a cut during initial sync")
    # No common base yet, but the cut first sync resumes where the secondary had made it durable.
    assert p.log().count("full sync: no common base") == 1
    assert re.search(r"round 1 resumed at \d+%", p.log()), p.log()
    assert s.status()["consistent"]
    assert_identical(p, s)


def test_kill9_of_the_secondary_during_resync_keeps_a_consistent_image(new_pair):
    pair = new_pair()
    pair.start_secondary()
    pair.start_primary()
    p, s = pair.primary, pair.secondary
    p.wait_for(converged, what="initial sync")
    qemu_io(p.uri("vol0"), "write -P 0x21 0 16M")
    p.wait_for(converged, what="mirroring")
    before = read_export(s.uri("vol0"))
    assert before == b"\x21" * VOLUMES["vol0"]
    pair.proxy.cut()
    p.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what="link-down detection")
    qemu_io(p.uri("vol0"), "write -P 0x42 0 12M")  # a big change while the link is down
    pair.proxy.rate(RATE_BPS)
    pair.proxy.heal()
    st = p.wait_for(in_round, timeout_s=10, what="a resync under way")
    assert st["state"] == "resyncing" and st["resync_progress"]["kind"] == "incremental"
    # While the round is applied the read-only export shows the pre-round image, whole.
    assert read_export(s.uri("vol0")) == before
    s.kill9()
    pair.proxy.cut()  # keep the primary away while the restarted secondary is read whole
    pair.proxy.rate(0)
    s.restart()  # on its port
    # The interrupted round is kept open to resume, and the export still serves the old image, never a mix.
    assert read_export(s.uri("vol0")) == before
    pair.proxy.heal()
    st = p.wait_for(converged, timeout_s=30, what="convergence after kill -9 during resync")
    assert st["last_resync"]["kind"] == "incremental"
    assert "resumed at" in p.log()
    # The resumed attempt sends at most what the round had (tests/daemons/test_daemon_resume.py measures it).
    assert st["last_resync"]["bytes"] <= 12 << 20, st["last_resync"]
    # No host write while it ran: the resumed round is the last, not followed by an empty one.
    assert st["last_resync"]["rounds"] == 1, st["last_resync"]
    assert_identical(p, s)


def test_black_hole_during_resync(new_pair):
    pair = new_pair()
    pair.start_secondary()
    pair.start_primary()
    p, s = pair.primary, pair.secondary
    p.wait_for(converged, what="initial sync")
    outage_then_slow_resync(pair, p, "write -P 0x61 1M 12M")
    fault_while_writing(pair, p, "blackhole", p.uri("vol1"), 13, "black-hole detection in a round")
    st = p.wait_for(converged, timeout_s=30, what="convergence after a black hole during resync")
    assert st["last_resync"]["kind"] == "incremental"
    assert_identical(p, s)


def test_progress_line_shows_rate_and_eta(new_pair):
    pair = new_pair(primary_extra=["--progress", "always"])
    write_pattern(pair.p_dir, b"progress")
    pair.start_secondary()
    pair.proxy.rate(RATE_BPS)
    pair.start_primary()
    p = pair.primary
    p.wait_for(converged, timeout_s=30, what="initial sync")
    deadline = time.monotonic() + 3
    while " done: " not in p.log() and time.monotonic() < deadline:
        time.sleep(0.1)  # the line is redrawn twice a second
    log = p.log()
    assert "initial sync round 1 [" in log and "/s ETA" in log and "%" in log
    assert re.search(r"full resync done in \d+ rounds?: 192 chunks", log), log[-2000:]


def test_kill9_of_the_primary_during_resync(new_pair):
    pair = new_pair()
    pair.start_secondary()
    pair.start_primary()
    p, s = pair.primary, pair.secondary
    p.wait_for(converged, what="initial sync")
    pair.proxy.cut()
    p.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what="link-down detection")
    qemu_io(p.uri("vol0"), "write -P 0x71 2M 12M")
    pair.proxy.rate(RATE_BPS)
    pair.proxy.heal()
    p.wait_for(in_round, timeout_s=10, what="a resync under way")
    p.kill9()
    pair.proxy.rate(0)
    s.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what="the secondary noticing")
    assert s.status()["consistent"], "the interrupted round is rolled back: the old image stands"
    p.restart()
    st = p.wait_for(converged, timeout_s=30, what="convergence after kill -9 of the primary during resync")
    assert st["last_resync"]["kind"] == "incremental", "the base snapshot survived the crash: no full copy"
    assert "unclean stop" in p.log()
    assert_identical(p, s)


@pytest.mark.parametrize("stopped", ["primary", "secondary"])
def test_sigterm_during_resync_resumes_after_restart(new_pair, stopped):
    pair = new_pair()
    pair.start_secondary()
    pair.start_primary()
    p, s = pair.primary, pair.secondary
    p.wait_for(converged, what="initial sync")
    before = read_export(s.uri("vol0"))
    pair.proxy.cut()
    p.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what="link-down detection")
    qemu_io(p.uri("vol0"), "write -P 0x6b 1M 12M")
    pair.proxy.rate(4 << 20)  # 12 MiB take 3 s
    pair.proxy.heal()
    p.wait_for(lambda st: in_round(st) and st["resync_progress"]["seconds"] > 0.3, timeout_s=10,
               what="a resync under way")
    # The table shows the open round with its rate and ETA, on both nodes.
    for d in (p, s):
        table = subprocess.run([sys.executable, "-m", "blockmirror", "status", d.node_dir], capture_output=True,
                               text=True, timeout=30).stdout
        row = next((ln for ln in table.splitlines() if ln.startswith("resync ")), None)
        assert row and re.search(r"round \d+ \(incremental\): \d+\.\d% .* of 12 MiB .*/s, ETA \d+s$", row), table
    victim = p if stopped == "primary" else s
    t0 = time.monotonic()
    assert victim.stop() == 0
    assert time.monotonic() - t0 < 4, "a stop during a resync does not wait for the round"
    if stopped == "primary":
        assert "stopping during resync round" in p.log()
        sst = s.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what="the secondary noticing")
        assert sst["consistent"] and read_export(s.uri("vol0")) == before, "the open round serves the old image"
        pair.proxy.rate(0)
        p.restart()
    else:
        pair.proxy.cut()  # keep the primary away while the restarted secondary is read
        pair.proxy.rate(0)
        s.restart()  # on its port
        assert s.status()["consistent"] and read_export(s.uri("vol0")) == before, "the open round serves the old image"
        pair.proxy.heal()
    st = p.wait_for(converged, timeout_s=30, what=f"convergence after SIGTERM of the {stopped} during resync")
    assert st["last_resync"]["kind"] == "incremental", "the base survived the stop: no full copy"
    # The stopped round resumed: the second attempt sent only what the secondary lacked.
    assert "resumed at" in p.log()
    assert st["last_resync"]["bytes"] < 12 << 20, st["last_resync"]
    assert "unclean stop" not in p.log()
    assert_identical(p, s)


def test_black_hole_during_initial_sync(new_pair):
    pair = new_pair()
    write_pattern(pair.p_dir, b"initial-bh")
    pair.start_secondary()
    pair.proxy.rate(RATE_BPS)
    pair.start_primary()
    p, s = pair.primary, pair.secondary
    st = p.wait_for(in_round, timeout_s=10, what="an initial sync under way")
    assert st["state"] == "initial-sync"
    # Nothing is reset: only the link timeout can tell.
    fault_while_writing(pair, p, "blackhole", p.uri("vol0"), 17, "black-hole detection in a first sync")
    p.wait_for(converged, timeout_s=30, what="convergence after a black hole during initial sync")
    assert s.status()["consistent"]
    assert_identical(p, s)


def test_link_cut_during_resync_resends_only_the_changes(new_pair):
    pair = new_pair()
    pair.start_secondary()
    pair.start_primary()
    p, s = pair.primary, pair.secondary
    p.wait_for(converged, what="initial sync")
    outage_then_slow_resync(pair, p, "write -P 0x71 2M 8M")
    fault_while_writing(pair, p, "cut", p.uri("vol1"), 19, "link-down detection in a round")
    st = p.wait_for(converged, timeout_s=30, what="convergence after a cut during resync")
    last = st["last_resync"]
    assert last["kind"] == "incremental", "the base survives a failure in the middle of a resync"
    # 8 MiB changed on vol0 plus the host's 1 MiB area on vol1 (sent again by a later round if it was
    # rewritten meanwhile): never the volumes whole.
    assert last["bytes"] <= (8 << 20) + last["rounds"] * ((1 << 20) + (128 << 10)), last
    assert_identical(p, s)
