"""The phases of each role, and every move between them, as plain tables.

Everything that decides *which* phase may follow which lives in this file
(as the wire's does in protocol/state.py); the nodes change phase only
through `PhaseMachine.move`, which refuses a move the table does not list.

The primary walks the method of the seed (Fig. 2, steps 62-80)::

    DISCONNECTED --dial--> CONNECTING --link up: round planned--> SENDING | FINAL_SENDING
    CONNECTING --link up, no common base, --initial-sync checksum--> COMPARING
    COMPARING --every digest compared: a round of the chunks that differ--> SENDING | FINAL_SENDING
    CONNECTING --attempt failed or timed out--> DISCONNECTED (SPLIT_BRAIN once refused for it)
    CONNECTING --link up, both nodes wrote since the point they shared: refused--> SPLIT_BRAIN
    SPLIT_BRAIN --dial again (the secondary may have been told to discard)--> CONNECTING
    SENDING --extents sent, commit sent--> COMMITTING
    SENDING --extents sent, no host write since the round's snapshot--> FINAL_COMMITTING
    COMMITTING --secondary committed, next round planned--> SENDING | FINAL_SENDING
    FINAL_SENDING --extents sent, commit sent--> FINAL_COMMITTING
    FINAL_COMMITTING --secondary committed--> MIRRORING
    MIRRORING --verify --repair found chunks that differ: a round from a new base--> SENDING | FINAL_SENDING
    any linked phase --link down (step 62: pause, snapshot, record unacked)--> DISCONNECTED
    DISCONNECTED | SPLIT_BRAIN --stop (a linked node goes down first, an attempt is abandoned)--> STOPPED

In COMPARING, SENDING and COMMITTING host writes stay local (the next round's diff
carries them); in FINAL_SENDING they are mirrored live, queued behind the
round's commit; from FINAL_COMMITTING on they flow.

The secondary::

    DISCONNECTED --link up--> LINKED
    LINKED --ResyncBegin (base nil)--> FULL_ROUND
    LINKED --ResyncBegin (base = our generation)--> INCREMENTAL_ROUND
    FULL_ROUND | INCREMENTAL_ROUND --ResyncCommit--> LINKED
    any linked phase --link down (an open round stays open, its resume point durable)--> DISCONNECTED
    DISCONNECTED --stop--> STOPPED
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class PrimaryPhase(enum.Enum):
    DISCONNECTED = "disconnected"  # writes local; the link-down snapshot tracks them; reconnect timer armed
    CONNECTING = "connecting"  # an attempt dialled, handshake under way
    COMPARING = "comparing"  # --initial-sync checksum: digests of a target snapshot's chunks against the secondary's
    SENDING = "sending"  # a resync round's extents go out; host writes local
    COMMITTING = "committing"  # the round's commit sent, its confirmation awaited; host writes local
    FINAL_SENDING = "final-sending"  # the last round: host writes mirrored, queued behind its commit
    FINAL_COMMITTING = "final-committing"  # the last round's commit sent; mirrored writes flow
    MIRRORING = "mirroring"  # every write sent in order, acknowledged cumulatively
    SPLIT_BRAIN = "split-brain"  # refused: both nodes wrote since the point they shared; writes local, retries
    STOPPED = "stopped"


class SecondaryPhase(enum.Enum):
    DISCONNECTED = "disconnected"
    LINKED = "linked"  # live writes: journal, sync, ack, apply
    FULL_ROUND = "full-round"  # no common base: written in place, the node inconsistent until commit
    INCREMENTAL_ROUND = "incremental-round"  # applied in place under a safety snapshot
    STOPPED = "stopped"


P, S = PrimaryPhase, SecondaryPhase

PRIMARY_LINKED = frozenset({P.COMPARING, P.SENDING, P.COMMITTING, P.FINAL_SENDING, P.FINAL_COMMITTING,
                            P.MIRRORING})
PRIMARY_LIVE = frozenset({P.FINAL_SENDING, P.FINAL_COMMITTING, P.MIRRORING})  # host writes get seqs
PRIMARY_IN_ROUND = frozenset({P.SENDING, P.COMMITTING, P.FINAL_SENDING, P.FINAL_COMMITTING})
PRIMARY_SENDING_ROUND = frozenset({P.SENDING, P.FINAL_SENDING})
PRIMARY_WAITING = frozenset({P.DISCONNECTED, P.SPLIT_BRAIN})  # no link: dial when the reconnect timer fires

PRIMARY_TRANSITIONS: dict[PrimaryPhase, frozenset[PrimaryPhase]] = {
    P.DISCONNECTED: frozenset({P.CONNECTING, P.STOPPED}),
    P.CONNECTING: frozenset({P.DISCONNECTED, P.COMPARING, P.SENDING, P.FINAL_SENDING, P.SPLIT_BRAIN}),
    P.COMPARING: frozenset({P.SENDING, P.FINAL_SENDING, P.DISCONNECTED}),
    P.SPLIT_BRAIN: frozenset({P.CONNECTING, P.STOPPED}),
    P.SENDING: frozenset({P.COMMITTING, P.FINAL_COMMITTING, P.DISCONNECTED}),
    P.COMMITTING: frozenset({P.SENDING, P.FINAL_SENDING, P.DISCONNECTED}),
    P.FINAL_SENDING: frozenset({P.FINAL_COMMITTING, P.DISCONNECTED}),
    P.FINAL_COMMITTING: frozenset({P.MIRRORING, P.DISCONNECTED}),
    P.MIRRORING: frozenset({P.DISCONNECTED, P.SENDING, P.FINAL_SENDING}),
    P.STOPPED: frozenset(),
}

SECONDARY_LINKED = frozenset({S.LINKED, S.FULL_ROUND, S.INCREMENTAL_ROUND})

SECONDARY_TRANSITIONS: dict[SecondaryPhase, frozenset[SecondaryPhase]] = {
    S.DISCONNECTED: frozenset({S.LINKED, S.STOPPED}),
    S.LINKED: frozenset({S.FULL_ROUND, S.INCREMENTAL_ROUND, S.DISCONNECTED}),
    S.FULL_ROUND: frozenset({S.LINKED, S.DISCONNECTED}),
    S.INCREMENTAL_ROUND: frozenset({S.LINKED, S.DISCONNECTED}),
    S.STOPPED: frozenset(),
}


class IllegalPhaseChange(AssertionError):
    """A node tried a move its table does not list: a programming error."""


@dataclass(frozen=True, slots=True)
class PhaseChange:
    old: enum.Enum
    new: enum.Enum
    reason: str


class PhaseMachine:
    """The current phase of one node and the only way to change it."""

    def __init__(self, table: dict, initial: enum.Enum):
        assert initial in table, f"{initial} is not a phase of this table"
        self._table = table
        self.phase = initial

    def move(self, new: enum.Enum, reason: str) -> PhaseChange:
        old = self.phase
        if new not in self._table[old]:
            raise IllegalPhaseChange(f"{old.name} -> {new.name} is not a legal move ({reason})")
        self.phase = new
        return PhaseChange(old, new, reason)
