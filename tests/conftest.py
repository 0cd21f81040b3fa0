import os
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def node_dir(tmp_path):
    return str(tmp_path / "node")


