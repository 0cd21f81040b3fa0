"""qemu-io and qemu-img against a real `blockmirror primary` process."""

import random
import subprocess

from nbd_helpers import VOL1_BYTES

from blockmirror.testing.nodes import read_volume
from blockmirror.testing.tools import qemu_io, run_tool as run

MiB = 1 << 20


def test_qemu_io_patterns_read_back_verified_and_land_in_the_volume(primary, node_dir):
    uri = primary.uri("vol0")
    qemu_io(uri,
            "write -P 0xa5 0 1M",
            "write -P 0x5a 4M 64k",
            "write -P 0x11 100 1000",  # unaligned: the server takes any byte range
            "aio_write -P 0x22 8M 256k", "aio_write -P 0x33 9M 256k", "aio_flush",
            "write -z 512k 128k",
            "discard 6M 1M",
            "flush")
    out = qemu_io(uri,
                  "read -P 0xa5 1100 523188",  # up to 512k, after the unaligned write
                  "read -P 0x11 100 1000",
                  "read -P 0 512k 128k",
                  "read -P 0xa5 640k 384k",
                  "read -P 0x5a 4M 64k",
                  "read -P 0x22 8M 256k",
                  "read -P 0x33 9M 256k")
    assert out.count("read ") == 7
    primary.stop()
    vol = read_volume(node_dir, "vol0", 0, 10 * MiB)
    assert vol[:100] == b"\xa5" * 100 and vol[100:1100] == b"\x11" * 1000
    assert vol[512 << 10:640 << 10] == bytes(128 << 10)
    assert vol[4 * MiB:4 * MiB + 65536] == b"\x5a" * 65536
    assert vol[9 * MiB:9 * MiB + (256 << 10)] == b"\x33" * (256 << 10)


def test_qemu_img_convert_in_compare_and_convert_out(primary, tmp_path, node_dir):
    source = tmp_path / "source.img"
    rng = random.Random(7)
    data = bytearray(VOL1_BYTES)
    for i in range(0, VOL1_BYTES, 1 << 20):  # data with holes, so convert has zeroes to write
        if rng.random() < 0.7:
            data[i:i + (1 << 20)] = rng.randbytes(1 << 20)
    source.write_bytes(data)
    uri = primary.uri("vol1")
    info = run(["qemu-img", "info", uri]).stdout
    assert f"({VOL1_BYTES} bytes)" in info
    run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(source), uri])
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(source), uri])
    out = tmp_path / "out.img"
    run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(out)])
    assert out.read_bytes() == data
    # compare really compares: one changed byte is found.
    qemu_io(uri, "write -P 0xff 12345 1")
    proc = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(source), uri],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "mismatch at offset 12288" in proc.stdout  # sector of byte 12345
    primary.stop()
    expected = bytearray(data)
    expected[12345] = 0xFF
    assert read_volume(node_dir, "vol1") == expected
