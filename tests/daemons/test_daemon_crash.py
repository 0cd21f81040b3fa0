"""kill -9 of either daemon while a host writes; a restart converges."""

from blockmirror.testing.daemon import converged
from blockmirror.testing.host import HotAreaWriter
from blockmirror.testing.tools import assert_identical, qemu_io


def test_kill9_of_the_secondary_while_writing(pair):
    p, s = pair.primary, pair.secondary
    p.wait_for(converged, what="initial sync")
    qemu_io(p.uri("vol0"), "write -P 0x44 0 4M")
    writer = HotAreaWriter(p.uri("vol0"), area_bytes=2 << 20, seed=3)
    try:
        writer.wait_writes(30)
        s.kill9()
        p.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what="link-down detection")
        writer.wait_writes(30)  # the primary keeps serving its host
        s.restart()  # on its port
        p.wait_for(lambda st: st["peer_connected"], timeout_s=15, what="reconnect to the restarted secondary")
        writer.wait_writes(20)
    finally:
        writer.stop()
    st = p.wait_for(converged, timeout_s=30, what="convergence after kill -9 of the secondary")
    assert st["last_resync"]["kind"] == "incremental", st["last_resync"]
    assert st["last_resync"]["bytes"] <= (2 << 20) + 2 * 65536
    assert_identical(p, s)


def test_kill9_of_the_primary_while_writing(pair):
    p, s = pair.primary, pair.secondary
    p.wait_for(converged, what="initial sync")
    qemu_io(p.uri("vol1"), "write -P 0x55 0 4M")
    writer = HotAreaWriter(p.uri("vol1"), area_bytes=1 << 20, seed=5)
    try:
        writer.wait_writes(40)
        p.kill9()
    finally:
        writer.stop(errors_expected=True)  # the host lost its device
    s.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what="the secondary noticing")
    p.restart()
    st = p.wait_for(converged, timeout_s=30, what="convergence after kill -9 of the primary")
    last = st["last_resync"]
    assert last["kind"] == "incremental", "a common base exists: no full copy after a primary crash"
    # The hot regions of the activity log (4 MiB each) are suspect, not the 20 MiB pair; their
    # chunks are compared by digest first and only those that differ are sent.
    assert last["bytes"] <= 8 << 20, last
    log = p.log()
    assert "unclean stop" in log and "checksum resync: comparing" in log, log
    assert last["bytes"] < st["unclean_restart_hot_bytes"], (last, st["unclean_restart_hot_bytes"])
    writer = HotAreaWriter(p.uri("vol1"), area_bytes=1 << 20, seed=6)
    try:
        writer.wait_writes(20)
    finally:
        writer.stop()
    p.wait_for(converged, timeout_s=30, what="mirroring after the restart")
    assert_identical(p, s)
