"""The server side of the fixed newstyle NBD handshake, sans-IO.

Bytes from the client go in with `receive_data`; bytes for the client come out
of `data_to_send`. The handshake ends in TRANSMISSION (an export was chosen;
`leftover` holds any request bytes that came with the last option) or in
CLOSED (`close_reason` says why; the caller logs it and drops the connection).
All transitions are in `_handle_option` and `receive_data`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Mapping

from blockmirror.nbd import wire
from blockmirror.nbd.wire import Info, Opt, Rep

_GREETING = struct.Struct(">QQH").pack(wire.NBDMAGIC, wire.IHAVEOPT, wire.SERVER_HANDSHAKE_FLAGS)
_OPTION_HEADER = struct.Struct(">QII")  # IHAVEOPT, option, data length


@dataclass(frozen=True)
class ExportInfo:
    """What the handshake tells a client about one export."""

    name: str
    size: int
    transmission_flags: int
    description: str = ""

    def __post_init__(self):
        assert self.size >= 0 and self.transmission_flags & wire.TFLAG_HAS_FLAGS


class State(enum.Enum):
    CLIENT_FLAGS = "client-flags"
    OPTIONS = "options"
    TRANSMISSION = "transmission"
    CLOSED = "closed"


class Handshake:
    """One connection's option haggling against a fixed catalog of exports.

    `exports` maps export names to their info in listing order; the empty name
    (the spec's "default export") selects the first one.
    """

    def __init__(self, exports: Mapping[str, ExportInfo]):
        self._exports = exports
        self._in = bytearray()
        self._out = [_GREETING]
        self._no_zeroes = False
        self._options_seen = 0
        self.state = State.CLIENT_FLAGS
        self.export: ExportInfo | None = None
        self.leftover = b""
        self.close_reason = ""
        self.client_aborted = False

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        if self.state in (State.TRANSMISSION, State.CLOSED):
            return
        self._in += data
        while self.state in (State.CLIENT_FLAGS, State.OPTIONS):
            if self.state is State.CLIENT_FLAGS:
                if len(self._in) < 4:
                    return
                (flags,) = struct.unpack_from(">I", self._in)
                del self._in[:4]
                if flags & ~wire.KNOWN_CLIENT_FLAGS:
                    self._close(f"client sent unknown handshake flags 0x{flags:08x}")
                    return
                self._no_zeroes = bool(flags & wire.CLIENT_FLAG_NO_ZEROES)
                self.state = State.OPTIONS
                continue
            if len(self._in) < _OPTION_HEADER.size:
                return
            magic, option, length = _OPTION_HEADER.unpack_from(self._in)
            if magic != wire.IHAVEOPT:
                self._close(f"bad option magic 0x{magic:016x}")
                return
            if length > wire.MAX_OPTION_DATA_BYTES:
                self._close(f"option {option} carries {length} bytes, over the "
                            f"{wire.MAX_OPTION_DATA_BYTES}-byte limit")
                return
            end = _OPTION_HEADER.size + length
            if len(self._in) < end:
                return
            payload = bytes(self._in[_OPTION_HEADER.size:end])
            del self._in[:end]
            self._options_seen += 1
            if self._options_seen > wire.MAX_OPTIONS_PER_CONNECTION:
                self._close(f"more than {wire.MAX_OPTIONS_PER_CONNECTION} options")
                return
            self._handle_option(option, payload)
        if self.state is State.TRANSMISSION:
            self.leftover = bytes(self._in)
        self._in.clear()

    # -- options ------------------------------------------------------------------

    def _handle_option(self, option: int, data: bytes) -> None:
        if option == Opt.EXPORT_NAME:
            info = self._lookup(data)
            if info is None:
                # The spec leaves no way to refuse EXPORT_NAME but to hang up.
                self._close(f"NBD_OPT_EXPORT_NAME for unknown export {data[:64]!r}")
                return
            tail = b"" if self._no_zeroes else bytes(124)
            self._out.append(struct.pack(">QH", info.size, info.transmission_flags) + tail)
            self._enter_transmission(info)
        elif option == Opt.ABORT:
            self._out.append(wire.option_reply(option, Rep.ACK))
            self.client_aborted = True
            self._close("client sent NBD_OPT_ABORT")
        elif option == Opt.LIST:
            if data:
                self._error(option, Rep.ERR_INVALID, "NBD_OPT_LIST takes no data")
                return
            for name in self._exports:
                encoded = name.encode()
                self._out.append(wire.option_reply(option, Rep.SERVER, struct.pack(">I", len(encoded)) + encoded))
            self._out.append(wire.option_reply(option, Rep.ACK))
        elif option in (Opt.INFO, Opt.GO):
            self._info_or_go(option, data)
        else:
            name = Opt(option).name if option in Opt._value2member_map_ else str(option)
            self._error(option, Rep.ERR_UNSUP, f"option {name} is not supported")

    def _info_or_go(self, option: int, data: bytes) -> None:
        if len(data) < 6:
            self._error(option, Rep.ERR_INVALID, "option data too short")
            return
        (name_len,) = struct.unpack_from(">I", data)
        if name_len > len(data) - 6:
            self._error(option, Rep.ERR_INVALID, "export name length exceeds the option data")
            return
        name = data[4:4 + name_len]
        (count,) = struct.unpack_from(">H", data, 4 + name_len)
        if len(data) != 6 + name_len + 2 * count:
            self._error(option, Rep.ERR_INVALID, "information request count does not match the option length")
            return
        requests = set(struct.unpack_from(f">{count}H", data, 6 + name_len))
        info = self._lookup(name)
        if info is None:
            shown = name.decode("utf-8", "replace")[:64]
            known = ", ".join(self._exports)[:512]
            self._error(option, Rep.ERR_UNKNOWN, f"no volume named {shown!r}; volumes: {known}")
            return
        self._info(option, struct.pack(">HQH", Info.EXPORT, info.size, info.transmission_flags))
        # Sent whether asked or not: our constraints are within the spec's defaults.
        self._info(option, struct.pack(">HIII", Info.BLOCK_SIZE, wire.MIN_BLOCK_BYTES,
                                       wire.PREFERRED_BLOCK_BYTES, wire.MAX_PAYLOAD_BYTES))
        if Info.NAME in requests:
            self._info(option, struct.pack(">H", Info.NAME) + info.name.encode())
        if Info.DESCRIPTION in requests and info.description:
            self._info(option, struct.pack(">H", Info.DESCRIPTION) + info.description.encode())
        self._out.append(wire.option_reply(option, Rep.ACK))
        if option == Opt.GO:
            self._enter_transmission(info)

    def _lookup(self, raw_name: bytes) -> ExportInfo | None:
        if len(raw_name) > wire.MAX_NAME_BYTES:
            return None
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if name == "":
            return next(iter(self._exports.values()), None)
        return self._exports.get(name)

    def _info(self, option: int, payload: bytes) -> None:
        self._out.append(wire.option_reply(option, Rep.INFO, payload))

    def _error(self, option: int, reply: Rep, message: str) -> None:
        self._out.append(wire.option_reply(option, reply, message.encode()))

    def _enter_transmission(self, info: ExportInfo) -> None:
        self.export = info
        self.state = State.TRANSMISSION

    def _close(self, reason: str) -> None:
        self.close_reason = reason
        self.state = State.CLOSED
