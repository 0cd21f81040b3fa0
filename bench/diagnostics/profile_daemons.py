#!/usr/bin/env python3
"""Profile the daemons on a hot path with py-spy (not a benchmark; not run
by `make bench`; needs `pip install py-spy` in the venv, and root or
ptrace permission).

    .venv/bin/python bench/diagnostics/profile_daemons.py resync [--size-mib 1024] [--changed-mib 512]
    .venv/bin/python bench/diagnostics/profile_daemons.py nbdcopy [--mode async|sync|local] [--size-mib 1024]

Records both daemons with `py-spy record --format raw` (collapsed stacks,
all threads, GIL-idle samples dropped) while the path runs, then prints per
process the functions with the most samples (self, and inclusive of the
blockmirror frames below them). The raw files are kept with --keep DIR.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

from blockmirror.testing.host import aio_write
from blockmirror.testing.nodes import CHUNK

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # bench/

import setups  # noqa: E402
from workload import QD, fresh_writes, nbdcopy, prefill_volume, random_file, settle  # noqa: E402

PY_SPY = os.path.join(os.path.dirname(sys.executable), "py-spy")


def spy(pid: int, out: str, args) -> subprocess.Popen:
    """py-spy on `pid` at args.rate samples a second; with args.gil only the
    thread holding the GIL (where the Python CPU goes)."""
    return subprocess.Popen([PY_SPY, "record", "--pid", str(pid), "--rate", str(args.rate), "--format", "raw",
                             "--output", out, "--threads", "--nonblocking", *(["--gil"] if args.gil else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_spy(p: subprocess.Popen) -> None:
    p.send_signal(2)  # SIGINT: py-spy writes its output and exits
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def summarise(path: str, title: str, top: int = 25) -> None:
    if not os.path.exists(path):
        print(f"== {title}: no profile written")
        return
    self_n: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            n = int(n)
            frames = stack.split(";")
            total += n
            threads[frames[0]] += n
            self_n[frames[-1]] += n
            for fr in set(frames[1:]):
                incl[fr] += n
    print(f"== {title}: {total} samples")
    for t, n in threads.most_common(6):
        print(f"   thread {t[:70]:70} {n / total:6.1%}")
    print("   -- self")
    for fr, n in self_n.most_common(top):
        print(f"   {n / total:6.1%}  {fr[:140]}")
    print("   -- inclusive (blockmirror frames)")
    shown = 0
    for fr, n in incl.most_common():
        if "blockmirror" in fr:
            print(f"   {n / total:6.1%}  {fr[:140]}")
            shown += 1
            if shown >= top:
                break


def profile_resync(args, root: str) -> None:
    size, changed = args.size_mib << 20, args.changed_mib << 20
    pair = setups.pair(os.path.join(root, "pair"), {"vol0": size}, prefill=prefill_volume(size))
    try:
        pair.wait_converged(timeout_s=1800)
        chunks = random.Random(1).sample(range(size // CHUNK), changed // CHUNK)
        pair.outage()
        aio_write(pair.primary.uri("vol0"), fresh_writes(chunks, 5), qd=QD)
        settle()
        sp = spy(pair.primary.pid, os.path.join(root, "primary.raw"), args)
        time.sleep(0.5)
        pair.restore()
        ss = spy(pair.secondary.pid, os.path.join(root, "secondary.raw"), args)
        st = pair.wait_converged()
        stop_spy(sp)
        stop_spy(ss)
        print(f"resync of {changed >> 20} MiB: {st['last_resync']['seconds']:.2f}s "
              f"({changed / st['last_resync']['seconds'] / 1e6:.0f} MB/s, under the profiler)")
        summarise(os.path.join(root, "primary.raw"), "primary")
        summarise(os.path.join(root, "secondary.raw"), "secondary")
    finally:
        pair.close()


def profile_nbdcopy(args, root: str) -> None:
    size = args.size_mib << 20
    source = os.path.join(root, "source.img")
    random_file(source, size)
    if args.mode == "local":
        prim = setups.local_primary(os.path.join(root, "local"), {"vol0": size})
        pair = None
    else:
        pair = setups.pair(os.path.join(root, "pair"), {"vol0": size}, mode=args.mode)
        pair.wait_converged()
        prim = pair.primary
    try:
        nbdcopy(source, prim.uri("vol0"))  # allocate
        if pair:
            pair.wait_converged()
        settle()
        sp = spy(prim.pid, os.path.join(root, "primary.raw"), args)
        ss = spy(pair.secondary.pid, os.path.join(root, "secondary.raw"), args) if pair else None
        time.sleep(0.5)
        secs, _ = nbdcopy(source, prim.uri("vol0"))
        if pair:
            pair.wait_converged()
        stop_spy(sp)
        if ss:
            stop_spy(ss)
        print(f"nbdcopy {size >> 20} MiB ({args.mode}): {size / secs / 1e6:.0f} MB/s under the profiler")
        summarise(os.path.join(root, "primary.raw"), "primary")
        if ss:
            summarise(os.path.join(root, "secondary.raw"), "secondary")
    finally:
        if pair:
            pair.close()
        else:
            prim.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", choices=["resync", "nbdcopy"])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--changed-mib", type=int, default=512)
    ap.add_argument("--mode", choices=["async", "sync", "local"], default="async")
    ap.add_argument("--keep", help="copy the raw profiles to this directory")
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--gil", action="store_true",
                    help="sample only the thread holding the GIL (py-spy --gil): Python CPU, no waits")
    args = ap.parse_args()
    if not os.path.exists(PY_SPY):
        raise SystemExit(f"{PY_SPY} missing: .venv/bin/pip install py-spy")
    root = tempfile.mkdtemp(prefix="blockmirror-prof-", dir="/var/tmp")
    try:
        {"resync": profile_resync, "nbdcopy": profile_nbdcopy}[args.path](args, root)
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            for name in os.listdir(root):
                if name.endswith(".raw"):
                    shutil.copy(os.path.join(root, name), os.path.join(args.keep, f"{args.path}-{name}"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
