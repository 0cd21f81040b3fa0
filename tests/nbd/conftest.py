import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from helpers import PrimaryProcess  # noqa: E402

from blockmirror.storage import Node  # noqa: E402

VOL0_BYTES = 64 << 20
VOL1_BYTES = 16 << 20


@pytest.fixture
def node_dir(tmp_path):
    path = str(tmp_path / "node")
    Node.create(path, {"vol0": VOL0_BYTES, "vol1": VOL1_BYTES}, chunk_size=65536).close()
    return path


@pytest.fixture
def primary(node_dir):
    """A running standalone `blockmirror primary`; must stop cleanly with exit 0."""
    proc = PrimaryProcess(node_dir)
    try:
        yield proc
    finally:
        code = proc.stop()
    assert code == 0, f"primary exited {code}; log:\n{proc.log()}"


def read_volume(node_dir: str, name: str, offset: int = 0, length: int | None = None) -> bytes:
    """Volume bytes as the storage sees them (the primary must be stopped)."""
    with Node.open(node_dir) as node:
        vol = node.volumes[name]
        return vol.read(offset, vol.size - offset if length is None else length)
