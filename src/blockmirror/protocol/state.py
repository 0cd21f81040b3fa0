"""The connection state machine: every rule about which message may be sent
or received when lives in this file, as plain tables.

Rules that depend on message *contents* (sequence numbers, round ids,
extents inside volumes) are in stream.py; this file only knows types.

Handshake (primary = initiator, secondary = acceptor)::

    primary                              secondary
    IDLE --send Hello--> AWAIT_HELLO     IDLE --recv Hello--> SEND_HELLO
                                         SEND_HELLO --send Hello--> AWAIT_PROOF
    AWAIT_HELLO --recv Hello--> SEND_PROOF
    SEND_PROOF --send AuthProof--> AWAIT_PROOF
                                         AWAIT_PROOF --recv AuthProof--> SEND_PROOF
                                         SEND_PROOF --send AuthProof--> AWAIT_ATTACH
    AWAIT_PROOF --recv AuthProof--> SEND_ATTACH
    SEND_ATTACH --send Attach--> AWAIT_READY
                                         AWAIT_ATTACH --recv Attach--> SEND_READY
                                         SEND_READY --send Ready--> READY
    AWAIT_READY --recv Ready--> READY

The SEND_* states are transient: the connection sends the reply in the same
call that received the request. After READY, a resync round is the RESYNC
state (ResyncBegin .. ResyncCommit); live writes are not allowed inside a
round, so the secondary never has to order a live write against a half-
received round. Error, sent or received, moves any open state to ERROR.
Goodbye half-closes: the sender sends nothing more, the receiver may still
answer (Acks, ResyncCommitted, its own Goodbye); both Goodbyes mean CLOSED.
"""

from __future__ import annotations

import enum

from blockmirror.protocol.codec import MessageType as T
from blockmirror.protocol.handshake import Role


class State(enum.Enum):
    IDLE = "IDLE"
    SEND_HELLO = "SEND_HELLO"
    AWAIT_HELLO = "AWAIT_HELLO"
    SEND_PROOF = "SEND_PROOF"
    AWAIT_PROOF = "AWAIT_PROOF"
    SEND_ATTACH = "SEND_ATTACH"
    AWAIT_ATTACH = "AWAIT_ATTACH"
    SEND_READY = "SEND_READY"
    AWAIT_READY = "AWAIT_READY"
    READY = "READY"  # streaming live writes
    RESYNC = "RESYNC"  # streaming, inside a resync round
    CLOSED = "CLOSED"
    ERROR = "ERROR"


class Direction(enum.Enum):
    SEND = "send"
    RECV = "recv"


S, R = Direction.SEND, Direction.RECV

HANDSHAKE_STATES = frozenset({State.IDLE, State.SEND_HELLO, State.AWAIT_HELLO, State.SEND_PROOF,
                              State.AWAIT_PROOF, State.SEND_ATTACH, State.AWAIT_ATTACH, State.SEND_READY,
                              State.AWAIT_READY})
STREAMING_STATES = frozenset({State.READY, State.RESYNC})
FINAL_STATES = frozenset({State.CLOSED, State.ERROR})

HANDSHAKE_TRANSITIONS: dict[Role, dict[tuple[State, Direction, T], State]] = {
    Role.PRIMARY: {
        (State.IDLE, S, T.HELLO): State.AWAIT_HELLO,
        (State.AWAIT_HELLO, R, T.HELLO): State.SEND_PROOF,
        (State.SEND_PROOF, S, T.AUTH_PROOF): State.AWAIT_PROOF,
        (State.AWAIT_PROOF, R, T.AUTH_PROOF): State.SEND_ATTACH,
        (State.SEND_ATTACH, S, T.ATTACH): State.AWAIT_READY,
        (State.AWAIT_READY, R, T.READY): State.READY,
    },
    Role.SECONDARY: {
        (State.IDLE, R, T.HELLO): State.SEND_HELLO,
        (State.SEND_HELLO, S, T.HELLO): State.AWAIT_PROOF,
        (State.AWAIT_PROOF, R, T.AUTH_PROOF): State.SEND_PROOF,
        (State.SEND_PROOF, S, T.AUTH_PROOF): State.AWAIT_ATTACH,
        (State.AWAIT_ATTACH, R, T.ATTACH): State.SEND_READY,
        (State.SEND_READY, S, T.READY): State.READY,
    },
}

# Which streaming messages each role originates.
SENT_BY: dict[Role, frozenset[T]] = {
    Role.PRIMARY: frozenset({T.WRITE, T.WRITE_ZEROES, T.HEARTBEAT, T.HEARTBEAT_ACK,
                             T.RESYNC_BEGIN, T.RESYNC_DATA, T.RESYNC_ZEROES, T.RESYNC_COMMIT, T.VERIFY_REQUEST,
                             T.GOODBYE}),
    Role.SECONDARY: frozenset({T.ACK, T.RESYNC_COMMITTED, T.VERIFY_REPLY, T.HEARTBEAT, T.HEARTBEAT_ACK,
                               T.GOODBYE}),
}

# Which streaming messages each streaming state allows (either direction).
ALLOWED_IN: dict[State, frozenset[T]] = {
    State.READY: frozenset({T.WRITE, T.WRITE_ZEROES, T.ACK, T.HEARTBEAT, T.HEARTBEAT_ACK,
                            T.RESYNC_BEGIN, T.RESYNC_COMMITTED, T.VERIFY_REQUEST, T.VERIFY_REPLY, T.GOODBYE}),
    State.RESYNC: frozenset({T.RESYNC_DATA, T.RESYNC_ZEROES, T.RESYNC_COMMIT, T.ACK, T.HEARTBEAT,
                             T.HEARTBEAT_ACK, T.RESYNC_COMMITTED, T.VERIFY_REPLY, T.GOODBYE}),
}

STREAMING_TRANSITIONS: dict[tuple[State, T], State] = {
    (State.READY, T.RESYNC_BEGIN): State.RESYNC,
    (State.RESYNC, T.RESYNC_COMMIT): State.READY,
}

# What a side may still send once the peer has said Goodbye: answers only.
SENDABLE_AFTER_PEER_GOODBYE = frozenset({T.ACK, T.RESYNC_COMMITTED, T.VERIFY_REPLY, T.HEARTBEAT_ACK, T.GOODBYE})


class StateViolation(Exception):
    """A message type not allowed now; the connection turns it into a
    Local- or RemoteProtocolError depending on the direction."""


class ConnectionState:
    """Applies the tables above. Holds the state and the two Goodbye flags."""

    def __init__(self, role: Role):
        self.role = role
        self.state = State.IDLE
        self.we_said_goodbye = False
        self.they_said_goodbye = False

    def process(self, direction: Direction, msg_type: T) -> None:
        """Move on `msg_type` going in `direction`, or raise StateViolation
        (leaving the state as it was)."""
        state = self.state
        if state in FINAL_STATES:
            raise StateViolation(f"cannot {direction.value} {msg_type.name}: connection is {state.name}")
        if msg_type is T.ERROR:
            self.state = State.ERROR
            return
        new = HANDSHAKE_TRANSITIONS[self.role].get((state, direction, msg_type))
        if new is not None:
            self.state = new
            return
        if state not in STREAMING_STATES:
            raise StateViolation(f"{self._who(direction)} may not {direction.value} {msg_type.name} in state "
                                 f"{state.name}")
        sender = self.role if direction is S else self.role.peer
        if msg_type not in SENT_BY[sender]:
            raise StateViolation(f"a {sender.name.lower()} never sends {msg_type.name}")
        if direction is S and self.we_said_goodbye:
            raise StateViolation(f"cannot send {msg_type.name} after our Goodbye")
        if direction is R and self.they_said_goodbye:
            raise StateViolation(f"peer sent {msg_type.name} after its Goodbye")
        if direction is S and self.they_said_goodbye and msg_type not in SENDABLE_AFTER_PEER_GOODBYE:
            raise StateViolation(f"cannot send {msg_type.name} after the peer's Goodbye")
        if msg_type not in ALLOWED_IN[state]:
            raise StateViolation(f"{msg_type.name} is not allowed in state {state.name}")
        self.state = STREAMING_TRANSITIONS.get((state, msg_type), state)
        if msg_type is T.GOODBYE:
            if direction is S:
                self.we_said_goodbye = True
            else:
                self.they_said_goodbye = True
            if self.we_said_goodbye and self.they_said_goodbye:
                self.state = State.CLOSED

    def process_eof(self) -> None:
        """The byte stream ended: CLOSED unless already failed."""
        if self.state is not State.ERROR:
            self.state = State.CLOSED

    def process_error(self) -> None:
        """A protocol error was detected (by us, on either side)."""
        self.state = State.ERROR

    def _who(self, direction: Direction) -> str:
        return "we" if direction is S else "peer"
