"""The secondary, sans-IO: takes the primary's messages, makes them durable
in order, acknowledges cumulatively, and applies resync rounds atomically
(step 78). A driver feeds `SecondaryNode.step` typed events (events.py)
and applies the Output; the phases are in phases.py.

- Live writes go through the redo journal (journal.py): appended per batch
  of received messages, one fdatasync, Ack up to the last durable seq, then
  applied to the volumes.
- An incremental round is applied in place under a safety snapshot taken at
  ResyncBegin (the storage engine's copy-on-write keeps the pre-round image);
  ResyncCommit syncs the volumes and commits the new generation, then drops
  the snapshot.
- A full round (no common base) writes in place with the node marked
  inconsistent until its commit.
- A round interrupted by a link failure, a crash or a stop stays open with
  its resume point (secondary_store.py): the handshake offers it, and a
  ResyncBegin with `resume` continues it; any other ResyncBegin rolls it
  back first.
- The read-only export reads `read_image`: the last committed image, never a
  half-applied round; nothing before the first complete sync.
"""

from __future__ import annotations

import uuid

from blockmirror.engine.config import SecondaryConfig
from blockmirror.engine.events import (
    Accepted, Answer, CloseLink, LinkClosed, LinkUp, Output, Received, Stop,
)
from blockmirror.engine.journal import KIND_WRITE, KIND_ZERO
from blockmirror.engine.linkclock import LinkClock
from blockmirror.engine.phases import (
    SECONDARY_LINKED, SECONDARY_TRANSITIONS, PhaseMachine,
)
from blockmirror.engine.phases import SecondaryPhase as S
from blockmirror.engine.records import FULL, INCREMENTAL, OpenRound, coalesce
from blockmirror.engine.report import secondary_status
from blockmirror.engine.roles import bind_at_handshake, chunk_digests
from blockmirror.engine.secondary_store import SecondaryStore
from blockmirror.errors import BlockmirrorError
from blockmirror.protocol import (
    NIL_UUID, Ack, Error, Established, Goodbye, Heartbeat, HeartbeatAck, LocalNode, ResyncBegin,
    ResyncCommit, ResyncCommitted, ResyncData, ResyncZeroes, Role, VerifyReply, VerifyRequest, VolumeInfo, Write,
    WriteZeroes,
)
from blockmirror.protocol.errors import ErrorCode, ProtocolError, RemoteProtocolError
from blockmirror.protocol.handshake import READY_CHANGED_MAX
from blockmirror.status import (
    SECONDARY, ResyncProgress, ResyncSummary, SplitBrainStatus, State, Status,
)
from blockmirror.storage import Node, WriteOp


class NoConsistentImage(BlockmirrorError):
    """The secondary holds no complete image to serve yet."""


class SecondaryNode:
    role = SECONDARY

    def __init__(self, node: Node, config: SecondaryConfig, now: float, pair_uuid: uuid.UUID, pair_name: str,
                 observer=None):
        self.node = node
        self.config = config
        self.observer = observer
        self.pair_uuid = pair_uuid
        self.pair_name = pair_name
        self.machine = PhaseMachine(SECONDARY_TRANSITIONS, S.DISCONNECTED)
        self.clock = LinkClock(config.heartbeat_interval_s, config.link_timeout_s)
        self.link: int | None = None
        self.outbox: list = []
        self._last_checkpoint = now
        self._round_ops: list[WriteOp] = []
        self._round_pos: tuple[str, int] | None = None  # end of the last round extent received
        self._round_bytes = 0  # ... and the bytes received since the last end of batch
        self._got = False  # messages received since the last end of batch
        self._primary_uuids: dict[str, str] = {}
        self.last_resync = ResyncSummary()
        self._episode = ResyncSummary()
        self._episode_started: float | None = None
        self.round_progress: tuple[ResyncProgress, float] | None = None  # the round arriving, and its start
        self.split_brain: SplitBrainStatus | None = None  # the primary refused the link for it
        self.resync_bytes_received = 0  # data bytes of resync rounds since start (cut rounds too)
        # When its image was last known to be the primary's, as of the stream (monotonic): the last
        # message heard while linked outside a round, or a round's commit. None: not since it started.
        self.consistent_as_of: float | None = None
        self._round_began_at: float | None = None
        self._out = Output()
        self.store = SecondaryStore(node, config, self._out)
        self._shown_state = self.state

    # -- the driver's side -------------------------------------------------------------
    def step(self, now: float, events=(), send_budget: int = 0) -> Output:
        """Handle `events` in order, then timers; returns what to do. (The
        secondary's messages are small: it takes no send budget.)"""
        for event in events:
            self._handlers[type(event)](self, now, event)
        if self._got:
            self._end_batch(now)
        self._timers(now)
        out, self._out = self._out, Output()
        self.store.out = self._out
        out.link = self.link
        out.send, self.outbox = self.outbox, []
        out.state = self.state
        out.next_timer = self.next_timer()
        return out

    @property
    def phase(self) -> S:
        return self.machine.phase

    @property
    def linked(self) -> bool:
        return self.phase in SECONDARY_LINKED

    @property
    def generation(self) -> uuid.UUID:
        return self.store.point.generation

    @property
    def seq(self) -> int:
        return self.store.point.seq

    @property
    def inconsistent(self) -> bool:
        return not self.store.point.consistent

    @property
    def round_open(self) -> OpenRound | None:
        return self.store.round

    @property
    def applied_batches(self) -> int:
        return self.store.applied_batches

    @property
    def state(self) -> State:
        if not self.linked:
            return State.DISCONNECTED if self.split_brain is None else State.SPLIT_BRAIN
        if not self.store.point.holds_image or self.phase is S.FULL_ROUND:
            return State.INITIAL_SYNC
        return State.RESYNCING if self.phase is S.INCREMENTAL_ROUND else State.MIRRORING

    def next_timer(self) -> float:
        t = self._last_checkpoint + self.config.journal_checkpoint_s
        return min(t, self.clock.deadline()) if self.linked else t

    def _move(self, new: S, reason: str) -> None:
        self._out.changes.append(self.machine.move(new, reason))
        state = self.state
        if state != self._shown_state:
            self._out.info(f"state {self._shown_state} -> {state} ({reason})")
            self._shown_state = state

    def local_node(self) -> LocalNode:
        """What the handshake says of us: the committed point as of now (nil
        while no complete image is held)."""
        point = self.store.point
        gen, seq = (point.generation, point.seq) if point.consistent else (NIL_UUID, 0)
        own = self.store.local_changes
        changed = digests = ()
        diverged, discard, demoted = 0, False, False
        if own is not None and own.generation == gen:
            changed, digests = coalesce(own.extents, READY_CHANGED_MAX), own.digests
            diverged, discard, demoted = own.diverged, own.discard, own.demoted
        rnd = self.store.round
        mark = None
        if rnd is not None and rnd.cursor is not None:
            mark = (rnd.id, rnd.target_generation, *rnd.cursor)
        return LocalNode(Role.SECONDARY, uuid.UUID(self.node.node_uuid), self.pair_uuid, self.pair_name,
                         tuple(VolumeInfo(n, u, s) for n, u, s in self.volume_infos()), gen, seq, changed, digests,
                         diverged, discard, demoted, mark)

    def volume_infos(self) -> list[tuple[str, uuid.UUID, int]]:
        """A nil UUID until the first full sync pairs a volume with the primary's."""
        paired = self.store.pairing.primary_uuids
        return [(v.name, uuid.UUID(paired[v.name]) if v.name in paired else NIL_UUID, v.size)
                for v in self.node.volumes.values()]

    def read_image(self, volume: str, offset: int, length: int) -> bytes:
        """The last committed image: during an incremental round, the pre-round
        image held by the safety snapshot; nothing before the first sync."""
        if not self.store.point.holds_image:
            raise NoConsistentImage("no consistent image yet: the first full sync has not completed",
                                    hint="wait for the primary's initial sync (blockmirror status)")
        rnd = self.store.round
        if rnd is not None and rnd.kind == INCREMENTAL and "export-ignores-round" not in self.config.mutations:
            return self.node.read_snapshot(rnd.safety, volume, offset, length)
        return self.node.volumes[volume].read(offset, length)

    # -- the link ----------------------------------------------------------------------------
    def _on_accepted(self, now: float, event: Accepted) -> None:
        self._out.start.append(Answer(event.link, self.local_node()))

    def _on_link_up(self, now: float, event: LinkUp) -> None:
        if self.link is not None:  # the primary came back before our own timeout noticed it left
            self._out.close.append(CloseLink(self.link, "superseded by a new connection from the primary"))
            self._link_down(now, "superseded by a new connection from the primary")
        est: Established = event.established
        self.link = event.link
        self.store.names = [v.name for v in est.volumes]
        self._primary_uuids = {v.name: str(v.uuid) for v in est.volumes}
        self.clock.up(now)
        self._episode = ResyncSummary()
        self._episode_started = None
        self.split_brain = None
        self._move(S.LINKED, "link up")
        bind_at_handshake(self._out, self.store.records, self.pair_name, self.pair_uuid, SECONDARY)

    def _on_link_closed(self, now: float, event: LinkClosed) -> None:
        if event.link != self.link:
            return
        if self._got:
            self._end_batch(now)  # what arrived before the close is still good
        if self.link == event.link:
            if event.refused == ErrorCode.SPLIT_BRAIN:
                own = self.store.local_changes
                self.split_brain = SplitBrainStatus(None, None if own is None else own.diverged)
            self._link_down(now, event.reason)

    def _link_down(self, now: float, reason: str) -> None:
        self._out.info(f"link down: {reason}")
        self.link = None
        self.outbox.clear()
        self._round_ops.clear()
        self._got = False
        self.round_progress = None
        self._round_pos, self._round_bytes = None, 0
        self.store.link_down(now)
        self._move(S.DISCONNECTED, f"link down: {reason}")

    def _fail_link(self, now: float, reason: str, error: Error | None = None) -> None:
        last = () if error is None else (error,)
        self._out.close.append(CloseLink(self.link, reason, reset=error is None, last=last))
        self._link_down(now, reason)

    # -- messages --------------------------------------------------------------------------
    def _on_received(self, now: float, event: Received) -> None:
        if event.link != self.link:
            return
        self.clock.heard(now)
        if self.phase is S.LINKED and self.store.point.holds_image:
            self.consistent_as_of = now
        try:
            for msg in event.messages:
                self._on_message(now, msg)
                if self.link != event.link:
                    return  # failed while storing: the rest of the batch is dropped with the link
                self._got = True
        except ProtocolError as exc:  # refused: nothing of the offending message was written
            self._fail_link(now, f"protocol error: {exc}", Error.make(exc.code, str(exc.args[0])))
        except BlockmirrorError as exc:  # a round's snapshot or commit the disk cannot take
            self._fail_link(now, f"cannot store the primary's data: {exc}")

    def _on_message(self, now: float, msg) -> None:
        store = self.store
        if isinstance(msg, Write):
            self._live(msg.seq)
            store.append(msg.seq, msg.volume, KIND_WRITE, msg.offset, len(msg.data), msg.data)
        elif isinstance(msg, WriteZeroes):
            self._live(msg.seq)
            store.append(msg.seq, msg.volume, KIND_ZERO, msg.offset, msg.length_bytes, None)
        elif isinstance(msg, ResyncData):
            self._round_ops.append(WriteOp(store.names[msg.volume], msg.offset, msg.data))
            self.resync_bytes_received += len(msg.data)
            self._round_extent(msg.volume, msg.offset, msg.length_bytes, data=True)
        elif isinstance(msg, ResyncZeroes):
            self._round_ops.append(WriteOp(store.names[msg.volume], msg.offset, None, msg.length_bytes, "zero"))
            self._round_extent(msg.volume, msg.offset, msg.length_bytes, data=False)
        elif isinstance(msg, Heartbeat):
            self.outbox.append(HeartbeatAck(msg.token))
        elif isinstance(msg, VerifyRequest):
            self._verify(now, msg)
        elif isinstance(msg, ResyncBegin):
            self._begin(now, msg)
        elif isinstance(msg, ResyncCommit):
            self._commit(now, msg)
        elif not isinstance(msg, (HeartbeatAck, Goodbye)):
            raise AssertionError(f"unexpected message {type(msg).__name__}")

    def _live(self, seq: int) -> None:
        """A peer that breaks these is refused (the link closes); nothing is written."""
        if not self.store.point.consistent:
            raise RemoteProtocolError(ErrorCode.REFUSED, "live write to a secondary that holds no consistent "
                                                         "image; a full sync must come first")
        if seq != self.store.journaled_seq + 1:
            raise RemoteProtocolError(ErrorCode.SEQUENCE_ERROR, f"write seq {seq} does not follow seq "
                                                                f"{self.store.journaled_seq}")

    def _end_batch(self, now: float) -> None:
        """Group commit: the round's data, then one journal sync, the
        cumulative Ack, and the live writes applied. A disk that cannot take
        the data fails the link."""
        self._got = False
        try:
            if self._round_ops:
                ops, self._round_ops = self._round_ops, []
                self.store.apply(ops)
                self.store.round_applied(self._round_pos, self._round_bytes, now)
                self._round_bytes = 0
            ack = self.store.end_of_batch()
        except BlockmirrorError as exc:
            self._fail_link(now, f"cannot store the primary's data: {exc}")
            return
        if ack is not None and self.link is not None:
            self.outbox.append(Ack(ack))

    def _begin(self, now: float, msg: ResyncBegin) -> None:
        self._round_began_at = now
        self._end_batch(now)  # the round starts from a clean journal: everything before it applied and synced
        if self.link is None:
            return
        full = msg.base_generation == NIL_UUID
        kind = FULL if full else INCREMENTAL
        store = self.store
        if msg.resume is not None:
            self._resume(msg, kind)
        else:
            if not full and msg.base_generation != store.point.generation:
                raise RemoteProtocolError(ErrorCode.REFUSED, f"round {msg.round_id} starts from generation "
                                                             f"{msg.base_generation}; this secondary holds "
                                                             f"{store.point.generation}")
            store.begin_round(msg.round_id, kind, msg.target_generation, now,
                              in_place="round-in-place" in self.config.mutations)
        self._round_bytes = 0
        self.round_progress = (ResyncProgress(msg.round_id, kind, 0, bytes_total=msg.data_bytes_max), now)
        if self._episode_started is None:
            self._episode_started = now
        self._move(S.FULL_ROUND if full else S.INCREMENTAL_ROUND,
                   f"resync round {msg.round_id} {'resumes' if msg.resume else 'begins'}")

    def _resume(self, msg: ResyncBegin, kind: str) -> None:
        """Continue the open round where its data is durable; anything else
        is refused and changes nothing."""
        rnd = self.store.round
        names = self.store.names
        pos = None if rnd is None or rnd.cursor is None or rnd.cursor[0] not in names else (
            names.index(rnd.cursor[0]), rnd.cursor[1])
        if (rnd is None or (rnd.id, rnd.target_generation, rnd.kind) != (msg.round_id, msg.target_generation, kind)
                or pos != tuple(msg.resume)):
            raise RemoteProtocolError(ErrorCode.RESYNC_ERROR, f"round {msg.round_id} resumes at {msg.resume}, but "
                                                              f"this secondary holds no such open round")
        self.store.resume_round(self._round_began_at)

    def _verify(self, now: float, msg: VerifyRequest) -> None:
        """Digests of the image as the stream stands here: every write before
        the request applied, none after it."""
        if self.phase is not S.LINKED:
            raise RemoteProtocolError(ErrorCode.REFUSED, "verify request inside a resync round")
        if self.store.round is not None:
            self.store.abandon_round()  # kept to resume, but the primary compares (a checksum sync) instead
        if "verify-before-apply" not in self.config.mutations:  # broken on purpose: earlier writes not applied
            self._end_batch(now)
        if self.link is None:
            return
        data = self.node.volumes[self.store.names[msg.volume]].read(msg.offset, msg.length_bytes)
        self.outbox.append(VerifyReply(msg.request_id, chunk_digests(data, msg.chunk_bytes)))

    def _round_extent(self, volume: int, offset: int, nbytes: int, data: bool) -> None:
        self._round_pos = (self.store.names[volume], offset + nbytes)
        self._round_bytes += nbytes if data else 0
        if self.round_progress is not None and data:  # like the primary: zero extents (holes) are not counted
            prog = self.round_progress[0]
            prog.chunks_done += -(-nbytes // self.node.chunk_size)
            prog.bytes_done += nbytes

    def _commit(self, now: float, msg: ResyncCommit) -> None:
        ops, self._round_ops = self._round_ops, []
        rnd = self.store.commit_round(ops, msg.generation, msg.seq, self._primary_uuids)
        self.consistent_as_of = self._round_began_at  # the round's image is the primary's as of its start
        if self.observer is not None:
            self.observer.secondary_committed(msg.generation, msg.seq)
        self._out.info(f"round {msg.round_id} committed: generation {msg.generation} at seq {msg.seq}")
        self.outbox.append(ResyncCommitted(msg.round_id, msg.generation, msg.seq))
        if self.round_progress is not None:
            prog = self.round_progress[0]
            self._episode.add_round(rnd.kind if rnd else INCREMENTAL, prog.chunks_done, prog.bytes_done)
            self._episode.seconds = round(now - self._episode_started, 6)
            self.last_resync = ResyncSummary(**vars(self._episode))
        self.round_progress = None
        self._move(S.LINKED, f"resync round {msg.round_id} committed")

    # -- timers and stop -----------------------------------------------------------------------
    def _timers(self, now: float) -> None:
        if now >= self._last_checkpoint + self.config.journal_checkpoint_s:
            self._last_checkpoint = now
            self.store.checkpoint(force=self.store.journal.tail > 0)
        if not self.linked:
            return
        if self.clock.silent(now):
            self._fail_link(now, f"nothing heard from the primary for {self.config.link_timeout_s:g}s "
                                 f"(link silent)")
        elif self.clock.heartbeat_due(now):
            self.outbox.append(Heartbeat(int(now * 1000) & 0xFFFFFFFFFFFFFFFF))

    def _on_stop(self, now: float, event: Stop) -> None:
        if self.link is not None:
            link = self.link
            self._link_down(now, "shutting down")
            self._out.close.append(CloseLink(link, "shutting down", reset=False, last=(Goodbye(),)))
        self.node.flush()
        self._move(S.STOPPED, "stopped")

    # -- status --------------------------------------------------------------------------------
    def status(self, now: float) -> Status:
        return secondary_status(self, now)

    _handlers = {
        Accepted: _on_accepted,
        LinkUp: _on_link_up,
        Received: _on_received,
        LinkClosed: _on_link_closed,
        Stop: _on_stop,
    }

