"""Storage engine: raw sparse volumes, copy-on-write snapshot chain with
exception tables, and the metadata store."""

from blockmirror.storage.fileio import FileSystem, OsFileSystem
from blockmirror.storage.layout import CHUNK_SIZE_DEFAULT, validate_volume_spec
from blockmirror.storage.node import Node
from blockmirror.storage.snapshots import SnapshotInfo, SnapshotSpace
from blockmirror.storage.volume import Volume
from blockmirror.storage.writepath import WriteOp

__all__ = [
    "CHUNK_SIZE_DEFAULT", "FileSystem", "Node", "OsFileSystem", "SnapshotInfo",
    "SnapshotSpace", "Volume", "WriteOp", "validate_volume_spec",
]
