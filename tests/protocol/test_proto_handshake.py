"""The handshake between two in-memory connections: success, and every way
a peer is refused (wrong secret, version, pair, role, volumes, replay,
reflection). Refusals must be visible on both sides with the same code."""

import random
import uuid

import pytest

from blockmirror.errors import ConfigError
from blockmirror.protocol import (
    NIL_UUID,
    Attach,
    AuthProof,
    Connection,
    Error,
    ErrorCode,
    Established,
    Hello,
    LocalProtocolError,
    MessageType,
    Ready,
    RemoteProtocolError,
    Role,
    State,
    VolumeInfo,
    Write,
)
from blockmirror.protocol import auth

from proto_helpers import (
    PAIR_UUID,
    PRIMARY_NODE,
    SECONDARY_NODE,
    SECRET,
    VOL_DB,
    VOL_LOGS,
    VOLUMES,
    decode_all,
    frame_bytes,
    handshake,
    make_pair,
    primary_node,
    raw_frame,
    secondary_node,
)

G1 = uuid.UUID("11111111-1111-4111-8111-111111111111")


def refused(link, code):
    """Both sides end in ERROR: the refusing side raised `code`, the other
    received an Error message with `code` and a human text."""
    p, s = link.primary, link.secondary
    raisers = [c for c in (p, s) if link.errors[c]]
    assert len(raisers) == 1, link.errors
    refuser = raisers[0]
    other = s if refuser is p else p
    assert isinstance(link.errors[refuser][0], RemoteProtocolError)
    assert link.errors[refuser][0].code is code
    received = [e for e in link.events[other] if isinstance(e, Error)]
    assert len(received) == 1 and received[0].code is code and received[0].text
    assert other.error == received[0]
    assert p.state is State.ERROR and s.state is State.ERROR
    assert not any(isinstance(e, Established) for e in link.events[p] + link.events[s])
    return refuser, received[0].text


def test_handshake_establishes_both_sides():
    p, s = make_pair(secondary=secondary_node(committed_generation=G1, committed_seq=41))
    link = handshake(p, s)
    assert p.state is State.READY and s.state is State.READY
    ep, es = link.events[p], link.events[s]
    assert len(ep) == 1 and len(es) == 1
    ep, es = ep[0], es[0]
    assert (ep.role, es.role) == (Role.PRIMARY, Role.SECONDARY)
    assert ep.peer_node_uuid == SECONDARY_NODE and es.peer_node_uuid == PRIMARY_NODE
    assert ep.pair_uuid == es.pair_uuid == PAIR_UUID
    assert ep.volumes == es.volumes == VOLUMES
    assert (ep.committed_generation, ep.committed_seq) == (es.committed_generation, es.committed_seq) == (G1, 41)
    # The wire carried exactly the six handshake messages, in order.
    assert [type(m) for m in decode_all(bytes(link.wire[p]))] == [Hello, AuthProof, Attach]
    assert [type(m) for m in decode_all(bytes(link.wire[s]))] == [Hello, AuthProof, Ready]


def test_handshake_is_deterministic_for_a_seed_and_fresh_across_seeds():
    wires = []
    for seed in (5, 5, 6):
        p, s = make_pair(seed)
        link = handshake(p, s)
        wires.append(bytes(link.wire[p]) + bytes(link.wire[s]))
    assert wires[0] == wires[1] and wires[0] != wires[2]


def test_nonces_come_only_from_the_supplied_source():
    calls = []

    def randbytes(n):
        calls.append(n)
        return bytes([len(calls)]) * n

    p = Connection(primary_node(), SECRET, randbytes)
    p.initiate()
    hello = decode_all(p.data_to_send())[0]
    assert calls == [32] and hello.nonce == b"\x01" * 32


def test_volume_order_may_differ_and_wire_index_follows_the_primary():
    p, s = make_pair(secondary=secondary_node(volumes=(VOL_LOGS, VOL_DB)))
    link = handshake(p, s)
    est = link.events[s][0]
    assert est.volumes == (VOL_DB, VOL_LOGS) and est.peer_volumes == (VOL_DB, VOL_LOGS)
    assert link.send(p, Write(1, 1, (2 << 20) - 1, b"x")) == [Write(1, 1, (2 << 20) - 1, b"x")]


def test_unpaired_secondary_volume_with_nil_uuid_is_accepted():
    fresh = (VolumeInfo("db", NIL_UUID, VOL_DB.size_bytes), VOL_LOGS)
    p, s = make_pair(secondary=secondary_node(volumes=fresh))
    link = handshake(p, s)
    assert link.events[p][0].peer_volumes[0].uuid == NIL_UUID  # the engine sees a first sync is due


@pytest.mark.parametrize("side", ["primary", "secondary"])
def test_wrong_secret_on_either_side_is_refused_by_both(side):
    other_secret = b"a different secret of 32 bytes!!"
    kw = {f"{side}_secret": other_secret}
    p, s = make_pair(**kw)
    link = handshake(p, s)
    refuser, text = refused(link, ErrorCode.AUTH_FAILED)
    assert refuser is s  # the primary proves first, the secondary checks first
    assert "secret" in text
    assert link.errors[s][0].hint and "same pair secret" in link.errors[s][0].hint
    # Nothing about the volumes leaked before authentication.
    assert not any(isinstance(m, (Attach, Ready)) for m in decode_all(bytes(link.wire[p] + link.wire[s])))


@pytest.mark.parametrize("side", ["primary", "secondary", "none"])
def test_secret_never_appears_in_emitted_bytes(side):
    secret = b"SECRET-SECRET-SECRET-0123456789"
    kw = {"primary_secret": secret, "secondary_secret": secret}
    if side != "none":
        kw[f"{side}_secret"] = b"other-other-other-other-0123456"
    p, s = make_pair(**kw)
    link = handshake(p, s)
    emitted = bytes(link.wire[p] + link.wire[s])
    assert emitted  # something did go over the wire
    for needle in (secret, secret[:8], secret[-8:], secret.hex().encode()):
        assert needle not in emitted


def test_volume_size_mismatch_names_the_volume_and_both_sizes():
    p, s = make_pair(secondary=secondary_node(volumes=(VOL_DB, VolumeInfo("logs", VOL_LOGS.uuid, 3 << 20))))
    link = handshake(p, s)
    refuser, text = refused(link, ErrorCode.VOLUME_MISMATCH)
    assert refuser is s
    assert "'logs'" in text and "2 MiB" in text and "3 MiB" in text and "'db'" not in text


def test_missing_and_extra_volumes_are_each_named():
    p, s = make_pair(secondary=secondary_node(volumes=(VOL_DB, VolumeInfo("archive", NIL_UUID, 4096))))
    link = handshake(p, s)
    _, text = refused(link, ErrorCode.VOLUME_MISMATCH)
    assert "'logs' exists on the primary but not on the secondary" in text
    assert "'archive' exists on the secondary but not on the primary" in text


def test_volume_paired_with_another_uuid_is_refused():
    other = VolumeInfo("db", uuid.UUID(int=99), VOL_DB.size_bytes)
    p, s = make_pair(secondary=secondary_node(volumes=(other, VOL_LOGS)))
    link = handshake(p, s)
    _, text = refused(link, ErrorCode.VOLUME_MISMATCH)
    assert "'db'" in text and str(uuid.UUID(int=99)) in text


def test_primary_also_checks_the_secondarys_volumes_in_ready():
    """A secondary that accepts wrongly is still refused by the primary."""
    p, s = make_pair(seed=1)
    link = handshake(p, s)
    hello_s, proof_s, _ = decode_all(bytes(link.wire[s]))
    # Same seed, same nonce: the recorded Hello and proof are valid for p2,
    # but the Ready that follows lists a volume of the wrong size.
    p2, _ = make_pair(seed=1)
    p2.initiate()
    p2.receive_data(frame_bytes(hello_s) + frame_bytes(proof_s)
                    + frame_bytes(Ready(NIL_UUID, 0, (VOL_DB, VolumeInfo("logs", VOL_LOGS.uuid, 4096)))))
    with pytest.raises(RemoteProtocolError) as e:
        list(p2.events())
    assert e.value.code is ErrorCode.VOLUME_MISMATCH and "'logs'" in str(e.value)
    assert p2.established is None and p2.state is State.ERROR


def test_other_pair_is_refused():
    p, s = make_pair(secondary=secondary_node(pair_uuid=uuid.UUID(int=7), pair_name="pair-b"))
    link = handshake(p, s)
    refuser, text = refused(link, ErrorCode.PAIR_MISMATCH)
    assert refuser is s and "pair-a" in text and "pair-b" in text


@pytest.mark.parametrize("role", [Role.PRIMARY, Role.SECONDARY])
def test_two_nodes_with_the_same_role_are_refused(role):
    a = Connection(primary_node(role=role, volumes=VOLUMES), SECRET, random.Random(1).randbytes)
    b = Connection(secondary_node(role=role), SECRET, random.Random(2).randbytes)
    if role is Role.PRIMARY:
        a.initiate()
        b.initiate()
        b.receive_data(a.data_to_send())
        with pytest.raises(RemoteProtocolError) as e:
            b.next_event()
        assert e.value.code is ErrorCode.ROLE_CONFLICT and "both nodes are primary" in str(e.value)
    else:
        b.receive_data(raw_frame(MessageType.HELLO, bytes.fromhex("02") + bytes(64) + b"\x00\x06pair-a"))
        with pytest.raises(RemoteProtocolError) as e:
            b.next_event()
        assert e.value.code is ErrorCode.ROLE_CONFLICT


def test_connecting_to_itself_is_refused():
    p, s = make_pair(secondary=secondary_node(node_uuid=PRIMARY_NODE))
    link = handshake(p, s)
    _, text = refused(link, ErrorCode.PAIR_MISMATCH)
    assert "itself" in text


def test_peer_with_other_protocol_version_gets_a_readable_error():
    s = Connection(secondary_node(), SECRET, random.Random(2).randbytes)
    p = Connection(primary_node(), SECRET, random.Random(1).randbytes)
    p.initiate()
    hello = bytearray(p.data_to_send())
    hello[2] = 2  # a version-2 primary
    s.receive_data(bytes(hello))
    with pytest.raises(RemoteProtocolError) as e:
        s.next_event()
    assert e.value.code is ErrorCode.UNSUPPORTED_VERSION
    # The refusal is a version-1 Error frame the primary understands.
    p.receive_data(s.data_to_send())
    err = p.next_event()
    assert isinstance(err, Error) and err.code is ErrorCode.UNSUPPORTED_VERSION and "version 2" in err.text
    assert p.state is State.ERROR and p.next_event() is None


# --- replay and reflection ------------------------------------------------------

def test_reflected_nonce_is_refused():
    """An attacker answers the primary's Hello with the primary's own nonce."""
    p = Connection(primary_node(), SECRET, random.Random(1).randbytes)
    p.initiate()
    hello_p = decode_all(p.data_to_send())[0]
    echo = Hello(Role.SECONDARY, SECONDARY_NODE, PAIR_UUID, "pair-a", hello_p.nonce)
    p.receive_data(frame_bytes(echo))
    with pytest.raises(RemoteProtocolError) as e:
        p.next_event()
    assert e.value.code is ErrorCode.AUTH_FAILED and "reflection" in str(e.value)
    assert not any(isinstance(m, AuthProof) for m in decode_all(p.data_to_send()))


def test_reflected_proof_is_refused():
    """An attacker without the secret sends the primary's proof back as its own."""
    p = Connection(primary_node(), SECRET, random.Random(1).randbytes)
    p.initiate()
    p.data_to_send()
    p.receive_data(frame_bytes(Hello(Role.SECONDARY, SECONDARY_NODE, PAIR_UUID, "pair-a", b"\x07" * 32)))
    assert p.next_event() is None
    proof_p = decode_all(p.data_to_send())[0]
    assert isinstance(proof_p, AuthProof)
    p.receive_data(frame_bytes(AuthProof(proof_p.mac)))
    with pytest.raises(RemoteProtocolError) as e:
        p.next_event()
    assert e.value.code is ErrorCode.AUTH_FAILED
    assert not any(isinstance(m, Attach) for m in decode_all(p.data_to_send()))


def test_proof_for_one_role_never_verifies_for_the_other():
    t = b"transcript"
    mac = auth.compute_proof(SECRET, Role.PRIMARY, t)
    assert auth.verify_proof(SECRET, Role.PRIMARY, t, mac)
    assert not auth.verify_proof(SECRET, Role.SECONDARY, t, mac)
    assert not auth.verify_proof(SECRET, Role.PRIMARY, t + b"x", mac)


def test_replayed_primary_session_is_refused_by_a_fresh_secondary():
    p, s = make_pair(seed=1)
    link = handshake(p, s)
    recorded = bytes(link.wire[p])  # Hello, AuthProof, Attach of a good session
    s2 = Connection(secondary_node(), SECRET, random.Random(99).randbytes)  # new nonce
    s2.receive_data(recorded)
    with pytest.raises(RemoteProtocolError) as e:
        list(s2.events())
    assert e.value.code is ErrorCode.AUTH_FAILED
    assert s2.established is None and s2.state is State.ERROR


def test_replayed_secondary_session_is_refused_by_a_fresh_primary():
    p, s = make_pair(seed=1)
    link = handshake(p, s)
    recorded = bytes(link.wire[s])  # Hello, AuthProof, Ready
    p2 = Connection(primary_node(), SECRET, random.Random(77).randbytes)
    p2.initiate()
    p2.receive_data(recorded)
    with pytest.raises(RemoteProtocolError) as e:
        list(p2.events())
    assert e.value.code is ErrorCode.AUTH_FAILED and p2.established is None


def test_data_before_authentication_is_refused():
    s = Connection(secondary_node(), SECRET, random.Random(2).randbytes)
    s.receive_data(frame_bytes(Write(1, 0, 0, b"sneaky")))
    with pytest.raises(RemoteProtocolError) as e:
        s.next_event()
    assert e.value.code is ErrorCode.UNEXPECTED_MESSAGE and "WRITE" in str(e.value)


def test_attach_before_proof_is_refused():
    p = Connection(primary_node(), SECRET, random.Random(1).randbytes)
    s = Connection(secondary_node(), SECRET, random.Random(2).randbytes)
    p.initiate()
    s.receive_data(p.data_to_send() + frame_bytes(Attach(VOLUMES)))
    with pytest.raises(RemoteProtocolError) as e:
        list(s.events())
    assert e.value.code is ErrorCode.UNEXPECTED_MESSAGE and s.established is None


# --- local misuse ---------------------------------------------------------------

def test_engine_cannot_send_handshake_messages():
    p, s = make_pair()
    handshake(p, s)
    with pytest.raises(LocalProtocolError) as e:
        p.send(Attach(VOLUMES))
    assert e.value.code is ErrorCode.UNEXPECTED_MESSAGE and p.state is State.ERROR
    assert [type(m) for m in decode_all(p.data_to_send())] == [Error]


def test_engine_cannot_send_data_before_ready():
    p = Connection(primary_node(), SECRET, random.Random(1).randbytes)
    p.initiate()
    with pytest.raises(LocalProtocolError) as e:
        p.send(Write(1, 0, 0, b"x"))
    assert e.value.code is ErrorCode.UNEXPECTED_MESSAGE and p.state is State.ERROR


def test_initiating_twice_is_a_local_error():
    p = Connection(primary_node(), SECRET, random.Random(1).randbytes)
    p.initiate()
    with pytest.raises(LocalProtocolError):
        p.initiate()


def test_only_the_primary_initiates():
    s = Connection(secondary_node(), SECRET, random.Random(2).randbytes)
    with pytest.raises(LocalProtocolError):
        s.initiate()


def test_short_secret_is_a_config_error_with_a_hint():
    with pytest.raises(ConfigError) as e:
        Connection(primary_node(), b"short", random.Random(1).randbytes)
    assert e.value.hint


def test_primary_volumes_need_uuids():
    with pytest.raises(ValueError):
        primary_node(volumes=(VolumeInfo("db", NIL_UUID, 4096),))


def test_a_demoted_secondary_tells_the_primary_what_it_changed_itself():
    """Ready carries its own changes by volume name, turned into the
    primary's volume indexes; the primary's Established has them."""
    digest = bytes(range(16))
    s_vols = tuple(reversed(VOLUMES))  # its own order differs from the primary's
    local = secondary_node(volumes=s_vols, committed_generation=G1, committed_seq=9,
                           changed=(("logs", 0, 65536),), digests=((VOLUMES[0].name, 131072, 65536, digest),))
    p, s = make_pair(secondary=local)
    link = handshake(p, s)
    ep = link.events[p][0]
    assert ep.peer_changed == ((VOLUMES.index(VOL_LOGS), 0, 65536),)
    assert ep.peer_digests == ((0, 131072, 65536, digest),)
    ready = decode_all(bytes(link.wire[s]))[-1]
    assert isinstance(ready, Ready) and ready.changed == ep.peer_changed and ready.digests == ep.peer_digests


def test_a_ready_without_changes_is_the_earlier_format():
    plain = Ready(G1, 7, VOLUMES)
    assert frame_bytes(plain) == frame_bytes(Ready(G1, 7, VOLUMES, (), ()))
    decoded = decode_all(frame_bytes(plain))[0]
    assert decoded == plain and decoded.changed == () and decoded.digests == ()
    with_digest = Ready(G1, 7, VOLUMES, (), ((1, 0, 4096, bytes(16)),))
    assert decode_all(frame_bytes(with_digest))[0] == with_digest
    with pytest.raises(ValueError, match="volume index 5"):
        Ready(G1, 7, VOLUMES, ((5, 0, 1),))
