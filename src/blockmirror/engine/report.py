"""What a node reports about itself: its part of the status schema
(blockmirror/status.py). The daemons add what only they know."""

from __future__ import annotations

import dataclasses

from blockmirror.protocol import NIL_UUID
from blockmirror.status import (
    PRIMARY, SECONDARY, PrimaryStatus, ResyncProgress, RoundStatus, SecondaryStatus, Status, Totals, VolumeStatus,
    snapshot_list,
)
from blockmirror.engine.lag import lag_seconds, out_of_sync
from blockmirror.engine.phases import PrimaryPhase as P


def _status(node, role: str, generation, seq: int, progress, own) -> Status:
    return Status(
        role=role, state=node.state, phase=node.phase.value, peer_connected=node.linked,
        generation=None if generation in (None, NIL_UUID) else str(generation), seq=seq,
        last_resync=dataclasses.replace(node.last_resync), resync_progress=progress,
        snapshots=snapshot_list(node.node), volumes=[VolumeStatus(n, s, str(u)) for n, u, s in node.volume_infos()],
        split_brain=None if node.split_brain is None else dataclasses.replace(node.split_brain),
        primary=own if role == PRIMARY else None, secondary=own if role == SECONDARY else None)


def primary_status(p, now: float) -> Status:
    rnd = p.round
    progress = None
    if rnd is not None:
        handed = rnd.total_bytes * rnd.chunks_sent // rnd.total_chunks if rnd.total_chunks else 0
        progress = ResyncProgress(rnd.id, rnd.kind, rnd.chunks_sent, bytes_done=handed,
                                  bytes_total=rnd.total_bytes, chunks_total=rnd.total_chunks)
    elif p.compare is not None:  # digests compared before a round: chunks compared, no data sent yet
        run = p.compare.run
        progress = ResyncProgress(0, "checksum", run.chunks_done, bytes_done=run.bytes_done,
                                  bytes_total=run.bytes_total, chunks_total=run.chunks_total)
    own = PrimaryStatus(
        mode=p.config.mode, acked_seq=p.acked, inflight_writes=len(p.window), inflight_bytes=p.window.nbytes,
        waiting_writes=len(p.waiting), lag_writes=p.seq - p.acked, write_pause_ms=p.last_pause_ns / 1e6,
        link_failures=p.link_failures,
        # After an unclean stop: the regions that joined the resync because
        # the primary could not know what the secondary had.
        unclean_restart_hot_bytes=sum(e[2] for e in p.recovered_hot))
    own.out_of_sync_chunks, own.out_of_sync_bytes = out_of_sync(p)
    own.lag_seconds = round(lag_seconds(p, now), 3)
    own.unacked_bytes = p.window.nbytes
    own.rpo_exceeded = p.rpo_exceeded
    if p.verify is not None:
        own.verify = p.verify.progress(now, paused=p.phase is not P.MIRRORING)
    own.last_verify = None if p.last_verify is None else dataclasses.replace(p.last_verify)
    st = _status(p, PRIMARY, p.generation, p.seq, progress, own)
    st.totals = Totals(p.resync_bytes_total())
    return st


def secondary_status(s, now: float) -> Status:
    point, rnd = s.store.point, s.store.round
    progress = None
    if s.round_progress is not None:
        prog, started = s.round_progress
        progress = dataclasses.replace(prog).timed(started, now)
    own = SecondaryStatus(consistent=point.holds_image,
                          round_open=None if rnd is None else RoundStatus(rnd.id, rnd.kind),
                          journal_bytes=s.store.journal.tail)
    own_changes = s.store.local_changes or s.store.replaced_changes
    if own_changes is not None:
        own.discarded_chunks, own.discarded_snapshot = own_changes.chunks, own_changes.discarded
    st = _status(s, SECONDARY, point.generation, point.seq, progress, own)
    st.totals = Totals(s.resync_bytes_received)
    return st
