"""What the secondary lacks, as a user sees it: the chunks and bytes a
resync would send now (out of sync), and the age of the oldest write the
secondary does not hold (lag). Read by the primary's status; nothing here
changes the node.

- mirroring: the writes in flight (sent, not yet acknowledged);
- a resync round: what the round has not sent yet, and what was written
  since its snapshot (the next round's, or in flight behind the last one);
- no link: the base's diff and unacknowledged writes for the generation the
  secondary last confirmed (everything allocated if it never synced).
"""

from __future__ import annotations

from blockmirror.engine.phases import PRIMARY_IN_ROUND, PRIMARY_LIVE
from blockmirror.engine.rounds import full_round_chunks, incremental_round_chunks


def out_of_sync(p) -> tuple[int, int]:
    """(chunks, bytes) the secondary lacks now."""
    geo = p.geo
    sets = geo.chunks_of(p.window.extents())
    if p.phase in PRIMARY_IN_ROUND and p.round is not None:
        rnd = p.round
        chunks = max(rnd.total_chunks - rnd.chunks_sent, 0)
        since = p.node.diff(rnd.target)
        for vol, name in enumerate(geo.names):
            sets[vol] |= since[name] - rnd.chunks[vol]
        extra = sum(len(s) for s in sets)
        nbytes = geo.chunk_set_bytes(sets) + (rnd.total_bytes - rnd.data_bytes_sent if rnd.total_chunks else 0)
        return chunks + extra, max(nbytes, 0)
    if p.phase not in PRIMARY_LIVE:
        base = p.bases.find(p.generation, 0, peer_changed=True)  # any base of that generation
        more = full_round_chunks(p.node, geo) if base is None else incremental_round_chunks(p.node, geo, base)
        for vol, chunks in enumerate(more):
            sets[vol] |= chunks
    return sum(len(s) for s in sets), geo.chunk_set_bytes(sets)


def lag_seconds(p, now: float) -> float:
    """Age of the oldest write the secondary does not hold (0: none)."""
    oldest = p.window.oldest_at()
    if p.phase not in PRIMARY_LIVE and p.unsynced_since is not None:
        oldest = p.unsynced_since if oldest is None else min(oldest, p.unsynced_since)
    return 0.0 if oldest is None else max(now - oldest, 0.0)
