"""The engines' persisted records: one encode/decode each, versioned; a node
written by the previous version (unversioned values, a point spread over
several keys) is read, and written back in the current form."""

import random
import uuid

import pytest

from blockmirror.engine import PrimaryConfig, PrimaryNode, SecondaryConfig, SecondaryNode
from blockmirror.engine.records import (
    ActivityRecord, CommittedPoint, LocalChanges, OpenRound, PairBinding, PrimaryPoint, RecordError, RecordStore,
    ResyncBase, VolumePairing, coalesce,
)
from blockmirror.storage import Node

G1 = uuid.UUID(int=11, version=4)
G2 = uuid.UUID(int=12, version=4)


@pytest.mark.parametrize("record, decode", [
    (PrimaryPoint(G1, clean=False), PrimaryPoint.decode),
    (PrimaryPoint(None, clean=True), PrimaryPoint.decode),
    (ResyncBase(7, G1, 42, ((0, 4096, 10), (1, 0, 1))), lambda raw: ResyncBase.decode(7, raw)),
    (ActivityRecord(((0, 3), (1, 0))), ActivityRecord.decode),
    (CommittedPoint(G2, 99, 3, 4096, consistent=False), CommittedPoint.decode),
    (OpenRound(5, "incremental", G2, safety=3), OpenRound.decode),
    (VolumePairing({"a": str(G1)}), VolumePairing.decode),
    (PairBinding("db", G1, "primary"), PairBinding.decode),
    (LocalChanges(G1, (("a", 0, 65536),), (("b", 65536, 4096, bytes(range(16))),), 4, 2), LocalChanges.decode),
])
def test_each_record_reads_back_what_it_wrote(record, decode):
    raw = record.encode()
    assert raw["v"] == type(record).VERSION
    assert decode(raw) == record


def test_a_record_from_a_newer_version_is_refused_with_a_reason():
    raw = OpenRound(5, "full", G2).encode()
    raw["v"] = 99
    with pytest.raises(RecordError, match="version 99.*newer version"):
        OpenRound.decode(raw)


def test_a_primary_written_by_the_previous_version_resyncs_from_its_base(tmp_path):
    node = Node.create(str(tmp_path / "p"), {"a": 1 << 20}, chunk_size=4096)
    snap = node.snapshot("link-down")
    node.set_state({"primary.generation": str(G1), "primary.clean": True,
                    f"primary.base.{snap.id}": {"generation": str(G1), "acked_seq": 5, "unacked": [[0, 0, 10]]},
                    "primary.activity": [[0, 0]]})
    p = PrimaryNode(node, PrimaryConfig(), random.Random(1), 0.0, G1, "t")
    assert p.generation == G1
    records = RecordStore(node)
    assert records.resync_bases() == {snap.id: ResyncBase(snap.id, G1, 5, ((0, 0, 10),))}
    # Written back in the current form; the old keys are gone.
    assert node.get_state("primary.generation") is None and node.get_state("primary.clean") is None
    assert records.primary_point() == PrimaryPoint(G1, clean=False)
    base, why = p.bases.choose(p.generation, G1, 5)
    assert base is not None and base.snapshot == snap.id, why
    node.close()


def test_a_secondary_written_by_the_previous_version_keeps_its_point(tmp_path):
    node = Node.create(str(tmp_path / "s"), {"a": 1 << 20}, chunk_size=4096)
    node.set_state({"secondary.generation": str(G2), "secondary.seq": 17, "journal.epoch": 2,
                    "journal.checkpoint": 0, "secondary.paired_uuids": {"a": str(G1)}})
    s = SecondaryNode(node, SecondaryConfig(), 0.0, G1, "t")
    assert (s.generation, s.seq, s.inconsistent) == (G2, 17, False)
    assert s.volume_infos()[0][1] == G1
    assert node.get_state("secondary.seq") is None
    assert RecordStore(node).committed_point() == CommittedPoint(G2, 17, 2, 0, consistent=True)
    local = s.local_node()
    assert (local.committed_generation, local.committed_seq) == (G2, 17)
    node.close()


def test_coalesced_extents_cover_every_original_one_within_the_limit():
    extents = tuple(("a", i * 100, 10) for i in range(50)) + tuple(("b", i * 7, 3) for i in range(30))
    out = coalesce(extents, 20)
    assert len(out) <= 20
    for name, off, length in extents:
        assert any(n == name and o <= off and off + length <= o + ln for n, o, ln in out), (name, off)
    assert coalesce(extents[:5], 20) == extents[:5]
