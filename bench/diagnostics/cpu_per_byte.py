#!/usr/bin/env python3
"""CPU seconds per GiB of mirrored host writes (benchmark 4's path): not a
benchmark of `make bench`, a working metric that the noise of other jobs
on the machine barely moves (MB/s does).

    .venv/bin/python bench/diagnostics/cpu_per_byte.py [--runs 5] [--size-mib 1024] [--cases async,sync,local] [--perf DIR]

(--perf DIR: `perf record` of each daemon during the last run, for
`perf report -i DIR/CASE-ROLE.data --sort dso,sym`.)

Each run, for each case in turn (order rotating run by run): `nbdcopy
--flush` of a random file onto a 1 GiB volume (allocated by one unmeasured
pass first), then, for a pair, wait until the secondary has acknowledged
everything. CPU time is utime+stime from /proc/PID/stat of the primary and
the secondary daemon (all threads) over that interval, and nbdcopy's own
rusage (os.wait4). Cases: *async* and *sync* are mirroring pairs, *local*
is the same primary daemon with `--peer` at a port where nothing listens
(local only, as in benchmark 4). A case `KIND@DIR` (e.g. `async@/tmp/base/src`)
runs its daemons with PYTHONPATH=DIR: another checkout's code, measured side
by side with this one's in the same runs. A case `KIND#SIZE` (e.g.
`async#64MiB`) gives that pair's primary `--window SIZE`.

Prints per case the medians of CPU-s/GiB per process and their total, the
wall MB/s (noisy), engine steps per GiB of each daemon, the system
(kernel) part of each daemon's CPU-s/GiB, context switches per GiB (all
threads), and the throughput bound the total implies on this
machine's cores (cores / total CPU-s per GiB): what the path could reach if
the CPU work were perfectly spread.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from blockmirror.testing.procstat import context_switches, cpu_split, thread_cpu_seconds, vm_hwm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # bench/

import setups  # noqa: E402
from common import GiB, median  # noqa: E402
from workload import nbdcopy, random_file  # noqa: E402


def steps(daemon) -> int:
    """Engine steps so far (0 if the daemon does not report them)."""
    return daemon.status().get("engine_steps", 0) if daemon is not None else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--cases", default="async,sync,local")
    ap.add_argument("--perf", metavar="DIR", help="perf record both daemons during the last run into DIR")
    ap.add_argument("--threads", action="store_true", help="print CPU-s/GiB of each daemon's busiest threads")
    ap.add_argument("--primary-arg", action="append", default=[], help="extra argument for the pairs' primary")
    args = ap.parse_args()
    cases = args.cases.split(",")
    size = args.size_mib << 20
    cores = os.cpu_count() or 1
    root = tempfile.mkdtemp(prefix="blockmirror-cpu-", dir="/var/tmp")
    closers = []
    try:
        source = os.path.join(root, "source.img")
        random_file(source, size)
        vols = {"vol0": size}
        pairs, targets = {}, {}
        env_path = os.environ.get("PYTHONPATH")
        for i, c in enumerate(cases):
            kind, _, src = c.partition("@")
            kind, _, window = kind.partition("#")  # async#64MiB: that pair's primary gets --window 64MiB
            extra = tuple(args.primary_arg) + (("--window", window) if window else ())
            if src:  # daemons of this case import blockmirror from another tree (A/B side by side)
                os.environ["PYTHONPATH"] = os.path.abspath(src)
            d = os.path.join(root, f"case{i}")
            if kind in ("async", "sync"):
                pairs[c] = setups.pair(d, vols, mode=kind, primary_extra=extra)
                closers.append(pairs[c].close)
                targets[c] = (pairs[c].primary, pairs[c].secondary)
            elif kind == "local":
                daemon = setups.local_primary(d, vols)
                closers.append(daemon.stop)
                targets[c] = (daemon, None)
            else:
                raise SystemExit(f"unknown case {c}")
            if env_path is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = env_path
        for c in cases:
            if c in pairs:
                pairs[c].wait_converged()
            nbdcopy(source, targets[c][0].uri("vol0"))  # allocate
            if c in pairs:
                pairs[c].wait_converged(poll_s=0.1)
        os.sync()
        rows = {c: [] for c in cases}
        for run in range(args.runs):
            order = cases[run % len(cases):] + cases[:run % len(cases)]
            for c in order:
                prim, sec = targets[c]
                st0 = (steps(prim), steps(sec))
                cs0 = (context_switches(prim.pid), context_switches(sec.pid) if sec else 0)
                th0 = {r: thread_cpu_seconds(d.pid) for r, d in (("p", prim), ("s", sec)) if d is not None}
                p0 = cpu_split(prim.pid)
                s0 = cpu_split(sec.pid) if sec else (0.0, 0.0)
                perfs = []
                if args.perf and run == args.runs - 1:
                    os.makedirs(args.perf, exist_ok=True)
                    for role, d in (("primary", prim), ("secondary", sec)):
                        if d is not None:
                            out = os.path.join(args.perf, f"{c.replace('/', '_')}-{role}.data")
                            perfs.append(subprocess.Popen(["perf", "record", "-q", "-F", "499", "-p", str(d.pid),
                                                           "-o", out], stdout=subprocess.DEVNULL,
                                                          stderr=subprocess.DEVNULL))
                    time.sleep(0.3)
                wall, ncpu = nbdcopy(source, prim.uri("vol0"))
                if c in pairs:
                    pairs[c].wait_converged(poll_s=0.1)
                for pp in perfs:
                    pp.send_signal(2)
                    pp.wait()
                p1 = cpu_split(prim.pid)
                s1 = cpu_split(sec.pid) if sec else (0.0, 0.0)
                st1 = (steps(prim), steps(sec))
                cs1 = (context_switches(prim.pid), context_switches(sec.pid) if sec else 0)
                if args.threads:
                    for r, d in (("p", prim), ("s", sec)):
                        if d is None:
                            continue
                        th1 = thread_cpu_seconds(d.pid)
                        busy = sorted(((th1[t] - th0[r].get(t, 0.0), t) for t in th1), reverse=True)[:4]
                        print(f"  {c} {r} threads: " + ", ".join(
                            f"{'main' if t == d.pid else t} {v * GiB / size:.2f}" for v, t in busy),
                            file=sys.stderr)
                scale = GiB / size
                rows[c].append({"primary": (sum(p1) - sum(p0)) * scale, "secondary": (sum(s1) - sum(s0)) * scale,
                                "p_sys": (p1[1] - p0[1]) * scale, "s_sys": (s1[1] - s0[1]) * scale,
                                "nbdcopy": ncpu * scale, "mb_s": size / wall / 1e6,
                                "p_steps": (st1[0] - st0[0]) * scale, "s_steps": (st1[1] - st0[1]) * scale,
                                "p_cs": (cs1[0] - cs0[0]) * scale, "s_cs": (cs1[1] - cs0[1]) * scale})
                os.sync()
                time.sleep(0.3)
            print(f"run {run}: " + ", ".join(
                f"{c} {rows[c][-1]['mb_s']:.0f} MB/s p {rows[c][-1]['primary']:.2f} "
                f"s {rows[c][-1]['secondary']:.2f} n {rows[c][-1]['nbdcopy']:.2f}" for c in cases),
                file=sys.stderr, flush=True)
        print(f"# CPU-s per GiB, medians of {args.runs} runs; bound = {cores} cores / total")
        w = max(8, *(len(c) for c in cases))
        print(f"{'case':{w}} {'primary':>8} {'second.':>8} {'nbdcopy':>8} {'total':>8} {'MB/s':>6} {'bound MB/s':>10} {'p steps':>8} {'s steps':>8} {'p sys':>6} {'s sys':>6} {'p ctxsw':>8} {'s ctxsw':>8}")
        for c in cases:
            r = rows[c]
            tot = [x["primary"] + x["secondary"] + x["nbdcopy"] for x in r]
            t = median(tot)
            print(f"{c:{w}} {median(x['primary'] for x in r):8.3f} {median(x['secondary'] for x in r):8.3f} "
                  f"{median(x['nbdcopy'] for x in r):8.3f} {t:8.3f} {median(x['mb_s'] for x in r):6.0f} "
                  f"{cores * GiB / t / 1e6:10.0f} {median(x['p_steps'] for x in r):8.0f} "
                  f"{median(x['s_steps'] for x in r):8.0f} {median(x['p_sys'] for x in r):6.2f} "
                  f"{median(x['s_sys'] for x in r):6.2f} {median(x['p_cs'] for x in r):8.0f} "
                  f"{median(x['s_cs'] for x in r):8.0f}")
        print("peak RSS (VmHWM) after all runs, MiB: " + ", ".join(
            f"{c} " + "/".join(f"{vm_hwm(d.pid) >> 20}" for d in targets[c] if d is not None) for c in cases))
        for c in cases:
            kind, at, src = c.partition("@")
            kind = kind.partition("#")[0]
            lo = f"local{at}{src}"
            if kind != "local" and lo in rows:
                ratio = median(a["mb_s"] / b["mb_s"] for a, b in zip(rows[c], rows[lo]))
                print(f"{c} / {lo} MB/s ratio (median of per-run ratios): {ratio:.1%}")
    finally:
        for close in closers:
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - the other daemons still stop
                print(f"teardown: {exc!r}", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
