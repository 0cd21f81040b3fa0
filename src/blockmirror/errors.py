"""Errors a user can cause. The CLI prints them as one `Error:` line plus a
`Try:` hint and exits non-zero; programmer errors stay assertions."""


class BlockmirrorError(Exception):
    """Base of every error a user can cause and fix."""

    hint: str | None = None

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class ConfigError(BlockmirrorError):
    """Bad flags, sizes, names or config values."""


class NodeError(BlockmirrorError):
    """A node directory that is missing, not initialised, or already in use."""


class OutOfRange(BlockmirrorError):
    """A request outside a volume; nothing was read or written."""


class NoSpace(BlockmirrorError):
    """The disk is full; the write that hit it did not change the volume."""


class SnapshotError(BlockmirrorError):
    """An unknown snapshot, or an operation the snapshot chain forbids."""
