"""The link rules that used to live in the daemons, now in the nodes: an
attempt's handshake times out, a silent link goes down and is closed, an
attempt given up on is ignored, a batch that arrived before a close is kept,
and a disk that cannot take the data closes the link."""

import random
import uuid

from blockmirror.engine import (
    Dial, LinkClosed, LinkUp, PrimaryConfig, PrimaryNode, PrimaryPhase, Received, SecondaryConfig, SecondaryNode,
    SecondaryPhase,
)
from blockmirror.engine.phases import PRIMARY_TRANSITIONS, IllegalPhaseChange, PhaseMachine
from blockmirror.protocol import Write
from blockmirror.status import State
from blockmirror.storage import Node
from blockmirror.storage.crashfs import CrashFileSystem
from tests.engine.pair import Pair

CHUNK = 4096
PAIR = uuid.UUID(int=7, version=4)


def test_a_handshake_that_never_ends_is_given_up_and_the_next_attempt_has_a_new_link(tmp_path):
    node = Node.create(str(tmp_path / "p"), {"a": 64 * CHUNK}, chunk_size=CHUNK)
    p = PrimaryNode(node, PrimaryConfig(link_timeout_s=2.0, reconnect_min_s=0.5, reconnect_max_s=0.5,
                                        activity_checkpoint_s=60.0),
                    random.Random(1), 0.0, PAIR, "t")
    out = p.step(0.0)
    dial = out.start[0]
    assert isinstance(dial, Dial) and p.phase is PrimaryPhase.CONNECTING and out.next_timer == 2.0
    out = p.step(2.0)
    assert [(c.link, c.reset) for c in out.close] == [(dial.link, True)]
    assert "no handshake" in out.close[0].reason and p.phase is PrimaryPhase.DISCONNECTED
    out = p.step(3.0)  # past the backoff
    assert [d.link for d in out.start] == [dial.link + 1]
    # The handshake of the abandoned attempt completes late: nothing happens.
    p.step(3.1, [LinkUp(dial.link, None)])
    assert p.phase is PrimaryPhase.CONNECTING and p.link is None
    node.close()


def test_a_silent_link_goes_down_and_is_closed(tmp_path):
    pair = Pair(tmp_path, {"a": 64 * CHUNK}, chunk_size=CHUNK, link_timeout_s=2.0, heartbeat_interval_s=0.5)
    try:
        pair.connect()
        link = pair.primary.link
        assert pair.primary.phase is PrimaryPhase.MIRRORING
        pair.now += 0.6
        out = pair.primary.step(pair.now)
        assert [type(m).__name__ for m in out.send] == ["Heartbeat"] and not out.close
        pair.now += 2.0  # nothing heard since the connect
        out = pair.primary.step(pair.now)
        assert [c.link for c in out.close] == [link] and "link silent" in out.close[0].reason
        assert pair.primary.phase is PrimaryPhase.DISCONNECTED and out.state == State.DISCONNECTED
        assert any("state mirroring -> disconnected" in line.text for line in out.logs)
        assert [s.label for s in pair.pnode.snapshots()] == ["link-down"], "step 66 at a silent failure too"
    finally:
        pair.close()


def test_writes_received_before_a_close_are_kept(tmp_path):
    pair = Pair(tmp_path, {"a": 64 * CHUNK}, chunk_size=CHUNK)
    try:
        pair.connect()
        s = pair.secondary
        link, seq = s.link, s.seq
        out = s.step(pair.now, [Received(link, [Write(seq + 1, 0, 0, b"k" * 100)]), LinkClosed(link, "cut")])
        assert s.phase is SecondaryPhase.DISCONNECTED and s.seq == seq + 1
        assert pair.snode.volumes["a"].read(0, 100) == b"k" * 100
        assert not out.send, "nothing is sent on a link that is gone"
    finally:
        pair.close()


def test_a_disk_that_cannot_take_the_data_closes_the_link(tmp_path):
    fs = CrashFileSystem(1)
    snode = Node.create("/s", {"a": 64 * CHUNK}, chunk_size=CHUNK, fs=fs, meta_synchronous="OFF")
    s = SecondaryNode(snode, SecondaryConfig(), 0.0, PAIR, "t")
    s.step(0.0, [LinkUp(1, _established())])
    fs.disk_full = True
    out = s.step(0.1, [Received(1, [Write(1, 0, 0, b"z" * 100)])])
    assert [c.link for c in out.close] == [1] and "cannot store the primary's data" in out.close[0].reason
    assert s.phase is SecondaryPhase.DISCONNECTED and s.seq == 0 and not out.send, "nothing acknowledged"
    snode.close()
    fs.close()


def test_an_illegal_phase_move_is_refused():
    m = PhaseMachine(PRIMARY_TRANSITIONS, PrimaryPhase.DISCONNECTED)
    try:
        m.move(PrimaryPhase.MIRRORING, "no round was ever sent")
    except IllegalPhaseChange as exc:
        assert "DISCONNECTED -> MIRRORING" in str(exc) and "no round" in str(exc)
    else:
        raise AssertionError("the table does not list DISCONNECTED -> MIRRORING")
    assert m.phase is PrimaryPhase.DISCONNECTED


def _established():
    from blockmirror.protocol import Established, Role, VolumeInfo
    vols = (VolumeInfo("a", uuid.UUID(int=3, version=4), 64 * CHUNK),)
    return Established(Role.SECONDARY, uuid.UUID(int=4, version=4), PAIR, vols, vols, uuid.UUID(int=0), 0)


def test_a_batch_refused_by_a_full_disk_does_not_strand_the_writes_behind_it(tmp_path):
    from blockmirror.errors import NoSpace
    pair = Pair(tmp_path, {"a": 64 * CHUNK}, chunk_size=CHUNK, window_writes_max=1)
    try:
        pair.connect()
        first = pair.write("a", 0, b"1" * CHUNK)  # in flight: the window is full
        pair.run(deliver_acks=False)
        refused = pair.write("a", CHUNK, b"2" * CHUNK)
        behind = pair.write("a", 2 * CHUNK, b"3" * CHUNK)
        assert refused not in pair.done and behind not in pair.done, "both wait for the window"
        write_many = pair.pnode.write_many
        calls = []

        def full_once(ops, fua=False):
            calls.append(len(ops))
            if len(calls) == 1:
                raise NoSpace("disk full (injected)")
            return write_many(ops, fua=fua)
        pair.pnode.write_many = full_once
        pair.run()  # the ack frees the window
        assert pair.done[first] is None and isinstance(pair.done[refused], NoSpace)
        assert pair.done[behind] is None, "the write behind a refused batch still goes"
        assert pair.image(pair.snode, "a") == pair.image(pair.pnode, "a")
    finally:
        pair.close()


def test_a_region_is_hot_in_memory_only_once_its_record_is_committed(tmp_path):
    from blockmirror.engine.activity import ActivityLog
    from blockmirror.engine.records import RecordStore
    from blockmirror.errors import NoSpace
    node = Node.create(str(tmp_path / "p"), {"a": 64 * CHUNK}, chunk_size=CHUNK)
    records = RecordStore(node)
    log = ActivityLog(node, 4 * CHUNK, records)
    save = records.save
    records.save = lambda *a, **k: (_ for _ in ()).throw(NoSpace("metadata store full (injected)"))
    try:
        log.mark([(0, 0, 100)])
    except NoSpace:
        log.release([(0, 0, 100)])
    assert log.durable == set(), "not hot: its record never reached the disk"
    records.save = save
    log.mark([(0, 0, 100)])  # the next write there commits it
    assert log.durable == {(0, 0)} and records.activity().regions == ((0, 0),)
    node.close()


def test_a_user_snapshot_is_an_admin_command_answered_in_its_step(tmp_path):
    from blockmirror.engine import TakeSnapshot

    pair = Pair(tmp_path, {"a": 1 << 20})
    pair.connect()
    out = pair.step_primary([TakeSnapshot("t1", "before-upgrade")])
    [(token, info)] = out.replies
    assert token == "t1" and info.label == "before-upgrade" and not info.internal
    pair.write("a", 0, b"n" * 4096)
    pair.run()
    assert pair.status()["state"] == "mirroring"
    assert pair.pnode.read_snapshot(info.id, "a", 0, 4096) == bytes(4096)  # the image before the write
    assert pair.snode.volumes["a"].read(0, 4096) == b"n" * 4096
