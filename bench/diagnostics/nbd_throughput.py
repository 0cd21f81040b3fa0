#!/usr/bin/env python3
"""NBD throughput: nbdcopy of 256 MiB into (and out of) the standalone
`blockmirror primary` vs nbdkit's file plugin, same machine, same client
flags, both over TCP on 127.0.0.1. Median of 3 runs; prints MB/s and ratio.

    .venv/bin/python bench/diagnostics/nbd_throughput.py [--size-mib 256] [--runs 3] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from blockmirror.storage import Node
from blockmirror.testing.daemon import Daemon

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # bench/

from setups import NbdkitFile  # noqa: E402
from workload import random_file  # noqa: E402


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
    tmp = tempfile.mkdtemp(prefix="nbd-bench-", dir=args.dir)
    servers: list = []
    try:
        source = os.path.join(tmp, "source.img")
        random_file(source, size)
        Node.create(os.path.join(tmp, "node"), {"vol0": size}).close()
        primary = Daemon("primary", os.path.join(tmp, "node"), "--nbd", "127.0.0.1:0", "--log-level", "warning")
        servers.append(primary)
        kit = NbdkitFile(os.path.join(tmp, "nbdkit.img"), size)
        servers.append(kit)

        rows = []
        for label, extra in (("default (multi-conn)", []), ("1 connection", ["--connections=1"])):
            bm = measure(primary.uri("vol0"), source, args.runs, extra)
            theirs = measure(kit.uri, source, args.runs, extra)
            for direction, i in (("write", 0), ("read", 1)):
                rows.append((f"{direction}, {label}", size / bm[i] / 1e6, size / theirs[i] / 1e6))
        print(f"nbdcopy {args.size_mib} MiB, median of {args.runs}; MB/s (10^6 bytes/s)")
        print(f"{'':32} {'blockmirror':>12} {'nbdkit file':>12} {'ratio':>7}")
        for name, ours, theirs in rows:
            print(f"{name:32} {ours:12.0f} {theirs:12.0f} {ours / theirs:7.2f}")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
