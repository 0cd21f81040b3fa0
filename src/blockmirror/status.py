"""The status of a running node: one schema for both roles.

The nodes fill the replication fields, the daemons add what only they know
(the link's sockets, the pair, timings); `blockmirror status` (table and
`--json`), the control socket, HTTP `/status` and `/metrics` and the
progress line all read these dataclasses. The JSON form is flat: the common
fields, then the role's own. docs/STATUS.md describes every field; a test
holds that page to this file.
"""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass, field, fields


class State(str, enum.Enum):
    """What a user sees as `state`."""
    INITIAL_SYNC = "initial-sync"  # no consistent image on the secondary yet (first, full sync)
    MIRRORING = "mirroring"
    DISCONNECTED = "disconnected"
    RESYNCING = "resyncing"
    STANDALONE = "standalone"  # a primary run without --peer: nothing is mirrored
    SPLIT_BRAIN = "split-brain"  # both nodes wrote since the last point they shared: the link is refused

    def __str__(self) -> str:
        return self.value


PRIMARY = "primary"
SECONDARY = "secondary"
FULL = "full"
INCREMENTAL = "incremental"


@dataclass
class ResyncSummary:
    """The last resync: every round from a reconnect until mirroring (on the
    secondary: the rounds it committed on the current or last link)."""
    rounds: int = 0
    kind: str = ""  # FULL if any round had no common base, else INCREMENTAL
    chunks: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def add_round(self, kind: str, chunks: int, nbytes: int) -> None:
        self.rounds += 1
        self.kind = FULL if FULL in (self.kind, kind) else INCREMENTAL
        self.chunks += chunks
        self.bytes += nbytes


@dataclass
class ResyncProgress:
    """The round under way. The primary counts chunks handed to the link
    (`chunks_done` of `chunks_total`); the secondary counts what arrived."""
    round: int
    kind: str
    chunks_done: int
    bytes_done: int = 0
    bytes_total: int = 0  # the round's size (the secondary: the announced maximum)
    seconds: float = 0.0
    rate_bps: int = 0
    eta_s: float | None = None
    chunks_total: int | None = None  # primary only
    bytes_queued: int | None = None  # primary only: handed to the link, not yet at the secondary

    def timed(self, started: float, now: float) -> ResyncProgress:
        """Fill the average rate and ETA, `started`/`now` in one clock."""
        elapsed = max(0.0, now - started)
        rate = self.bytes_done / elapsed if elapsed > 0 else 0.0
        self.seconds = round(elapsed, 3)
        self.rate_bps = int(rate)
        left = max(0, self.bytes_total - self.bytes_done)
        self.eta_s = round(left / rate, 1) if rate > 0 and self.bytes_total else None
        return self


@dataclass
class VerifySummary:
    """The last verify that ended (status `last_verify`)."""
    id: int = 0
    chunks: int = 0  # chunks compared
    out_of_sync_chunks: int = 0
    repaired_chunks: int = 0
    seconds: float = 0.0
    volumes: list[str] = field(default_factory=list)
    result: str = ""  # identical | out-of-sync | repaired | cancelled
    out_of_sync: list[dict] = field(default_factory=list)  # {volume, offset, length}, at most 1000 (engine/verify.py)


@dataclass
class VerifyProgress:
    """The verify under way (status `verify`)."""
    id: int
    state: str  # verifying | paused | repairing
    chunks_done: int
    chunks_total: int
    out_of_sync_chunks: int
    seconds: float = 0.0
    rate_bps: int = 0
    eta_s: float | None = None


@dataclass
class SnapshotStatus:
    id: int
    label: str
    space_bytes: int
    exceptions: int
    internal: bool = False


@dataclass
class VolumeStatus:
    name: str
    size: int
    uuid: str


@dataclass
class PairStatus:
    name: str
    uuid: str


@dataclass
class LinkStatus:
    peer: str
    established: bool
    tls: dict | None
    bytes_sent: int
    bytes_received: int


@dataclass
class RoundStatus:
    id: int
    kind: str


@dataclass
class PrimaryStatus:
    mode: str | None  # None: standalone
    acked_seq: int = 0
    inflight_writes: int = 0
    inflight_bytes: int = 0
    waiting_writes: int = 0
    lag_writes: int = 0
    write_pause_ms: float = 0.0
    link_failures: int = 0
    unclean_restart_hot_bytes: int = 0
    peer: str = ""
    last_link_error: str | None = None
    connect_attempts: int = 0
    out_of_sync_chunks: int = 0
    out_of_sync_bytes: int = 0
    lag_seconds: float = 0.0
    unacked_bytes: int = 0
    rpo_exceeded: bool = False  # --rpo-warn: the lag is past it
    secondary_consistent_at: str | None = None  # wall clock (UTC) of the newest point the secondary holds
    verify: VerifyProgress | None = None  # `blockmirror verify` under way
    last_verify: VerifySummary | None = None  # the last one that ended since the daemon started


@dataclass
class SecondaryStatus:
    consistent: bool = False
    round_open: RoundStatus | None = None
    journal_bytes: int = 0
    listen: str = ""
    tls: bool = False
    tls_failures: int = 0
    connections_accepted: int = 0
    busy_refusals: int = 0
    # A demoted node: the chunks of its own that its primary's data replaces
    # (pending until the first resync commits), and the snapshot keeping them.
    discarded_chunks: int = 0
    discarded_snapshot: int | None = None
    consistent_at: str | None = None  # wall clock (UTC): its image is the primary's as of then


@dataclass
class Totals:
    """Counts since the daemon started."""
    resync_bytes: int = 0  # primary: data bytes resync rounds sent (cut rounds too); secondary: received


@dataclass
class SplitBrainStatus:
    """Both nodes wrote since the last point they shared: the chunks each
    wrote (None: not known on this side)."""
    primary_chunks: int | None = None
    secondary_chunks: int | None = None


@dataclass
class Status:
    role: str
    state: State
    phase: str  # the node's phase (engine/phases.py), finer than `state`
    peer_connected: bool
    generation: str | None
    seq: int
    last_resync: ResyncSummary = field(default_factory=ResyncSummary)
    resync_progress: ResyncProgress | None = None
    snapshots: list[SnapshotStatus] = field(default_factory=list)
    volumes: list[VolumeStatus] = field(default_factory=list)
    pair: PairStatus | None = None
    node: str = ""
    link: LinkStatus | None = None
    state_seconds: float = 0.0
    engine_steps: int = 0
    split_brain: SplitBrainStatus | None = None
    totals: Totals = field(default_factory=lambda: Totals())
    primary: PrimaryStatus | None = None
    secondary: SecondaryStatus | None = None

    def as_dict(self) -> dict:
        """The flat JSON form."""
        out = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name not in (PRIMARY, SECONDARY)}
        own = self.primary if self.role == PRIMARY else self.secondary
        if own is not None:
            out.update(asdict(own))
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> Status:
        """Parse what `as_dict` made (a client of the control socket or /status)."""
        def sub(name, kind):
            v = raw.get(name)
            return None if v is None else kind(**v)
        own_cls = PrimaryStatus if raw["role"] == PRIMARY else SecondaryStatus
        own = own_cls(**{f.name: raw[f.name] for f in fields(own_cls) if f.name in raw})
        if isinstance(own, SecondaryStatus) and isinstance(own.round_open, dict):
            own.round_open = RoundStatus(**own.round_open)
        if isinstance(own, PrimaryStatus):
            own.verify = None if own.verify is None else VerifyProgress(**own.verify)
            own.last_verify = None if own.last_verify is None else VerifySummary(**own.last_verify)
        return cls(
            role=raw["role"], state=State(raw["state"]), phase=raw.get("phase", ""),
            peer_connected=raw["peer_connected"], generation=raw.get("generation"), seq=raw.get("seq", 0),
            last_resync=ResyncSummary(**raw.get("last_resync") or {}),
            resync_progress=sub("resync_progress", ResyncProgress),
            snapshots=[SnapshotStatus(**s) for s in raw.get("snapshots", [])],
            volumes=[VolumeStatus(**v) for v in raw.get("volumes", [])],
            pair=sub("pair", PairStatus), node=raw.get("node", ""), link=sub("link", LinkStatus),
            state_seconds=raw.get("state_seconds", 0.0), engine_steps=raw.get("engine_steps", 0),
            split_brain=sub("split_brain", SplitBrainStatus), totals=Totals(**(raw.get("totals") or {})),
            primary=own if raw["role"] == PRIMARY else None,
            secondary=own if raw["role"] == SECONDARY else None)


def wall_clock(seconds_ago: float) -> str:
    """An instant `seconds_ago` before now, as UTC ISO 8601 (milliseconds)."""
    t = time.time() - max(seconds_ago, 0.0)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def snapshot_list(node) -> list[SnapshotStatus]:
    """A storage node's snapshots with the space each holds."""
    space = {s.id: s for s in node.snapshot_space()}
    return [SnapshotStatus(s.id, s.label, space[s.id].data_bytes, space[s.id].exceptions, s.internal)
            for s in node.snapshots()]


def standalone_status(node) -> Status:
    return Status(role=PRIMARY, state=State.STANDALONE, phase=State.STANDALONE.value, peer_connected=False,
                  generation=None, seq=0, snapshots=snapshot_list(node), node=node.path,
                  volumes=[VolumeStatus(v.name, v.size, v.uuid) for v in node.volumes.values()],
                  primary=PrimaryStatus(mode=None))


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return value


def schema_fields() -> dict[str, list[str]]:
    """Every JSON key per part of the schema (for the docs' test)."""
    parts = {"common": Status, "primary": PrimaryStatus, "secondary": SecondaryStatus,
             "last_resync": ResyncSummary, "resync_progress": ResyncProgress, "snapshots": SnapshotStatus,
             "volumes": VolumeStatus, "pair": PairStatus, "link": LinkStatus, "round_open": RoundStatus,
             "split_brain": SplitBrainStatus, "totals": Totals, "verify": VerifyProgress,
             "last_verify": VerifySummary}
    out = {}
    for name, cls in parts.items():
        out[name] = [f.name for f in fields(cls) if f.name not in (PRIMARY, SECONDARY)]
    return out
