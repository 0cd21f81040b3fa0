import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from nbd_helpers import VOL0_BYTES, VOL1_BYTES, PrimaryProcess  # noqa: E402

from blockmirror.storage import Node  # noqa: E402


@pytest.fixture
def node_dir(tmp_path):
    """A node with vol0 (64 MiB) and vol1 (16 MiB)."""
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
