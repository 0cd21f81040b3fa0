import pytest
from nbd_helpers import VOL0_BYTES, VOL1_BYTES

from blockmirror.storage import Node
from blockmirror.testing.daemon import Daemon


@pytest.fixture
def node_dir(tmp_path):
    """A node with vol0 (64 MiB) and vol1 (16 MiB)."""
    path = str(tmp_path / "node")
    Node.create(path, {"vol0": VOL0_BYTES, "vol1": VOL1_BYTES}, chunk_size=65536).close()
    return path


@pytest.fixture
def primary(node_dir):
    """A running standalone `blockmirror primary`; must stop cleanly with exit 0."""
    daemon = Daemon("primary", node_dir, "--nbd", "127.0.0.1:0")
    yield daemon
    code = daemon.stop()
    assert code == 0, f"primary exited {code}; log:\n{daemon.log()}"
