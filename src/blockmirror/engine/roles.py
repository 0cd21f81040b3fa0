"""A node's role, and the two offline moves between roles: `promote` (a
secondary becomes a primary) and `demote` (a primary becomes a secondary).

A node's role is in its PairBinding record, written by its first completed
handshake and changed only here; a node without one (never connected) is
what its records show, or nothing yet. Both moves keep the point the two
nodes share, so the next link resyncs incrementally:

- promote: the secondary's last committed image (recovery replays its
  journal and rolls an open round back) becomes the primary's image, and a
  snapshot of it becomes a resync base for that generation: every write
  served from now on is in that base's exception table.
- demote: the primary's image is its last confirmed generation plus the
  chunks it changed since (its bases' exception tables and unacknowledged
  writes, and the hot regions of a crash). Those chunks are recorded
  (LocalChanges), the handshake tells the new primary, whose first round
  sends them back; the data they held is kept first in a user snapshot
  labelled `discarded-...`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass

from blockmirror.engine.activity import ActivityLog
from blockmirror.engine.config import PrimaryConfig, SecondaryConfig
from blockmirror.engine.events import Output
from blockmirror.engine.records import (
    ActivityRecord, CommittedPoint, LocalChanges, OpenRound, PrimaryPoint, PrimaryRound, RecordStore, ResyncBase,
    VolumePairing,
    extend_history,
)
from blockmirror.engine.rounds import Geometry, chunk_runs
from blockmirror.errors import BlockmirrorError, NodeError
from blockmirror.protocol import NIL_UUID
from blockmirror.protocol.handshake import DIGEST_BYTES, READY_DIGESTS_MAX
from blockmirror.status import PRIMARY, SECONDARY

ROLES = (PRIMARY, SECONDARY)


def node_role(records: RecordStore) -> str | None:
    """The role the node's records give it; None for a node that never ran
    in a pair."""
    binding = records.pair_binding()
    if binding is not None:
        return binding.role
    node = records.node
    if any(node.get_state(k) is not None for k in (PrimaryPoint.KEY, *PrimaryPoint.LEGACY_KEYS)):
        return PRIMARY
    if records.committed_point().generation != NIL_UUID or records.open_round() is not None:
        return SECONDARY
    return None


def bind_at_handshake(out: Output, records: RecordStore, name: str, pair_uuid, role: str) -> None:
    """A completed handshake makes the node this pair's `role` (once)."""
    try:
        if records.bind(name, pair_uuid, role):
            out.info(f"this node is the {role} of pair {name!r} ({pair_uuid})")
    except BlockmirrorError as exc:  # retried at the next handshake
        out.warning(f"cannot record the pair binding: {exc}")


def check_role(node, role: str) -> None:
    """Refuse to run `role` on a node that holds the other role's data."""
    have = node_role(RecordStore(node))
    if have is None or have == role:
        return
    if role == PRIMARY:
        raise NodeError(f"{node.path} is a secondary: its volumes follow its primary and are not writable here",
                        hint=f"to make it the primary (failover), stop its daemon and run: blockmirror promote "
                             f"{node.path}; to read it, use: blockmirror primary {node.path} --read-only --nbd ...")
    raise NodeError(f"{node.path} is a primary: its volumes hold data its secondary may lack",
                    hint=f"to make it a secondary (failback, switchover), run: blockmirror demote {node.path}")


@dataclass(frozen=True)
class Promoted:
    generation: object  # uuid.UUID | None: the shared point kept (None: never synced)
    seq: int
    base: int | None  # the promotion snapshot
    rolled_back: bool
    own_chunks: int = 0  # its own writes as a demoted node, kept (in the base's record)
    own_extents: tuple = ()  # ... as (volume index, offset, length): what its first round may resend


def promote(node, force: bool = False, now_ns: int | None = None, mutations: frozenset = frozenset()) -> Promoted:
    """A stopped secondary becomes a primary, keeping its last consistent
    image. `force` is needed for a node that never completed a sync."""
    from blockmirror.engine.secondary_store import JOURNAL_NAME, SecondaryStore

    records = RecordStore(node)
    role = node_role(records)
    if role == PRIMARY:
        raise NodeError(f"{node.path} is already a primary", hint=f"serve it: blockmirror primary {node.path} --nbd ...")
    had_round = records.open_round() is not None
    out = Output()
    # Recovery: the journal replayed; below, an open round rolled back.
    broken = frozenset({"keep-open-round"}) if "promote-keeps-round" in mutations else frozenset()
    store = SecondaryStore(node, SecondaryConfig(mutations=broken), out)
    point = store.point
    if not point.holds_image and not force:
        raise NodeError(f"{node.path} never completed a sync with its primary: its volumes hold no consistent image",
                        hint=f"if this is the only copy left, promote it anyway: blockmirror promote {node.path} "
                             f"--force (its next sync to a peer is a full one)")
    store.abandon_round()  # a primary does not continue its old primary's round: back to the last image
    binding = records.pair_binding()
    pairing = store.pairing
    gen = point.generation if point.holds_image else None
    drop = (CommittedPoint.KEY, *CommittedPoint.LEGACY_KEYS, OpenRound.KEY, LocalChanges.KEY)
    history = point.history if gen is not None else extend_history(point.generation, point.history)
    rows = RecordStore.rows(PrimaryPoint(gen, True, history), delete=drop)
    if binding is not None:
        rows.update(RecordStore.rows(dataclasses.replace(binding, role=PRIMARY)))
    if pairing.primary_uuids:
        rows.update(RecordStore.rows(pairing))
    base, extra = None, ()
    if gen is not None:
        # Its image is G at S, except what it changed itself as a demoted node
        # that no resync replaced yet: those chunks stay in the base's record.
        own = store.local_changes if store.local_changes and store.local_changes.generation == gen else None
        extra = () if own is None else (tuple((store.names.index(n), o, ln) for n, o, ln in own.extents)
                                         + tuple((store.names.index(n), o, ln) for n, o, ln, _ in own.digests))
        record = ResyncBase(0, gen, point.seq, extra, 0 if own is None else own.diverged)
        info = node.snapshot("promoted", lambda sid: {
            **rows, **RecordStore.rows(dataclasses.replace(record, snapshot=sid))}, internal=True)
        base = info.id
    else:
        node.set_state(rows)
    store.journal.file.close()
    _remove(node, JOURNAL_NAME)
    own_chunks = 0
    if gen is not None and store.local_changes is not None and store.local_changes.generation == gen:
        own_chunks = store.local_changes.chunks
    return Promoted(gen, point.seq if gen is not None else 0, base, had_round, own_chunks, extra)


@dataclass(frozen=True)
class Demoted:
    generation: object  # uuid.UUID | None: the point kept (None: the next sync is full)
    changed_chunks: int
    discarded: int | None  # the snapshot keeping this node's own data
    discarded_label: str | None
    diverged: int = 0  # of the changed chunks, those written as a primary after the pair parted


def demote(node, discard: bool = False, config: PrimaryConfig = PrimaryConfig(),
           now_ns: int | None = None) -> Demoted:
    """A stopped primary becomes a secondary. The chunks it changed since the
    point its secondary confirmed are recorded for the next resync and kept
    in a `discarded-...` snapshot first."""
    from blockmirror.engine.secondary_store import JOURNAL_NAME

    records = RecordStore(node)
    role = node_role(records)
    if role == SECONDARY:
        return _discard_on_secondary(node, records, now_ns) if discard else _already_secondary(node)
    point = records.primary_point()
    geo = Geometry(list(node.volumes), [v.size for v in node.volumes.values()], node.chunk_size)
    bases = [b for b in records.resync_bases().values() if point.generation is not None
             and b.generation == point.generation]
    # A crash while mirroring leaves no base: the image is the generation
    # plus the activity log's hot regions. A clean stop always leaves one.
    crashed_mirroring = point.generation is not None and not point.clean and not records.base_keys()
    gen = point.generation if bases or crashed_mirroring else None
    if gen is not None:
        sets = geo.chunks_of(() if point.clean else ActivityLog(node, config.activity_region_bytes, records)
                             .hot_extents(geo.sizes))
        written = geo.empty_sets()  # as a primary after the pair parted: the bases' diffs
        for b in bases:
            for vol, chunks in enumerate(geo.chunks_of(b.unacked)):
                sets[vol] |= chunks
            diff = node.diff(b.snapshot)
            for vol, name in enumerate(geo.names):
                written[vol] |= diff[name]
        for vol in range(len(sets)):
            sets[vol] |= written[vol]
        if "demote-forgets-own" in config.mutations:
            sets = geo.empty_sets()  # broken on purpose: its own chunks are never sent back
        changed = sum(len(s) for s in sets)
        diverged = sum(len(s) for s in written) + sum(b.own_chunks for b in bases)
        extents, digests = _describe(node, geo, sets, changed)
        seq = min((b.acked_seq for b in bases), default=0)
    else:  # never synced, or its bases are gone: the whole image is its own
        changed = sum(-(-v.size // node.chunk_size) for v in node.volumes.values())
        extents, digests, seq, diverged = (), (), 0, 0
    discarded = label = None
    if changed and _holds_data(node):
        label = _discard_label(now_ns)
        discarded = node.snapshot(label).id
    _remove(node, JOURNAL_NAME)  # a journal left from an earlier life as a secondary must not replay
    volume_uuids = records.volume_pairing().primary_uuids or {v.name: v.uuid for v in node.volumes.values()}
    drop = (PrimaryPoint.KEY, *PrimaryPoint.LEGACY_KEYS, ActivityRecord.KEY, PrimaryRound.KEY, *records.base_keys())
    history = point.history if gen is not None else extend_history(point.generation, point.history)
    recs = [CommittedPoint(gen or NIL_UUID, seq, consistent=gen is not None, history=history),
            VolumePairing(dict(volume_uuids))]
    if gen is not None:  # also with no chunk of its own: its seq names no point (it was a primary)
        recs.append(LocalChanges(gen, extents, digests, discarded, changed, diverged, discard))
    binding = records.pair_binding()
    if binding is not None:
        recs.append(dataclasses.replace(binding, role=SECONDARY))
    records.save(*recs, delete=drop)
    for snap in node.snapshots():
        if snap.internal:
            node.delete_snapshot(snap.id)
    return Demoted(gen, changed, discarded, label, diverged)


def chunk_digest(data) -> bytes:
    """What two nodes compare a chunk by (a demoted node and its new primary, verify, checksum syncs)."""
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


def chunk_digests(data, chunk_bytes: int) -> tuple[bytes, ...]:
    """The digest of each `chunk_bytes` of `data` (the last may be short)."""
    view = memoryview(data)
    return tuple(chunk_digest(view[i:i + chunk_bytes]) for i in range(0, len(view), chunk_bytes))


def _describe(node, geo: Geometry, sets, changed: int) -> tuple[tuple, tuple]:
    """The changed chunks as (extents, digests): each chunk with a digest of
    its bytes when the handshake can carry them all (the primary then sends
    only those that differ), else as extents."""
    if changed > READY_DIGESTS_MAX:
        return tuple((geo.names[vol], first * geo.chunk_size, count * geo.chunk_size)
                     for vol, s in enumerate(sets) for first, count in chunk_runs(s)), ()
    digests = []
    for vol, chunks in enumerate(sets):
        volume = node.volumes[geo.names[vol]]
        for chunk in chunks:
            off, length = chunk * geo.chunk_size, geo.chunk_bytes(vol, chunk)
            digests.append((geo.names[vol], off, length, chunk_digest(volume.read(off, length))))
    return (), tuple(digests)


def _already_secondary(node):
    raise NodeError(f"{node.path} is already a secondary",
                    hint=f"run it: blockmirror secondary {node.path} --listen HOST:PORT --secret-file FILE")


def _discard_on_secondary(node, records: RecordStore, now_ns: int | None) -> Demoted:
    """A secondary in a split brain: its data (its own writes as a demoted
    primary, or a history its primary does not know) may now lose. Kept in
    a discarded-... snapshot first if it has none yet (of its committed
    image: a round it held open to resume is rolled back first)."""
    from blockmirror.engine.secondary_store import SecondaryStore

    if records.open_round() is not None:
        SecondaryStore(node, SecondaryConfig(), Output()).abandon_round()
    point = records.committed_point()
    own = records.local_changes()
    if own is not None and own.generation != point.generation:
        own = None
    if own is None:
        chunks = sum(-(-v.size // node.chunk_size) for v in node.volumes.values()) if _holds_data(node) else 0
        own = LocalChanges(point.generation, chunks=chunks, demoted=False)
    label = next((s.label for s in node.snapshots() if s.id == own.discarded), None)
    if own.discarded is None and own.chunks:
        label = _discard_label(now_ns)
        own = dataclasses.replace(own, discarded=node.snapshot(label).id)
    records.save(dataclasses.replace(own, discard=True))
    return Demoted(own.generation, own.chunks, own.discarded, label, own.diverged)


def _discard_label(now_ns: int | None) -> str:
    return "discarded-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime((now_ns or time.time_ns()) / 1e9))


def _holds_data(node) -> bool:
    return any(any(True for _ in v.allocated_extents()) for v in node.volumes.values())


def _remove(node, name: str) -> None:
    path = os.path.join(node.path, name)
    if node.fs.exists(path):
        node.fs.unlink(path)
        node.fs.sync_dir(node.path)
