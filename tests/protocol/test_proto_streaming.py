"""The streaming phase: which side may send what, sequence and ack rules,
resync round brackets, and orderly close. Each rule is checked on the
sending side (LocalProtocolError, an engine bug caught before the bytes
leave) and on the receiving side (RemoteProtocolError, bytes crafted past
the sender's checks)."""

import uuid

import pytest

from blockmirror.protocol import (
    NIL_UUID,
    Ack,
    ConnectionClosed,
    Error,
    ErrorCode,
    Goodbye,
    Heartbeat,
    HeartbeatAck,
    LocalProtocolError,
    RemoteProtocolError,
    ResyncBegin,
    ResyncCommit,
    ResyncCommitted,
    ResyncData,
    ResyncZeroes,
    State,
    Write,
    WriteZeroes,
)

from proto_helpers import Link, decode_all, established_pair, frame_bytes, secondary_node

G1 = uuid.UUID("11111111-1111-4111-8111-111111111111")
G2 = uuid.UUID("22222222-2222-4222-8222-222222222222")
G3 = uuid.UUID("33333333-3333-4333-8333-333333333333")
MiB = 1 << 20


def pair(**kw):
    p, s = established_pair(**kw)
    return p, s, Link(p, s)


def local_refusal(conn, msg, code):
    """Sending `msg` raises `code`; the connection is in ERROR and tells the peer."""
    with pytest.raises(LocalProtocolError) as e:
        conn.send(msg)
    assert e.value.code is code
    assert conn.state is State.ERROR
    sent = decode_all(conn.data_to_send())
    assert [type(m) for m in sent] == [Error] and sent[0].code is code
    return e.value


def remote_refusal(conn, msg, code):
    """Receiving `msg` (encoded without the sender's checks) raises `code`."""
    conn.receive_data(frame_bytes(msg))
    with pytest.raises(RemoteProtocolError) as e:
        conn.next_event()
    assert e.value.code is code
    assert conn.state is State.ERROR and conn.next_event() is None
    return e.value


def both_refuse(prepare, msg, code, sender="primary"):
    """Check one rule in both directions. `prepare(p, s, link)` sets up the
    stream position first."""
    p, s, link = pair()
    prepare(p, s, link)
    src = p if sender == "primary" else s
    local_refusal(src, msg, code)
    p, s, link = pair()
    prepare(p, s, link)
    dst = s if sender == "primary" else p
    return remote_refusal(dst, msg, code)


def nothing(p, s, link):
    pass


def writes_1_to_3(p, s, link):
    for seq in (1, 2, 3):
        link.send(p, Write(seq, 0, 0, b"x"))


# --- live mirroring -----------------------------------------------------------

def test_writes_and_acks_flow():
    p, s, link = pair()
    assert link.send(p, Write(1, 0, 0, b"a" * 4096)) == [Write(1, 0, 0, b"a" * 4096)]
    assert link.send(p, WriteZeroes(2, 1, MiB, MiB)) == [WriteZeroes(2, 1, MiB, MiB)]
    assert link.send(s, Ack(2)) == [Ack(2)]
    assert p.stream.acked_seq == 2 and s.stream.acked_seq == 2


def test_heartbeats_go_both_ways():
    p, s, link = pair()
    assert link.send(p, Heartbeat(10)) == [Heartbeat(10)]
    assert link.send(s, HeartbeatAck(10)) == [HeartbeatAck(10)]
    assert link.send(s, Heartbeat(11)) == [Heartbeat(11)]
    assert link.send(p, HeartbeatAck(11)) == [HeartbeatAck(11)]


@pytest.mark.parametrize("msg", [Write(1, 0, 0, b"x"), WriteZeroes(1, 0, 0, 1),
                                 ResyncBegin(1, NIL_UUID, G1, 1, 1)])
def test_secondary_never_sends_primary_messages(msg):
    err = both_refuse(nothing, msg, ErrorCode.UNEXPECTED_MESSAGE, sender="secondary")
    assert "secondary never sends" in str(err)


@pytest.mark.parametrize("msg", [Ack(0), ResyncCommitted(1, G1, 0)])
def test_primary_never_sends_secondary_messages(msg):
    err = both_refuse(nothing, msg, ErrorCode.UNEXPECTED_MESSAGE, sender="primary")
    assert "primary never sends" in str(err)


def test_write_seq_must_increase():
    err = both_refuse(writes_1_to_3, Write(3, 0, 0, b"x"), ErrorCode.SEQUENCE_ERROR)
    assert "seq 3 does not follow seq 3" in str(err)


def test_write_seq_must_follow_the_secondarys_committed_seq():
    p, s = established_pair(secondary=secondary_node(committed_generation=G1, committed_seq=100))
    local_refusal(p, WriteZeroes(100, 0, 0, 512), ErrorCode.SEQUENCE_ERROR)
    p, s = established_pair(secondary=secondary_node(committed_generation=G1, committed_seq=100))
    assert Link(p, s).send(p, Write(101, 0, 0, b"x")) == [Write(101, 0, 0, b"x")]


@pytest.mark.parametrize("msg,needle", [
    (Write(1, 2, 0, b"x"), "volume index 2"),
    (Write(1, 0, MiB - 1, b"xy"), "'db'"),
    (WriteZeroes(1, 1, 0, 2 * MiB + 1), "'logs'"),
])
def test_extents_outside_their_volume_are_refused(msg, needle):
    err = both_refuse(nothing, msg, ErrorCode.OUT_OF_RANGE)
    assert needle in str(err)


def test_write_ending_exactly_at_the_volume_end_is_fine():
    p, s, link = pair()
    assert link.send(p, Write(1, 0, MiB - 1, b"x")) == [Write(1, 0, MiB - 1, b"x")]


def test_ack_cannot_run_ahead_of_the_writes():
    err = both_refuse(writes_1_to_3, Ack(4), ErrorCode.SEQUENCE_ERROR, sender="secondary")
    assert "outside 0..3" in str(err)


def test_ack_cannot_go_backwards_but_may_repeat():
    def acked_2(p, s, link):
        writes_1_to_3(p, s, link)
        link.send(s, Ack(2))
        link.send(s, Ack(2))
    both_refuse(acked_2, Ack(1), ErrorCode.SEQUENCE_ERROR, sender="secondary")


def test_a_refused_send_leaves_no_bytes_for_the_message():
    p, s, link = pair()
    with pytest.raises(LocalProtocolError):
        p.send(Write(1, 5, 0, b"payload-bytes"))
    assert b"payload-bytes" not in p.data_to_send()


# --- resync rounds ------------------------------------------------------------

def round_one(p, s, link, base=NIL_UUID, target=G1, round_id=1):
    link.send(p, ResyncBegin(round_id, base, target, 4, 8192))


def test_a_full_round_then_live_writes():
    p, s, link = pair()
    msgs = [ResyncBegin(1, NIL_UUID, G1, 3, 8192),
            ResyncData(1, 0, 0, b"d" * 4096),
            ResyncZeroes(1, 1, 0, MiB),
            ResyncData(1, 1, MiB, b"e" * 100),
            ResyncCommit(1, G1, 50, 3, 4196)]
    for m in msgs:
        assert link.send(p, m) == [m]
        assert p.state is s.state
    assert s.state is State.READY and s.stream.generation == G1 and s.stream.last_seq == 50
    assert link.send(s, Ack(50)) == [Ack(50)]
    assert link.send(s, ResyncCommitted(1, G1, 50)) == [ResyncCommitted(1, G1, 50)]
    local_refusal(p, Write(50, 0, 0, b"x"), ErrorCode.SEQUENCE_ERROR)  # live writes follow the round


def test_state_is_resync_inside_a_round():
    p, s, link = pair()
    round_one(p, s, link)
    assert p.state is State.RESYNC and s.state is State.RESYNC


def test_no_live_writes_inside_a_round():
    err = both_refuse(round_one, Write(1, 0, 0, b"x"), ErrorCode.UNEXPECTED_MESSAGE)
    assert "not allowed in state RESYNC" in str(err)


def test_acks_and_heartbeats_continue_inside_a_round():
    def prepare(p, s, link):
        writes_1_to_3(p, s, link)
        round_one(p, s, link, target=G1)
    p, s, link = pair()
    prepare(p, s, link)
    assert link.send(s, Ack(3)) == [Ack(3)]
    assert link.send(s, Heartbeat(1)) == [Heartbeat(1)]
    assert link.send(p, HeartbeatAck(1)) == [HeartbeatAck(1)]


def test_round_data_outside_a_round_is_refused():
    both_refuse(nothing, ResyncData(1, 0, 0, b"x"), ErrorCode.UNEXPECTED_MESSAGE)
    both_refuse(nothing, ResyncCommit(1, G1, 0, 0, 0), ErrorCode.UNEXPECTED_MESSAGE)


def test_round_data_for_another_round_is_refused():
    err = both_refuse(round_one, ResyncData(2, 0, 0, b"x"), ErrorCode.RESYNC_ERROR)
    assert "round 2 inside round 1" in str(err)


def test_round_data_outside_its_volume_is_refused():
    both_refuse(round_one, ResyncZeroes(1, 0, 4096, MiB), ErrorCode.OUT_OF_RANGE)


def test_round_cannot_exceed_its_announced_size():
    def three_extents(p, s, link):
        link.send(p, ResyncBegin(1, NIL_UUID, G1, 1, 4096))
        link.send(p, ResyncData(1, 0, 0, b"x" * 4000))
    both_refuse(three_extents, ResyncZeroes(1, 0, 0, 512), ErrorCode.RESYNC_ERROR)


def test_commit_must_match_what_the_round_carried():
    def two_extents(p, s, link):
        round_one(p, s, link)
        link.send(p, ResyncData(1, 0, 0, b"x" * 10))
        link.send(p, ResyncZeroes(1, 0, 512, 512))
    err = both_refuse(two_extents, ResyncCommit(1, G1, 0, 2, 11), ErrorCode.RESYNC_ERROR)
    assert "carried 2 / 10" in str(err)
    both_refuse(two_extents, ResyncCommit(1, G1, 0, 1, 10), ErrorCode.RESYNC_ERROR)
    err = both_refuse(two_extents, ResyncCommit(1, G2, 0, 2, 10), ErrorCode.RESYNC_ERROR)
    assert str(G2) in str(err)


def test_commit_cannot_move_the_stream_back():
    def writes_then_round(p, s, link):
        writes_1_to_3(p, s, link)
        round_one(p, s, link)
    both_refuse(writes_then_round, ResyncCommit(1, G1, 2, 0, 0), ErrorCode.SEQUENCE_ERROR)


def test_round_must_start_from_the_secondarys_generation_or_from_nothing():
    p, s = established_pair(secondary=secondary_node(committed_generation=G1, committed_seq=5))
    local_refusal(p, ResyncBegin(1, G2, G3, 0, 0), ErrorCode.RESYNC_ERROR)
    for base in (G1, NIL_UUID):  # incremental from the common base, or a full copy
        p, s = established_pair(secondary=secondary_node(committed_generation=G1, committed_seq=5))
        msg = ResyncBegin(1, base, G2, 0, 0)
        assert Link(p, s).send(p, msg) == [msg]


def test_next_round_starts_from_the_previous_rounds_target():
    def committed_g1(p, s, link):
        round_one(p, s, link)
        link.send(p, ResyncCommit(1, G1, 0, 0, 0))
    err = both_refuse(committed_g1, ResyncBegin(2, uuid.UUID(int=5), G2, 0, 0), ErrorCode.RESYNC_ERROR)
    assert f"secondary is at {G1}" in str(err)
    both_refuse(committed_g1, ResyncBegin(1, G1, G2, 0, 0), ErrorCode.RESYNC_ERROR)  # id must grow
    p, s, link = pair()
    committed_g1(p, s, link)
    assert link.send(p, ResyncBegin(2, G1, G2, 0, 0)) == [ResyncBegin(2, G1, G2, 0, 0)]


def test_round_confirmations_must_match_commits_in_order():
    def two_commits(p, s, link):
        round_one(p, s, link)
        link.send(p, ResyncCommit(1, G1, 0, 0, 0))
        link.send(p, ResyncBegin(2, G1, G2, 0, 0))
        link.send(p, ResyncCommit(2, G2, 0, 0, 0))
    both_refuse(two_commits, ResyncCommitted(2, G2, 0), ErrorCode.RESYNC_ERROR, sender="secondary")
    both_refuse(nothing, ResyncCommitted(1, G1, 0), ErrorCode.RESYNC_ERROR, sender="secondary")
    p, s, link = pair()
    two_commits(p, s, link)
    assert link.send(s, ResyncCommitted(1, G1, 0)) == [ResyncCommitted(1, G1, 0)]
    assert link.send(s, ResyncCommitted(2, G2, 0)) == [ResyncCommitted(2, G2, 0)]


# --- closing ------------------------------------------------------------------

def test_goodbye_half_closes_and_both_goodbyes_close():
    p, s, link = pair()
    writes_1_to_3(p, s, link)
    assert link.send(p, Goodbye()) == [Goodbye()]
    with pytest.raises(LocalProtocolError):
        p.send(Write(4, 0, 0, b"x"))
    p2, s2, link2 = pair()  # a fresh pair: the refusal above put p in ERROR
    writes_1_to_3(p2, s2, link2)
    link2.send(p2, Goodbye())
    assert link2.send(s2, Ack(3)) == [Ack(3)]  # answers still flow back
    local_refusal(s2, Heartbeat(1), ErrorCode.UNEXPECTED_MESSAGE)  # but nothing new


def test_orderly_close_ends_clean():
    p, s, link = pair()
    link.send(p, Goodbye())
    link.send(s, Goodbye())
    assert p.state is State.CLOSED and s.state is State.CLOSED
    p.receive_data(b"")
    assert list(p.events()) == [ConnectionClosed(clean=True)]


def test_anything_after_the_peers_goodbye_is_refused():
    p, s, link = pair()
    link.send(p, Goodbye())
    remote_refusal(s, Write(1, 0, 0, b"x"), ErrorCode.UNEXPECTED_MESSAGE)


def test_engine_error_reaches_the_peer_and_ends_both():
    p, s, link = pair()
    events = link.send(p, Error.make(ErrorCode.REFUSED, "generations diverged; run a full sync"))
    assert p.state is State.ERROR and s.state is State.ERROR
    assert events == [Error(ErrorCode.REFUSED, "generations diverged; run a full sync")]
    assert s.error == events[0]
    with pytest.raises(LocalProtocolError):
        p.send(Heartbeat(1))


def test_send_prepends_queued_bytes_so_wire_order_holds():
    p, s, link = pair()
    p._outgoing.append(frame_bytes(Heartbeat(99)))  # as if the connection had queued something
    data = p.send(Heartbeat(100))
    assert decode_all(data) == [Heartbeat(99), Heartbeat(100)]
    assert p.data_to_send() == b""


def test_send_buffers_keep_write_data_separate():
    p, s, link = pair()
    data = bytearray(b"q" * 65536)
    buffers = p.send_buffers(Write(1, 0, 0, data))
    assert buffers[-1] is data
    s.receive_data(b"".join(bytes(b) for b in buffers))
    assert s.next_event() == Write(1, 0, 0, bytes(data))
