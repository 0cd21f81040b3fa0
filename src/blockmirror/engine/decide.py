"""Step 72's decision: what the primary does with a secondary that has
just finished its handshake. The table (docs/OPERATIONS.md, Roles):

- refuse (SPLIT_BRAIN), changing neither image, when the secondary holds a
  generation that is not in this node's history (another primary wrote
  it: a node promoted while this one ran, or a copy of this directory), or
  when both nodes wrote since the point they share (the secondary as a
  primary before its demotion) - unless the secondary may lose
  (`demote --discard-my-data`);
- else resync incrementally from the base whose record names the
  secondary's point, adding what a demoted secondary changed itself (its
  extents, and the chunks whose digest differs from the base's image);
- else a full sync, saying why.
"""

from __future__ import annotations

from dataclasses import dataclass

from blockmirror.engine.bases import ResyncBases
from blockmirror.engine.records import ResyncBase
from blockmirror.engine.roles import chunk_digest
from blockmirror.protocol import NIL_UUID, Established
from blockmirror.status import SplitBrainStatus


@dataclass(frozen=True)
class Decision:
    base: ResyncBase | None  # None: a full round (unless refused)
    why: str
    refused: SplitBrainStatus | None = None  # set: refuse the link with SPLIT_BRAIN


def decide(node, names: list[str], bases: ResyncBases, generation, history: tuple,
           est: Established, mutations: frozenset = frozenset()) -> Decision:
    refusal = _split_brain(bases, generation, history, est)
    if "split-brain-as-incremental" in mutations:
        refusal = None  # broken on purpose: a split brain resyncs as if the secondary had agreed to lose
    if refusal is not None:
        return refusal
    own = est.peer_changed or est.peer_digests
    base, why = bases.choose(generation, est.committed_generation, est.committed_seq,
                             bool(own) or est.peer_demoted)
    if base is not None and own:
        differ = tuple((vol, off, length) for vol, off, length, digest in est.peer_digests
                       if chunk_digest(node.read_snapshot(base.snapshot, names[vol], off, length)) != digest)
        base = base.with_unacked(est.peer_changed + differ)
        why += (f", with what the secondary changed itself: {len(est.peer_changed)} extents and "
                f"{len(differ)} of the {len(est.peer_digests)} chunks it may have changed")
    return Decision(base, why)


def knows(bases: ResyncBases, generation, history: tuple, candidate) -> bool:
    """A point of this node's own history: confirmed, earlier, or the
    target of a round whose commit it sent."""
    return (candidate == generation or candidate in history
            or any(b.generation == candidate for b in bases.all().values()))


def _split_brain(bases: ResyncBases, generation, history: tuple, est: Established) -> Decision | None:
    if est.peer_discard:
        return None
    peer = est.committed_generation
    if peer != NIL_UUID and not knows(bases, generation, history, peer):
        return Decision(None, f"split brain: the secondary holds generation {peer}, which is not in this node's "
                              f"history: another primary wrote it (a node promoted while this one ran, or a copy "
                              f"of this node's directory); the link is refused and neither image changes",
                        SplitBrainStatus(None, est.peer_diverged or None))
    if not est.peer_diverged:
        return None
    base = bases.find(peer, est.committed_seq, True)
    mine = None if base is None else bases.own_writes(base)
    if mine == 0:
        return None  # only the demoted side wrote: its writes lose, as its demote said
    return Decision(None, f"split brain: this primary and the secondary both wrote since the last point they "
                          f"shared (here {'an unknown number of' if mine is None else mine} chunks, there "
                          f"{est.peer_diverged}); the link is refused and neither image changes",
                    SplitBrainStatus(mine, est.peer_diverged))
