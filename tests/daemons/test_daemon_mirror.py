"""Real daemons on loopback: initial sync, mirroring, link cuts, black holes."""

import time

from blockmirror.testing.daemon import converged
from blockmirror.testing.host import HotAreaWriter
from blockmirror.testing.nodes import CHUNK, VOLUMES
from blockmirror.testing.tools import assert_identical, qemu_io

VOLUME_BYTES = sum(VOLUMES.values())


def test_writes_through_nbd_reach_the_secondary(pair):
    p, s = pair.primary, pair.secondary
    p.wait_for(converged, what="initial sync")
    qemu_io(p.uri("vol0"), "write -P 0xa5 0 3M", "write -P 0x5a 5M 64k", "write -z 1M 512k")
    qemu_io(p.uri("vol1"), "write -P 0x11 4095 3")
    st = p.wait_for(converged, what="acknowledgement of the writes")
    assert st["seq"] >= 4
    assert_identical(p, s)
    sst = s.status()
    assert sst["role"] == "secondary" and sst["state"] == "mirroring" and sst["peer_connected"]
    assert sst["seq"] == st["seq"]
    assert [(v["name"], v["size"]) for v in sst["volumes"]] == list(VOLUMES.items())


def test_link_cut_while_writing_resyncs_only_the_changes(pair):
    p, s = pair.primary, pair.secondary
    p.wait_for(converged, what="initial sync")
    qemu_io(p.uri("vol0"), "write -P 0x33 0 8M")  # most of the volume is data
    p.wait_for(converged, what="mirroring of 8 MiB")
    writer = HotAreaWriter(p.uri("vol0"), area_bytes=1 << 20)
    try:
        writer.wait_writes(20)
        pair.proxy.cut()
        st = p.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what="link-down detection")
        assert not st["peer_connected"]
        assert len(st["snapshots"]) == 1, "the link failure takes one snapshot of the group"
        writer.wait_writes(40)  # the host keeps writing while the link is down
        assert s.status()["state"] == "disconnected"
        pair.proxy.heal()
        p.wait_for(lambda st: st["peer_connected"], timeout_s=15, what="reconnect")
        writer.wait_writes(20)  # and during/after the resync
    finally:
        writes = writer.stop()
    st = p.wait_for(converged, timeout_s=30, what="convergence after the cut")
    assert writes > 80
    last = st["last_resync"]
    assert last["kind"] == "incremental"
    # The writer touched at most 1 MiB (16 chunks) of a 20 MiB pair.
    assert 0 < last["bytes"] <= (1 << 20) + 2 * 65536, last
    assert last["bytes"] < VOLUME_BYTES / 10
    assert st["snapshots"] == [], "the resync snapshot is deleted once the secondary committed"
    assert_identical(p, s)
    assert "link down" in p.log() and "incremental resync" in p.log()


def test_black_hole_is_detected_by_timeout(pair):
    p, s = pair.primary, pair.secondary
    p.wait_for(converged, what="initial sync")
    writer = HotAreaWriter(p.uri("vol1"), area_bytes=2 << 20, seed=7)
    try:
        writer.wait_writes(10)
        pair.proxy.blackhole()
        t0 = time.monotonic()
        p.wait_for(lambda st: not st["peer_connected"], timeout_s=10, what="black-hole detection")
        detected_s = time.monotonic() - t0
        assert detected_s < 4, f"a 1 s link timeout took {detected_s:.1f}s to notice the black hole"
        s.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what="secondary-side detection")
        writer.wait_writes(30)  # writes go on locally
        pair.proxy.heal()
    finally:
        writer.stop()
    st = p.wait_for(converged, timeout_s=30, what="convergence after the black hole")
    assert "link silent" in p.log()
    assert st["last_resync"]["bytes"] <= (2 << 20) + 2 * 65536
    assert_identical(p, s)


def test_reads_during_an_outage_see_every_completed_write(pair):
    """After the link-down snapshot every write is a first write: its record
    sync and overwrite run behind the engine (the node's pipeline). A read on
    another connection right after the write completed must see it, and the
    secondary gets every byte after the link returns."""
    import nbd

    p, s = pair.primary, pair.secondary
    p.wait_for(converged, what="initial sync")
    qemu_io(p.uri("vol0"), "write -P 0x33 0 16M")  # real originals to preserve
    p.wait_for(converged, what="mirroring of 16 MiB")
    pair.proxy.cut()
    p.wait_for(lambda st: st["state"] == "disconnected" and len(st["snapshots"]) == 1, timeout_s=10,
               what="the link-down snapshot")
    writer, reader = nbd.NBD(), nbd.NBD()
    writer.connect_uri(p.uri("vol0"))
    reader.connect_uri(p.uri("vol0"))
    try:
        for rnd in range(6):
            # 20 writes in flight, each the first to its two 64 KiB chunks since the snapshot.
            blocks = [((rnd * 20 + i) * 2 * CHUNK + 4096, bytes([rnd * 20 + i + 1]) * (CHUNK + 8192))
                      for i in range(20)]
            for off, data in blocks:
                writer.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), off)
            while writer.aio_in_flight() > 0:
                writer.poll(-1)
            for off, data in blocks:
                assert reader.pread(len(data), off) == data, f"round {rnd}: a completed write is not visible"
        writer.flush()
    finally:
        writer.shutdown()
        reader.shutdown()
    pair.proxy.heal()
    st = p.wait_for(converged, timeout_s=30, what="convergence after the outage")
    assert st["last_resync"]["kind"] == "incremental"
    assert_identical(p, s)
