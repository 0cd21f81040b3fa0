"""nbdinfo and nbdcopy against a real `blockmirror primary` process."""

import json
import os
import subprocess

from nbd_helpers import VOL0_BYTES, VOL1_BYTES

from blockmirror.testing.nodes import read_volume
from blockmirror.testing.tools import run_tool as run


def test_nbdinfo_list_shows_every_volume_with_its_size(primary):
    out = json.loads(run(["nbdinfo", "--list", "--json", primary.nbd_uri]).stdout)
    exports = {e["export-name"]: e for e in out["exports"]}
    assert list(exports) == ["vol0", "vol1"]
    assert exports["vol0"]["export-size"] == VOL0_BYTES and exports["vol1"]["export-size"] == VOL1_BYTES
    assert exports["vol0"]["block_size_maximum"] == 32 << 20
    assert exports["vol0"]["can_flush"] and exports["vol0"]["can_fua"] and exports["vol0"]["can_multi_conn"]
    assert not exports["vol0"]["is_read_only"]
    plain = run(["nbdinfo", "--list", primary.nbd_uri]).stdout
    assert 'export="vol0"' in plain and 'export="vol1"' in plain


def test_nbdinfo_size_per_volume_and_default_export(primary):
    assert run(["nbdinfo", "--size", primary.uri("vol0")]).stdout.strip() == str(VOL0_BYTES)
    assert run(["nbdinfo", "--size", primary.uri("vol1")]).stdout.strip() == str(VOL1_BYTES)
    assert run(["nbdinfo", "--size", primary.nbd_uri]).stdout.strip() == str(VOL0_BYTES)  # "" = first volume


def test_nbdinfo_unknown_export_is_refused_with_err_unknown(primary):
    proc = subprocess.run(["nbdinfo", primary.uri("nope")], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    # libnbd maps NBD_REP_ERR_UNKNOWN to ENOENT
    assert "No such file or directory for export: nope" in proc.stderr
    assert run(["nbdinfo", "--size", primary.uri("vol1")]).stdout.strip() == str(VOL1_BYTES)


def test_nbdcopy_in_and_out_round_trips_bytes(primary, tmp_path, node_dir):
    source = tmp_path / "in.img"
    data = bytearray(os.urandom(VOL1_BYTES))
    data[4 << 20:6 << 20] = bytes(2 << 20)  # a zero run: nbdcopy may send it as write-zeroes
    source.write_bytes(data)
    run(["nbdcopy", "--flush", str(source), primary.uri("vol1")])
    out = tmp_path / "out.img"
    run(["nbdcopy", primary.uri("vol1"), str(out)])
    run(["cmp", str(source), str(out)])
    # and with several connections and many requests in flight each
    run(["nbdcopy", "--connections=4", "--requests=64", "--request-size=65536", str(source), primary.uri("vol0")])
    out0 = tmp_path / "out0.img"
    run(["nbdcopy", "--connections=4", primary.uri("vol0"), str(out0)])
    assert out0.read_bytes()[:VOL1_BYTES] == data
    primary.stop()
    assert read_volume(node_dir, "vol1") == data
