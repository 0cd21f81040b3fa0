"""NBD wire format: magic numbers, codes, limits and fixed-size headers.

Values are those of NetworkBlockDevice/nbd doc/proto.md. Only what the server
speaks is here: fixed newstyle handshake, simple replies.
"""

from __future__ import annotations

import enum
import struct

# -- limits (advertised in NBD_INFO_BLOCK_SIZE; enforced by the server) --------
MIN_BLOCK_BYTES = 1  # any byte range: the storage does read-modify-write itself
PREFERRED_BLOCK_BYTES = 4096
MAX_PAYLOAD_BYTES = 32 << 20  # READ and WRITE lengths; the spec's default maximum
MAX_NAME_BYTES = 4096  # the spec's limit on strings
MAX_OPTION_DATA_BYTES = 64 << 10  # a larger option is a denial of service: hard disconnect
MAX_OPTIONS_PER_CONNECTION = 64

# -- handshake ------------------------------------------------------------------
NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
OPTION_REPLY_MAGIC = 0x3E889045565A9

FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
SERVER_HANDSHAKE_FLAGS = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES
CLIENT_FLAG_FIXED_NEWSTYLE = 1 << 0
CLIENT_FLAG_NO_ZEROES = 1 << 1
KNOWN_CLIENT_FLAGS = CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES


class Opt(enum.IntEnum):
    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    PEEK_EXPORT = 4
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8
    LIST_META_CONTEXT = 9
    SET_META_CONTEXT = 10
    EXTENDED_HEADERS = 11


class Rep(enum.IntEnum):
    ACK = 1
    SERVER = 2
    INFO = 3
    META_CONTEXT = 4
    ERR_UNSUP = (1 << 31) + 1
    ERR_POLICY = (1 << 31) + 2
    ERR_INVALID = (1 << 31) + 3
    ERR_PLATFORM = (1 << 31) + 4
    ERR_TLS_REQD = (1 << 31) + 5
    ERR_UNKNOWN = (1 << 31) + 6
    ERR_SHUTDOWN = (1 << 31) + 7
    ERR_BLOCK_SIZE_REQD = (1 << 31) + 8
    ERR_TOO_BIG = (1 << 31) + 9


class Info(enum.IntEnum):
    EXPORT = 0
    NAME = 1
    DESCRIPTION = 2
    BLOCK_SIZE = 3


# -- transmission flags (16 bits, per export) -----------------------------------
TFLAG_HAS_FLAGS = 1 << 0
TFLAG_READ_ONLY = 1 << 1
TFLAG_SEND_FLUSH = 1 << 2
TFLAG_SEND_FUA = 1 << 3
TFLAG_ROTATIONAL = 1 << 4
TFLAG_SEND_TRIM = 1 << 5
TFLAG_SEND_WRITE_ZEROES = 1 << 6
TFLAG_SEND_DF = 1 << 7
TFLAG_CAN_MULTI_CONN = 1 << 8


def transmission_flags(read_only: bool, multi_conn: bool) -> int:
    flags = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA
    if read_only:
        flags |= TFLAG_READ_ONLY
    else:
        flags |= TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES
    if multi_conn:
        flags |= TFLAG_CAN_MULTI_CONN
    return flags


# -- transmission ---------------------------------------------------------------
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

REQUEST = struct.Struct(">IHHQQI")  # magic, command flags, type, cookie, offset, length
REQUEST_BYTES = REQUEST.size  # 28
SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, cookie
SIMPLE_REPLY_BYTES = SIMPLE_REPLY.size  # 16


class Cmd(enum.IntEnum):
    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    CACHE = 5
    WRITE_ZEROES = 6
    BLOCK_STATUS = 7


CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

# Command flags each command accepts (FUA is valid on every command per the spec).
ALLOWED_CMD_FLAGS = {
    Cmd.READ: CMD_FLAG_FUA,
    Cmd.WRITE: CMD_FLAG_FUA,
    Cmd.DISC: CMD_FLAG_FUA,
    Cmd.FLUSH: CMD_FLAG_FUA,
    Cmd.TRIM: CMD_FLAG_FUA,
    Cmd.WRITE_ZEROES: CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
}


class Err(enum.IntEnum):
    OK = 0
    EPERM = 1
    EIO = 5
    ENOMEM = 12
    EINVAL = 22
    ENOSPC = 28
    EOVERFLOW = 75
    ENOTSUP = 95
    ESHUTDOWN = 108


_OPTION_REPLY = struct.Struct(">QIII")


def option_reply(option: int, reply: int, data: bytes = b"") -> bytes:
    return _OPTION_REPLY.pack(OPTION_REPLY_MAGIC, option, reply, len(data)) + data


def simple_reply(error: int, cookie: int) -> bytes:
    return SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)
