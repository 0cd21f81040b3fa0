"""`--initial-sync checksum`: a secondary pre-seeded with a copy of the data
(a restored backup, a disk shipped by hand) gets only the chunks that differ
at its first sync; the link carries their bytes and the digests, no more."""

from blockmirror.testing.host import HotAreaWriter
from blockmirror.testing.nodes import CHUNK, VOLUMES, seed_copy, write_image, write_pattern
from blockmirror.testing.tools import assert_identical, qemu_io

CHANGED = [("vol0", 5 * CHUNK), ("vol0", 100 * CHUNK), ("vol1", 7 * CHUNK)]  # changed after the copy
STRAY = ("vol1", 60 * CHUNK)  # data on the copy where the primary has a hole


def seed(pair) -> None:
    """Primary data, its image files copied to the secondary, then the
    primary changes 3 chunks and the copy holds one stray chunk."""
    write_pattern(pair.p_dir, b"seeded vol0", VOLUMES["vol0"], "vol0")
    write_pattern(pair.p_dir, b"seeded vol1", 2 << 20, "vol1")  # the rest of vol1 is a hole
    seed_copy(pair.p_dir, pair.s_dir)
    name, off = STRAY
    write_image(pair.s_dir, name, [(off, b"\x5a" * CHUNK)])


def test_checksum_sync_sends_only_the_chunks_that_differ(new_pair):
    pair = new_pair(primary_extra=["--initial-sync", "checksum"])
    seed(pair)
    pair.start_secondary()
    pair.proxy.cut()  # the primary changes its data before the pair first links
    pair.start_primary()
    p, s = pair.primary, pair.secondary
    for name, off in CHANGED:
        qemu_io(p.uri(name), f"write -P 0x77 {off + 512} 4096")
    before = pair.proxy.status()["bytes_forwarded"]
    pair.proxy.heal()
    st = pair.wait_converged()
    log = p.log()
    chunks = sum(-(-size // CHUNK) for size in VOLUMES.values())
    assert f"checksum sync: 4 of {chunks} chunks differ" in log, log
    # Only the changed chunks carry data; the stray chunk is cleared by a zero extent.
    assert s.status()["totals"]["resync_bytes"] == len(CHANGED) * CHUNK
    assert st["last_resync"]["kind"] == "full"
    digests = chunks * 16
    moved = pair.proxy.status()["bytes_forwarded"] - before
    assert moved <= 1.05 * len(CHANGED) * CHUNK + digests + (64 << 10), moved
    assert s.status()["consistent"]
    assert_identical(p, s)


def test_a_cut_while_comparing_compares_again(new_pair):
    pair = new_pair(primary_extra=["--initial-sync", "checksum"])
    seed(pair)
    pair.start_secondary()
    pair.proxy.rate(256 << 10)  # the replies trickle: the comparison is under way when the link is cut
    pair.start_primary()
    p = pair.primary
    p.wait_for(lambda st: st["phase"] == "comparing", timeout_s=10, what="a checksum comparison under way")
    st = p.status()
    assert st["state"] == "initial-sync" and st["resync_progress"]["kind"] == "checksum"
    pair.proxy.cut()
    p.wait_for(lambda st: st["phase"] == "disconnected", timeout_s=10, what="link-down detection")
    assert [x for x in p.status()["snapshots"] if x["label"] == "resync-target"] == [], "T goes with the cut"
    pair.proxy.rate(0)
    pair.proxy.heal()
    pair.wait_converged()
    assert p.log().count("checksum sync: comparing") == 2
    assert pair.secondary.status()["totals"]["resync_bytes"] == 0, "the copy matched: no chunk data at all"
    assert_identical(p, pair.secondary)


def test_host_writes_while_comparing_reach_the_secondary(new_pair):
    pair = new_pair(primary_extra=["--initial-sync", "checksum"])
    seed(pair)
    pair.start_secondary()
    pair.proxy.rate(64 << 10)  # the comparison lasts while the host writes
    pair.start_primary()
    p = pair.primary
    p.wait_for(lambda st: st["phase"] == "comparing", timeout_s=10, what="a checksum comparison under way")
    writer = HotAreaWriter(p.uri("vol0"), area_bytes=1 << 20, seed=9)
    try:
        writer.wait_writes(20)
        assert p.status()["phase"] == "comparing", "the writes came while comparing"
        pair.proxy.rate(0)
        writer.wait_writes(20)
    finally:
        writer.stop()
    st = pair.wait_converged()
    # The writes after the round's snapshot were not in it: another round carried them.
    assert st["last_resync"]["rounds"] >= 2, st["last_resync"]
    assert_identical(p, pair.secondary)
