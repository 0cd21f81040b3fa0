"""Internal snapshots (the mirror's own: resync bases, a round's target or
safety snapshot) and user snapshots, as `blockmirror snapshot` and `info`
show them, and `snapshot delete` keeping the mirror's own unless --force."""

import glob
import json
import os
import re
import sqlite3
import subprocess
import sys

import pytest

import blockmirror.engine
from blockmirror.cli.info import INTERNAL_ROLES
from blockmirror.storage import Node
from tests.engine.pair import Pair

CHUNK = 4096


def bm(*args, check=False):
    proc = subprocess.run([sys.executable, "-m", "blockmirror", *args], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


def _listed(d: str) -> dict[int, str]:
    """`snapshot list`, as {id: its line}."""
    out = bm("snapshot", "list", d, check=True).stdout
    return {int(line.split()[0]): line for line in out.splitlines() if line.split()[0].isdigit()}


def _snapshots(d: str) -> dict[int, dict]:
    return {s["id"]: s for s in json.loads(bm("info", d, "--json", check=True).stdout)["snapshots"]}


@pytest.fixture
def node(tmp_path):
    """A node with an engine's resync base (1) and a user's snapshot (2)."""
    d = str(tmp_path / "node")
    bm("init", d, "--volume", "v=1MiB", "--chunk-size", "4KiB", check=True)
    with Node.open(d) as n:
        n.write("v", 0, b"A" * CHUNK)
        assert n.snapshot("link-down", internal=True).id == 1  # as engine/primary.py takes it
        n.write("v", 0, b"B" * CHUNK)
    bm("snapshot", "create", d, "--label", "before-upgrade", check=True)
    return d


def test_list_and_info_show_each_snapshots_kind(node):
    listed = _listed(node)
    assert listed[1].split()[1:3] == ["internal", "link-down"] and "resync base" in listed[1]
    assert listed[2].split()[1:3] == ["user", "before-upgrade"] and "resync base" not in listed[2]
    snaps = _snapshots(node)
    assert snaps[1]["internal"] is True and snaps[2]["internal"] is False
    text = bm("info", node, check=True).stdout.splitlines()
    header = next(line for line in text if line.split()[:1] == ["SNAPSHOT"])
    assert header.split()[1] == "KIND"
    rows = {line.split()[0]: line.split() for line in text if line.split() and line.split()[0] in ("1", "2")}
    assert rows["1"][1:3] == ["internal", "link-down"] and rows["2"][1:3] == ["user", "before-upgrade"]


def test_delete_refuses_an_internal_snapshot_and_keeps_it(node):
    before = _snapshots(node)
    r = bm("snapshot", "delete", node, "1")
    assert r.returncode == 1 and r.stdout == ""
    assert "Traceback" not in r.stderr
    errors = _errors(r.stderr)
    assert len(errors) == 1, r.stderr
    assert "internal snapshot" in errors[0] and "resync base" in errors[0] and "full resync" in errors[0]
    tries = [line for line in r.stderr.splitlines() if line.startswith("Try:")]
    assert len(tries) == 1 and "--force" in tries[0] and tries[0].endswith("1  (to delete it anyway)")
    assert _snapshots(node) == before, "a refused delete must leave every snapshot as it was"
    assert "internal" in _listed(node)[1]


def test_delete_force_deletes_an_internal_snapshot_and_keeps_the_others_images(node, tmp_path):
    r = bm("snapshot", "delete", "--force", node, "1", check=True)
    assert "deleted internal snapshot 1" in r.stdout
    assert sorted(_snapshots(node)) == [2]
    out = tmp_path / "snap2.img"
    bm("snapshot", "export", node, "2", "v", str(out), check=True)
    assert out.read_bytes()[:CHUNK] == b"B" * CHUNK  # the user's snapshot still reads as taken


def test_a_user_snapshot_deletes_without_force(node):
    r = bm("snapshot", "delete", node, "2", check=True)
    assert "deleted snapshot 2" in r.stdout and _errors(r.stderr) == []
    assert sorted(_snapshots(node)) == [1]


def test_delete_of_a_missing_snapshot_keeps_its_error(node):
    for args in ([], ["--force"]):
        r = bm("snapshot", "delete", *args, node, "7")
        assert r.returncode == 1 and _errors(r.stderr) == ["Error: no snapshot 7"], r.stderr
    assert sorted(_snapshots(node)) == [1, 2]


def test_the_primarys_link_down_snapshot_is_internal(tmp_path):
    pair = Pair(tmp_path, {"v": 64 * CHUNK}, chunk_size=CHUNK)
    try:
        pair.connect()
        pair.write("v", 0, b"1" * CHUNK)
        pair.run()
        pair.cut()  # the primary snapshots its volumes: the resync base of the next reconnect
        labels = [s.label for s in pair.pnode.snapshots()]
    finally:
        pair.close()
    assert labels == ["link-down"]
    d = str(tmp_path / "p")
    (snap,) = _snapshots(d).values()
    assert snap["internal"] is True
    r = bm("snapshot", "delete", d, str(snap["id"]))
    assert r.returncode == 1 and len(_errors(r.stderr)) == 1 and list(_snapshots(d)) == [snap["id"]]


def test_a_node_of_the_previous_format_lists_the_engines_snapshots_as_internal(tmp_path):
    d = str(tmp_path / "node")
    bm("init", d, "--volume", "v=1MiB", "--chunk-size", "4KiB", check=True)
    with Node.open(d) as n:
        for label in ("link-down", "manual", "resync-safety"):
            n.snapshot(label)
    conn = sqlite3.connect(os.path.join(d, "blockmirror.db"))
    with conn:  # what format 2 wrote: no kind column
        conn.execute("ALTER TABLE snapshots DROP COLUMN internal")
        conn.execute("UPDATE node SET value=2 WHERE key='format_version'")
    conn.close()
    listed = _listed(d)
    assert [listed[i].split()[1:3] for i in (1, 2, 3)] == [
        ["internal", "link-down"], ["user", "manual"], ["internal", "resync-safety"]]
    assert bm("snapshot", "delete", d, "3").returncode == 1
    bm("snapshot", "delete", d, "2", check=True)
    assert sorted(_snapshots(d)) == [1, 3]


def test_every_label_the_engines_snapshot_with_is_described():
    # A label missing here would list as "an internal snapshot of the mirror"
    # and its delete refusal would not say what deleting it costs.
    labels = set()
    for path in glob.glob(os.path.join(os.path.dirname(blockmirror.engine.__file__), "*.py")):
        labels.update(re.findall(r'snapshot(?:_with)?\("([\w-]+)"', open(path).read()))
    assert labels == set(INTERNAL_ROLES)


def test_help_describes_kinds_and_force():
    delete = bm("snapshot", "delete", "--help", check=True).stdout
    assert "--force" in delete and "internal" in delete
    assert "internal" in bm("snapshot", "list", "--help", check=True).stdout
