"""Online verify on the primary (`blockmirror verify`): every chunk of the
chosen volumes compared with the secondary by digest, while host writes go on;
and the comparison that starts a checksum sync (`--initial-sync checksum`).

The primary reads a run of chunks, digests them, and sends a VerifyRequest
in stream order, behind every write it has sent: the secondary digests the
same chunks after applying those writes and before any later one, so both
sides hash the same point of the stream and a chunk written during the
verify is never a false difference. No chunk data crosses the link.

The run goes only while mirroring (a resync round or no link pauses it); a
link failure sends the requests still unanswered again. With `repair`, the
chunks found different are sent by a resync round from a base snapshot
whose record names them as unacknowledged: the same atomic round as any
resync (and, if that round is cut, the next resync still carries them).

A checksum sync compares with the same VerifyRun before its round, reading
the round's target snapshot (primary_rounds.py). What it relies on: the
secondary's volumes do not change under it (only its daemon writes them),
and BLAKE2b-128 collisions do not happen by accident.
"""

from __future__ import annotations


from pyroaring import BitMap

from blockmirror.engine.phases import PrimaryPhase as P
from blockmirror.engine.records import ResyncBase
from blockmirror.engine.rounds import chunk_runs
from blockmirror.engine.roles import chunk_digests
from blockmirror.errors import BlockmirrorError
from blockmirror.protocol import VerifyRequest
from blockmirror.status import VerifyProgress, VerifySummary
from blockmirror.protocol.messages import VERIFY_CHUNKS_MAX

REQUEST_CHUNKS = 64  # chunks per request (4 MiB of 64 KiB chunks)
REQUESTS_IN_FLIGHT = 16  # both nodes read and hash while the other does
REQUESTS_PER_STEP = 2  # what one engine step reads and hashes: host writes wait behind it
OUT_OF_SYNC_LISTED_MAX = 1000  # extents listed in last_verify


class VerifyRun:
    """Compares `volumes` (wire indexes) whole, or only the chunks of
    `chunks` (per volume index) when given."""

    def __init__(self, run_id: int, token, geo, volumes: list[int], repair: bool, rate_bps: int | None,
                 now: float, chunks: list[BitMap] | None = None):
        self.id = run_id
        self.token = token
        self.geo = geo
        self.volumes = volumes  # wire indexes, in order
        self.repair = repair
        self.rate_bps = rate_bps
        self.started = now
        self._runs = list(self._plan(chunks))  # (vol, first chunk, count) of each request, in disk order
        self.chunks_total = sum(count for _, _, count in self._runs)
        self.bytes_total = sum(geo.run_bytes(*run) for run in self._runs)
        self.chunks_done = 0
        self.bytes_done = 0
        self.differ = [BitMap() for _ in geo.names]
        self._pos = 0  # the next run to request
        self._requests = 0
        self.pending: dict[int, tuple[int, int, int, list[bytes]]] = {}  # id -> (run, vol, first, digests)
        self._allowance = 0.0
        self._last = now
        self.repairing = False  # the repair round is under way

    def _plan(self, chunks):
        step = min(REQUEST_CHUNKS, VERIFY_CHUNKS_MAX)
        for vol in self.volumes:
            if chunks is None:
                n = self.geo.chunk_count(vol)
                yield from ((vol, first, min(step, n - first)) for first in range(0, n, step))
                continue
            yield from ((vol, first, count) for first, count in chunk_runs(chunks[vol], step))

    # -- requests ----------------------------------------------------------------------------
    @property
    def requested_all(self) -> bool:
        return self._pos >= len(self._runs)

    @property
    def compared_all(self) -> bool:
        return self.requested_all and not self.pending

    def requests(self, read, now: float) -> list[VerifyRequest]:
        """The next requests within the rate and the in-flight bound;
        `read(vol, offset, length)` reads the primary's image now."""
        self._refill(now)
        out = []
        cs = self.geo.chunk_size
        while not self.requested_all and len(self.pending) < REQUESTS_IN_FLIGHT and len(out) < REQUESTS_PER_STEP:
            vol, first, count = self._runs[self._pos]
            offset, length = first * cs, self.geo.run_bytes(vol, first, count)
            if self.rate_bps is not None and self._allowance < length:
                break
            self._allowance -= length
            data = read(vol, offset, length)
            digests = chunk_digests(data, cs)
            self._requests += 1
            self.pending[self._requests] = (self._pos, vol, first, digests)
            out.append(VerifyRequest(self._requests, vol, offset, length, cs))
            self._pos += 1
        return out

    def _refill(self, now: float) -> None:
        if self.rate_bps is None:
            return
        burst = float(max(self.rate_bps, REQUEST_CHUNKS * self.geo.chunk_size))
        self._allowance = min(burst, self._allowance + self.rate_bps * max(0.0, now - self._last))
        self._last = now

    def wait_s(self) -> float | None:
        """Seconds until the rate allows the next request (None: not waiting on it)."""
        if self.rate_bps is None or self.requested_all or len(self.pending) >= REQUESTS_IN_FLIGHT:
            return None
        return max(self.geo.run_bytes(*self._runs[self._pos]) - self._allowance, 0.0) / self.rate_bps

    def answered(self, request_id: int, digests: tuple[bytes, ...]) -> bool:
        """A reply: the chunks whose digests differ join `differ`. False for
        an id not waited for (a reply from before a link failure)."""
        entry = self.pending.pop(request_id, None)
        if entry is None:
            return False
        _, vol, first, ours = entry
        if len(digests) != len(ours):  # not an answer to this request: ask again from there
            self.pending[request_id] = entry
            self.link_lost()
            return False
        for i, (a, b) in enumerate(zip(ours, digests)):
            if a != b:
                self.differ[vol].add(first + i)
        self.chunks_done += len(ours)
        self.bytes_done += sum(self.geo.chunk_bytes(vol, first + i) for i in range(len(ours)))
        return True

    def link_lost(self) -> None:
        """Unanswered requests are asked again from the first of them."""
        if not self.pending:
            return
        self._pos = min(run for run, *_ in self.pending.values())  # replies come in order: the rest after it
        self.pending.clear()

    # -- results --------------------------------------------------------------------------------
    @property
    def out_of_sync_chunks(self) -> int:
        return sum(len(c) for c in self.differ)

    def differing_extents(self) -> list[tuple[int, int, int]]:
        """(volume index, offset, length) of runs of differing chunks."""
        cs = self.geo.chunk_size
        return [(vol, first * cs, self.geo.run_bytes(vol, first, count))
                for vol, chunks in enumerate(self.differ) for first, count in chunk_runs(chunks)]

    def progress(self, now: float, paused: bool) -> VerifyProgress:
        elapsed = max(0.0, now - self.started)
        rate = self.bytes_done / elapsed if elapsed > 0 else 0.0
        total = self.bytes_total
        state = "repairing" if self.repairing else "paused" if paused else "verifying"
        return VerifyProgress(self.id, state, self.chunks_done, self.chunks_total, self.out_of_sync_chunks,
                              round(elapsed, 3), int(rate),
                              round((total - self.bytes_done) / rate, 1) if rate > 0 else None)

    def summary(self, now: float, repaired: int, result: str) -> VerifySummary:
        listed = [{"volume": self.geo.names[v], "offset": off, "length": ln}
                  for v, off, ln in self.differing_extents()[:OUT_OF_SYNC_LISTED_MAX]]
        return VerifySummary(self.id, self.chunks_done, self.out_of_sync_chunks, repaired,
                             round(now - self.started, 3), [self.geo.names[v] for v in self.volumes], result, listed)


class PrimaryVerify:
    """Mixed into PrimaryNode: the verify run's handlers (uses its node,
    geo, phase, outbox, bases, records)."""

    def _on_start_verify(self, now: float, event) -> None:
        run = self.verify
        if run is not None:
            self._out.replies.append((event.token, BlockmirrorError(
                f"verify {run.id} is under way ({run.chunks_done} of {run.chunks_total} chunks)",
                hint="wait for it: blockmirror status DIR shows its progress")))
            return
        unknown = [v for v in event.volumes if v not in self.geo.index]
        if unknown:
            self._out.replies.append((event.token, BlockmirrorError(
                f"no volume {unknown[0]!r} on this node", hint=f"the volumes are: {', '.join(self.geo.names)}")))
            return
        names = list(event.volumes) or self.geo.names
        self._verify_ids += 1
        vols = sorted({self.geo.index[n] for n in names})
        self.verify = VerifyRun(self._verify_ids, event.token, self.geo, vols, event.repair, event.rate_bps, now)
        what = ", ".join(self.geo.names[v] for v in vols)
        self._out.info(f"verify {self.verify.id} begins: {self.verify.chunks_total} chunks of {what}"
                       + (", repairing what differs" if event.repair else ""))
        self._out.replies.append((event.token, {"id": self.verify.id, "chunks": self.verify.chunks_total,
                                                "volumes": [self.geo.names[v] for v in vols]}))
        if self.observer:
            self.observer.verify_started(self.verify.id)

    def _verify_step(self, now: float) -> None:
        """While mirroring: the next requests, then the end of the run."""
        run = self.verify
        if run is None or self.phase is not P.MIRRORING or self.link is None:
            return
        if run.repairing:  # the repair round committed and mirroring resumed
            self._end_verify(now, run.out_of_sync_chunks, "repaired")
            return
        names = self.geo.names
        self.outbox.extend(run.requests(lambda v, off, n: self.node.volumes[names[v]].read(off, n), now))
        if not run.compared_all:
            return
        if not run.out_of_sync_chunks:
            self._end_verify(now, 0, "identical")
        elif not run.repair:
            self._end_verify(now, 0, "out-of-sync")
        else:
            self._repair(now, run)

    def _repair(self, now: float, run: VerifyRun) -> None:
        """A base for the current generation whose record names the differing
        chunks as unacknowledged, then a round from it (T right after: its
        diff is empty, so the round sends exactly those chunks)."""
        extents = tuple(run.differing_extents())
        # Like a link-down base: the secondary holds the generation at the
        # acknowledged seq, but for the writes in flight (they may never land)
        # and the chunks that differ.
        gen, seq, in_flight = self.generation, self.acked, tuple(self.window.extents())
        if "repair-equal-chunks" in self.config.mutations:
            extents += ((0, 0, self.geo.chunk_size),)  # broken on purpose: also sends a chunk that was equal
        if self.observer:  # before the base's commit: a crash after it leaves the base naming them
            self.observer.verify_repair(run.differ, self.geo.chunks_of(extents))
        info = self._snapshot("verify-repair", lambda sid: ResyncBase(sid, gen, seq, in_flight + extents))
        base = self.bases.all()[info.id]
        run.repairing = True
        self._start_round(now, base, f"verify {run.id}: repairing {run.out_of_sync_chunks} chunks that differ")

    def _verify_reply(self, msg) -> None:
        run = self.compare.run if self.phase is P.COMPARING else self.verify
        if run is not None:
            run.answered(msg.request_id, msg.digests)

    def _end_verify(self, now: float, repaired: int, result: str) -> None:
        run, self.verify = self.verify, None
        self.last_verify = run.summary(now, repaired, result)
        text = {"identical": "the volumes are identical",
                "out-of-sync": f"{run.out_of_sync_chunks} chunks differ (not repaired)",
                "repaired": f"{repaired} chunks differed and were repaired"}.get(result, result)
        self._out.log(30 if result == "out-of-sync" else 20,
                      f"verify {run.id} done: {run.chunks_done} chunks compared in "
                      f"{self.last_verify.seconds:.1f}s; {text}")
        if self.observer:
            self.observer.verify_done(run.id, run.differ, result)
