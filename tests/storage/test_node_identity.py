"""A node directory copied from another (`cp -a`, a restored backup) is a
new node: it takes a node UUID of its own at its first open and says so;
the original, a reopen, and a rename keep theirs."""

import logging
import os
import subprocess

from blockmirror.storage import Node


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_a_copied_directory_is_a_new_node_and_the_original_is_not(tmp_path):
    a = str(tmp_path / "a")
    with Node.create(a, {"v": 1 << 20}) as node:
        original = node.node_uuid
        node.write("v", 0, b"d" * 4096)
    with Node.open(a) as node:
        assert node.node_uuid == original and node.copied_from is None
    moved = str(tmp_path / "moved")
    os.rename(a, moved)  # a rename keeps the directory: the same node
    with Node.open(moved) as node:
        assert node.node_uuid == original and node.copied_from is None
    copy = str(tmp_path / "copy")
    subprocess.run(["cp", "-a", moved, copy], check=True)
    lines = _Lines()
    logger = logging.getLogger("blockmirror.storage.node")
    level = logger.level
    logger.setLevel(logging.WARNING)  # whatever an earlier test (the simulator) set on its parents
    logger.addHandler(lines)
    try:
        with Node.open(copy) as node:
            assert node.copied_from == original and node.node_uuid != original
            assert node.volumes["v"].read(0, 4096) == b"d" * 4096  # its data is the original's
            new = node.node_uuid
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    assert any(f"is a copy of node {original}" in line for line in lines.lines), lines.lines
    with Node.open(copy) as node:  # once: it is its own node from then on
        assert node.node_uuid == new and node.copied_from is None
    with Node.open(moved) as node:
        assert node.node_uuid == original
