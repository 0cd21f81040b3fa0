"""The records the engines keep in the node's metadata store.

Each record is a frozen dataclass with one key, one version, and one
encode/decode; nothing else reads or writes these keys. Values are JSON in
the storage's key/value table, committed atomically with whatever else the
same call commits (a snapshot, another record).

Records written by earlier versions (plain values without a version field,
or a point spread over several keys) are read as version 0 and written back
in the current form at the next update.
"""

from __future__ import annotations

import base64
import dataclasses
import uuid
from dataclasses import dataclass, field
from typing import ClassVar

from pyroaring import BitMap

from blockmirror.protocol import NIL_UUID

Extent = tuple[int, int, int]  # (volume index, offset, length)


class RecordError(ValueError):
    """A stored record this version cannot read."""


def _version(raw: dict, cls) -> int:
    v = raw.get("v", 0)
    if not isinstance(v, int) or v > cls.VERSION:
        raise RecordError(f"{cls.__name__} record of version {v!r}; this blockmirror reads up to "
                          f"{cls.VERSION} (was the node used by a newer version?)")
    return v


def _uuid_or_none(text) -> uuid.UUID | None:
    return None if text is None else uuid.UUID(text)


HISTORY_MAX = 64  # generations a node remembers its data descends from


def extend_history(generation, history: tuple) -> tuple:
    """`history` with `generation` (None and nil are not points) in front."""
    if generation is None or generation == NIL_UUID:
        return history
    return ((generation,) + tuple(g for g in history if g != generation))[:HISTORY_MAX]


# -- primary -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PrimaryPoint:
    """The generation the secondary last confirmed (None: never synced),
    whether the last stop was clean (False while running), and the earlier
    generations this node's data descends from (its history, newest first)."""
    KEY: ClassVar[str] = "primary.point"
    VERSION: ClassVar[int] = 1
    LEGACY_KEYS: ClassVar[tuple[str, ...]] = ("primary.generation", "primary.clean")
    generation: uuid.UUID | None = None
    clean: bool = True
    history: tuple[uuid.UUID, ...] = ()

    def encode(self) -> dict:
        return {"v": self.VERSION, "generation": None if self.generation is None else str(self.generation),
                "clean": self.clean, "history": [str(g) for g in self.history]}

    @classmethod
    def decode(cls, raw: dict) -> PrimaryPoint:
        _version(raw, cls)
        return cls(_uuid_or_none(raw.get("generation")), bool(raw.get("clean", True)),
                   tuple(uuid.UUID(g) for g in raw.get("history", ())))

    @classmethod
    def from_legacy(cls, generation, clean) -> PrimaryPoint:
        return cls(_uuid_or_none(generation), True if clean is None else bool(clean))


@dataclass(frozen=True, slots=True)
class ResyncBase:
    """A snapshot the secondary's image can be brought up to date from: its
    image is the secondary's `generation` at `acked_seq`, except for the
    `unacked` extents (sent, maybe applied, never acknowledged: step 68)."""
    PREFIX: ClassVar[str] = "primary.base."
    VERSION: ClassVar[int] = 1
    snapshot: int
    generation: uuid.UUID
    acked_seq: int
    unacked: tuple[Extent, ...] = ()
    # Chunks this node wrote after the pair parted that are in `unacked`,
    # not in the snapshot's diff (a promoted node's writes as a demoted one).
    own_chunks: int = 0

    @property
    def key(self) -> str:
        return f"{self.PREFIX}{self.snapshot}"

    def encode(self) -> dict:
        return {"v": self.VERSION, "generation": str(self.generation), "acked_seq": self.acked_seq,
                "unacked": [list(e) for e in self.unacked], "own_chunks": self.own_chunks}

    @classmethod
    def decode(cls, snapshot: int, raw: dict) -> ResyncBase:
        _version(raw, cls)
        return cls(snapshot, uuid.UUID(raw["generation"]), int(raw["acked_seq"]),
                   tuple(tuple(e) for e in raw.get("unacked", ())), int(raw.get("own_chunks", 0)))

    def with_unacked(self, more) -> ResyncBase:
        return dataclasses.replace(self, unacked=self.unacked + tuple(tuple(e) for e in more))


@dataclass(frozen=True, slots=True)
class ActivityRecord:
    """The primary's hot regions: (volume index, region) pairs that may differ
    from the secondary after a crash."""
    KEY: ClassVar[str] = "primary.activity"
    VERSION: ClassVar[int] = 1
    regions: tuple[tuple[int, int], ...] = ()

    def encode(self) -> dict:
        return {"v": self.VERSION, "regions": [list(r) for r in self.regions]}

    @classmethod
    def decode(cls, raw) -> ActivityRecord:
        if isinstance(raw, list):  # version 0: the bare list
            return cls(tuple(tuple(r) for r in raw))
        _version(raw, cls)
        return cls(tuple(tuple(r) for r in raw["regions"]))


@dataclass(frozen=True, slots=True)
class PrimaryRound:
    """The resync round under way, kept until the secondary confirms its
    commit so that an interrupted round can resume: its target snapshot
    (`target`, read for the round's data), the base it started from
    (`base`, None for a full round) and the chunks it sends, per volume in
    wire order. Committed with the target snapshot in one transaction."""
    KEY: ClassVar[str] = "primary.round"
    VERSION: ClassVar[int] = 1
    id: int
    kind: str
    base: int | None
    base_generation: uuid.UUID
    target: int
    target_generation: uuid.UUID
    commit_seq: int
    chunks: tuple[BitMap, ...]
    holes: bool = True  # a full round also clears every other chunk (False: a checksum sync's, only these)

    def encode(self) -> dict:
        return {"v": self.VERSION, "id": self.id, "kind": self.kind, "base": self.base,
                "base_generation": str(self.base_generation), "target": self.target,
                "target_generation": str(self.target_generation), "commit_seq": self.commit_seq,
                "chunks": [base64.b64encode(c.serialize()).decode() for c in self.chunks], "holes": self.holes}

    @classmethod
    def decode(cls, raw: dict) -> PrimaryRound:
        _version(raw, cls)
        return cls(int(raw["id"]), raw["kind"], raw["base"], uuid.UUID(raw["base_generation"]), int(raw["target"]),
                   uuid.UUID(raw["target_generation"]), int(raw["commit_seq"]),
                   tuple(BitMap.deserialize(base64.b64decode(c)) for c in raw["chunks"]), bool(raw.get("holes", True)))


# -- secondary ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CommittedPoint:
    """The secondary's image: the primary's `generation` at `seq`, applied
    and synced up to the redo journal's `journal_checkpoint` in epoch
    `journal_epoch` (records after it replay at recovery). `consistent` is
    False from a full round's begin until its commit."""
    KEY: ClassVar[str] = "secondary.point"
    VERSION: ClassVar[int] = 1
    LEGACY_KEYS: ClassVar[tuple[str, ...]] = ("secondary.generation", "secondary.seq", "journal.epoch",
                                              "journal.checkpoint", "secondary.inconsistent")
    generation: uuid.UUID = NIL_UUID
    seq: int = 0
    journal_epoch: int = 0
    journal_checkpoint: int = 0
    consistent: bool = True
    history: tuple[uuid.UUID, ...] = ()  # the generations it held before, newest first

    def encode(self) -> dict:
        return {"v": self.VERSION, "generation": str(self.generation), "seq": self.seq,
                "journal_epoch": self.journal_epoch, "journal_checkpoint": self.journal_checkpoint,
                "consistent": self.consistent, "history": [str(g) for g in self.history]}

    @classmethod
    def decode(cls, raw: dict) -> CommittedPoint:
        _version(raw, cls)
        return cls(uuid.UUID(raw["generation"]), int(raw["seq"]), int(raw["journal_epoch"]),
                   int(raw["journal_checkpoint"]), bool(raw["consistent"]),
                   tuple(uuid.UUID(g) for g in raw.get("history", ())))

    @classmethod
    def from_legacy(cls, generation, seq, epoch, checkpoint, inconsistent) -> CommittedPoint:
        return cls(uuid.UUID(generation) if generation else NIL_UUID, seq or 0, epoch or 0, checkpoint or 0,
                   not inconsistent)

    @property
    def holds_image(self) -> bool:
        """A complete image of some point of the primary's history."""
        return self.consistent and self.generation != NIL_UUID


FULL = "full"
INCREMENTAL = "incremental"


@dataclass(frozen=True, slots=True)
class OpenRound:
    """A resync round the secondary has begun and not committed. An
    incremental round names its safety snapshot (the pre-round image).
    `cursor` (volume name, offset): every extent of the round before it, in
    the round's disk order, is applied and synced; the primary resumes the
    round there (None: nothing yet)."""
    KEY: ClassVar[str] = "secondary.round"
    VERSION: ClassVar[int] = 1
    id: int
    kind: str
    target_generation: uuid.UUID
    safety: int | None = None
    cursor: tuple[str, int] | None = None

    def encode(self) -> dict:
        return {"v": self.VERSION, "id": self.id, "kind": self.kind, "target": str(self.target_generation),
                "safety": self.safety, "cursor": None if self.cursor is None else list(self.cursor)}

    @classmethod
    def decode(cls, raw: dict) -> OpenRound:
        _version(raw, cls)
        cursor = raw.get("cursor")
        return cls(int(raw["id"]), raw["kind"], uuid.UUID(raw["target"]), raw.get("safety"),
                   None if cursor is None else (str(cursor[0]), int(cursor[1])))


@dataclass(frozen=True, slots=True)
class VolumePairing:
    """Secondary volume name -> the UUID of the primary volume it mirrors,
    adopted at the first full sync."""
    KEY: ClassVar[str] = "secondary.paired_uuids"
    VERSION: ClassVar[int] = 1
    primary_uuids: dict[str, str] = field(default_factory=dict)

    def encode(self) -> dict:
        return {"v": self.VERSION, "primary_uuids": dict(self.primary_uuids)}

    @classmethod
    def decode(cls, raw: dict) -> VolumePairing:
        if "v" not in raw:  # version 0: the bare mapping
            return cls(dict(raw))
        _version(raw, cls)
        return cls(dict(raw["primary_uuids"]))


@dataclass(frozen=True, slots=True)
class LocalChanges:
    """What a demoted node's image may hold that its generation does not:
    the chunks it changed itself since `generation` (unreplicated writes,
    writes after a failure, hot regions of a crash). Each as (volume name,
    offset, length, digest of its bytes) in `digests`, or, past the number a
    handshake carries, as bare extents. The handshake tells the primary,
    whose first round sends the ones that differ; the first commit clears
    the record. `discarded` is the snapshot that keeps them."""
    KEY: ClassVar[str] = "secondary.local_changes"
    VERSION: ClassVar[int] = 1
    generation: uuid.UUID
    extents: tuple[tuple[str, int, int], ...] = ()
    digests: tuple[tuple[str, int, int, bytes], ...] = ()
    discarded: int | None = None
    chunks: int = 0
    diverged: int = 0  # of those, chunks it wrote as a primary after the pair parted (not crash leftovers)
    discard: bool = False  # demote --discard-my-data: they may lose to the primary's own such writes
    # Written by a demote: its seq names no point (any base of its generation
    # fits, its changes cover what it wrote after the seq it saw acknowledged).
    # False for a plain secondary told to discard: its image is its point's.
    demoted: bool = True

    def encode(self) -> dict:
        return {"v": self.VERSION, "generation": str(self.generation), "extents": [list(e) for e in self.extents],
                "digests": [[n, o, ln, d.hex()] for n, o, ln, d in self.digests],
                "discarded": self.discarded, "chunks": self.chunks, "diverged": self.diverged,
                "discard": self.discard, "demoted": self.demoted}

    @classmethod
    def decode(cls, raw: dict) -> LocalChanges:
        _version(raw, cls)
        return cls(uuid.UUID(raw["generation"]), tuple((str(n), int(o), int(ln)) for n, o, ln in raw["extents"]),
                   tuple((str(n), int(o), int(ln), bytes.fromhex(d)) for n, o, ln, d in raw.get("digests", ())),
                   raw.get("discarded"), int(raw.get("chunks", 0)), int(raw.get("diverged", 0)),
                   bool(raw.get("discard", False)), bool(raw.get("demoted", True)))


def coalesce(extents: tuple, limit: int) -> tuple:
    """At most `limit` extents covering at least `extents` (per name, the
    smallest gaps are closed first; covering more is safe, it is resent)."""
    if len(extents) <= limit:
        return tuple(extents)
    by_name: dict = {}
    for name, off, length in sorted(extents):
        by_name.setdefault(name, []).append([off, off + length])
    gaps = sorted((runs[i + 1][0] - runs[i][1], name, i) for name, runs in by_name.items()
                  for i in range(len(runs) - 1))
    join = {(name, i) for _, name, i in gaps[:len(extents) - limit]}
    out = []
    for name, runs in by_name.items():
        cur = list(runs[0])
        for i in range(1, len(runs)):
            if (name, i - 1) in join:
                cur[1] = max(cur[1], runs[i][1])
            else:
                out.append((name, cur[0], cur[1] - cur[0]))
                cur = list(runs[i])
        out.append((name, cur[0], cur[1] - cur[0]))
    return tuple(out)


# -- the daemon --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PairBinding:
    """The pair and role of a node: written by its first completed
    handshake, changed only by `promote` and `demote`."""
    KEY: ClassVar[str] = "daemon.pair"
    VERSION: ClassVar[int] = 1
    name: str
    uuid: uuid.UUID
    role: str

    def encode(self) -> dict:
        return {"v": self.VERSION, "name": self.name, "uuid": str(self.uuid), "role": self.role}

    @classmethod
    def decode(cls, raw: dict) -> PairBinding:
        _version(raw, cls)
        return cls(raw["name"], uuid.UUID(raw["uuid"]), raw["role"])


# -- the store ---------------------------------------------------------------------------

class RecordStore:
    """Reads and writes the records above through the node's key/value
    state. `rows()` builds one commit's worth for `Node.set_state` or for a
    snapshot's own transaction."""

    def __init__(self, node):
        self.node = node

    @staticmethod
    def rows(*records, delete: tuple = ()) -> dict:
        out: dict = {}
        for rec in records:
            out[getattr(rec, "key", None) or rec.KEY] = rec.encode()
            for legacy in getattr(rec, "LEGACY_KEYS", ()):
                out[legacy] = None
        for key in delete:
            out[key] = None
        return out

    def save(self, *records, delete: tuple = ()) -> None:
        self.node.set_state(self.rows(*records, delete=delete))

    def primary_point(self) -> PrimaryPoint:
        raw = self.node.get_state(PrimaryPoint.KEY)
        if raw is not None:
            return PrimaryPoint.decode(raw)
        return PrimaryPoint.from_legacy(*(self.node.get_state(k) for k in PrimaryPoint.LEGACY_KEYS))

    def resync_bases(self) -> dict[int, ResyncBase]:
        """Every base whose snapshot still exists, by snapshot id."""
        live = {s.id for s in self.node.snapshots()}
        out = {}
        for key in self.node.state_keys(ResyncBase.PREFIX):
            sid = int(key[len(ResyncBase.PREFIX):])
            if sid in live:
                out[sid] = ResyncBase.decode(sid, self.node.get_state(key))
        return out

    def base_keys(self) -> list[str]:
        return self.node.state_keys(ResyncBase.PREFIX)

    def activity(self) -> ActivityRecord:
        raw = self.node.get_state(ActivityRecord.KEY)
        return ActivityRecord() if raw is None else ActivityRecord.decode(raw)

    def committed_point(self) -> CommittedPoint:
        raw = self.node.get_state(CommittedPoint.KEY)
        if raw is not None:
            return CommittedPoint.decode(raw)
        return CommittedPoint.from_legacy(*(self.node.get_state(k) for k in CommittedPoint.LEGACY_KEYS))

    def primary_round(self) -> PrimaryRound | None:
        raw = self.node.get_state(PrimaryRound.KEY)
        return None if raw is None else PrimaryRound.decode(raw)

    def open_round(self) -> OpenRound | None:
        raw = self.node.get_state(OpenRound.KEY)
        return None if raw is None else OpenRound.decode(raw)

    def bind(self, name: str, pair_uuid: uuid.UUID, role: str) -> bool:
        """Record the pair and role at a completed handshake (once)."""
        binding = PairBinding(name, pair_uuid, role)
        if self.pair_binding() == binding:
            return False
        self.save(binding)
        return True

    def pair_binding(self) -> PairBinding | None:
        raw = self.node.get_state(PairBinding.KEY)
        return None if raw is None else PairBinding.decode(raw)

    def local_changes(self) -> LocalChanges | None:
        raw = self.node.get_state(LocalChanges.KEY)
        return None if raw is None else LocalChanges.decode(raw)

    def volume_pairing(self) -> VolumePairing:
        raw = self.node.get_state(VolumePairing.KEY)
        return VolumePairing() if raw is None else VolumePairing.decode(raw)
