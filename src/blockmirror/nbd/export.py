"""What the NBD server serves: the `BlockExport` interface.

The server owns the protocol; an export owns the bytes. The server checks every
request against `size`, `read_only` and the payload limit *before* calling the
export, so an export only ever sees in-range requests with
0 <= offset, offset + length <= size, and length <= MAX_PAYLOAD_BYTES for
read and write.

Completion semantics (the server replies when the coroutine returns):
- `write`/`write_zeroes`/`trim` return once a later `read` sees the change;
  with `fua=True`, once the change is on stable storage. A replicating export
  returns when its engine acknowledges the write (in sync mode: when the
  secondary has it on stable storage too).
- `flush` returns once every write that *returned* before `flush` was called
  is on stable storage (NBD_CMD_FLUSH). If `multi_conn` is true this holds
  for writes returned to any connection of the same export, which is what
  NBD_FLAG_CAN_MULTI_CONN promises clients.
- `data` handed to `write` belongs to the export from then on; the server
  never touches it again.

Errors: raise `ExportError(Err.X, ...)` to choose the NBD error exactly;
`NoSpace` -> ENOSPC, `OutOfRange` -> EINVAL (read/trim) or ENOSPC (writes),
`PermissionError` -> EPERM, other `OSError`s by errno, anything else -> EIO
(and it is logged with its traceback, as it is a bug or a failed disk).
"""

from __future__ import annotations

import errno
from typing import Protocol, runtime_checkable

from blockmirror.errors import NoSpace, OutOfRange
from blockmirror.nbd.wire import Cmd, Err


@runtime_checkable
class BlockExport(Protocol):
    name: str
    size: int  # bytes
    read_only: bool
    multi_conn: bool  # flush/FUA effects are shared by all connections to this export

    async def read(self, offset: int, length: int) -> bytes: ...
    async def write(self, offset: int, data: bytes | bytearray, fua: bool) -> None: ...
    async def write_zeroes(self, offset: int, length: int, fua: bool, no_hole: bool) -> None:
        """Reads back as zeroes; with `no_hole` the range must stay allocated
        (NBD_CMD_FLAG_NO_HOLE), otherwise it may be deallocated."""
    async def trim(self, offset: int, length: int, fua: bool) -> None: ...
    async def flush(self) -> None: ...


class ExportError(Exception):
    """An export's failure with the NBD error the client must see."""

    def __init__(self, error: Err, message: str = ""):
        super().__init__(message or error.name)
        self.error = error


_OS_ERRORS = {
    errno.ENOSPC: Err.ENOSPC, errno.EDQUOT: Err.ENOSPC, errno.EFBIG: Err.ENOSPC,
    errno.EPERM: Err.EPERM, errno.EACCES: Err.EPERM, errno.EROFS: Err.EPERM,
    errno.EINVAL: Err.EINVAL, errno.ENOMEM: Err.ENOMEM, errno.ESHUTDOWN: Err.ESHUTDOWN,
}


def error_for(exc: BaseException, cmd: int) -> tuple[Err, bool]:
    """The NBD error for an export's exception, and whether it is unexpected."""
    if isinstance(exc, ExportError):
        return exc.error, False
    if isinstance(exc, NoSpace):
        return Err.ENOSPC, False
    if isinstance(exc, OutOfRange):
        return (Err.ENOSPC if cmd in (Cmd.WRITE, Cmd.WRITE_ZEROES) else Err.EINVAL), False
    if isinstance(exc, OSError) and exc.errno in _OS_ERRORS:
        return _OS_ERRORS[exc.errno], False
    return Err.EIO, True
