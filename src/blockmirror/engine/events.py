"""What drives a node, and what a node hands back.

A driver (the asyncio daemons in runtime/, the simulator in sim/) owns the
I/O: sockets, NBD, the clock. It feeds a node typed events with `now` and
applies the `Output` of each step. Links are named by small integers the
node chooses (the primary's connection attempts) or the driver chooses (the
secondary's accepted connections); an event about a link the node no longer
works with is ignored by the node, so no driver has to know which link
matters.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from blockmirror.engine.phases import PhaseChange
from blockmirror.protocol import Established, LocalNode
from blockmirror.storage import WriteOp


class HostWrite(NamedTuple):
    token: Any
    op: WriteOp
    fua: bool = False


class HostFlush(NamedTuple):
    token: Any


# -- inputs ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class HostRequests:
    """Host writes and flushes, in the order the host issued them."""
    items: Sequence[HostWrite | HostFlush]


@dataclass(frozen=True, slots=True)
class Accepted:
    """Secondary: a connection may begin its handshake now (one at a time)."""
    link: int


@dataclass(frozen=True, slots=True)
class LinkUp:
    """The handshake on `link` finished: the peer is authenticated, the
    volumes match, and `established` carries the secondary's committed point."""
    link: int
    established: Established


@dataclass(frozen=True, slots=True)
class Received:
    """Messages from the peer on `link`, in stream order (one batch)."""
    link: int
    messages: Sequence[Any]


@dataclass(frozen=True, slots=True)
class LinkClosed:
    """`link` is gone (EOF, reset, the peer's Error, a protocol error, or a
    close the node asked for), before or after its handshake."""
    link: int
    reason: str
    refused: int | None = None  # the ErrorCode the peer refused the link with, if it did


@dataclass(frozen=True, slots=True)
class Stop:
    """Orderly shutdown: say goodbye, record what the peer lacks, mark clean."""


@dataclass(frozen=True, slots=True)
class TakeSnapshot:
    """Admin command (`blockmirror snapshot create` on a running primary): a
    user snapshot of every volume, one pause. Answered in Output.replies."""
    token: Any
    label: str


@dataclass(frozen=True, slots=True)
class StartVerify:
    """Admin command (`blockmirror verify` on a running primary): compare
    `volumes` (names; empty: all) with the secondary, optionally repairing
    what differs, reading at most `rate_bps` bytes a second per side (None:
    no limit). Answered in Output.replies with the run's id and size."""
    token: Any
    volumes: tuple[str, ...] = ()
    repair: bool = False
    rate_bps: int | None = None


Event = HostRequests | Accepted | LinkUp | Received | LinkClosed | Stop | TakeSnapshot | StartVerify


# -- outputs -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Dial:
    """Primary: open a connection to the peer as `link` and start the
    handshake as `local` (`Connection(local, ...).initiate()`)."""
    link: int
    local: LocalNode


@dataclass(frozen=True, slots=True)
class Answer:
    """Secondary: start the handshake on accepted `link` as `local` (its
    committed point as of now)."""
    link: int
    local: LocalNode


@dataclass(frozen=True, slots=True)
class CloseLink:
    link: int
    reason: str
    reset: bool = True  # False: an orderly close: what is queued goes out first
    last: tuple = ()  # messages to send before closing (a Goodbye)


@dataclass(frozen=True, slots=True)
class LogLine:
    level: int
    text: str


@dataclass(slots=True)
class Output:
    """One step's result. `send` goes to `link`, after `completions` have
    been handed to the host if the driver prefers replies first."""
    send: list = field(default_factory=list)
    link: int | None = None
    completions: list[tuple[Any, BaseException | None]] = field(default_factory=list)
    start: list[Dial | Answer] = field(default_factory=list)
    close: list[CloseLink] = field(default_factory=list)
    changes: list[PhaseChange] = field(default_factory=list)
    logs: list[LogLine] = field(default_factory=list)
    state: str = ""
    next_timer: float = float("inf")
    replies: list[tuple[Any, Any]] = field(default_factory=list)  # admin commands: (token, result or error)

    def log(self, level: int, text: str) -> None:
        self.logs.append(LogLine(level, text))

    def info(self, text: str) -> None:
        self.logs.append(LogLine(logging.INFO, text))

    def warning(self, text: str) -> None:
        self.logs.append(LogLine(logging.WARNING, text))
