"""Split brain in the engines: a demoted secondary that wrote as a primary
after the pair parted meets a primary that wrote too. The primary refuses
the link (SPLIT_BRAIN), changes nothing, retries; once the secondary's
writes may lose (`demote --discard-my-data`) the resync sends the union."""

import dataclasses

from blockmirror.engine import Stop
from blockmirror.engine.phases import PrimaryPhase
from blockmirror.engine.records import LocalChanges, RecordStore
from blockmirror.engine.roles import chunk_digest

from .pair import Pair

VOLS = {"a": 1 << 20}
CHUNK = 4096


def _demoted_with_own_writes(pair: Pair, chunks: list[int]) -> LocalChanges:
    """The secondary as a primary demoted without --discard-my-data would
    leave it: its own chunks written (after the pair parted) and recorded."""
    node = pair.snode
    for c in chunks:
        node.write("a", c * CHUNK, b"S" * CHUNK)
    node.flush()
    records = RecordStore(node)
    gen = records.committed_point().generation
    own = LocalChanges(gen, (), tuple(("a", c * CHUNK, CHUNK, chunk_digest(b"S" * CHUNK)) for c in chunks),
                       None, len(chunks), diverged=len(chunks))
    records.save(own)
    return own


def test_a_split_brain_is_refused_without_changing_either_image_then_resolved(tmp_path):
    pair = Pair(tmp_path, VOLS)
    pair.write("a", 0, b"x" * (64 * CHUNK))
    pair.connect()
    assert pair.status()["state"] == "mirroring"
    pair.cut()
    pair.write("a", 10 * CHUNK, b"P" * (2 * CHUNK))  # the primary writes 2 chunks after parting
    own = _demoted_with_own_writes(pair, [20, 21, 22])
    pair.secondary = type(pair.secondary)(pair.snode, pair.secondary.config, pair.now, pair.secondary.pair_uuid, "t")
    before = (pair.pnode.volumes["a"].read(0, 1 << 20), pair.snode.volumes["a"].read(0, 1 << 20))

    pair.connect()
    assert pair.primary.phase is PrimaryPhase.SPLIT_BRAIN
    st = pair.status()
    assert st["state"] == "split-brain" and st["split_brain"] == {"primary_chunks": 2, "secondary_chunks": 3}
    assert pair.status("secondary")["state"] == "split-brain"
    assert (pair.pnode.volumes["a"].read(0, 1 << 20), pair.snode.volumes["a"].read(0, 1 << 20)) == before

    pair.conns = None
    pair.connect()  # it retries, and is refused again: nothing changed on the secondary
    assert pair.primary.phase is PrimaryPhase.SPLIT_BRAIN
    assert (pair.pnode.volumes["a"].read(0, 1 << 20), pair.snode.volumes["a"].read(0, 1 << 20)) == before

    RecordStore(pair.snode).save(dataclasses.replace(own, discard=True))  # demote --discard-my-data
    pair.secondary = type(pair.secondary)(pair.snode, pair.secondary.config, pair.now, pair.secondary.pair_uuid, "t")
    pair.conns = None
    pair.connect()
    st = pair.status()
    assert st["state"] == "mirroring" and st["split_brain"] is None
    assert (st["last_resync"]["kind"], st["last_resync"]["chunks"]) == ("incremental", 5)
    assert pair.pnode.volumes["a"].read(0, 1 << 20) == pair.snode.volumes["a"].read(0, 1 << 20)


def test_a_primary_in_split_brain_stops_cleanly(tmp_path):
    pair = Pair(tmp_path, VOLS)
    pair.connect()
    pair.cut()
    pair.write("a", 0, b"P" * CHUNK)
    _demoted_with_own_writes(pair, [5])
    pair.secondary = type(pair.secondary)(pair.snode, pair.secondary.config, pair.now, pair.secondary.pair_uuid, "t")
    pair.connect()
    assert pair.primary.phase is PrimaryPhase.SPLIT_BRAIN
    pair.step_primary([Stop()])
    assert pair.primary.phase is PrimaryPhase.STOPPED


def test_a_secondary_whose_own_writes_may_lose_is_not_a_split_brain(tmp_path):
    """Only the demoted side wrote after parting: it resyncs (its writes
    lose, as its demote said), no refusal."""
    pair = Pair(tmp_path, VOLS)
    pair.connect()
    pair.cut()
    _demoted_with_own_writes(pair, [7, 8])
    pair.secondary = type(pair.secondary)(pair.snode, pair.secondary.config, pair.now, pair.secondary.pair_uuid, "t")
    pair.connect()
    st = pair.status()
    assert st["state"] == "mirroring" and st["last_resync"]["chunks"] == 2
    assert pair.pnode.volumes["a"].read(0, 1 << 20) == pair.snode.volumes["a"].read(0, 1 << 20)
