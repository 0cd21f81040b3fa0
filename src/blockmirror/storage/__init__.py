"""Storage engine: raw sparse volumes, copy-on-write snapshot chain with
exception tables, and the metadata store."""

from blockmirror.storage.fileio import FileSystem, OsFileSystem
from blockmirror.storage.node import (
    CHUNK_SIZE_DEFAULT,
    Node,
    SnapshotInfo,
    SnapshotSpace,
    WriteOp,
    validate_volume_spec,
)
from blockmirror.storage.volume import Volume

__all__ = [
    "CHUNK_SIZE_DEFAULT", "FileSystem", "Node", "OsFileSystem", "SnapshotInfo",
    "SnapshotSpace", "Volume", "WriteOp", "validate_volume_spec",
]
