"""The cluster's events, recorded: the history model follows every applied
host write, the host's ledger follows every operation until it completes,
and each event hands the checker what it needs to judge it.

What a host was promised lives here: which writes a completed flush or FUA
made durable, which sync-mode writes were acknowledged while mirroring,
which seqs the secondary acknowledged, and which writes were in flight when
the primary died. A faulty disk's damage of the secondary, and the verifies
that find and repair it, are recorded here too (the checker holds what is
outstanding).
"""

from __future__ import annotations

import random
from collections import Counter

from pyroaring import BitMap

from blockmirror.protocol import WRITE_DATA_MAX_BYTES
from blockmirror.sim.checker import Checker
from blockmirror.sim.model import DURABLE, HistoryModel, LastWriters
from blockmirror.sim.options import Options
from blockmirror.sim.views import NIL, RoundStart


class Recorder:
    """Implements views.ClusterEvents. `cluster` and `faults` are set once
    built (they take the recorder as their event sink)."""

    def __init__(self, opts: Options, rng: random.Random, model: HistoryModel, checker: Checker, stats: Counter,
                 trace):
        self.opts = opts
        self.rng = rng
        self.model = model
        self.checker = checker
        self.stats = stats
        self.trace = trace
        self.cluster = None
        self.faults = None
        self.writers = LastWriters(len(model.image))
        self.pending: dict[int, tuple[int, int, int, bool] | None] = {}  # token -> (vol, offset, bytes, fua); None: flush
        self.applied_at: dict[int, tuple[int, int | None]] = {}  # token -> (point, last seq)
        self.seq_writer: dict[int, int] = {}  # seq -> host write token (the newest use of the seq)
        self.flush_covers = 0  # a completed flush covered every host write with a smaller token
        self.fua_done: set[int] = set()
        self.last_token = 0
        self.hot = [BitMap() for _ in opts.sizes]  # chunks an unclean primary stop may have changed unseen
        self.repair_named = [BitMap() for _ in opts.sizes]  # chunks a verify repair named: its rounds send them
        self.peer: tuple[str, int] | None = None
        self.peer_round = None  # the open round the secondary offered in this link's handshake
        self.rounds: dict[str, RoundStart] = {}  # rounds as started, by target generation
        self.targets: dict[str, tuple[int, bytes]] = {}  # a checksum sync's T: (model point, image) until its round
        self._last_checked = None
        # After a role change, until the new secondary's first commit: what it wrote after
        # the pair parted, whether it may lose, and whether the new primary wrote too.
        self.demoted_diverged = 0
        self.discard_granted = False
        self.primary_wrote = False

    # -- the host ---------------------------------------------------------------------------
    def submitted(self, token: int, write: tuple[int, int, int, bool] | None) -> None:
        """A host operation goes to the primary: a write (vol, offset, bytes, fua) or a flush (None)."""
        self.last_token = max(self.last_token, token)
        self.pending[token] = write

    def host_completed(self, token, error: BaseException | None, mirroring: bool) -> None:
        entry = self.pending.pop(token, None)
        applied = self.applied_at.pop(token, None)
        if error is not None:
            return
        if entry is None:  # a flush: it covers every write submitted before it
            self.flush_covers = max(self.flush_covers, token)
            return
        if entry[3]:
            self.fua_done.add(token)
        if self.opts.mode == "sync" and applied is not None and applied[1] is not None and mirroring:
            self.checker.sync_acked_point = max(self.checker.sync_acked_point, applied[0])

    def covered(self, writer: float) -> bool:
        return writer == DURABLE or writer < self.flush_covers or writer in self.fua_done

    # -- ClusterEvents ------------------------------------------------------------------------
    def write_applied(self, token, vol, offset, data, length, generation, first_seq, last_seq) -> None:
        self.primary_wrote = True
        model = self.model
        if last_seq is None:
            model.apply(vol, offset, data, length)
        else:
            # One point per seq: a secondary may hold the first frames of a write and not the rest.
            step = WRITE_DATA_MAX_BYTES
            for seq, pos in zip(range(first_seq, last_seq + 1), range(0, max(length, 1), step)):
                n = min(step, length - pos)
                model.apply(vol, offset + pos, None if data is None else data[pos:pos + n], n)
                model.seq_point[(generation, seq)] = model.point
                self.seq_writer[seq] = token
        self.applied_at[token] = (model.point, last_seq)
        start = model.starts[vol] + offset
        self.writers.write(start, start + length, token)

    def link_established(self, peer_generation: str, peer_seq: int, peer_round=None) -> None:
        self.peer = (peer_generation, peer_seq)
        self.peer_round = peer_round

    def round_started(self, rnd: RoundStart) -> None:
        if rnd.target_generation not in self.targets:  # else judged when its snapshot was taken
            self.checker.split_brain_round(self.demoted_diverged, self.discard_granted, self.primary_wrote)
        self.checker.round_started(rnd, self.peer, [h | r for h, r in zip(self.hot, self.repair_named)])
        self.rounds[rnd.target_generation] = rnd
        model = self.model
        point, image = self.targets.pop(rnd.target_generation, (model.point, None))
        if image is not None:  # a checksum sync or resync: T was taken before the comparison
            touched = None
            if rnd.kind != "full":  # written since the base (or maybe, by a crash): sent whatever the digests said
                base_point = model.target_point.get(rnd.base_generation)
                touched = None if base_point is None else [
                    t | h | r for t, h, r in zip(model.touched_since(base_point), self.hot, self.repair_named)]
            if rnd.kind == "full" or touched is not None:
                self.checker.checksum_round(rnd, image, self.cluster.secondary_image(), touched)
            self.stats[f"checksum {'syncs' if rnd.kind == 'full' else 'resyncs'}"] += 1
        model.target_point[rnd.target_generation] = point
        model.seq_point[(rnd.target_generation, rnd.commit_seq)] = point
        self.stats["rounds"] += 1
        self.stats[f"{rnd.kind} rounds"] += 1
        self.stats["chunks named by rounds"] += sum(len(c) for c in rnd.chunks)
        self.trace(f"round {rnd.kind} {sum(len(c) for c in rnd.chunks)} chunks")

    def target_taken(self, target_generation: str) -> None:
        """A checksum sync took its round's snapshot T now; the round starts
        once the digests are compared (host writes meanwhile are after T)."""
        self.checker.split_brain_round(self.demoted_diverged, self.discard_granted, self.primary_wrote)
        self.targets[target_generation] = (self.model.point, bytes(self.model.image))

    def round_resumed(self, rnd: RoundStart, start: tuple[int, int]) -> None:
        """A cut round continues: its snapshot's point was recorded when it started."""
        self.checker.round_resumed(rnd, start, self.rounds.get(rnd.target_generation), self.peer_round)
        self.stats["rounds resumed"] += 1
        self.stats["chunks named by rounds"] += sum(len(c) for c in rnd.chunks)
        self.trace(f"round {rnd.kind} resumed at v{start[0]} chunk {start[1]}: "
                   f"{sum(len(c) for c in rnd.chunks)} chunks")

    def round_committed(self, generation: str) -> None:
        """The secondary committed a round: a full one rewrote every chunk, damaged or not."""
        rnd = self.rounds.get(generation)
        if rnd is not None and rnd.kind == "full" and self.checker.damage_outstanding:
            self.checker.damage_cleared()
            self.trace("damage cleared by a full round")

    # -- a damaged secondary and verify -------------------------------------------------------
    def secondary_damaged(self, chunks: list[BitMap]) -> None:
        self.checker.damaged(chunks)
        self.stats["damages"] += 1
        self.stats["chunks damaged"] += sum(len(c) for c in chunks)

    def verify_started(self) -> None:
        self.checker.verify_started()
        self.stats["verifies started"] += 1

    def verify_repair(self, differ: list[BitMap], repaired: list[BitMap]) -> None:
        self.checker.verify_repair(differ, repaired)
        for vol, chunks in enumerate(repaired):
            self.repair_named[vol] |= chunks
        self.stats["verify repairs"] += 1
        self.stats["chunks repaired"] += sum(len(c) for c in repaired)

    def verify_done(self, differ: list[BitMap], result: str) -> None:
        self.stats[f"verifies {result}"] += 1
        self.trace(f"verify done: {result}, {sum(len(c) for c in differ)} chunks differed")
        if self.checker.verify_done(differ, result):
            self.trace("damage cleared by the verify")
            self._last_checked = None
            self.secondary_changed("after a verify cleared the damage")

    def recovered_hot(self, extents: list) -> None:
        for vol, off, length in extents:
            if length:
                self.hot[vol].add_range(off // self.model.chunk_size, (off + length - 1) // self.model.chunk_size + 1)

    def secondary_changed(self, when: str) -> None:
        view = self.cluster.secondary_view()
        if view.round_open and when == "after recovery" and not view.own_changes and not view.inconsistent \
                and view.generation != NIL:
            image = self.cluster.secondary_committed_image()  # a round kept open to resume: its pre-round image
            if image is not None:
                self.checker.secondary(view, image, when)
            return
        if not view.holds_point:
            return
        state = (view.generation, view.seq, view.applied_batches)
        if when == "after a batch" and state == self._last_checked:
            return  # nothing to check after heartbeats alone
        image = self.cluster.secondary_image()
        if image is None:
            return  # it died reading: its recovery is checked when it restarts
        self.demoted_diverged, self.discard_granted = 0, False  # it holds a point: its own writes are gone
        self._last_checked = state
        self.checker.secondary(view, image, when)

    def secondary_acked(self, seq: int) -> None:
        view = self.cluster.secondary_view()
        if view.generation != self.checker.claimed[0] or seq > self.checker.claimed[1]:
            self.checker.claimed = (view.generation, seq)
            if self.rng.random() < self.opts.probe_share:
                self.probe("after an ack")

    def probe(self, when: str) -> None:
        self.stats["probes"] += 1
        self.checker.probe(self.cluster.probe_secondary(), when)

    def primary_lost(self, image: bytes, how: str) -> None:
        """The primary crashed or its process stopped; `image`: its disk as the restart finds it."""
        model = self.model
        in_flight = []
        for entry in self.pending.values():
            if entry is not None and entry[2]:
                vol, offset, nbytes, _ = entry
                # It may or may not have landed (and been preserved): a resync may name it.
                self.hot[vol].add_range(offset // model.chunk_size, (offset + nbytes - 1) // model.chunk_size + 1)
                in_flight.append((model.starts[vol] + offset, model.starts[vol] + offset + nbytes))
        self.checker.primary_disk(image, self.writers, self.covered, in_flight, how)
        self.pending.clear()
        self.applied_at.clear()
        changed = model.reset(image)
        if how == "crash":
            self.writers.settle()
        else:  # the page cache survived; what differs is durable only after the next flush
            for vol, chunks in enumerate(changed):
                for c in chunks:
                    self.writers.write(*model.chunk_range(vol, c), self.last_token + 0.5)
        if self.cluster.secondary_view().up:
            self.probe(f"at a primary {how}")

    # -- role changes (rolechange.py) --------------------------------------------------------
    def promoted(self, generation: str, seq: int, image: bytes) -> None:
        self.checker.promoted(generation, seq, image)

    def demoted(self, before: bytes, kept: bytes | None, changed: int, diverged: int | None = None,
                discard: bool = False) -> None:
        """`diverged`: what a demotion from primary found it wrote after the
        pair parted (None: a demoted secondary told to discard)."""
        self.checker.demoted(before, kept, changed)
        if diverged is not None:
            self.demoted_diverged = diverged
        self.discard_granted = discard

    def roles_swapped(self, image: bytes, demoted_generation: str | None, promoted_generation: str) -> None:
        """The history goes on from the promoted image; the new secondary is
        judged from its first commit on."""
        self.model.reset(image)
        self.writers.settle()  # promote synced it
        self.pending.clear()
        self.applied_at.clear()
        checker = self.checker
        checker.secondary_point, checker.claimed, checker.sync_acked_point = 0, (NIL, 0), 0
        # The old primary names its last confirmed point; a commit whose confirmation was lost
        # may have moved the secondary past it: no base for it then, a full sync is right.
        checker.full_allowed = demoted_generation is not None and demoted_generation != promoted_generation
        self._last_checked = None
        self.peer = None
        self.primary_wrote = False
        self.stats["role changes"] += 1

    def secondary_lost(self, how: str) -> None:
        self._last_checked = None

    def no_space(self, node: str) -> None:
        self.faults.no_space(node)

    def protocol_error(self, node: str, exc: Exception) -> None:
        self.checker.protocol_error(node, exc)

