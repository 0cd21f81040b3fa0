"""One side of a blockmirror connection, with no I/O (h11 style).

The runtime drives it::

    conn = Connection(local, secret, os.urandom)
    conn.initiate()                      # primary only: queues Hello
    transport.write(conn.data_to_send())
    ...on bytes from the socket (b"" at EOF):
    conn.receive_data(data)
    while (event := conn.next_event()) is not None:
        engine.handle(event)             # Established, Write, Ack, ..., ConnectionClosed
    transport.writelines(conn.send_buffers(msg))   # or transport.write(conn.send(msg))
    transport.write(conn.data_to_send()) # whatever the connection said by itself

The handshake replies and Error frames the connection produces by itself are
queued; `send()`/`send_buffers()` return them first, so the order on the wire
is always the order of events. A RemoteProtocolError from next_event() or a
LocalProtocolError from send() leaves the connection in ERROR with an Error
frame queued for the peer; the runtime writes data_to_send() and closes.
"""

from __future__ import annotations

from collections.abc import Iterator

from blockmirror.protocol import auth, pairing
from blockmirror.protocol.errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from blockmirror.protocol.events import ConnectionClosed, Established, Event
from blockmirror.protocol.frames import Buffer, FrameDecoder
from blockmirror.protocol.handshake import Role, VolumeInfo
from blockmirror.protocol.messages import (
    MESSAGE_CLASSES,
    Attach,
    AuthProof,
    Error,
    Hello,
    Message,
    MessageType,
    Ready,
    decode_message,
    encode_message,
)
from blockmirror.protocol.pairing import LocalNode
from blockmirror.protocol.state import (
    HANDSHAKE_STATES,
    ConnectionState,
    Direction,
    State,
    StateViolation,
)
from blockmirror.protocol.stream import StreamOrder, StreamViolation

_HANDSHAKE_TYPES = frozenset({MessageType.HELLO, MessageType.AUTH_PROOF, MessageType.ATTACH, MessageType.READY})


class Connection:
    """A primary (initiator) or secondary (acceptor) endpoint, per `local.role`.

    `secret` is the pair's shared secret (never sent); `randbytes(n)` supplies
    the nonces (os.urandom in production, random.Random(seed).randbytes in the
    simulator). `verify_checksums=False` makes a receiver that trusts
    corrupted frames: the simulator's mutation check only."""

    def __init__(self, local: LocalNode, secret: bytes, randbytes: auth.RandBytes, verify_checksums: bool = True):
        auth.check_secret(secret)
        self._local = local
        self._secret = secret
        self._randbytes = randbytes
        self._machine = ConnectionState(local.role)
        self._decoder = FrameDecoder(MESSAGE_CLASSES, verify_checksums=verify_checksums)
        self._outgoing: list[Buffer] = []
        self._hello_ours: Hello | None = None
        self._hello_peer: Hello | None = None
        self._transcript = b""
        self._stream: StreamOrder | None = None
        self._closed_reported = False
        self.established: Established | None = None
        # Why the connection failed: our ProtocolError, or the peer's Error message.
        self.error: ProtocolError | Error | None = None

    def __repr__(self) -> str:
        return f"<Connection {self.role.name} {self.state.name}>"

    # --- state --------------------------------------------------------------

    @property
    def role(self) -> Role:
        return self._local.role

    @property
    def state(self) -> State:
        return self._machine.state

    @property
    def stream(self) -> StreamOrder | None:
        """Stream position (last seq, acked seq, generation, open round) once READY."""
        return self._stream

    # --- output -------------------------------------------------------------

    def initiate(self) -> None:
        """Primary: start the handshake by queueing our Hello."""
        if self.role is not Role.PRIMARY:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "only the primary initiates")
        self._send_hello()

    def data_to_send(self) -> bytes:
        """Bytes the connection produced by itself (handshake, Error frames)."""
        out = b"".join(self._outgoing)
        self._outgoing.clear()
        return out

    def send(self, msg: Message) -> bytes:
        """Encode `msg` for the wire, after anything already queued."""
        return b"".join(self.send_buffers(msg))

    def send_buffers(self, msg: Message) -> list[Buffer]:
        """Like send(), but a Write/ResyncData's data comes back as its own,
        uncopied buffer (for transport.writelines / socket.sendmsg)."""
        if msg.TYPE in _HANDSHAKE_TYPES:
            err = LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"{msg.TYPE.name} is sent by the connection itself")
            if self.state is not State.CLOSED:
                self._fail(err)
            raise err
        self._process_send(msg)
        out = self._outgoing + encode_message(msg)
        self._outgoing = []
        return out

    # --- input --------------------------------------------------------------

    def receive_data(self, data: Buffer) -> None:
        """Bytes from the peer; b"" means the peer closed its side."""
        if self.state is State.ERROR:
            return  # nothing more will be parsed; do not buffer it
        if self._decoder.eof:
            if memoryview(data).nbytes == 0:
                return
            raise LocalProtocolError(ErrorCode.INTERNAL, "data received after EOF")
        self._decoder.feed(data)

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """asyncio.BufferedProtocol support: space to recv_into directly."""
        return self._decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._decoder.buffer_updated(nbytes)

    def next_event(self) -> Event | None:
        """The next event, or None when more bytes are needed (or the
        connection is over). Raises RemoteProtocolError, once, when the peer
        breaks the protocol; nothing from the bad frame is delivered."""
        if self.state is State.ERROR or self._closed_reported:
            return None
        try:
            while True:
                frame = self._decoder.next_frame()
                if frame is None:
                    if self._decoder.eof:
                        return self._on_eof()
                    return None
                msg = decode_message(frame.msg_type, frame.payload)
                event = self._process_receive(msg)
                if event is not None:
                    return event
        except RemoteProtocolError as e:
            self._fail(e)
            raise

    def events(self) -> Iterator[Event]:
        """Every event available now."""
        while (event := self.next_event()) is not None:
            yield event

    # --- internals ----------------------------------------------------------

    def _on_eof(self) -> ConnectionClosed:
        clean = self._machine.they_said_goodbye
        self._machine.process_eof()
        self._closed_reported = True
        return ConnectionClosed(clean=clean)

    def _fail(self, error: ProtocolError) -> None:
        """Enter ERROR and tell the peer why (it may already be gone)."""
        if self.state is State.ERROR:
            return
        self._machine.process_error()
        self.error = error
        self._outgoing.extend(encode_message(Error.make(error.code, str(error.args[0]))))

    def _process_send(self, msg: Message) -> None:
        try:
            self._machine.process(Direction.SEND, msg.TYPE)
        except StateViolation as v:
            if self.state is State.ERROR or self.state is State.CLOSED:
                raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, str(v)) from None  # already over
            err = LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, str(v))
            self._fail(err)
            raise err from None
        if isinstance(msg, Error):
            self.error = msg
            return
        if self._stream is not None:
            try:
                self._stream.check(msg)
            except StreamViolation as v:
                err = LocalProtocolError(v.code, str(v))
                self._fail(err)
                raise err from None

    def _process_receive(self, msg: Message) -> Event | None:
        try:
            self._machine.process(Direction.RECV, msg.TYPE)
        except StateViolation as v:
            raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, str(v)) from None
        if isinstance(msg, Error):
            self.error = msg
            return msg
        if msg.TYPE in _HANDSHAKE_TYPES:
            return self._handshake(msg)
        if self._stream is not None:
            try:
                self._stream.check(msg)
            except StreamViolation as v:
                raise RemoteProtocolError(v.code, str(v)) from None
        return msg

    def _queue(self, msg: Message) -> None:
        """Send a message the connection originates (handshake)."""
        try:
            self._machine.process(Direction.SEND, msg.TYPE)
        except StateViolation as v:  # only reachable by calling initiate() twice
            raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, str(v)) from None
        self._outgoing.extend(encode_message(msg))

    def _send_hello(self) -> None:
        local = self._local
        self._hello_ours = Hello(local.role, local.node_uuid, local.pair_uuid, local.pair_name,
                                 auth.make_nonce(self._randbytes))
        self._queue(self._hello_ours)

    def _handshake(self, msg: Message) -> Event | None:
        """React to a handshake message the state table has just admitted."""
        assert self.state in HANDSHAKE_STATES or self.state is State.READY
        if isinstance(msg, Hello):
            pairing.check_peer_hello(self._local, msg)
            self._hello_peer = msg
            if self.role is Role.SECONDARY:
                self._send_hello()
            assert self._hello_ours is not None
            if msg.nonce == self._hello_ours.nonce:
                raise RemoteProtocolError(ErrorCode.AUTH_FAILED, "peer echoed our nonce (reflection attempt)")
            primary, secondary = ((self._hello_ours, msg) if self.role is Role.PRIMARY
                                  else (msg, self._hello_ours))
            self._transcript = auth.transcript(primary, secondary)
            if self.role is Role.PRIMARY:
                self._queue(AuthProof(auth.compute_proof(self._secret, Role.PRIMARY, self._transcript)))
            return None
        if isinstance(msg, AuthProof):
            if not auth.verify_proof(self._secret, self.role.peer, self._transcript, msg.mac):
                raise RemoteProtocolError(ErrorCode.AUTH_FAILED,
                                          "authentication failed: the peer does not prove the pair secret")
            if self.role is Role.SECONDARY:
                self._queue(AuthProof(auth.compute_proof(self._secret, Role.SECONDARY, self._transcript)))
            else:
                self._queue(Attach(self._local.volumes))
            return None
        if isinstance(msg, Attach):
            ours = pairing.match_volumes(msg.volumes, self._local.volumes)
            local = self._local
            changed, digests = pairing.changed_on_wire(local, ours)
            ready = Ready(local.committed_generation, local.committed_seq, ours, changed, digests, local.diverged,
                          local.discard, local.demoted, pairing.round_on_wire(local, msg.volumes))
            self._queue(ready)
            return self._establish(msg.volumes, ready)
        if isinstance(msg, Ready):
            pairing.match_volumes(self._local.volumes, msg.volumes)
            return self._establish(self._local.volumes, msg)
        raise AssertionError(f"not a handshake message: {msg!r}")

    def _establish(self, primary_volumes: tuple[VolumeInfo, ...], ready: Ready) -> Established:
        """Both sides build the same Established from the primary's volumes
        and the secondary's Ready."""
        secondary_volumes, generation, seq = ready.volumes, ready.committed_generation, ready.committed_seq
        assert self.state is State.READY and self._hello_peer is not None
        self._stream = StreamOrder(primary_volumes, generation, seq)
        peer_volumes = secondary_volumes if self.role is Role.PRIMARY else primary_volumes
        self.established = Established(
            role=self.role,
            peer_node_uuid=self._hello_peer.node_uuid,
            pair_uuid=self._local.pair_uuid,
            volumes=primary_volumes,
            peer_volumes=peer_volumes,
            committed_generation=generation,
            committed_seq=seq,
            peer_changed=ready.changed,
            peer_digests=ready.digests,
            peer_diverged=ready.diverged,
            peer_discard=ready.discard,
            peer_demoted=ready.demoted,
            peer_round=ready.open_round,
        )
        return self.established
