"""The primary, sans-IO: the method of the seed (Fig. 2, steps 62-80).

All volumes of the node are one consistency group with one sequence space.
A driver feeds `PrimaryNode.step` typed events (engine/events.py) with
`now` and applies the Output. Read the phase table in phases.py first; then
the handlers below, one per event:

- host requests (host_writes.py): each write is applied locally; while
  mirroring it gets the next seq and is sent. Async mode completes it once
  local, sync mode once the secondary acknowledges it. The in-flight window
  bounds the lag.
- link down (EOF, reset, or silence past `link_timeout_s`), step 62: one
  pause of the whole group, a snapshot of every volume, and the
  unacknowledged writes recorded with it in one commit (steps 64-70).
- link up (step 72): decide.py refuses a split brain; else the base is the
  snapshot whose record matches the secondary's generation; then resync
  rounds (rounds.py, steps 74-78); on each commit the round's target
  becomes the base and the old base is
  deleted (step 80). The first round small enough is the last: writes after
  its snapshot are mirrored behind its commit.
- the rounds' lifecycle (resume a cut round, compare digests first, start,
  send, commit) is in primary_rounds.py.
- unclean restart: the activity log's hot regions join the resync.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections import deque

from blockmirror.engine.activity import ActivityLog
from blockmirror.engine.bases import ResyncBases
from blockmirror.engine.config import PrimaryConfig
from blockmirror.engine.events import (
    CloseLink, Dial, HostRequests, LinkClosed, LinkUp, Output, Received, StartVerify, Stop, TakeSnapshot,
)
from blockmirror.engine.host_writes import HostWrites
from blockmirror.engine.lag import lag_seconds
from blockmirror.engine.linkclock import Backoff, LinkClock
from blockmirror.engine.phases import (
    PRIMARY_IN_ROUND, PRIMARY_LINKED, PRIMARY_SENDING_ROUND, PRIMARY_TRANSITIONS, PRIMARY_WAITING,
    PhaseMachine,
)
from blockmirror.engine.phases import PrimaryPhase as P
from blockmirror.engine.records import (
    ActivityRecord, PrimaryPoint, PrimaryRound, RecordStore, ResyncBase, extend_history,
)
from blockmirror.engine.report import primary_status
from blockmirror.engine.decide import Decision, decide
from blockmirror.engine.roles import bind_at_handshake
from blockmirror.engine.rounds import (
    Geometry, ResyncRound, RoundSender,
)
from blockmirror.engine.primary_rounds import Comparison, PrimaryRounds
from blockmirror.engine.verify import PrimaryVerify, VerifyRun, VerifySummary
from blockmirror.engine.window import InflightWindow
from blockmirror.errors import BlockmirrorError
from blockmirror.protocol import (
    Ack, Error, Goodbye, Heartbeat, HeartbeatAck, LocalNode, ResyncCommitted, Role, VerifyReply,
    VolumeInfo,
)
from blockmirror.protocol.errors import ErrorCode, error_hint
from blockmirror.status import FULL, PRIMARY, ResyncSummary, SplitBrainStatus, State, Status
from blockmirror.storage import Node

UNLIMITED = 1 << 62


class PrimaryNode(HostWrites, PrimaryRounds, PrimaryVerify):
    role = PRIMARY

    def __init__(self, node: Node, config: PrimaryConfig, rng: random.Random, now: float, pair_uuid: uuid.UUID,
                 pair_name: str, observer=None):
        self.node = node
        self.config = config
        self.rng = rng
        self.observer = observer  # the simulator's checker; None in the daemons
        self.geo = Geometry(list(node.volumes), [v.size for v in node.volumes.values()], node.chunk_size)
        self.records = RecordStore(node)
        self.bases = ResyncBases(node, self.records)
        self.activity = ActivityLog(node, config.activity_region_bytes, self.records)
        self.rounds = RoundSender(node, self.geo, config.resync_extent_bytes_max)
        self.window = InflightWindow(config.window_bytes_max, config.window_writes_max)
        self.machine = PhaseMachine(PRIMARY_TRANSITIONS, P.DISCONNECTED)
        self.clock = LinkClock(config.heartbeat_interval_s, config.link_timeout_s)
        self.backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s, rng)
        self.local = LocalNode(Role.PRIMARY, uuid.UUID(node.node_uuid), pair_uuid, pair_name,
                               tuple(VolumeInfo(n, u, s) for n, u, s in self.volume_infos()))
        self.generation: uuid.UUID | None = None
        self.seq = 0
        self.acked = 0
        self.outbox: deque = deque()
        self.live_queue: deque = deque()  # FINAL_SENDING: mirrored writes wait behind the commit
        self.waiting: deque = deque()  # host requests not yet admitted (window full)
        self.round: ResyncRound | None = None
        self.open_round: PrimaryRound | None = None  # the round to resume, until its commit is confirmed
        self.link: int | None = None  # the established link
        self.attempt: int | None = None  # the link being dialled
        self._links = 0
        self._connect_deadline = float("inf")
        self._reconnect_at = now
        self._next_activity_checkpoint = now + config.activity_checkpoint_s
        self.rounds_this_link = 0
        self._round_ids = 0
        self.last_resync = ResyncSummary()
        self._episode = ResyncSummary()
        self._episode_started = now
        self.resync_chunks_total = 0
        self.last_pause_ns = 0
        self.link_failures = 0
        self.recovered_hot: list = []
        self.split_brain: SplitBrainStatus | None = None  # set by a refusal, cleared by a link that resyncs
        self.now = now
        self.unsynced_since: float | None = None  # no link or a round: the oldest write the secondary lacks
        self._resync_bytes_ended = 0  # data bytes of the rounds that ended (committed or cut)
        self.rpo_exceeded = False
        self.verify: VerifyRun | None = None  # `blockmirror verify` under way
        self.compare: Comparison | None = None  # digests compared before a round (phase COMPARING)
        self.last_verify: VerifySummary | None = None
        self._verify_ids = 0
        self._out = Output()
        self._restore(now)
        self._shown_state = self.state

    # -- the driver's side -------------------------------------------------------------
    def step(self, now: float, events=(), send_budget: int = UNLIMITED) -> Output:
        """Handle `events` in order, then timers; returns what to do."""
        self.now = now
        for event in events:
            self._handlers[type(event)](self, now, event)
        self._timers(now)
        self._verify_step(now)
        self._compare_step(now)
        if self.phase in PRIMARY_WAITING and now >= self._reconnect_at:
            self._dial(now)
        out = self._out
        out.link = self.link
        if self.link is not None and send_budget > 0:
            out.send = self._transmit(send_budget)  # may send a round's commit: a phase change of this step
        out.state = self.state
        out.next_timer = self.next_timer()
        self._out = Output()
        return out

    @property
    def phase(self) -> P:
        return self.machine.phase

    @property
    def linked(self) -> bool:
        return self.phase in PRIMARY_LINKED

    @property
    def state(self) -> State:
        if self.phase is P.MIRRORING:
            return State.MIRRORING
        if self.phase in PRIMARY_IN_ROUND:
            return State.INITIAL_SYNC if self.round.kind == FULL else State.RESYNCING
        if self.phase is P.COMPARING:
            return State.INITIAL_SYNC if self.compare.base is None else State.RESYNCING
        if self.split_brain is not None:
            return State.SPLIT_BRAIN
        return State.INITIAL_SYNC if self.generation is None else State.DISCONNECTED

    def next_timer(self) -> float:
        t = self._next_activity_checkpoint
        wait = None if self.verify is None else self.verify.wait_s()
        if wait is not None:
            t = min(t, self.now + wait)
        if self.linked:
            return min(t, self.clock.deadline())
        if self.phase is P.CONNECTING:
            return min(t, self._connect_deadline)
        if self.phase in PRIMARY_WAITING:
            return min(t, self._reconnect_at)
        return t

    def _move(self, new: P, reason: str) -> None:
        self._out.changes.append(self.machine.move(new, reason))
        state = self.state
        if state != self._shown_state:
            self._out.info(f"state {self._shown_state} -> {state} ({reason})")
            self._shown_state = state

    # -- startup -------------------------------------------------------------------------
    def _restore(self, now: float) -> None:
        point = self.records.primary_point()
        self.generation = point.generation
        self.history = point.history
        hot = [] if point.clean else self.activity.hot_extents(self.geo.sizes)
        self.recovered_hot = hot
        if not point.clean:
            self._out.warning(f"unclean stop: {len(hot)} hot regions join the resync")
        lost = self.bases.lost()
        self._restore_round()
        rows, bases = self.bases.restore(hot)
        if lost and self.generation is not None:
            # Deleted by hand: what changed since it is known nowhere. The
            # point is forgotten (durably, with the rows below), so that no
            # restart base can ever claim it: the next resync is a full sync.
            self._out.warning(f"resync base snapshot {', '.join(map(str, lost))} was deleted: what changed "
                              f"since is unknown, so the next resync is a full sync")
            self.history = extend_history(self.generation, self.history)
            self.generation = None
        elif self.generation is not None and not bases:
            # Before the activity log is cleared: its hot regions must be in a
            # base's record at every instant, a crash in between included.
            self._snapshot("restart", lambda sid: ResyncBase(sid, self.generation, 0, tuple(hot)))
        rows.update(RecordStore.rows(self._point(clean=False), delete=(ActivityRecord.KEY,)))
        self.node.set_state(rows)
        self.activity.clear()

    def _point(self, clean: bool) -> PrimaryPoint:
        return PrimaryPoint(self.generation, clean, self.history)

    def _snapshot(self, label: str, base=None):
        """Steps 64-70 in one call: pause, snapshot every volume, record
        (the base record commits with the snapshot), resume."""
        return self._snapshot_with(label, None if base is None else (lambda sid: RecordStore.rows(base(sid))))

    def _snapshot_with(self, label: str, rows):
        info = self.node.snapshot(label, rows, internal=True)
        self.last_pause_ns = info.pause_ns
        return info

    def _on_take_snapshot(self, now: float, event: TakeSnapshot) -> None:
        """A user's snapshot of every volume (one pause). It joins the chain:
        the resync bases' diffs still cover every write."""
        try:
            info = self.node.snapshot(event.label)
        except BlockmirrorError as exc:  # a full metadata store: the user is told, nothing changed
            self._out.replies.append((event.token, exc))
            return
        self.last_pause_ns = info.pause_ns
        self._out.info(f"user snapshot {info.id} ({event.label}); writes paused {info.pause_ns / 1e6:.2f} ms")
        self._out.replies.append((event.token, info))

    def volume_infos(self) -> list[tuple[str, uuid.UUID, int]]:
        """A promoted node keeps the pair's volume UUIDs it took as a secondary."""
        paired = self.records.volume_pairing().primary_uuids
        return [(v.name, uuid.UUID(paired.get(v.name, v.uuid)), v.size) for v in self.node.volumes.values()]

    # -- the link ----------------------------------------------------------------------------
    def _dial(self, now: float) -> None:
        """Step 72's attempt: the driver connects and starts the handshake."""
        self._links += 1
        self.attempt = self._links
        self._connect_deadline = now + self.config.link_timeout_s
        self._move(P.CONNECTING, f"connection attempt {self.attempt}")
        self._out.start.append(Dial(self.attempt, self.local))

    def _connect_failed(self, now: float, reason: str) -> None:
        self.attempt = None
        self._connect_deadline = float("inf")
        self._reconnect_at = now + self.backoff.next_delay()
        self._move(P.DISCONNECTED if self.split_brain is None else P.SPLIT_BRAIN, f"connect failed: {reason}")
        self._out.info(f"connect failed: {reason}; next try in {self._reconnect_at - now:.2f}s")

    def _on_link_up(self, now: float, event: LinkUp) -> None:
        """Step 72: the link is back; choose how to bring the secondary up."""
        if event.link != self.attempt:
            return  # an attempt given up on: the driver is closing it
        est = event.established
        assert [v.name for v in est.volumes] == self.geo.names, "volume order is the primary's"
        decision = decide(self.node, self.geo.names, self.bases, self.generation, self.history, est,
                          self.config.mutations)
        if decision.refused is not None:
            self._refuse(now, event.link, decision)
            return
        self.split_brain = None
        self.attempt = None
        self.link = event.link
        self._connect_deadline = float("inf")
        self.backoff.reset()
        self.clock.up(now)
        self.seq = self.acked = est.committed_seq
        self.rounds_this_link = 0
        self._episode = ResyncSummary()
        self._episode_started = now
        bind_at_handshake(self._out, self.records, self.local.pair_name, self.local.pair_uuid, PRIMARY)
        self._begin_resync(now, decision, est)

    def _refuse(self, now: float, link: int, decision: Decision) -> None:
        """Split brain: the link is refused with SPLIT_BRAIN, neither image
        changes, and the dial is retried (the secondary may be told to
        discard: `demote --discard-my-data`)."""
        self.split_brain = decision.refused
        self._out.log(logging.ERROR, f"{decision.why} (try: {error_hint(ErrorCode.SPLIT_BRAIN)})")
        last = (Error.make(ErrorCode.SPLIT_BRAIN, decision.why),)
        self._out.close.append(CloseLink(link, decision.why, reset=False, last=last))
        self._connect_failed(now, "split brain")

    def _on_received(self, now: float, event: Received) -> None:
        if event.link != self.link:
            return
        self.clock.heard(now)
        for msg in event.messages:
            if isinstance(msg, Ack):
                self._on_ack(now, msg.seq)
            elif isinstance(msg, ResyncCommitted):
                self._on_committed(now, msg)
            elif isinstance(msg, Heartbeat):
                self.outbox.append(HeartbeatAck(msg.token))
            elif isinstance(msg, VerifyReply):
                self._verify_reply(msg)
            elif not isinstance(msg, (HeartbeatAck, Goodbye)):
                raise AssertionError(f"unexpected message {type(msg).__name__}")

    def _on_ack(self, now: float, seq: int) -> None:
        extents, tokens = self.window.acknowledge(seq)
        self._out.completions.extend((t, None) for t in tokens)
        self.acked = max(self.acked, seq)
        self.activity.release(extents)
        self._admit(now)

    def _on_link_closed(self, now: float, event: LinkClosed) -> None:
        if event.link == self.link:
            self._link_down(now, event.reason)
        elif event.link == self.attempt:
            self._connect_failed(now, event.reason)

    def _link_down(self, now: float, reason: str) -> None:
        """Step 62 detected: record what the secondary may lack, go on locally."""
        phase, rnd = self.phase, self.round
        self.link = None
        self.link_failures += 1
        self._reconnect_at = now + self.backoff.next_delay()
        unacked = self.window.extents()
        oldest = self.window.oldest_at()
        if oldest is not None and (self.unsynced_since is None or oldest < self.unsynced_since):
            self.unsynced_since = oldest
        if rnd is not None:
            self._resync_bytes_ended += rnd.data_bytes_sent
        if "no-pause" in self.config.mutations:
            # Broken on purpose: writes slip in between the failure and the snapshot.
            self._move(P.DISCONNECTED, reason)
            self._admit(now)
        if phase is P.MIRRORING:
            gen, acked = self.generation, self.acked
            self._snapshot("link-down", lambda sid: ResyncBase(sid, gen, acked, tuple(unacked)))
        elif phase in PRIMARY_SENDING_ROUND:
            # The round never committed: T stays, with the round's record, for
            # it to resume; the base still tracks every change since the
            # secondary's generation, whatever happens to T.
            pass
        elif phase is P.COMPARING:
            self._compare_lost()
        else:
            # The commit may or may not have landed: T is the base if it did.
            self.bases.keep(rnd.as_base())
        _, tokens = self.window.clear()
        self._out.completions.extend((t, None) for t in tokens)
        self.activity.release(unacked)
        if self.verify is not None:
            self.verify.link_lost()
        self.outbox.clear()
        self.live_queue.clear()
        self.round = None
        if self.phase is not P.DISCONNECTED:
            self._move(P.DISCONNECTED, f"link down: {reason}")
        self._out.warning(f"link down ({reason}): {len(unacked)} unacknowledged writes recorded; "
                          f"writes continue locally")
        self._admit(now)

    # -- timers and stop ---------------------------------------------------------------------
    def _timers(self, now: float) -> None:
        self._check_rpo(now)
        if now >= self._next_activity_checkpoint:
            self._next_activity_checkpoint = now + self.config.activity_checkpoint_s
            self.activity.checkpoint()
        if self.phase is P.CONNECTING and now >= self._connect_deadline:
            reason = f"no handshake with the secondary within {self.config.link_timeout_s:g}s"
            self._out.close.append(CloseLink(self.attempt, reason))
            self._connect_failed(now, reason)
        elif self.linked and self.clock.silent(now):
            reason = f"nothing heard from the secondary for {self.config.link_timeout_s:g}s (link silent)"
            self._out.close.append(CloseLink(self.link, reason))
            self._link_down(now, reason)
        elif self.linked and self.clock.heartbeat_due(now):
            self.outbox.append(Heartbeat(int(now * 1000) & 0xFFFFFFFFFFFFFFFF))

    def _check_rpo(self, now: float) -> None:
        """--rpo-warn: one warning when the lag passes it, one line when back under."""
        limit = self.config.rpo_warn_s
        if limit is None:
            return
        lag = lag_seconds(self, now)
        if lag > limit and not self.rpo_exceeded:
            self.rpo_exceeded = True
            self._out.warning(f"lag {lag:.1f}s exceeds --rpo-warn {limit:g}s: the secondary lacks writes older "
                              f"than that ({self.state})")
        elif lag <= limit and self.rpo_exceeded:
            self.rpo_exceeded = False
            self._out.info(f"lag back under --rpo-warn {limit:g}s")

    def _on_stop(self, now: float, event: Stop) -> None:
        """Orderly stop: record what the secondary lacks, mark the stop clean."""
        link = self.link
        if link is not None:
            self._link_down(now, "shutting down")
            self._out.close.append(CloseLink(link, "shutting down", reset=False, last=(Goodbye(),)))
        if self.attempt is not None:
            self._out.close.append(CloseLink(self.attempt, "shutting down"))
            self._connect_failed(now, "shutting down")
        self.node.flush()
        self.activity.clear()
        self.records.save(self._point(clean=True), delete=(ActivityRecord.KEY,))
        self._move(P.STOPPED, "stopped")

    def drained(self) -> tuple[bool, int | None]:
        """(everything acknowledged or no link, the round under way)."""
        done = not self.linked or (self.phase is P.MIRRORING and self.acked >= self.seq and not self.waiting)
        return done, None if self.round is None else self.round.id

    # -- status --------------------------------------------------------------------------------
    def status(self, now: float) -> Status:
        return primary_status(self, now)

    def resync_bytes_total(self) -> int:
        """Data bytes resync rounds handed to the link since this node started."""
        return self._resync_bytes_ended + (self.round.data_bytes_sent if self.round is not None else 0)

    def round_started_at(self) -> float | None:
        if self.compare is not None:
            return self.compare.run.started
        return None if self.round is None else self.round.started

    _handlers = {
        HostRequests: HostWrites._on_host,
        LinkUp: _on_link_up,
        Received: _on_received,
        LinkClosed: _on_link_closed,
        Stop: _on_stop,
        TakeSnapshot: _on_take_snapshot,
        StartVerify: PrimaryVerify._on_start_verify,
    }
