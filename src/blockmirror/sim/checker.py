"""Every invariant the simulator checks, in one place, each with a name.

A broken invariant raises Violation("<name>: what was seen"). The checker
knows the primary's history only from its own model (model.py) and the
nodes only through the cluster's views (views.py): never an engine's
attributes.

While a damage of the secondary (a faulty disk, faults.py) is outstanding,
exactly the comparisons of the secondary's image bytes with the model are
suspended (consistency, export-image); every other check goes on. A verify
that clears the damage resumes them at once (the recorder checks the image
then), so a repair that missed a damaged chunk breaks consistency.
"""

from __future__ import annotations

from collections.abc import Callable

import xxhash
from pyroaring import BitMap

from blockmirror.sim.model import HistoryModel, LastWriters, subtract
from blockmirror.sim.options import Options
from blockmirror.sim.views import NIL, DiskProbe, PrimaryView, RoundStart, SecondaryView

INVARIANTS = {
    "consistency": "the secondary's volumes are the primary's image at the point its (generation, seq) names, "
                   "after every batch, every recovery and in every crash probe (while no damage of the "
                   "secondary is outstanding; checked again as soon as a verify clears it)",
    "known-point": "the secondary's (generation, seq) names a point of the primary's history",
    "monotonic": "the secondary's point never moves backwards",
    "ack-durability": "a crash of the secondary keeps every seq it acknowledged",
    "sync-durability": "sync mode: a write acknowledged to the host while mirroring survives a crash of the "
                       "secondary (checked at its recoveries, in probes and at every primary crash)",
    "flush-durability": "a primary crash or stop keeps what completed flushes and FUA writes covered, unless "
                        "written since",
    "window": "unacknowledged bytes stay within window_bytes_max (a single write larger than it goes alone) and "
              "unacknowledged host writes within window_writes_max",
    "known-base": "an incremental round starts from a generation the primary made",
    "minimal-resync": "a round names only chunks written since its base (plus the hot regions and the writes in "
                      "flight of an unclean stop, and the chunks a verify repair named)",
    "needless-full-sync": "no full round while the secondary reported a generation the primary made, so a base "
                          "for it must exist",
    "resume-minimal": "a resumed round continues a round the primary started, at the point the secondary offered: "
                      "it names only that round's chunks from there on (never what the secondary already holds)",
    "checksum-minimal": "a checksum sync's round names only chunks whose bytes differ between its snapshot and the "
                        "secondary's volumes (the chunks that are equal cross the link as digests only); so does a "
                        "checksum resync for the chunks only suspect (not written since its base)",
    "export-image": "the secondary's export serves exactly its last committed image, during rounds too (while "
                    "no damage of the secondary is outstanding)",
    "export-refusal": "the export refuses reads before the first complete sync, and only then",
    "primary-read": "a host read of the primary returns the writes applied so far",
    "protocol-error": "no protocol error on a connection that carried no corrupted byte",
    "convergence": "after healing, the pair is mirroring, byte-identical, within the liveness bound",
    "primary-image": "after healing, the primary's volumes hold exactly the writes it applied",
    "promoted-image": "a promoted secondary keeps exactly its last committed image (an open round rolled back), "
                      "sync mode: with every write acknowledged to a host",
    "discarded-snapshot": "a demoted node's discarded-... snapshot holds exactly its image as of the demotion",
    "split-brain": "no resync overwrites what a demoted node wrote after the pair parted while its new primary "
                   "wrote too, unless the node was demoted with --discard-my-data",
    "verify-exact": "a verify reports as different only chunks a faulty disk damaged on the secondary (outstanding "
                    "when it started, or since): with no damage nothing, and never a chunk only because hosts "
                    "wrote it during the verify",
    "verify-repair-minimal": "verify never repairs a chunk that was equal: the chunks a repair round sends are "
                             "among those damaged",
    "no-exception": "no unexpected exception escapes the code under test",
}


class Violation(Exception):
    def __init__(self, invariant: str, text: str):
        assert invariant in INVARIANTS, invariant
        super().__init__(f"{invariant}: {text}")
        self.invariant = invariant


def _hash(image: bytes) -> int:
    return xxhash.xxh3_64_intdigest(image)


class Checker:
    def __init__(self, opts: Options, model: HistoryModel):
        self.opts = opts
        self.model = model
        self.secondary_point = 0  # the newest point the secondary held
        self.sync_acked_point = 0  # sync mode: the newest point acknowledged to a host while mirroring
        self.claimed = (NIL, 0)  # (generation, seq) the secondary last acknowledged
        self.full_allowed = False  # after a role change whose two sides name different points (once)
        self.damage = [BitMap() for _ in opts.sizes]  # chunks of the secondary a faulty disk changed, outstanding
        self._damages = 0  # damages so far
        self._verify: tuple[int, list[BitMap]] | None = None  # the run's (damages at its start, chunks it may report)

    @property
    def damage_outstanding(self) -> bool:
        return any(self.damage)

    def _point(self, generation: str, seq: int, what: str) -> int:
        point = self.model.point_of(generation, seq)
        if point is None:
            raise Violation("known-point", f"{what} at generation {generation[:8]} seq {seq}, a point the "
                                           f"primary never had")
        return point

    # -- the secondary ---------------------------------------------------------------------
    def secondary(self, view: SecondaryView, image: bytes, when: str) -> None:
        """`view.holds_point`: the image must be that point's, never older."""
        point = self._point(view.generation, view.seq, f"{when}: the secondary")
        if not self.damage_outstanding and _hash(image) != self.model.hashes[point]:
            raise Violation("consistency", f"{when}: the secondary's image is not the primary's at point {point} "
                                           f"(generation {view.generation[:8]} seq {view.seq})")
        if point < self.secondary_point:
            raise Violation("monotonic", f"{when}: the secondary moved back from point {self.secondary_point} "
                                         f"to {point}")
        if when == "after recovery":
            self._sync_durable(point, "the secondary recovered")
        self.secondary_point = point

    def _sync_durable(self, point: int, what: str) -> None:
        if self.opts.mode == "sync" and point < self.sync_acked_point:
            raise Violation("sync-durability", f"{what} to point {point}, missing the write acknowledged to "
                                               f"the host at point {self.sync_acked_point}")

    def probe(self, probe: DiskProbe, when: str) -> None:
        """What a crash of the secondary now would leave (a crashed copy, recovered)."""
        gen, seq = self.claimed
        if probe.generation == gen and probe.seq < seq:
            raise Violation("ack-durability", f"{when}: the secondary acknowledged seq {seq} but a crash now "
                                              f"recovers it to seq {probe.seq}")
        if probe.inconsistent or probe.generation == NIL or probe.own_changes:
            return
        point = self._point(probe.generation, probe.seq, f"{when}: a crash of the secondary would leave it")
        if not self.damage_outstanding and _hash(probe.image) != self.model.hashes[point]:
            raise Violation("consistency", f"{when}: a crash of the secondary now would leave an image that is "
                                           f"no point of the primary's history (generation "
                                           f"{probe.generation[:8]} seq {probe.seq})")
        self._sync_durable(point, f"{when}: a crash of the secondary now would recover it")

    def export_read(self, view: SecondaryView, image: bytes | None) -> None:
        """A whole-image read of the secondary's export; None: it was refused."""
        if view.own_changes:
            return  # a demoted node serves its own last image until its first commit
        committed = view.up and not view.inconsistent and view.generation != NIL
        if image is None:
            if committed:
                raise Violation("export-refusal", f"the export refused a read while the secondary holds "
                                                  f"generation {view.generation[:8]} seq {view.seq}")
            return
        if not committed:
            raise Violation("export-refusal", "the export served a read before the first complete sync")
        point = self._point(view.generation, view.seq, "the export")
        if not self.damage_outstanding and _hash(image) != self.model.hashes[point]:
            raise Violation("export-image", f"the export served an image that is not the secondary's committed "
                                            f"point {point} (generation {view.generation[:8]} seq {view.seq}"
                                            f"{', round open' if view.round_open else ''})")

    # -- the primary -----------------------------------------------------------------------
    def primary_read(self, vol: int, offset: int, data: bytes) -> None:
        start = self.model.starts[vol] + offset
        if data != self.model.image[start:start + len(data)]:
            raise Violation("primary-read", f"a host read of v{vol}@{offset}+{len(data)} returned other bytes "
                                            f"than the writes applied")

    def window(self, view: PrimaryView, seq_writer: dict[int, int]) -> None:
        writes = {seq_writer.get(seq) for seq, _ in view.unacked}
        if len(writes) > self.opts.window_writes_max:
            raise Violation("window", f"{len(writes)} host writes unacknowledged, window_writes_max is "
                                      f"{self.opts.window_writes_max}")
        nbytes = sum(n for _, n in view.unacked)
        if nbytes > self.opts.window_bytes_max and len(writes) > 1:
            raise Violation("window", f"{nbytes} bytes of {len(writes)} host writes unacknowledged, "
                                      f"window_bytes_max is {self.opts.window_bytes_max}")

    def primary_disk(self, image: bytes, writers: LastWriters, covered: Callable[[float], bool],
                     pending: list[tuple[int, int]], how: str) -> None:
        """After a primary crash or stop: bytes whose last writer a completed
        flush or FUA covered are on its disk (writes in flight excepted)."""
        model = self.model
        for a, b, writer in writers.ranges:
            if not covered(writer):
                continue
            for x, y in subtract(a, b, pending):
                if image[x:y] != model.image[x:y]:
                    vol = max(v for v, s in enumerate(model.starts) if s <= x)
                    raise Violation("flush-durability", f"a primary {how} lost bytes v{vol}@{x - model.starts[vol]}"
                                                        f"+{y - x} of host write {writer}, which a completed "
                                                        f"flush or FUA had made durable")

    # -- rounds --------------------------------------------------------------------------------
    def round_started(self, rnd: RoundStart, peer: tuple[str, int] | None, hot: list) -> None:
        """`peer`: the (generation, seq) the secondary reported in this link's handshake;
        `hot`: per volume, chunks an unclean primary stop may have changed
        unseen, or a verify repair named."""
        model = self.model
        if rnd.kind == "full":
            allowed, self.full_allowed = self.full_allowed, False
            if peer is not None and peer[0] in model.target_point and not allowed:
                raise Violation("needless-full-sync", f"a full round started although the secondary reported "
                                                      f"generation {peer[0][:8]} seq {peer[1]}, which the "
                                                      f"primary made (it must hold a base for it)")
            return
        base_point = model.target_point.get(rnd.base_generation)
        if base_point is None:
            raise Violation("known-base", f"a round from generation {rnd.base_generation[:8]}, which the primary "
                                          f"never made")
        allowed = model.touched_since(base_point)
        for vol, chunks in enumerate(rnd.chunks):
            extra = chunks - allowed[vol] - hot[vol]
            if extra:
                raise Violation("minimal-resync", f"a round names chunks {list(extra)[:8]} of v{vol} that were "
                                                  f"not written since its base")

    def round_resumed(self, rnd: RoundStart, start: tuple[int, int], started: RoundStart | None,
                      offered) -> None:
        """`started`: the round as it began (None: not in this run's record);
        `offered`: the open round in the secondary's handshake."""
        if started is None or offered is None or str(offered[1]) != rnd.target_generation:
            raise Violation("resume-minimal", f"a round to generation {rnd.target_generation[:8]} resumed that "
                                              f"the secondary did not offer or the primary never started")
        chunk_size = self.model.chunk_size
        first = (offered[2], -(-offered[3] // chunk_size))
        if tuple(start) != first:
            raise Violation("resume-minimal", f"a round resumed at v{start[0]} chunk {start[1]}, not where the "
                                              f"secondary offered (v{first[0]} chunk {first[1]})")
        for vol, chunks in enumerate(rnd.chunks):
            extra = chunks - started.chunks[vol]
            before = [c for c in chunks if (vol, c) < first]
            if extra or before:
                raise Violation("resume-minimal", f"a resumed round names chunks {list(extra)[:4]} of v{vol} its "
                                                  f"round never named, or {before[:4]} before the resume point")

    # -- a damaged secondary and verify ------------------------------------------------------------
    def damaged(self, chunks: list[BitMap]) -> None:
        self._damages += 1
        for vol, c in enumerate(chunks):
            self.damage[vol] |= c
            if self._verify is not None:
                self._verify[1][vol] |= c

    def damage_cleared(self) -> None:
        self.damage = [BitMap() for _ in self.damage]

    def verify_started(self) -> None:
        self._verify = (self._damages, [BitMap(c) for c in self.damage])

    def verify_repair(self, differ: list[BitMap], repaired: list[BitMap]) -> None:
        damaged = self._verify_exact(differ)
        for vol, chunks in enumerate(repaired):
            extra = chunks - damaged[vol]
            if extra:
                raise Violation("verify-repair-minimal", f"a verify's repair round sends chunks {list(extra)[:8]} "
                                                         f"of v{vol}, which were equal (no fault damaged them)")

    def verify_done(self, differ: list[BitMap], result: str) -> bool:
        """True: it clears the damage (it started after the newest one and
        found the volumes identical or repaired them)."""
        self._verify_exact(differ)
        started_after = self._verify[0] == self._damages
        self._verify = None
        if result in ("identical", "repaired") and started_after and self.damage_outstanding:
            self.damage_cleared()
            return True
        return False

    def _verify_exact(self, differ: list[BitMap]) -> list[BitMap]:
        damaged = self._verify[1]
        for vol, chunks in enumerate(differ):
            extra = chunks - damaged[vol]
            if extra:
                raise Violation("verify-exact", f"a verify reports chunks {list(extra)[:8]} of v{vol} as "
                                                f"different, which no fault damaged")
        return damaged

    def checksum_round(self, rnd: RoundStart, target: bytes, secondary: bytes | None, touched=None) -> None:
        """`target`: the image of the round's snapshot; `secondary`: the
        secondary's volumes as the round starts (None: not readable now);
        `touched`: per volume, chunks written since an incremental round's
        base (sent without comparing)."""
        if secondary is None:
            return
        cs = self.model.chunk_size
        for vol, chunks in enumerate(rnd.chunks):
            start = self.model.starts[vol]
            for c in (chunks if touched is None else chunks - touched[vol]):
                a, b = start + c * cs, min(start + (c + 1) * cs, start + self.opts.sizes[vol])
                if target[a:b] == secondary[a:b]:
                    raise Violation("checksum-minimal", f"a checksum {'sync' if touched is None else 'resync'}'s "
                                                        f"round names chunk {c} of v{vol}, equal on both nodes")

    # -- role changes ----------------------------------------------------------------------------
    def promoted(self, generation: str, seq: int, image: bytes) -> None:
        point = self._point(generation, seq, "the promoted secondary")
        if _hash(image) != self.model.hashes[point]:
            raise Violation("promoted-image", f"the promoted secondary's image is not its last committed point "
                                              f"{point} (generation {generation[:8]} seq {seq})")
        if self.opts.mode == "sync" and point < self.sync_acked_point:
            raise Violation("promoted-image", f"the promoted secondary is at point {point}, missing the write "
                                              f"acknowledged to the host at point {self.sync_acked_point}")

    def split_brain_round(self, diverged: int, discard: bool, primary_wrote: bool) -> None:
        if diverged and not discard and primary_wrote:
            raise Violation("split-brain", f"a resync round started over the {diverged} chunks the secondary "
                                           f"wrote as a primary after the pair parted, while the primary wrote "
                                           f"too, without --discard-my-data")

    def demoted(self, before: bytes, kept: bytes | None, changed: int) -> None:
        if changed and kept is not None and kept != before:
            raise Violation("discarded-snapshot", "the demoted node's discarded-... snapshot is not its image "
                                                  "as of the demotion")

    # -- links, end of run -------------------------------------------------------------------
    def protocol_error(self, node: str, exc: Exception) -> None:
        raise Violation("protocol-error", f"at the {node}, on a connection with no corrupted byte: {exc}")

    def healed(self, converged: bool, primary_image: bytes, secondary_image: bytes, primary_state: str) -> None:
        if not converged:
            raise Violation("convergence", f"no convergence within {self.opts.liveness_s:.0f}s of healing "
                                           f"(primary {primary_state or 'down'})")
        if primary_image != bytes(self.model.image):
            raise Violation("primary-image", "the primary's volumes differ from the writes it applied")
        if secondary_image != primary_image:
            raise Violation("convergence", "after healing, the secondary's volumes differ from the primary's")
