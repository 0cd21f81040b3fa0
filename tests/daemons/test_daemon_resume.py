"""A resync round interrupted half-way (the link cut, kill -9 of the
secondary, kill -9 of the primary) resumes from what the secondary had made
durable: across both attempts the changed bytes cross the link about once,
not the half already sent and then the whole round again. Meanwhile the
secondary serves its last consistent image, whole.

Bytes are counted on the secondary's side (`totals.resync_bytes`: data
received), per attempt (blockmirror.testing.interrupt.ResyncMeter, which
survives a kill), and on the link (the fault proxy's `bytes_forwarded`).
The primary's own count is not the measure of the first attempt: it
includes what was handed to its socket but was still in its send buffer
(up to 8 MiB), the kernel's and the proxy's when the round was cut, and
never reached the link."""

from blockmirror.testing.daemon import converged
from blockmirror.testing.interrupt import CUT, KILL9_PRIMARY, KILL9_SECONDARY, ResyncMeter, interrupt_resync, \
    resume_resync
from blockmirror.testing.tools import assert_identical, qemu_io, read_export

MiB = 1 << 20
VOLUMES = {"vol0": 96 * MiB, "vol1": 32 * MiB}
# Written before the outage (mirrored), then rewritten while the link is
# down: big extents in both volumes, aligned to the primary's 4 MiB
# activity regions (a restarted primary adds its hot regions to the resync).
EXTENTS = [("vol0", 4 * MiB, 24 * MiB), ("vol0", 40 * MiB, 24 * MiB), ("vol1", 8 * MiB, 16 * MiB)]
CHANGED = sum(length for _, _, length in EXTENTS)  # 64 MiB
OLD, NEW = 0x11, 0x5C
RATE_BPS = 16 * MiB  # the first attempt: 64 MiB would take 4 s, so it can be interrupted half-way
AT_FRACTION = 0.5
SLACK = CHANGED // 10  # a resumed resync sends at most 10% more than what changed
# On the link: also frame headers, acks and heartbeats, and up to 1 MiB the
# proxy read ahead of what it delivered when the link was cut.
WIRE_ALLOWANCE = 2 * MiB


def write_extents(p, pattern: int) -> None:
    for vol in VOLUMES:
        qemu_io(p.uri(vol), *(f"write -P {pattern:#x} {off} {length}" for v, off, length in EXTENTS if v == vol))


def images(s) -> dict[str, bytes]:
    """Every volume as the secondary's read-only export serves it."""
    return {vol: read_export(s.uri(vol)) for vol in VOLUMES}


def interrupted_resync(new_pair, how: str) -> None:
    pair = new_pair(volumes=VOLUMES)
    pair.start_secondary()
    pair.start_primary()
    p, s = pair.primary, pair.secondary
    p.wait_for(converged, what="initial sync")
    write_extents(p, OLD)
    p.wait_for(converged, what="mirroring the old data")
    before = images(s)
    assert before["vol1"][8 * MiB:24 * MiB] == bytes([OLD]) * (16 * MiB)

    pair.proxy.cut()
    p.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what="link-down detection")
    write_extents(p, NEW)  # CHANGED bytes while the link is down
    meter = ResyncMeter(pair)
    pair.proxy.rate(RATE_BPS)
    pair.proxy.heal()
    cut = interrupt_resync(pair, how, AT_FRACTION, meter, timeout_s=20)
    assert 0.4 <= cut.fraction <= 0.75, cut

    # The link is held down with the round half received: the secondary
    # serves its last consistent image, whole (a killed one once restarted).
    if how == KILL9_SECONDARY:
        s.restart()
    sst = s.status()
    assert sst["consistent"], sst
    assert images(s) == before, f"the secondary serves a half-applied round (round_open {sst['round_open']})"

    resume_resync(pair)
    st = p.wait_for(converged, timeout_s=30, what=f"convergence after the interruption ({how})")
    assert st["last_resync"]["kind"] == "incremental", "the base survived the interruption: no full copy"
    first, second = attempts = meter.attempts()
    received = meter.total("secondary")
    why = f"{how} at {cut.fraction:.0%}: {received / CHANGED:.2f}x the changed bytes; per attempt {attempts}"
    # What the interruption cost: the changed bytes crossed the link about once.
    assert CHANGED <= received <= CHANGED + SLACK, why
    # After the interruption the primary sent only what the secondary lacked.
    assert second["primary"] <= CHANGED - first["secondary"] + SLACK, why
    assert meter.total("proxy") <= CHANGED + SLACK + WIRE_ALLOWANCE, why
    assert "resumed" in p.log(), "the primary's log does not say the round was resumed"
    assert_identical(p, s, VOLUMES)


def test_link_cut_mid_resync_resumes(new_pair):
    interrupted_resync(new_pair, CUT)


def test_kill9_secondary_mid_resync_resumes(new_pair):
    interrupted_resync(new_pair, KILL9_SECONDARY)


def test_kill9_primary_mid_resync_resumes(new_pair):
    interrupted_resync(new_pair, KILL9_PRIMARY)
