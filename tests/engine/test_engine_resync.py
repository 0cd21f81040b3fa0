"""The method of Fig. 2 on real node directories: what crosses the link, and
when host writes complete."""

import uuid as uuid_mod

import pytest

from blockmirror.engine import LinkClosed, Received
from blockmirror.protocol import Error, ResyncBegin, Write
from blockmirror.status import State
from tests.engine.pair import Pair

CHUNK = 4096
SIZE = 64 * CHUNK


@pytest.fixture
def pair(tmp_path):
    p = Pair(tmp_path, {"a": SIZE, "b": SIZE}, chunk_size=CHUNK, final_round_bytes_max=1 << 20)
    yield p
    p.close()


def test_initial_sync_sends_only_allocated_chunks(pair):
    pair.write("a", 5 * CHUNK, b"x" * CHUNK)
    pair.write("b", 40 * CHUNK + 100, b"y" * 10)
    assert pair.primary.state == State.INITIAL_SYNC
    pair.connect()
    st = pair.status()
    assert st["state"] == State.MIRRORING
    # Two chunks of data out of 128: holes are skipped (sent as zero extents, no bytes).
    assert st["last_resync"]["chunks"] == 2 and st["last_resync"]["bytes"] == 2 * CHUNK
    for v in ("a", "b"):
        assert pair.image(pair.snode, v) == pair.image(pair.pnode, v)
    assert pair.pnode.snapshots() == [], "step 80: no snapshot is kept while mirroring"


def test_link_failure_snapshot_records_unacked_and_resync_sends_diff_plus_unacked(pair):
    pair.connect()
    pair.write("a", 0, b"1" * CHUNK)
    pair.run()
    # Three writes leave but their acks never come back.
    pair.write("a", 10 * CHUNK, b"2" * CHUNK)
    pair.write("b", 20 * CHUNK, b"3" * CHUNK)
    pair.write("b", 21 * CHUNK, b"4" * 10)
    pair.run(deliver_acks=False)
    assert pair.status()["inflight_writes"] == 3
    pair.cut()
    st = pair.status()
    assert st["state"] == State.DISCONNECTED and len(st["snapshots"]) == 1
    # Writes go on during the outage and complete at once.
    t = pair.write("a", 30 * CHUNK, b"5" * 2 * CHUNK)
    assert pair.done[t] is None
    pair.write("a", 10 * CHUNK + 5, b"6" * 5)  # rewrites an unacked chunk
    pair.connect()
    st = pair.status()
    assert st["state"] == State.MIRRORING
    # diff = a:30,31 + a:10; unacked = a:10, b:20, b:21 -> 5 chunks, nothing else of 128.
    assert st["last_resync"]["chunks"] == 5, st["last_resync"]
    assert st["snapshots"] == []
    for v in ("a", "b"):
        assert pair.image(pair.snode, v) == pair.image(pair.pnode, v)


def test_sync_mode_completes_only_on_ack(tmp_path):
    pair = Pair(tmp_path, {"a": SIZE}, chunk_size=CHUNK, mode="sync")
    try:
        pair.connect()
        t = pair.write("a", 0, b"z" * 100)
        assert t not in pair.done, "a sync write must wait for the secondary"
        pair.run(deliver_acks=False)
        assert t not in pair.done
        pair.run()
        assert pair.done[t] is None
        # The secondary has it on stable storage: its journal replays it after a restart.
        assert pair.secondary.seq >= 1
    finally:
        pair.close()


def test_async_window_back_pressure(tmp_path):
    pair = Pair(tmp_path, {"a": SIZE}, chunk_size=CHUNK, window_writes_max=2)
    try:
        pair.connect()
        tokens = [pair.write("a", i * CHUNK, bytes([i + 1]) * CHUNK) for i in range(3)]
        pair.run(deliver_acks=False)
        assert tokens[0] in pair.done and tokens[1] in pair.done
        assert tokens[2] not in pair.done, "beyond the window a host write waits"
        assert pair.pnode.volumes["a"].read(2 * CHUNK, 1) == b"\0", "and is not applied yet"
        pair.run()
        assert tokens[2] in pair.done
        assert pair.image(pair.snode, "a") == pair.image(pair.pnode, "a")
    finally:
        pair.close()


def test_out_of_range_host_write_gets_error_and_changes_nothing(pair):
    pair.connect()
    before = pair.image(pair.pnode, "a")
    t = pair.write("a", SIZE - 10, b"q" * 20)
    assert pair.done[t] is not None and "outside" in str(pair.done[t])
    assert pair.image(pair.pnode, "a") == before


def test_unclean_primary_restart_resyncs_only_hot_regions(tmp_path):
    region = 4 * CHUNK
    pair = Pair(tmp_path, {"a": SIZE}, chunk_size=CHUNK, activity_region_bytes=region)
    try:
        pair.connect()
        pair.write("a", 0, b"1" * CHUNK)
        pair.run()
        pair.now += 5
        pair.step_primary()  # the activity log cools what is acked, synced
        pair.now += 5
        pair.step_primary()  # and idle for a whole period
        pair.run()  # heartbeats
        pair.write("a", 40 * CHUNK, b"2" * 100)  # in flight when the primary dies
        pair.run(deliver_acks=False)
        # The primary process dies: no shutdown, the node is reopened as after kill -9.
        pair.pnode.close()
        link = pair.conns[2]
        pair.conns = None
        pair.step_secondary([LinkClosed(link, "peer died")])
        pair.restart_primary(activity_region_bytes=region)
        st = pair.status()
        assert st["unclean_restart_hot_bytes"] == region, "one hot region: the unacknowledged write's"
        pair.connect()
        st = pair.status()
        assert st["state"] == "mirroring"
        assert 1 <= st["last_resync"]["chunks"] <= region // CHUNK, st["last_resync"]
        assert pair.image(pair.snode, "a") == pair.image(pair.pnode, "a")
    finally:
        pair.close()


@pytest.mark.parametrize("bad, why", [
    (lambda s: Write(s.seq + 2, 0, 0, b"x" * 10), "does not follow"),
    (lambda s: ResyncBegin(99, uuid_mod.UUID(int=5, version=4), uuid_mod.UUID(int=6, version=4), 1, 0), "holds"),
])
def test_secondary_refuses_out_of_order_or_unbased_data(pair, bad, why):
    pair.connect()
    s = pair.secondary
    before = pair.image(pair.snode, "a")
    link = s.link
    out = s.step(pair.now, [Received(link, [bad(s)])])
    # The link is refused with an Error frame for the primary; nothing was written.
    assert s.link is None and [c.link for c in out.close] == [link]
    assert isinstance(out.close[0].last[0], Error) and why in out.close[0].reason
    assert pair.image(pair.snode, "a") == before
    assert s.round_open is None and pair.status("secondary")["journal_bytes"] == 0


def _outage_with_writes(pair, chunks):
    pair.connect()
    pair.cut()
    for c in chunks:
        pair.write("a", c * CHUNK, bytes([c]) * CHUNK)


def test_a_round_with_no_host_write_since_its_snapshot_is_the_last(tmp_path):
    # Rounds over one chunk are not final when they start.
    pair = Pair(tmp_path, {"a": SIZE}, chunk_size=CHUNK, final_round_bytes_max=CHUNK)
    try:
        _outage_with_writes(pair, range(8))
        pair.connect()
        st = pair.status()
        assert st["state"] == State.MIRRORING
        # One round, not a second empty one: nothing was written while it ran.
        assert (st["last_resync"]["rounds"], st["last_resync"]["chunks"]) == (1, 8), st["last_resync"]
        assert st["snapshots"] == [] and pair.snode.snapshots() == []
        assert pair.image(pair.snode, "a") == pair.image(pair.pnode, "a")
        # Writes from then on are mirrored.
        t = pair.write("a", 40 * CHUNK, b"n" * CHUNK)
        pair.run()
        assert pair.done[t] is None and pair.status()["acked_seq"] == pair.primary.seq
        assert pair.image(pair.snode, "a") == pair.image(pair.pnode, "a")
    finally:
        pair.close()


def test_a_host_write_during_a_round_makes_another_round(tmp_path):
    pair = Pair(tmp_path, {"a": SIZE}, chunk_size=CHUNK, final_round_bytes_max=CHUNK)
    try:
        _outage_with_writes(pair, range(8))
        pair.send_budget = 0  # the link takes nothing yet: the round begins, none of its data leaves
        pair.connect()
        assert pair.primary.round is not None and pair.primary.round.extents_sent == 0
        written = pair.write("a", 50 * CHUNK, b"w" * CHUNK)
        pair.send_budget = 1 << 62
        pair.run()
        st = pair.status()
        assert pair.done[written] is None
        assert st["state"] == State.MIRRORING
        assert (st["last_resync"]["rounds"], st["last_resync"]["chunks"]) == (2, 9), st["last_resync"]
        assert pair.image(pair.snode, "a") == pair.image(pair.pnode, "a")
    finally:
        pair.close()
