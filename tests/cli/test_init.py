"""`blockmirror init` and the offline node tools, run as a user would."""

import json
import os
import subprocess
import sys

import pytest


def bm(*args, check=False):
    proc = subprocess.run([sys.executable, "-m", "blockmirror", *args], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_init_creates_sparse_volumes_with_uuids(tmp_path):
    d = str(tmp_path / "node")
    r = bm("init", d, "--volume", "db=512MiB", "--volume", "logs=4GiB", "--chunk-size", "128KiB", check=True)
    assert "volume db: 512 MiB" in r.stdout
    info = json.loads(bm("info", d, "--json", check=True).stdout)
    assert info["chunk_size"] == 128 * 1024
    vols = {v["name"]: v for v in info["volumes"]}
    assert vols["db"]["size"] == 512 << 20 and vols["logs"]["size"] == 4 << 30
    assert len({v["uuid"] for v in vols.values()}) == 2
    img = os.path.join(d, "volumes", "logs.img")
    st = os.stat(img)
    assert st.st_size == 4 << 30
    assert st.st_blocks * 512 < 1 << 20, "a new volume must be sparse"
    assert info["snapshots"] == []


def test_default_chunk_size_is_64k(tmp_path):
    d = str(tmp_path / "node")
    bm("init", d, "--volume", "v=1MiB", check=True)
    assert json.loads(bm("info", d, "--json", check=True).stdout)["chunk_size"] == 65536


@pytest.mark.parametrize("args, message", [
    (["--volume", "v=0"], "greater than zero"),
    (["--volume", "v=1000"], "not a multiple of 4096"),
    (["--volume", "v=12QB"], "cannot parse size"),
    (["--volume", "v=big"], "cannot parse size"),
    (["--volume", "v"], "NAME=SIZE"),
    (["--volume", "=1MiB"], "NAME=SIZE"),
    (["--volume", "a b=1MiB"], "invalid volume name"),
    (["--volume", "../x=1MiB"], "invalid volume name"),
    (["--volume", "v=1MiB", "--volume", "v=2MiB"], "given twice"),
    (["--volume", "v=1MiB", "--chunk-size", "3000"], "power of two"),
    (["--volume", "v=1MiB", "--chunk-size", "2KiB"], "power of two"),
    ([], "required: --volume"),
])
def test_init_refuses_bad_input(tmp_path, args, message):
    d = tmp_path / "node"
    r = bm("init", str(d), *args)
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not d.exists(), "a refused init must not leave a node behind"


def test_init_refuses_non_empty_dir(tmp_path):
    d = tmp_path / "node"
    d.mkdir()
    (d / "precious").write_text("keep me")
    r = bm("init", str(d), "--volume", "v=1MiB")
    assert r.returncode == 1 and r.stderr.startswith("Error:") and "not an empty directory" in r.stderr
    assert sorted(os.listdir(d)) == ["precious"] and (d / "precious").read_text() == "keep me"


def test_init_twice_refused_and_first_node_intact(tmp_path):
    d = str(tmp_path / "node")
    bm("init", d, "--volume", "v=1MiB", check=True)
    before = json.loads(bm("info", d, "--json", check=True).stdout)
    assert bm("init", d, "--volume", "v=2MiB").returncode == 1
    assert json.loads(bm("info", d, "--json", check=True).stdout) == before


def test_uninitialised_dir_is_a_clear_error(tmp_path):
    r = bm("info", str(tmp_path))
    assert r.returncode == 1
    assert "not an initialised blockmirror node" in r.stderr and "Try: blockmirror init" in r.stderr


def test_snapshot_diff_export_walkthrough(tmp_path):
    from blockmirror.storage import Node
    d = str(tmp_path / "node")
    bm("init", d, "--volume", "v=1MiB", "--chunk-size", "4KiB", check=True)
    with Node.open(d) as node:
        node.write("v", 0, b"A" * 8192)
    assert "snapshot 1" in bm("snapshot", "create", d, "--label", "before", check=True).stdout
    with Node.open(d) as node:
        node.write("v", 4096 + 100, b"B" * 10)     # chunk 1
        node.write("v", 20 * 4096, b"C" * 4096)    # chunk 20
    diff = json.loads(bm("diff", d, "1", "--json", check=True).stdout)
    assert diff["volumes"]["v"]["chunks"] == 2 and diff["volumes"]["v"]["ranges"] == [[1, 1], [20, 20]]
    out = tmp_path / "snap1.img"
    bm("snapshot", "export", d, "1", "v", str(out), check=True)
    image = out.read_bytes()
    assert len(image) == 1 << 20 and image[:8192] == b"A" * 8192 and image[8192:] == bytes((1 << 20) - 8192)
    r = bm("snapshot", "delete", d, "7")
    assert r.returncode == 1 and "no snapshot 7" in r.stderr
    bm("snapshot", "delete", d, "1", check=True)
    assert "no snapshots" in bm("snapshot", "list", d, check=True).stdout


def test_help_on_every_command():
    for cmd in ([], ["init"], ["info"], ["snapshot"], ["diff"]):
        r = bm(*cmd, "--help")
        assert r.returncode == 0 and "usage: blockmirror" in r.stdout
