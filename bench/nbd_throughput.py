#!/usr/bin/env python3
"""NBD throughput: nbdcopy of 256 MiB into (and out of) the standalone
`blockmirror primary` vs nbdkit's file plugin, same machine, same client
flags, both over TCP on 127.0.0.1. Median of 3 runs; prints MB/s and ratio.

    .venv/bin/python bench/nbd_throughput.py [--size-mib 256] [--runs 3] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on port {port}")


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def measure(uri: str, source: str, runs: int, extra: list[str]) -> tuple[float, float]:
    """Median seconds for (write into the server, read out of it)."""
    writes = [timed(["nbdcopy", "--flush", *extra, source, uri]) for _ in range(runs)]
    reads = [timed(["nbdcopy", *extra, uri, "null:"]) for _ in range(runs)]
    return statistics.median(writes), statistics.median(reads)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default="/var/tmp", help="where the node and the images go (default: /var/tmp)")
    parser.add_argument("--smoke", action="store_true", help="16 MiB, 1 run: checks the script still works")
    args = parser.parse_args()
    if args.smoke:
        args.size_mib, args.runs = 16, 1
    size = args.size_mib << 20
    for tool in ("nbdcopy", "nbdkit"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install libnbd-bin nbdkit)")
    from blockmirror.storage import Node

    tmp = tempfile.mkdtemp(prefix="nbd-bench-", dir=args.dir)
    procs: list[subprocess.Popen] = []
    try:
        source = os.path.join(tmp, "source.img")
        with open(source, "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))
        Node.create(os.path.join(tmp, "node"), {"vol0": size}).close()
        primary = subprocess.Popen(
            [sys.executable, "-m", "blockmirror", "primary", os.path.join(tmp, "node"), "--nbd", "127.0.0.1:0",
             "--log-level", "warning"], stdout=subprocess.PIPE, text=True)
        procs.append(primary)
        line = primary.stdout.readline()
        m = re.search(r"nbd://127\.0\.0\.1:(\d+)", line)
        if not m:
            raise SystemExit(f"primary did not start: {line!r}")
        target = os.path.join(tmp, "nbdkit.img")
        with open(target, "wb") as f:
            f.truncate(size)
        kport = free_port()
        procs.append(subprocess.Popen(["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(kport), "file", target]))
        wait_port(kport)

        rows = []
        for label, extra in (("default (multi-conn)", []), ("1 connection", ["--connections=1"])):
            bm = measure(f"nbd://127.0.0.1:{m.group(1)}/vol0", source, args.runs, extra)
            kit = measure(f"nbd://127.0.0.1:{kport}/", source, args.runs, extra)
            for direction, i in (("write", 0), ("read", 1)):
                rows.append((f"{direction}, {label}", size / bm[i] / 1e6, size / kit[i] / 1e6))
        print(f"nbdcopy {args.size_mib} MiB, median of {args.runs}; MB/s (10^6 bytes/s)")
        print(f"{'':32} {'blockmirror':>12} {'nbdkit file':>12} {'ratio':>7}")
        for name, ours, theirs in rows:
            print(f"{name:32} {ours:12.0f} {theirs:12.0f} {ours / theirs:7.2f}")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
