"""Protocol error codes and the two exception kinds (h11 style).

A *local* error means this side tried to do something the protocol forbids
(an engine bug); a *remote* error means the peer sent something we refuse.
Either one moves the connection to ERROR: a byte stream that has gone wrong
once cannot be trusted to resynchronise.
"""

from __future__ import annotations

import enum

from blockmirror.errors import BlockmirrorError


class ErrorCode(enum.IntEnum):
    """Reason codes carried by the Error message (u16 on the wire).

    Codes are append-only and a retired code is never reused: a peer that
    receives a code it does not know still logs the number and the text.
    Retired: 18 (NO_SPACE) and 19 (SHUTTING_DOWN), which nothing sent.
    """

    MALFORMED_FRAME = 1  # bad magic: not a blockmirror peer, or the stream lost sync
    UNSUPPORTED_VERSION = 2
    BAD_CHECKSUM = 3
    FRAME_TOO_LARGE = 4
    UNKNOWN_MESSAGE_TYPE = 5
    MALFORMED_MESSAGE = 6  # payload does not parse or breaks a field rule
    UNEXPECTED_MESSAGE = 7  # message type not allowed in the current state
    AUTH_FAILED = 8
    PAIR_MISMATCH = 9
    ROLE_CONFLICT = 10  # both peers claim the same role (split brain?)
    VOLUME_MISMATCH = 11
    OUT_OF_RANGE = 12  # extent outside its volume
    SEQUENCE_ERROR = 13  # seq / ack numbering went backwards or too far
    RESYNC_ERROR = 14  # resync round bracket or counts do not add up
    TRUNCATED_FRAME = 15  # connection ended in the middle of a frame
    REFUSED = 16  # engine-level refusal, e.g. diverged generations
    BUSY = 17  # the secondary already serves a primary for this pair
    INTERNAL = 20
    SPLIT_BRAIN = 21  # both nodes wrote since the last point they shared: neither image changes


_HINTS: dict[ErrorCode, str] = {
    ErrorCode.AUTH_FAILED: "check that both nodes were given the same pair secret",
    ErrorCode.PAIR_MISMATCH: "check that both nodes were initialised for the same pair",
    ErrorCode.ROLE_CONFLICT: "exactly one node of a pair must be primary; check both configs",
    ErrorCode.VOLUME_MISMATCH: "create the secondary's volumes with the primary's names and sizes",
    ErrorCode.UNSUPPORTED_VERSION: "run the same blockmirror version on both nodes",
    ErrorCode.MALFORMED_FRAME: "check that the address points at a blockmirror secondary",
    ErrorCode.SPLIT_BRAIN: "stop the node whose writes should lose, run blockmirror demote DIR --discard-my-data "
                           "on it, and start it as the secondary (its writes are kept in a discarded-... snapshot)",
}


def error_hint(code: ErrorCode) -> str | None:
    """What a user can do about a refusal with this code."""
    return _HINTS.get(code)


def error_code_name(code: int) -> str:
    """Name of a code for logs; unknown codes (from newer peers) stay numeric."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"CODE_{code}"


class ProtocolError(BlockmirrorError):
    """Base of protocol failures; `code` is what the Error frame carries."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message, hint=_HINTS.get(code))
        self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.args[0]}"


class LocalProtocolError(ProtocolError):
    """This side asked to send something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something we refuse; an Error frame says so to the peer."""
