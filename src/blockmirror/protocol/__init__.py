"""The blockmirror wire protocol, sans-IO: framing, messages, handshake with
mutual HMAC authentication, and the per-connection state machine.

Nothing here touches sockets, clocks or global randomness; see connection.py
for how a runtime drives a Connection, and docs/PROTOCOL.md for the format.
"""

from blockmirror.protocol.codec import NIL_UUID, Message, MessageType
from blockmirror.protocol.connection import Connection
from blockmirror.protocol.errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from blockmirror.protocol.events import ConnectionClosed, Established, Event
from blockmirror.protocol.frames import (
    FRAME_HEADER_BYTES,
    FRAME_PAYLOAD_MAX_BYTES,
    PROTOCOL_VERSION,
    WRITE_DATA_MAX_BYTES,
)
from blockmirror.protocol.handshake import Attach, AuthProof, Hello, Ready, Role, VolumeInfo
from blockmirror.protocol.messages import (
    Ack,
    Error,
    Goodbye,
    Heartbeat,
    HeartbeatAck,
    ResyncBegin,
    ResyncCommit,
    ResyncCommitted,
    ResyncData,
    ResyncZeroes,
    VerifyReply,
    VerifyRequest,
    Write,
    WriteZeroes,
)
from blockmirror.protocol.pairing import LocalNode
from blockmirror.protocol.state import State

__all__ = [
    "FRAME_HEADER_BYTES", "FRAME_PAYLOAD_MAX_BYTES", "NIL_UUID", "PROTOCOL_VERSION", "WRITE_DATA_MAX_BYTES",
    "Ack", "Attach", "AuthProof", "Connection", "ConnectionClosed", "Error", "ErrorCode", "Established",
    "Event", "Goodbye", "Heartbeat", "HeartbeatAck", "Hello", "LocalNode", "LocalProtocolError",
    "Message", "MessageType", "ProtocolError", "Ready", "RemoteProtocolError", "ResyncBegin", "ResyncCommit",
    "ResyncCommitted", "ResyncData", "ResyncZeroes", "Role", "State", "VerifyReply", "VerifyRequest", "VolumeInfo",
    "Write", "WriteZeroes",
]
