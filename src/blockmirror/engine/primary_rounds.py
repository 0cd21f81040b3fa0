"""Resync rounds on the primary (a part of PrimaryNode, engine/primary.py):
how a link up begins the resync (resume the cut round, compare digests
first, or start a round), a round's start, its messages within the send
budget, its commit and the confirmation that makes its target the base.
What a round sends and in which order is in rounds.py.

A round cut by a link failure or a crash keeps its target snapshot and its
record (PrimaryRound) until the secondary confirms its commit; when the
secondary offers the same round open at the next handshake, it resumes
from the secondary's resume point instead of starting over.

Comparing digests first: a checksum sync (a sync with no common base,
`--initial-sync checksum`), or an incremental round holding at least
`compare_suspect_chunks_min` chunks only on suspicion, takes T, compares the
digests of those chunks of T with the secondary's (VerifyRun, phase
COMPARING; host writes after T stay local), and the round then sends only
the ones that differ (a checksum sync: no zero extent for the rest).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from pyroaring import BitMap

from blockmirror.engine.decide import Decision
from blockmirror.engine.phases import PRIMARY_SENDING_ROUND
from blockmirror.engine.phases import PrimaryPhase as P
from blockmirror.engine.records import PrimaryRound, RecordStore, ResyncBase, extend_history
from blockmirror.engine.rounds import MESSAGE_OVERHEAD_BYTES, full_round_chunks, incremental_round_chunks
from blockmirror.engine.verify import VerifyRun
from blockmirror.protocol import NIL_UUID, ResyncCommitted
from blockmirror.status import FULL, INCREMENTAL


@dataclass
class Comparison:
    """Digests compared before a round: its target T, and for an
    incremental round its planned chunks and the suspect ones compared."""
    run: VerifyRun
    target: int
    target_generation: uuid.UUID
    base: ResyncBase | None
    planned: list[BitMap] | None = None
    suspect: list[BitMap] | None = None

    @property
    def what(self) -> str:
        return "sync" if self.base is None else "resync"

    def chunks_to_send(self) -> list[BitMap]:
        """The chunks that differ; for an incremental round, its planned
        chunks less the suspect ones found equal."""
        differ = self.run.differ
        if self.planned is None:
            return differ
        return [p - s | (s & d) for p, s, d in zip(self.planned, self.suspect, differ)]


class PrimaryRounds:
    """Mixed into PrimaryNode: uses its node, geo, records, bases, rounds,
    outbox and phase."""

    def _restore_round(self) -> None:
        """The round a crash or stop cut keeps its target snapshot, if that
        and its base still exist."""
        rec = self.records.primary_round()
        if rec is None:
            return
        live = {s.id for s in self.node.snapshots()}
        if rec.target in live and (rec.base is None or rec.base in live) and len(rec.chunks) == len(self.geo.names):
            self.open_round = rec
            self.bases.pinned = {rec.target}
            self._round_ids = max(self._round_ids, rec.id)
            return
        self.records.save(delete=(PrimaryRound.KEY,))

    def _forget_round(self, why: str) -> None:
        """The cut round will not resume: its target goes (unless it is a base)."""
        rec, self.open_round = self.open_round, None
        if rec is None:
            return
        self.bases.pinned = set()
        self.records.save(delete=(PrimaryRound.KEY,))
        if rec.target not in self.bases.all() and rec.target in {s.id for s in self.node.snapshots()}:
            self.node.delete_snapshot(rec.target)
        self._out.info(f"round {rec.id} is not resumed: {why}")

    def _why_not_resume(self, decision: Decision, est) -> str | None:
        """None when the secondary holds open the round this node cut, from
        the same point: it can continue."""
        rec = self.open_round
        if rec is None:
            return "no round to resume"
        mark = est.peer_round
        if mark is None or (mark[0], mark[1]) != (rec.id, rec.target_generation):
            return "the secondary does not hold it open"
        if est.peer_changed or est.peer_digests or est.peer_demoted:
            return "the secondary changed data of its own"
        if rec.base is None:
            ok = decision.base is None and est.committed_generation == rec.base_generation
        else:
            ok = decision.base is not None and decision.base.snapshot == rec.base
        if not ok or est.committed_seq != rec.commit_seq:
            return "the secondary is not at the round's base"
        if not 0 <= mark[2] < len(self.geo.names) or mark[3] > self.geo.sizes[mark[2]]:
            return "its resume point is outside the volumes"
        return None

    def _resume_round(self, now: float, est) -> None:
        """Continue the cut round from the secondary's resume point."""
        rec = self.open_round
        mark = (est.peer_round[2], est.peer_round[3])
        at = (0, 0) if "resume-from-start" in self.config.mutations else mark  # broken on purpose: resends all
        rnd = self.rounds.resume(rec, at, self.recovered_hot, now)
        rnd.resume = mark
        # Host writes since T (its diff) or hot regions to carry need another
        # round; with neither, this one can be the last.
        rnd.local_writes = self._written_since(rec.target) + len(rnd.carry)
        self.rounds_this_link += 1
        self.round = rnd
        done = rnd.resumed_bytes / max(rnd.resumed_bytes + rnd.total_bytes, 1)
        why = (f"round {rnd.id} resumed at {done:.0%} ({rnd.resumed_bytes} bytes already on the secondary, "
               f"{rnd.total_bytes} to send)")
        self._move(P.SENDING, why)
        self.outbox.append(rnd.begin())
        if self.observer:
            self.observer.round_resumed(rnd.target_generation, rnd.base_generation, rnd.commit_seq, rnd.kind,
                                        rnd.chunks, rnd.start)
        self._out.info(why)



    def _begin_resync(self, now: float, decision: Decision, est) -> None:
        """Step 74 at a link up: resume the cut round, or compare digests
        first (a checksum sync, or an incremental round with enough chunks
        only suspect), or start a round."""
        why_not = self._why_not_resume(decision, est)
        if why_not is None:
            self._resume_round(now, est)
            return
        self._forget_round(why_not)
        self._out.log(logging.INFO if decision.base is not None else logging.WARNING, decision.why)
        base = decision.base
        if base is None:
            if self.config.initial_sync == "checksum":
                self._start_compare(now, decision.why, None, None)
            else:
                self._start_round(now, None, decision.why)
            return
        planned, suspect = self._round_chunks(base)
        if sum(len(c) for c in suspect) >= self.config.compare_suspect_chunks_min:
            self._start_compare(now, decision.why, base, (planned, suspect))
        else:
            self._start_round(now, base, decision.why, planned)

    def _round_chunks(self, base: ResyncBase) -> tuple[list, list]:
        """An incremental round's chunks (step 74), and those of them only
        suspect: recorded as unacknowledged (writes in flight at a link
        failure, the hot regions of an unclean stop, a demoted node's own
        changes) but not written since the base."""
        diff = self.node.diff(base.snapshot)
        planned = incremental_round_chunks(self.node, self.geo, base, diff,
                                           with_unacked="skip-unacked" not in self.config.mutations)
        return planned, [planned[v] - diff[name] for v, name in enumerate(self.geo.names)]

    def _written_since(self, snapshot: int) -> int:
        """Chunks host writes changed since `snapshot` (its diff)."""
        return sum(len(c) for c in self.node.diff(snapshot).values())

    def _start_round(self, now: float, base: ResyncBase | None, why: str, chunks=None,
                     compared: Comparison | None = None) -> None:
        """A round from `base` (None: full): its chunks (computed now when
        not given), T taken now and the round's record in one commit; or
        after a comparison, its T and the chunks that differ."""
        self._round_ids += 1
        self.rounds_this_link += 1
        kind = FULL if base is None else INCREMENTAL
        base_sid, base_gen = (None, NIL_UUID) if base is None else (base.snapshot, base.generation)
        if compared is not None:
            chunks, target_gen = compared.chunks_to_send(), compared.target_generation
            rec = PrimaryRound(self._round_ids, kind, base_sid, base_gen, compared.target, target_gen, self.seq,
                               tuple(chunks), holes=False)
            self.records.save(rec)
        else:
            # The chunks first (the base's diff up to now is the diff up to T:
            # the step takes no write in between), then T and the record.
            if chunks is None:
                chunks = full_round_chunks(self.node, self.geo) if base is None else self._round_chunks(base)[0]
            target_gen = uuid.UUID(int=self.rng.getrandbits(128), version=4)
            made = {}

            def record(sid: int) -> dict:
                made["r"] = PrimaryRound(self._round_ids, kind, base_sid, base_gen, sid, target_gen, self.seq,
                                         tuple(chunks))
                return RecordStore.rows(made["r"])

            self._snapshot_with("resync-target", record)
            rec = made["r"]
        rnd = self.round = self.rounds.plan(self._round_ids, base, chunks, rec.target, target_gen, self.seq,
                                            self.config.final_round_bytes_max,
                                            self.rounds_this_link >= self.config.rounds_max, now, rec.holes)
        if compared is not None:
            # Host writes while comparing are after T and were not mirrored: not
            # the last round then, the next one carries them.
            rnd.local_writes = self._written_since(rnd.target)
            rnd.final = rnd.final and not rnd.local_writes
        self.open_round = rec
        self.bases.pinned = {rnd.target}
        self._move(P.FINAL_SENDING if rnd.final else P.SENDING, why)
        self.outbox.append(rnd.begin())
        if self.observer:
            self.observer.round_started(target_gen, rnd.base_generation, self.seq, rnd.kind, chunks)
        self._out.info(f"round {rnd.id} ({rnd.kind}{', final' if rnd.final else ''}): {rnd.total_chunks} chunks, "
                       f"{rnd.total_bytes} bytes")

    # -- comparing digests first ---------------------------------------------------------------
    def _start_compare(self, now: float, why: str, base: ResyncBase | None, chunks) -> None:
        """T now, then the digests of its chunks (all; or of an incremental
        round's `chunks` = (planned, suspect), the suspect ones) against the
        secondary's."""
        info = self._snapshot("resync-target")
        planned, suspect = (None, None) if chunks is None else chunks
        run = VerifyRun(0, None, self.geo, list(range(len(self.geo.names))), False, None, now, suspect)
        self.compare = Comparison(run, info.id, uuid.UUID(int=self.rng.getrandbits(128), version=4), base,
                                  planned, suspect)
        if self.observer:
            self.observer.target_taken(self.compare.target_generation)
        what = "--initial-sync checksum" if base is None else "suspect chunks"
        self._move(P.COMPARING, f"{why}; comparing digests first ({what})")
        self._out.info(f"checksum {self.compare.what}: comparing {run.chunks_total} chunks by digest before "
                       f"sending any")

    def _compare_step(self, now: float) -> None:
        cmp = self.compare
        if cmp is None or self.phase is not P.COMPARING:
            return
        run, names = cmp.run, self.geo.names
        self.outbox.extend(run.requests(lambda v, off, n: self.node.read_snapshot(cmp.target, names[v], off, n),
                                        now))
        if not run.compared_all:
            return
        self.compare = None
        if "checksum-sends-equal" in self.config.mutations:
            run.differ[0].add(0)  # broken on purpose: chunk 0 goes even when its digests matched
        differ = run.out_of_sync_chunks
        self._out.info(f"checksum {cmp.what}: {differ} of {run.chunks_done} chunks differ; sending those")
        self._start_round(now, cmp.base, f"checksum {cmp.what}: {differ} of {run.chunks_done} compared chunks "
                                         f"differ", compared=cmp)

    def _compare_lost(self) -> None:
        """The link went down while comparing: T goes, the next link compares again."""
        cmp, self.compare = self.compare, None
        if cmp is not None:
            self.node.delete_snapshot(cmp.target)

    def _transmit(self, budget: int) -> list:
        """Messages to send now, in stream order, up to about `budget` bytes."""
        out: list = []
        budget = self._pop_outbox(out, budget)
        if self.phase in PRIMARY_SENDING_ROUND and not self.outbox:
            budget, done = self.rounds.emit(self.round, out, budget)
            if done:
                self._send_commit(out)
                self._pop_outbox(out, budget)
        return out

    def _pop_outbox(self, out: list, budget: int) -> int:
        outbox = self.outbox
        while outbox and budget > 0:
            msg = outbox.popleft()
            out.append(msg)
            budget -= len(getattr(msg, "data", b"")) + MESSAGE_OVERHEAD_BYTES
        return budget

    def _send_commit(self, out: list) -> None:
        rnd = self.round
        if self.phase is P.SENDING and rnd.local_writes == 0:
            # No host write since T: the image this commit gives the secondary
            # is the primary's current one, so this round is the last (the
            # next would be empty). Writes from now on follow the commit.
            assert self.seq == rnd.commit_seq, "a write got a seq during a non-final round"
            rnd.final = True
            new, why = P.FINAL_COMMITTING, f"round {rnd.id}: no host write since its snapshot, so it is the last"
        else:
            new = P.FINAL_COMMITTING if rnd.final else P.COMMITTING
            why = f"round {rnd.id}: every extent sent, commit sent"
        # Before the commit leaves: if it lands and we crash, T must still be
        # known as the base of the secondary's new generation.
        self.bases.keep(rnd.as_base())
        out.append(rnd.commit())
        if "delete-base-early" in self.config.mutations and rnd.base is not None:
            self.bases.drop(rnd.base)  # broken on purpose: before the secondary confirms the commit
            rnd.base = None
        self._move(new, why)
        self.outbox.extend(self.live_queue)
        self.live_queue.clear()

    def _on_committed(self, now: float, msg: ResyncCommitted) -> None:
        """Steps 78-80: the secondary holds T's image; T becomes the base."""
        rnd = self.round
        assert self.phase in (P.COMMITTING, P.FINAL_COMMITTING) and rnd is not None and msg.round_id == rnd.id, \
            "commit confirmation of another round"
        self.history = extend_history(self.generation, self.history)
        self.generation = rnd.target_generation
        self.records.save(self._point(clean=False), rnd.as_base(), delete=(PrimaryRound.KEY,))
        self.open_round, self.bases.pinned = None, set()
        if rnd.base is not None:
            self.bases.drop(rnd.base)
        self._episode.add_round(rnd.kind, rnd.chunks_sent, rnd.data_bytes_sent)
        self._resync_bytes_ended += rnd.data_bytes_sent
        self.resync_chunks_total += rnd.chunks_sent
        self._out.info(f"round {rnd.id} committed: {rnd.chunks_sent} chunks, {rnd.data_bytes_sent} bytes in "
                       f"{now - rnd.started:.3f}s")
        self.round = None
        if self.phase is P.COMMITTING:
            self._start_round(now, rnd.as_base(), f"round {rnd.id} committed; another round")
            return
        self.bases.drop(rnd.target)
        self._episode.seconds = now - self._episode_started
        self.last_resync = self._episode
        self._move(P.MIRRORING, f"round {rnd.id} committed")
        self.unsynced_since = None  # what is not on the secondary now is in the window
        self._out.info(f"mirroring (generation {self.generation})")
