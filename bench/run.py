#!/usr/bin/env python3
"""The benchmarks of `make bench`: real `blockmirror primary/secondary`
daemons on loopback, side by side with baselines (rsync, a raw copy, the
same daemon with no peer, nbdkit's file plugin).

    .venv/bin/python bench/run.py [--smoke | --full] [--dir DIR] [--no-docs] [--no-storage] [--only N ...]

Quick mode (the default) is sized for a 2-core, 24 GiB machine (~15 min);
`--full` runs the real sizes and more runs; `--smoke` uses tiny sizes and
takes seconds (the test suite runs it so this script cannot rot; its numbers
mean nothing). Prints one `name: value unit` line per measurement on stdout,
progress on stderr. Unless --no-docs (implied by --smoke and --only), it
rewrites the Mirroring, How to reproduce and Machine sections of
docs/BENCHMARKS.md; unless --no-storage (implied by --smoke and --only) it
first runs bench/storage_bench.py in the same mode, which rewrites Storage.

Benchmarks:
1. resync vs rsync: a volume with 1% and 10% of its chunks changed while the
   link was down; blockmirror's resync time and bytes on the wire against
   `rsync --inplace --no-whole-file` through an rsync daemon on loopback.
2. resync time against volume size: the same changed bytes in a 1 GiB and a
   64 GiB sparse volume.
3. resync throughput against a raw copy of the same chunks (no network).
4. mirrored write throughput through NBD (nbdcopy): async, sync, the same
   daemon with no peer, standalone, nbdkit's file plugin.
5. sync-mode latency of one 4 KiB FUA write in flight (python libnbd).
6. write pause at link failure, 8 volumes of 1 GiB and of 64 GiB.
7. writes during an outage (first writes, rewrites) against mirroring.
8. peak memory (VmHWM) of both daemons across a resync of a 64 GiB volume.
9. a resync interrupted half-way (link cut, kill -9 of the secondary, kill -9
   of the primary) against an uninterrupted one: data bytes across both
   attempts against the changed bytes, and the time to converge
   (`--only resume`).
10. `blockmirror verify` of an identical volume (cold page cache): seconds,
   MB/s, bytes on the link against the volume, bytes each daemon read; with
   `--rate` at half that speed; `--repair` of a few damaged chunks
   (`--only verify`).
11. the first sync of a secondary pre-seeded with a copy, 1% of the chunks
   changed since: `--initial-sync checksum` against `full`, data and wire
   bytes and seconds (`--only checksum`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

from blockmirror.testing import procstat, tools
from blockmirror.testing.daemon import converged
from blockmirror.testing.host import WriteLatencyRecorder, aio_write, connect
from blockmirror.testing.interrupt import CUT, KILL9_PRIMARY, KILL9_SECONDARY, ResyncMeter, interrupt_resync, \
    resume_resync
from blockmirror.testing.interrupt import ROLES
from blockmirror.testing.nodes import CHUNK, damage_chunks, image_path, seed_copy, write_image
from blockmirror.testing.pair import Pair

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import floors  # noqa: E402
import setups  # noqa: E402
from common import BenchError, GiB, MiB, median, note, percentile, prewrite, prewrite_file, size_label  # noqa: E402
from workload import QD, evict, fresh_writes, nbdcopy, prefill_file, prefill_volume, random_file, settle  # noqa: E402

MODES = {
    "smoke": dict(
        runs=1,
        b1_vol=32 * MiB, b1_fracs=[0.01, 0.10],
        b2_sizes=[16 * MiB, 1 * GiB], b2_changed=1 * MiB,
        b4_size=16 * MiB,
        b5_writes=100,
        b6_sets=[(8, 16 * MiB), (8, 1 * GiB)], b6_cuts=2,
        b7_vol=32 * MiB, b7_chunks=64,
        b8_vol=1 * GiB, b8_changed=2 * MiB, b8_runs=1,
        b9_changed=16 * MiB, b9_rate=32 * MiB, b9_runs=1,
        b10_vol=32 * MiB, b10_damaged=3, b10_runs=1,
        b11_vol=32 * MiB, b11_frac=0.01, b11_runs=1),
    "quick": dict(
        runs=5,
        b1_vol=4 * GiB, b1_fracs=[0.01, 0.10],
        b2_sizes=[1 * GiB, 64 * GiB], b2_changed=64 * MiB,
        b4_size=1 * GiB,
        b5_writes=2000,
        b6_sets=[(8, 1 * GiB), (8, 64 * GiB)], b6_cuts=16,
        b7_vol=1 * GiB, b7_chunks=4096,
        b8_vol=64 * GiB, b8_changed=(4 * GiB) // 10 // CHUNK * CHUNK, b8_runs=5,
        b9_changed=512 * MiB, b9_rate=64 * MiB, b9_runs=3,
        b10_vol=4 * GiB, b10_damaged=8, b10_runs=3,
        b11_vol=4 * GiB, b11_frac=0.01, b11_runs=3),
    "full": dict(
        runs=9,
        b1_vol=4 * GiB, b1_fracs=[0.01, 0.10],
        b2_sizes=[1 * GiB, 64 * GiB], b2_changed=256 * MiB,
        b4_size=1 * GiB,
        b5_writes=5000,
        b6_sets=[(8, 1 * GiB), (8, 64 * GiB)], b6_cuts=20,
        b7_vol=1 * GiB, b7_chunks=8192,
        b8_vol=64 * GiB, b8_changed=(64 * GiB) // 10 // CHUNK * CHUNK, b8_runs=5,
        b9_changed=1 * GiB, b9_rate=64 * MiB, b9_runs=5,
        b10_vol=8 * GiB, b10_damaged=8, b10_runs=5,
        b11_vol=8 * GiB, b11_frac=0.01, b11_runs=3),
}


def mb_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6 if seconds > 0 else float("inf")


# -- baselines without blockmirror --------------------------------------------------------------
def raw_copy(src: str, dst: str, chunks) -> float:
    """The floor of a resync on this machine: read the chunks from `src` and
    write them at the same offsets of `dst`, in disk order, consecutive
    chunks joined up to 1 MiB (like the resync's extents), then fdatasync.
    Seconds."""
    runs = []
    for c in sorted(chunks):
        if runs and runs[-1][0] + runs[-1][1] == c and runs[-1][1] < 16:
            runs[-1][1] += 1
        else:
            runs.append([c, 1])
    fs = os.open(src, os.O_RDONLY)
    fd = os.open(dst, os.O_WRONLY)
    try:
        start = time.perf_counter()
        for c, n in runs:
            data = os.pread(fs, n * CHUNK, c * CHUNK)
            os.pwrite(fd, data, c * CHUNK)
        os.fdatasync(fd)
        return time.perf_counter() - start
    finally:
        os.close(fs)
        os.close(fd)


def raw_copy_atomic(src: str, dst: str, chunks, scratch: str, group: int = 256) -> float:
    """The floor of a resync that keeps the target consistent at every
    instant, as the secondary's round does: `raw_copy`, but per group of
    `group` chunks the originals are first read from `dst`, written to a
    scratch file that was written in full beforehand (outside the timing,
    as a spare COW file is) and fdatasynced, before the new data overwrites
    them. Still one thread, no network, no checksums, no metadata. Seconds."""
    chunks = sorted(chunks)
    fs = os.open(src, os.O_RDONLY)
    fd = os.open(dst, os.O_RDWR)
    fc = os.open(scratch, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        prewrite(fc, len(chunks) * CHUNK)
        start = time.perf_counter()
        pos = 0
        for i in range(0, len(chunks), group):
            batch = chunks[i:i + group]
            os.pwritev(fc, [os.pread(fd, CHUNK, c * CHUNK) for c in batch], pos)
            pos += len(batch) * CHUNK
            os.fdatasync(fc)
            for c in batch:
                os.pwrite(fd, os.pread(fs, CHUNK, c * CHUNK), c * CHUNK)
        os.fdatasync(fd)
        return time.perf_counter() - start
    finally:
        os.close(fs)
        os.close(fd)
        os.close(fc)
        os.unlink(scratch)


def resync(pair: Pair) -> dict:
    """Start the secondary again and wait for the pair to converge; the
    primary's last_resync and link byte counters, plus wall time from the
    secondary's readiness to convergence (polled every 20 ms), and the CPU
    seconds each daemon used from then to convergence."""
    p_cpu = procstat.cpu_seconds(pair.primary.pid)
    pair.restore()
    s_cpu = procstat.cpu_seconds(pair.secondary.pid)  # after its start-up (imports, node open)
    st = pair.wait_converged()
    wall = time.perf_counter() - pair.secondary.ready_at
    link = st.get("link") or {}
    return {"seconds": st["last_resync"]["seconds"], "bytes": st["last_resync"]["bytes"],
            "chunks": st["last_resync"]["chunks"], "rounds": st["last_resync"]["rounds"],
            "wire": link.get("bytes_sent", -1), "wall": wall,
            "p_cpu": procstat.cpu_seconds(pair.primary.pid) - p_cpu, "s_cpu": procstat.cpu_seconds(pair.secondary.pid) - s_cpu}


# -- 1 + 3. resync vs rsync, resync vs raw copy -------------------------------------------------
def bench_rsync(cfg, root, res) -> None:
    size = cfg["b1_vol"]
    nchunks = size // CHUNK
    base = os.path.join(root, "b1")
    note(f"[1] resync vs rsync: {size_label(size)} volume, prefill + initial sync")
    pair = setups.pair(base, {"vol0": size}, prefill=prefill_volume(size))
    rsyncd = None
    try:
        t = time.perf_counter()
        st = pair.wait_converged(timeout_s=1800)
        res.add("resync.initial_sync.seconds", st["last_resync"]["seconds"], "s", "{:.2f}")
        note(f"    initial sync {time.perf_counter() - t:.1f}s")
        mod = os.path.join(base, "rsync-module")
        os.makedirs(mod)
        image = os.path.join(pair.p_dir, "volumes", "vol0.img")
        prefill_file(os.path.join(mod, "secondary.img"), size)  # the secondary image, as rsync's target
        rsyncd = setups.RsyncDaemon(base, mod)
        settle()
        rng = random.Random(11)
        floor_scratch = os.path.join(base, "floor-scratch")
        for frac in cfg["b1_fracs"]:
            label = f"{round(frac * 100)}pct"
            k = max(1, round(nchunks * frac))
            prewrite_file(floor_scratch, k * CHUNK)  # as a spare COW file is: written in full, outside the timing
            rows = []
            for run in range(cfg["runs"]):
                chunks = rng.sample(range(nchunks), k)
                pair.outage()
                aio_write(pair.primary.uri("vol0"), fresh_writes(chunks, rng.getrandbits(64)), qd=QD)
                settle()
                r = {}
                for step in (("rsync", "bm") if run % 2 == 0 else ("bm", "rsync")):
                    if step == "rsync":
                        r["rsync"] = rsyncd.push(image, "secondary.img")
                    else:
                        r["bm"] = resync(pair)
                    settle()
                r["raw"] = raw_copy(image, os.path.join(mod, "secondary.img"), chunks)
                settle()
                r["atomic"] = raw_copy_atomic(image, os.path.join(mod, "secondary.img"), chunks,
                                              os.path.join(base, "scratch"))
                settle()
                r["floor"] = floors.resync_copy(image, os.path.join(mod, "secondary.img"), chunks, CHUNK,
                                                floor_scratch)
                settle()
                r["changed"] = k * CHUNK
                if r["bm"]["chunks"] != k:
                    note(f"    warning: resync sent {r['bm']['chunks']} chunks, {k} changed")
                rows.append(r)
                note(f"    {label} run {run}: resync {r['bm']['seconds']:.3f}s (wall {r['bm']['wall']:.3f}s) "
                     f"wire {r['bm']['wire']} B; rsync {r['rsync']['seconds']:.2f}s sent {r['rsync']['sent']} B; "
                     f"raw copy {r['raw']:.3f}s, atomic {r['atomic']:.3f}s, floor {r['floor']:.3f}s; "
                     f"CPU primary {r['bm']['p_cpu']:.2f}s "
                     f"secondary {r['bm']['s_cpu']:.2f}s")
            n = f"resync.vs_rsync.{size_label(size)}_{label}"
            res.add(f"{n}.changed_bytes", k * CHUNK, "B", "{}")
            res.add(f"{n}.bm_seconds", median(r["bm"]["seconds"] for r in rows), "s", "{:.3f}")
            res.add(f"{n}.bm_wall_seconds", median(r["bm"]["wall"] for r in rows), "s", "{:.3f}")
            res.add(f"{n}.bm_wire_bytes", median(r["bm"]["wire"] for r in rows), "B", "{:.0f}")
            res.add(f"{n}.bm_data_bytes", median(r["bm"]["bytes"] for r in rows), "B", "{:.0f}")
            res.add(f"{n}.bm_wire_overhead", median(r["bm"]["wire"] / r["changed"] - 1 for r in rows), "x", "{:.4f}")
            res.add(f"{n}.rsync_seconds", median(r["rsync"]["seconds"] for r in rows), "s", "{:.3f}")
            res.add(f"{n}.rsync_sent_bytes", median(r["rsync"]["sent"] for r in rows), "B", "{:.0f}")
            res.add(f"{n}.rsync_received_bytes", median(r["rsync"]["received"] for r in rows), "B", "{:.0f}")
            res.add(f"{n}.rsync_literal_bytes", median(r["rsync"]["literal"] for r in rows), "B", "{:.0f}")
            res.add(f"{n}.speedup", median(r["rsync"]["seconds"] / r["bm"]["seconds"] for r in rows), "x", "{:.2f}")
            res.add(f"{n}.speedup_wall", median(r["rsync"]["seconds"] / r["bm"]["wall"] for r in rows), "x", "{:.2f}")
            t3 = f"resync.vs_raw.{size_label(size)}_{label}"
            res.add(f"{t3}.resync_mb_s", median(mb_s(r["changed"], r["bm"]["seconds"]) for r in rows), "MB/s", "{:.0f}")
            res.add(f"{t3}.raw_copy_mb_s", median(mb_s(r["changed"], r["raw"]) for r in rows), "MB/s", "{:.0f}")
            res.add(f"{t3}.ratio", median(r["raw"] / r["bm"]["seconds"] for r in rows), "x", "{:.3f}")
            res.add(f"{t3}.atomic_copy_mb_s", median(mb_s(r["changed"], r["atomic"]) for r in rows), "MB/s", "{:.0f}")
            res.add(f"{t3}.atomic_ratio", median(r["raw"] / r["atomic"] for r in rows), "x", "{:.3f}")
            res.add(f"{t3}.resync_to_atomic", median(r["atomic"] / r["bm"]["seconds"] for r in rows), "x", "{:.3f}")
            res.add(f"{t3}.floor_mb_s", median(mb_s(r["changed"], r["floor"]) for r in rows), "MB/s", "{:.0f}")
            res.add(f"{t3}.floor_ratio", median(r["raw"] / r["floor"] for r in rows), "x", "{:.3f}")
            res.add(f"{t3}.resync_to_floor", median(r["floor"] / r["bm"]["seconds"] for r in rows), "x", "{:.3f}")
            gib = [r["changed"] / (1 << 30) for r in rows]
            res.add(f"{t3}.primary_cpu_s_per_gib", median(r["bm"]["p_cpu"] / g for r, g in zip(rows, gib)),
                    "CPU-s/GiB", "{:.2f}")
            res.add(f"{t3}.secondary_cpu_s_per_gib", median(r["bm"]["s_cpu"] / g for r, g in zip(rows, gib)),
                    "CPU-s/GiB", "{:.2f}")
            # cores / CPU-s per byte: what the resync could reach with its CPU work perfectly spread
            res.add(f"{t3}.cpu_bound_mb_s",
                    # (at least one clock tick of CPU: tiny smoke runs can measure none)
                    median(os.cpu_count() * r["changed"] / max(r["bm"]["p_cpu"] + r["bm"]["s_cpu"], procstat.TICK_S)
                           / 1e6 for r in rows),
                    "MB/s", "{:.0f}")
    finally:
        if rsyncd is not None:
            rsyncd.close()
        pair.close()
        shutil.rmtree(base, ignore_errors=True)


# -- 2. resync time against volume size ----------------------------------------------------------
def bench_size(cfg, root, res) -> None:
    sizes = cfg["b2_sizes"]
    k = cfg["b2_changed"] // CHUNK
    note(f"[2] resync time vs size: {', '.join(size_label(s) for s in sizes)} sparse, {k} chunks changed")
    pairs = {}
    try:
        for s in sizes:
            pairs[s] = setups.pair(os.path.join(root, f"b2-{size_label(s)}"), {"vol0": s})
        for p in pairs.values():
            p.wait_converged()
        rng = random.Random(22)
        rows = {s: [] for s in sizes}
        for run in range(cfg["runs"]):
            for s in (sizes if run % 2 == 0 else sizes[::-1]):
                p = pairs[s]
                chunks = rng.sample(range(s // CHUNK), k)
                p.outage()
                aio_write(p.primary.uri("vol0"), fresh_writes(chunks, rng.getrandbits(64)), qd=QD)
                settle()
                r = resync(p)
                settle()
                rows[s].append(r)
                note(f"    {size_label(s)} run {run}: resync {r['seconds']:.3f}s, {r['chunks']} chunks")
        small, large = sizes[0], sizes[-1]
        for s in sizes:
            n = f"resync.size.{size_label(s)}"
            res.add(f"{n}.seconds", median(r["seconds"] for r in rows[s]), "s", "{:.3f}")
            res.add(f"{n}.wall_seconds", median(r["wall"] for r in rows[s]), "s", "{:.3f}")
        res.add("resync.size.changed_bytes", k * CHUNK, "B", "{}")
        res.add(f"resync.size.ratio_{size_label(large)}_to_{size_label(small)}",
                median(a["seconds"] / b["seconds"] for a, b in zip(rows[large], rows[small])), "x", "{:.3f}")
    finally:
        for s, p in pairs.items():
            p.close()
            shutil.rmtree(p.base, ignore_errors=True)


# -- 4 + 5. mirrored write throughput and FUA latency ---------------------------------------------
def fua_latencies(uri: str, n: int, volsize: int, seed: int) -> list[float]:
    """n 4 KiB FUA writes, one in flight, at random 4 KiB offsets: seconds each."""
    import nbd
    rng = random.Random(seed)
    h = connect(uri)
    try:
        if not h.can_fua():
            raise BenchError(f"{uri} does not advertise FUA")
        buf = nbd.Buffer.from_bytearray(bytearray(rng.randbytes(4096)))
        out = []
        for _ in range(n):
            off = rng.randrange(volsize // 4096) * 4096
            t0 = time.perf_counter()
            h.aio_pwrite(buf, off, flags=nbd.CMD_FLAG_FUA)
            while h.aio_in_flight() > 0:
                h.poll(-1)
            out.append(time.perf_counter() - t0)
        return out
    finally:
        h.shutdown()


def bench_nbd(cfg, root, res) -> None:
    size = cfg["b4_size"]
    base = os.path.join(root, "b4")
    os.makedirs(base)
    note(f"[4] mirrored write throughput, nbdcopy {size_label(size)}; [5] FUA latency")
    source = os.path.join(base, "source.img")
    random_file(source, size)
    vols = {"vol0": size}
    closers = []
    try:
        pairs = {m: setups.pair(os.path.join(base, m), vols, mode=m) for m in ("async", "sync")}
        closers += [p.close for p in pairs.values()]
        local = setups.local_primary(os.path.join(base, "local"), vols)
        closers.append(local.stop)
        standalone = setups.standalone_primary(os.path.join(base, "standalone"), vols)
        closers.append(standalone.stop)
        kit = setups.NbdkitFile(os.path.join(base, "nbdkit.img"), size)
        closers.append(kit.stop)
        # The bare-syscall floors (bench/floors.py): their files, written once.
        fl = {n: os.path.join(base, f"floor-{n}") for n in ("a", "b", "journal")}
        for n, path in fl.items():
            prewrite_file(path, size if n != "journal" else floors.CHECKPOINT + floors.RECV_BUFFER)
        for p in pairs.values():
            p.wait_converged()
        uris = {"async": pairs["async"].primary.uri("vol0"), "sync": pairs["sync"].primary.uri("vol0"),
                "local": local.uri("vol0"), "standalone": standalone.uri("vol0"),
                "nbdkit": kit.uri}
        floor_cases = {"floor_local": lambda: floors.local_write(source, fl["a"], size),
                       "floor_mirror": lambda: floors.mirror_write(source, fl["a"], size, fl["b"], fl["journal"])}
        cases = list(uris) + list(floor_cases)
        # One unmeasured pass each, so every case overwrites allocated data.
        for c in uris:
            nbdcopy(source, uris[c])
            if c in pairs:
                pairs[c].wait_converged()
        settle()
        # CPU-s of each process of a case, from the copy's start to the
        # secondary caught up: what the case costs this 2-core machine.
        pids = {"async": (pairs["async"].primary.pid, pairs["async"].secondary.pid),
                "sync": (pairs["sync"].primary.pid, pairs["sync"].secondary.pid),
                "local": (local.pid, None)}
        rows, cpu = [], {c: [] for c in pids}
        for run in range(cfg["runs"]):
            order = cases[run % len(cases):] + cases[:run % len(cases)]
            r = {}
            for c in order:
                if c in floor_cases:
                    r[c] = floor_cases[c]()
                    settle()
                    continue
                before = [procstat.cpu_seconds(p) if p else 0.0 for p in pids.get(c, ())]
                r[c], nbdcopy_cpu = nbdcopy(source, uris[c])
                if c in pairs:  # let the secondary catch up before the next case
                    pairs[c].wait_converged()
                if c in pids:
                    after = [procstat.cpu_seconds(p) if p else 0.0 for p in pids[c]]
                    cpu[c].append([b - a for a, b in zip(before, after)] + [nbdcopy_cpu])
                settle()
            rows.append(r)
            note(f"    run {run}: " + ", ".join(f"{c} {mb_s(size, r[c]):.0f} MB/s" for c in cases))
        for c in cases:
            res.add(f"nbd.write.{c}_mb_s", median(mb_s(size, r[c]) for r in rows), "MB/s", "{:.0f}")
        for c in ("async", "sync", "standalone", "nbdkit", "floor_mirror"):
            res.add(f"nbd.write.{c}_to_local", median(r["local"] / r[c] for r in rows), "x", "{:.3f}")
        res.add("nbd.write.floor_mirror_to_floor_local", median(r["floor_local"] / r["floor_mirror"] for r in rows),
                "x", "{:.3f}")
        res.add("nbd.write.async_to_floor_mirror", median(r["floor_mirror"] / r["async"] for r in rows), "x",
                "{:.3f}")
        gib = size / GiB
        cores = os.cpu_count() or 1
        for c, xs in cpu.items():
            for i, who in enumerate(("primary", "secondary", "nbdcopy")):
                res.add(f"nbd.cpu.{c}.{who}_s_per_gib", median(x[i] for x in xs) / gib, "CPU-s/GiB", "{:.2f}")
            total = median(max(sum(x), procstat.TICK_S) for x in xs) / gib
            res.add(f"nbd.cpu.{c}.total_s_per_gib", total, "CPU-s/GiB", "{:.2f}")
            res.add(f"nbd.cpu.{c}.bound_mb_s", cores * GiB / total / 1e6, "MB/s", "{:.0f}")
        # The most the mirrored case could reach if its CPU work were perfectly
        # spread over the cores, against local only as measured.
        for c in ("async", "sync"):
            res.add(f"nbd.cpu.{c}.bound_to_local", res[f"nbd.cpu.{c}.bound_mb_s"] / res["nbd.write.local_mb_s"],
                    "x", "{:.3f}")
        # 5. one 4 KiB FUA write in flight
        n = cfg["b5_writes"]
        lat = {c: [] for c in ("sync", "local", "async")}
        for run in range(cfg["runs"]):
            order = list(lat) if run % 2 == 0 else list(lat)[::-1]
            for c in order:
                xs = fua_latencies(uris[c], n, size, seed=run)
                lat[c].append((percentile(xs, 50), percentile(xs, 99), max(xs)))
            note(f"    FUA run {run}: " + ", ".join(f"{c} p50 {lat[c][-1][0] * 1e6:.0f} us" for c in lat))
        for c, xs in lat.items():
            res.add(f"nbd.fua4k.{c}.p50_us", median(x[0] for x in xs) * 1e6, "us", "{:.0f}")
            res.add(f"nbd.fua4k.{c}.p99_us", median(x[1] for x in xs) * 1e6, "us", "{:.0f}")
            res.add(f"nbd.fua4k.{c}.max_us", median(x[2] for x in xs) * 1e6, "us", "{:.0f}")
        res.add("nbd.fua4k.sync_to_local_p50", median(a[0] / b[0] for a, b in zip(lat["sync"], lat["local"])),
                "x", "{:.2f}")
        res.add("nbd.fua4k.sync_to_local_p99", median(a[1] / b[1] for a, b in zip(lat["sync"], lat["local"])),
                "x", "{:.2f}")
    finally:
        for close in closers:
            close()
        shutil.rmtree(base, ignore_errors=True)


# -- 6. write pause at link failure --------------------------------------------------------------
def bench_pause(cfg, root, res) -> None:
    sets = cfg["b6_sets"]
    note(f"[6] write pause at link failure: {', '.join(f'{n}x{size_label(s)}' for n, s in sets)}, "
         f"{cfg['runs']} runs x {cfg['b6_cuts']} cuts, a host writing 64 KiB blocks throughout")
    pairs = {}
    try:
        for n, s in sets:
            vols = {f"vol{i}": s for i in range(n)}
            pairs[(n, s)] = setups.pair(os.path.join(root, f"b6-{n}x{size_label(s)}"), vols, proxy="process")
        for p in pairs.values():
            p.wait_converged()
        got = {key: {"pause": [], "host": [], "writes": 0, "seconds": 0.0} for key in pairs}
        for run in range(cfg["runs"]):
            for key in (list(pairs) if run % 2 == 0 else list(pairs)[::-1]):
                p = pairs[key]
                n, s = key
                writer = WriteLatencyRecorder([p.primary.uri(f"vol{i}") for i in range(n)], [s] * n, seed=run)
                t_start = time.perf_counter()
                time.sleep(0.3)
                for _ in range(cfg["b6_cuts"]):
                    before = p.primary.status()["link_failures"]
                    t_cut = time.perf_counter()
                    p.proxy.cut()
                    st = p.primary.wait_for(lambda st: st["link_failures"] > before and st["state"] == "disconnected",
                                            60, "link failure", poll_s=0.005)
                    t_seen = time.perf_counter()
                    got[key]["pause"].append(st["write_pause_ms"])
                    lats = [lat for t, lat in list(writer.samples) if t_cut <= t <= t_seen + 0.05]
                    got[key]["host"].append(max(lats) * 1e3 if lats else 0.0)
                    p.proxy.heal()
                    p.primary.wait_for(lambda st: st["state"] == "mirroring" and st["peer_connected"], 120,
                                       "mirroring after heal")
                    time.sleep(0.1)
                got[key]["writes"] += writer.stop()
                got[key]["seconds"] += time.perf_counter() - t_start
                p.wait_converged()
                note(f"    {n}x{size_label(s)} run {run}: pause p50 {median(got[key]['pause']):.2f} ms, "
                     f"max {max(got[key]['pause']):.2f} ms so far")
        for key, g in got.items():
            n, s = key
            name = f"pause.{n}x{size_label(s)}"
            res.add(f"{name}.cuts", len(g["pause"]), "", "{}")
            for q in (50, 99):
                res.add(f"{name}.write_pause_p{q}", percentile(g["pause"], q), "ms", "{:.2f}")
            res.add(f"{name}.write_pause_max", max(g["pause"]), "ms", "{:.2f}")
            for q in (50, 99):
                res.add(f"{name}.host_max_latency_p{q}", percentile(g["host"], q), "ms", "{:.2f}")
            res.add(f"{name}.host_writes_per_s", g["writes"] / g["seconds"], "1/s", "{:.0f}")
        (n0, s0), (n1, s1) = sets[0], sets[-1]
        res.add(f"pause.ratio_{n1}x{size_label(s1)}_to_{n0}x{size_label(s0)}_p99",
                percentile(got[sets[-1]]["pause"], 99) / max(percentile(got[sets[0]]["pause"], 99), 1e-9),
                "x", "{:.2f}")
    finally:
        for p in pairs.values():
            p.close()
            shutil.rmtree(p.base, ignore_errors=True)


# -- 7. writes during an outage -----------------------------------------------------------------
def bench_outage_writes(cfg, root, res) -> None:
    import nbd
    size, k = cfg["b7_vol"], cfg["b7_chunks"]
    base = os.path.join(root, "b7")
    note(f"[7] writes during an outage: {k} x 64 KiB random chunks of a prefilled {size_label(size)} volume, QD {QD}")
    pair = setups.pair(base, {"vol0": size}, prefill=prefill_volume(size))
    try:
        pair.wait_converged(timeout_s=600)
        rng = random.Random(77)
        pool = [nbd.Buffer.from_bytearray(bytearray(rng.randbytes(CHUNK))) for _ in range(16)]
        uri = pair.primary.uri("vol0")

        def timed(chunks):
            order = list(chunks)
            rng.shuffle(order)
            return aio_write(uri, [(c * CHUNK, pool[i % 16]) for i, c in enumerate(order)], qd=QD)

        rows = []
        settle()
        for run in range(cfg["runs"]):
            chunks = rng.sample(range(size // CHUNK), k)
            r = {}
            if run % 2 == 0:
                r["mirroring"] = timed(chunks)
                pair.wait_converged()
                settle()
            pair.outage()
            settle()
            r["first"] = timed(chunks)
            settle()
            r["rewrite"] = timed(chunks)
            settle()
            resync(pair)
            settle()
            if run % 2 == 1:
                r["mirroring"] = timed(chunks)
                pair.wait_converged()
                settle()
            rows.append(r)
            note(f"    run {run}: " + ", ".join(f"{c} {mb_s(k * CHUNK, r[c]):.0f} MB/s" for c in r))
        for c in ("mirroring", "first", "rewrite"):
            res.add(f"outage.write64k.{c}_mb_s", median(mb_s(k * CHUNK, r[c]) for r in rows), "MB/s", "{:.0f}")
        for c in ("first", "rewrite"):
            res.add(f"outage.write64k.{c}_to_mirroring", median(r["mirroring"] / r[c] for r in rows), "x", "{:.3f}")
    finally:
        pair.close()
        shutil.rmtree(base, ignore_errors=True)


# -- 8. peak memory ------------------------------------------------------------------------------
def bench_memory(cfg, root, res) -> None:
    size, changed = cfg["b8_vol"], cfg["b8_changed"]
    k = changed // CHUNK
    note(f"[8] peak memory: {size_label(size)} sparse volume, {k} chunks ({changed / GiB:.2f} GiB) changed "
         f"during an outage, {cfg['b8_runs']} runs with fresh daemons")
    rows = []
    for run in range(cfg["b8_runs"]):
        base = os.path.join(root, f"b8-{run}")
        pair = setups.pair(base, {"vol0": size})
        try:
            pair.wait_converged()
            r = {"p_base": procstat.vm_hwm(pair.primary.pid), "s_base": procstat.vm_hwm(pair.secondary.pid)}
            rng = random.Random(800 + run)
            chunks = rng.sample(range(size // CHUNK), k)
            pair.outage()
            aio_write(pair.primary.uri("vol0"), fresh_writes(chunks, rng.getrandbits(64)), qd=QD)
            settle()
            r["resync"] = resync(pair)
            r["p_peak"] = procstat.vm_hwm(pair.primary.pid)
            r["s_peak"] = procstat.vm_hwm(pair.secondary.pid)
            r["p_rss"] = procstat.vm_rss(pair.primary.pid)
            r["s_rss"] = procstat.vm_rss(pair.secondary.pid)
            rows.append(r)
            note(f"    run {run}: primary VmHWM {r['p_peak'] / MiB:.0f} MiB (after initial sync "
                 f"{r['p_base'] / MiB:.0f}), secondary {r['s_peak'] / MiB:.0f} MiB; resync {r['resync']['seconds']:.2f}s")
        finally:
            pair.close()
            shutil.rmtree(base, ignore_errors=True)
    n = f"memory.{size_label(size)}_{round(changed / MiB)}MiB"
    res.add(f"{n}.changed_bytes", changed, "B", "{}")
    res.add(f"{n}.primary_peak_mib", median(r["p_peak"] for r in rows) / MiB, "MiB", "{:.1f}")
    res.add(f"{n}.secondary_peak_mib", median(r["s_peak"] for r in rows) / MiB, "MiB", "{:.1f}")
    res.add(f"{n}.primary_before_outage_mib", median(r["p_base"] for r in rows) / MiB, "MiB", "{:.1f}")
    res.add(f"{n}.secondary_before_outage_mib", median(r["s_base"] for r in rows) / MiB, "MiB", "{:.1f}")
    res.add(f"{n}.primary_rss_after_mib", median(r["p_rss"] for r in rows) / MiB, "MiB", "{:.1f}")
    res.add(f"{n}.secondary_rss_after_mib", median(r["s_rss"] for r in rows) / MiB, "MiB", "{:.1f}")
    res.add(f"{n}.resync_seconds", median(r["resync"]["seconds"] for r in rows), "s", "{:.2f}")


# -- 9. a resync interrupted half-way -------------------------------------------------------------
UNINTERRUPTED = "uninterrupted"
RESUME_CASES = (UNINTERRUPTED, CUT, KILL9_SECONDARY, KILL9_PRIMARY)
RESUME_AT = 0.5  # the share of the round's data the secondary has received when it is interrupted


def prefill_volumes(volumes: dict[str, int]):
    """A `prefill` for Pair: `prefill_file` into each of the primary's volumes."""
    def fill(node_dir: str) -> None:
        for name, size in volumes.items():
            prefill_volume(size, name)(node_dir)
    return fill


def resume_case(pair: Pair, case: str, picks: dict[str, list[int]], seed: int) -> dict:
    """One outage during which the chunks `picks` (by volume) get fresh
    data, then the resync on the rate-limited link, interrupted at
    RESUME_AT by `case` (or not) and resumed at the same rate. Changed and
    received bytes, proxy bytes, and seconds: the link's time in both
    attempts plus restarting a killed daemon, not the time the link is held
    down in between."""
    p = pair.primary
    pair.proxy.cut()
    p.wait_for(lambda st: st["state"] == "disconnected" and not st["peer_connected"], 60, "link-down detection")
    changed = 0
    for i, (vol, chunks) in enumerate(picks.items()):
        aio_write(p.uri(vol), fresh_writes(chunks, seed + i), qd=QD)
        changed += len(chunks) * CHUNK
    settle()
    meter = ResyncMeter(pair)
    start = time.perf_counter()
    pair.proxy.heal()
    held, fraction = 0.0, None
    if case != UNINTERRUPTED:
        cut = interrupt_resync(pair, case, RESUME_AT, meter)
        held = time.perf_counter() - cut.at
        fraction = cut.fraction
        resume_resync(pair, rate_bps=None)  # the same link again
    st = pair.wait_converged()
    seconds = time.perf_counter() - start - held
    if st["last_resync"]["kind"] != "incremental":
        raise BenchError(f"{case}: the resync was a full sync ({st['last_resync']})")
    return {"changed": changed, "data": meter.total("secondary"), "wire": meter.total("proxy"),
            "attempts": meter.attempts(), "seconds": seconds, "fraction": fraction}


def bench_resume(cfg, root, res) -> None:
    changed, rate = cfg["b9_changed"], cfg["b9_rate"]
    # Half of each volume's chunks change, 3/4 of them in vol0.
    vols = {"vol0": changed * 3 // 2, "vol1": changed // 2}
    base = os.path.join(root, "b9")
    note(f"[9] resync resumed after an interruption: {size_label(changed)} changed in random chunks of "
         f"{' + '.join(size_label(s) for s in vols.values())} pre-filled volumes, link limited to "
         f"{size_label(rate)}/s, interrupted at {RESUME_AT:.0%}")
    pair = setups.pair(base, vols, proxy="process", prefill=prefill_volumes(vols))
    try:
        pair.wait_converged(timeout_s=1800)
        pair.proxy.rate(rate)
        rng = random.Random(99)
        rows = {c: [] for c in RESUME_CASES}
        for run in range(cfg["b9_runs"]):
            # The same chunks for every case of a run, fresh data each time.
            picks = {v: sorted(rng.sample(range(s // CHUNK), s // CHUNK // 2)) for v, s in vols.items()}
            for case in RESUME_CASES[run % 4:] + RESUME_CASES[:run % 4]:
                r = resume_case(pair, case, picks, rng.getrandbits(64))
                rows[case].append(r)
                settle()
                at = "" if r["fraction"] is None else f" at {r['fraction']:.0%}"
                note(f"    run {run} {case}{at}: {r['data'] / r['changed']:.3f}x the changed bytes "
                     f"(per attempt {r['attempts']}), {r['seconds']:.2f}s")
        for case in RESUME_CASES:
            n = f"resume.{case.replace('-', '_')}"
            rs = rows[case]
            res.add(f"{n}.changed_bytes", median(r["changed"] for r in rs), "B", "{:.0f}")
            res.add(f"{n}.data_bytes", median(r["data"] for r in rs), "B", "{:.0f}")
            res.add(f"{n}.data_ratio", median(r["data"] / r["changed"] for r in rs), "x", "{:.3f}")
            res.add(f"{n}.wire_bytes", median(r["wire"] for r in rs), "B", "{:.0f}")
            res.add(f"{n}.wire_ratio", median(r["wire"] / r["changed"] for r in rs), "x", "{:.3f}")
            res.add(f"{n}.seconds", median(r["seconds"] for r in rs), "s", "{:.2f}")
            if case != UNINTERRUPTED:
                res.add(f"{n}.interrupted_at", median(r["fraction"] for r in rs) * 100, "%", "{:.0f}")
                res.add(f"{n}.seconds_to_uninterrupted",
                        median(r["seconds"] / u["seconds"] for r, u in zip(rs, rows[UNINTERRUPTED])), "x", "{:.2f}")
        res.add("resume.worst_data_ratio", max(res[f"resume.{c.replace('-', '_')}.data_ratio"]
                                               for c in RESUME_CASES[1:]), "x", "{:.3f}")
    finally:
        pair.close()
        shutil.rmtree(base, ignore_errors=True)


# -- 10. online verify -----------------------------------------------------------------------------
DIGEST = 16  # bytes of a chunk's BLAKE2b-128 digest on the link


def verify_once(pair: Pair, *args: str) -> dict:
    """`blockmirror verify PRIMARY_DIR --json ARGS...` with both images
    evicted from the page cache first (every chunk read from the disk, as
    for a volume larger than the RAM): its last_verify, exit code, wall
    seconds, the fault proxy's bytes (both ways) and each daemon's
    /proc/PID/io counters over the run (read_bytes: from the disk; rchar:
    what its read calls asked for, sockets included)."""
    p, s = pair.primary, pair.secondary
    evict([image_path(d.node_dir, v) for d in (p, s) for v in pair.volumes])
    io0 = {d.role: procstat.io_counters(d.pid) for d in (p, s)}
    fwd0 = pair.proxy.status()["bytes_forwarded"]
    start = time.perf_counter()
    proc = tools.verify(pair.p_dir, "--json", *args, timeout_s=3600)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise BenchError(f"blockmirror verify {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    r = {"last": json.loads(proc.stdout), "code": proc.returncode, "wall": wall,
         "link": pair.proxy.status()["bytes_forwarded"] - fwd0}
    for d in (p, s):
        io1 = procstat.io_counters(d.pid)
        r[d.role] = {k: io1[k] - io0[d.role][k] for k in ("read_bytes", "rchar")}
    return r


def bench_verify(cfg, root, res) -> None:
    size, k = cfg["b10_vol"], cfg["b10_damaged"]
    nchunks = size // CHUNK
    base = os.path.join(root, "b10")
    note(f"[10] online verify: a {size_label(size)} pre-filled volume, both images evicted from the page cache "
         f"before each verify; unlimited, --rate half of that, --repair of {k} damaged chunks; "
         f"{cfg['b10_runs']} runs")
    pair = setups.pair(base, {"vol0": size}, proxy="process", prefill=prefill_volume(size))
    try:
        pair.wait_converged(timeout_s=1800)
        rng = random.Random(1010)
        rows = []
        for run in range(cfg["b10_runs"]):
            settle()
            r = {"plain": verify_once(pair)}
            last = r["plain"]["last"]
            if last["result"] != "identical" or last["chunks"] != nchunks:
                raise BenchError(f"verify of an identical pair: {last}")
            r["rate"] = int(size / last["seconds"] / 2)
            r["rated"] = verify_once(pair, "--rate", str(r["rate"]))
            if r["rated"]["last"]["result"] != "identical":
                raise BenchError(f"rate-limited verify of an identical pair: {r['rated']['last']}")
            # A few chunks damaged in the stopped secondary's image, then --repair.
            damaged = sorted(rng.sample(range(nchunks), k))
            if pair.secondary.stop() != 0:
                raise BenchError(f"the secondary did not stop cleanly; log:\n{pair.secondary.log()[-3000:]}")
            damage_chunks(pair.s_dir, [("vol0", c * CHUNK) for c in damaged])
            pair.restore()
            pair.wait_converged()
            settle()
            before = {d.role: d.status()["totals"]["resync_bytes"] for d in (pair.primary, pair.secondary)}
            r["repair"] = verify_once(pair, "--repair")
            pair.wait_converged()
            after = {d.role: d.status()["totals"]["resync_bytes"] for d in (pair.primary, pair.secondary)}
            r["repair"]["resync"] = {role: after[role] - before[role] for role in after}
            r["damaged"] = k
            last = r["repair"]["last"]
            found = [c for e in last["out_of_sync"]
                     for c in range(e["offset"] // CHUNK, (e["offset"] + e["length"]) // CHUNK)]
            if last["result"] != "repaired" or last["repaired_chunks"] != k or found != damaged:
                note(f"    warning: {k} chunks damaged ({damaged[:10]}...), the verify found {last}")
            rows.append(r)
            pl, ra, rp = r["plain"], r["rated"], r["repair"]
            note(f"    run {run}: {mb_s(size, pl['last']['seconds']):.0f} MB/s ({pl['last']['seconds']:.2f}s), "
                 f"link {pl['link']} B ({pl['link'] / size:.4%}), read primary {pl['primary']['read_bytes']} B "
                 f"secondary {pl['secondary']['read_bytes']} B; --rate {r['rate'] / 1e6:.0f} MB/s: "
                 f"{mb_s(size, ra['last']['seconds']):.0f} MB/s; --repair: {rp['last']['repaired_chunks']} of {k} "
                 f"chunks repaired, resync {rp['resync']['secondary']} B received")
        n = f"verify.{size_label(size)}"
        med = lambda f: median(f(r) for r in rows)  # noqa: E731
        res.add(f"{n}.volume_bytes", size, "B", "{}")
        res.add(f"{n}.chunks", nchunks, "", "{}")
        res.add(f"{n}.seconds", med(lambda r: r["plain"]["last"]["seconds"]), "s", "{:.2f}")
        res.add(f"{n}.wall_seconds", med(lambda r: r["plain"]["wall"]), "s", "{:.2f}")
        res.add(f"{n}.mb_s", med(lambda r: mb_s(size, r["plain"]["last"]["seconds"])), "MB/s", "{:.0f}")
        res.add(f"{n}.link_bytes", med(lambda r: r["plain"]["link"]), "B", "{:.0f}")
        res.add(f"{n}.link_ratio", med(lambda r: r["plain"]["link"] / size), "x", "{:.5f}")
        res.add(f"{n}.digest_bytes", nchunks * DIGEST, "B", "{}")
        res.add(f"{n}.link_to_digests", med(lambda r: r["plain"]["link"] / (nchunks * DIGEST)), "x", "{:.2f}")
        for role in ROLES:
            res.add(f"{n}.{role}_read_bytes", med(lambda r: r["plain"][role]["read_bytes"]), "B", "{:.0f}")
            res.add(f"{n}.{role}_read_ratio", med(lambda r: r["plain"][role]["read_bytes"] / size), "x", "{:.3f}")
            res.add(f"{n}.{role}_rchar_ratio", med(lambda r: r["plain"][role]["rchar"] / size), "x", "{:.3f}")
        res.add(f"{n}.rated.limit_mb_s", med(lambda r: r["rate"] / 1e6), "MB/s", "{:.0f}")
        res.add(f"{n}.rated.mb_s", med(lambda r: mb_s(size, r["rated"]["last"]["seconds"])), "MB/s", "{:.0f}")
        res.add(f"{n}.rated.to_limit", med(lambda r: size / r["rated"]["last"]["seconds"] / r["rate"]), "x",
                "{:.3f}")
        res.add(f"{n}.rated.seconds", med(lambda r: r["rated"]["last"]["seconds"]), "s", "{:.2f}")
        res.add(f"{n}.repair.damaged_chunks", k, "", "{}")
        res.add(f"{n}.repair.out_of_sync_chunks", med(lambda r: r["repair"]["last"]["out_of_sync_chunks"]), "",
                "{:.0f}")
        res.add(f"{n}.repair.repaired_chunks", med(lambda r: r["repair"]["last"]["repaired_chunks"]), "", "{:.0f}")
        res.add(f"{n}.repair.resync_bytes", med(lambda r: r["repair"]["resync"]["secondary"]), "B", "{:.0f}")
        res.add(f"{n}.repair.resync_to_damaged", med(lambda r: r["repair"]["resync"]["secondary"] / (k * CHUNK)),
                "x", "{:.3f}")
        res.add(f"{n}.repair.seconds", med(lambda r: r["repair"]["last"]["seconds"]), "s", "{:.2f}")
    finally:
        pair.close()
        shutil.rmtree(base, ignore_errors=True)


# -- 11. checksum initial sync of a pre-seeded secondary -----------------------------------------
INITIAL_SYNCS = ("checksum", "full")


def initial_sync_case(root: str, size: int, changed: list[int], seed: int, how: str) -> dict:
    """A fresh pair whose secondary holds a copy of the primary's data made
    before the primary's `changed` chunks got fresh data, both images
    evicted from the page cache; the first sync with `--initial-sync how`
    through a fault proxy process. Data bytes the secondary received, the
    proxy's bytes (both ways), seconds (the primary's last_resync, and from
    letting the link through to convergence), the comparison's share."""
    base = os.path.join(root, f"b11{how[0]}")  # short: the proxy's control socket path has a length limit
    pair = setups.pair(base, {"vol0": size}, proxy="process", prefill=prefill_volume(size),
                       primary_extra=["--initial-sync", how], start=False)
    try:
        seed_copy(pair.p_dir, pair.s_dir)
        write_image(pair.p_dir, "vol0", fresh_writes(changed, seed))
        evict([image_path(d, "vol0") for d in (pair.p_dir, pair.s_dir)])
        pair.start_secondary()
        pair.proxy.cut()  # the primary starts, the link comes when the clock runs
        pair.start_primary()
        fwd0 = pair.proxy.status()["bytes_forwarded"]
        start = time.perf_counter()
        pair.proxy.heal()
        compared = None
        while True:
            st = pair.primary.status()
            now = time.perf_counter() - start
            if compared is None and st["phase"] not in ("disconnected", "connecting", "comparing"):
                compared = now  # linked and done comparing (if it compares): a round is under way
            if converged(st):
                wall = now
                break
            if now > 1800:
                raise BenchError(f"{how} initial sync did not converge; last status {st}")
            time.sleep(0.02)
        if st["last_resync"]["kind"] != "full":
            raise BenchError(f"{how}: the first sync was not a full one ({st['last_resync']})")
        return {"data": pair.secondary.status()["totals"]["resync_bytes"],
                "wire": pair.proxy.status()["bytes_forwarded"] - fwd0, "seconds": st["last_resync"]["seconds"],
                "wall": wall, "compare": compared, "chunks": st["last_resync"]["chunks"]}
    finally:
        pair.close()
        shutil.rmtree(base, ignore_errors=True)


def bench_checksum(cfg, root, res) -> None:
    size, frac = cfg["b11_vol"], cfg["b11_frac"]
    nchunks = size // CHUNK
    k = max(1, round(nchunks * frac))
    note(f"[11] --initial-sync checksum vs full: a {size_label(size)} pre-filled volume copied to the secondary, "
         f"then {k} random chunks ({frac:.0%}) changed on the primary; {cfg['b11_runs']} runs")
    rng = random.Random(1111)
    rows = []
    for run in range(cfg["b11_runs"]):
        changed = sorted(rng.sample(range(nchunks), k))
        seed = rng.getrandbits(64)
        r = {}
        for how in (INITIAL_SYNCS if run % 2 == 0 else INITIAL_SYNCS[::-1]):
            r[how] = initial_sync_case(root, size, changed, seed, how)
            settle()
        if r["checksum"]["chunks"] != k:
            note(f"    warning: the checksum sync sent {r['checksum']['chunks']} chunks, {k} changed")
        rows.append(r)
        c, f = r["checksum"], r["full"]
        note(f"    run {run}: checksum {c['data']} data B, {c['wire']} wire B, {c['seconds']:.2f}s (compare "
             f"{c['compare']:.2f}s); full {f['data']} data B, {f['wire']} wire B, {f['seconds']:.2f}s")
    changed_bytes, digests = k * CHUNK, nchunks * DIGEST
    n = f"checksum.{size_label(size)}_{round(frac * 100)}pct"
    med = lambda fn: median(fn(r) for r in rows)  # noqa: E731
    res.add(f"{n}.volume_bytes", size, "B", "{}")
    res.add(f"{n}.changed_chunks", k, "", "{}")
    res.add(f"{n}.changed_bytes", changed_bytes, "B", "{}")
    res.add(f"{n}.digest_bytes", digests, "B", "{}")
    for how in INITIAL_SYNCS:
        res.add(f"{n}.{how}.data_bytes", med(lambda r: r[how]["data"]), "B", "{:.0f}")
        res.add(f"{n}.{how}.wire_bytes", med(lambda r: r[how]["wire"]), "B", "{:.0f}")
        res.add(f"{n}.{how}.seconds", med(lambda r: r[how]["seconds"]), "s", "{:.2f}")
        res.add(f"{n}.{how}.wall_seconds", med(lambda r: r[how]["wall"]), "s", "{:.2f}")
    res.add(f"{n}.checksum.chunks_sent", med(lambda r: r["checksum"]["chunks"]), "", "{:.0f}")
    res.add(f"{n}.checksum.compare_seconds", med(lambda r: r["checksum"]["compare"]), "s", "{:.2f}")
    # The checksum sync is the faster one on any link slower than about this (it moves ~1% of the bytes).
    res.add(f"{n}.checksum.compare_mb_s", med(lambda r: mb_s(size, r["checksum"]["compare"])), "MB/s", "{:.0f}")
    res.add(f"{n}.checksum.data_ratio", med(lambda r: r["checksum"]["data"] / changed_bytes), "x", "{:.3f}")
    res.add(f"{n}.checksum.wire_ratio", med(lambda r: r["checksum"]["wire"] / (changed_bytes + digests)), "x",
            "{:.3f}")
    res.add(f"{n}.full_to_checksum_wire", med(lambda r: r["full"]["wire"] / r["checksum"]["wire"]), "x", "{:.1f}")
    res.add(f"{n}.full_to_checksum_seconds", med(lambda r: r["full"]["wall"] / r["checksum"]["wall"]), "x",
            "{:.2f}")


BENCHES = {"1": bench_rsync, "2": bench_size, "4": bench_nbd, "6": bench_pause, "7": bench_outage_writes,
           "8": bench_memory, "9": bench_resume, "10": bench_verify, "11": bench_checksum}
# 3 is measured inside 1 (same runs), 5 inside 4 (same daemons); names for some.
ALIASES = {"3": "1", "5": "4", "resume": "9", "verify": "10", "checksum": "11"}


# -- docs ----------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--smoke", action="store_true", help="tiny sizes, 1 run, seconds (for the test suite)")
    g.add_argument("--full", action="store_true", help="real sizes (64 GiB changes), more runs (long)")
    ap.add_argument("--dir", help="where to put temporary data (default: a new directory under /var/tmp)")
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite docs/BENCHMARKS.md")
    ap.add_argument("--docs-to", metavar="FILE",
                    help="write the sections into FILE instead of docs/BENCHMARKS.md (works with --smoke)")
    ap.add_argument("--no-storage", action="store_true", help="do not run bench/storage_bench.py first")
    ap.add_argument("--only", action="append", choices=sorted(set(BENCHES) | set(ALIASES)),
                    help="run only these benchmarks (repeatable; implies --no-docs --no-storage)")
    args = ap.parse_args(argv)
    if args.docs_to and args.only:
        ap.error("--docs-to needs every benchmark: drop --only")
    mode = "smoke" if args.smoke else "full" if args.full else "quick"
    cfg = MODES[mode]
    only = sorted({ALIASES.get(x, x) for x in args.only}) if args.only else list(BENCHES)
    write_docs = bool(args.docs_to) or not (args.no_docs or args.smoke or args.only)
    run_storage = not (args.no_storage or args.smoke or args.only)
    for tool in ("nbdcopy", "nbdkit", "rsync"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: run `make venv` (scripts/ensure-deps)")
    parent = args.dir or "/var/tmp"
    os.makedirs(parent, exist_ok=True)
    root = tempfile.mkdtemp(prefix="blockmirror-bench-", dir=parent)
    res = common.Results()
    started = time.perf_counter()
    try:
        m = common.machine(root)
        for key, value in m.items():
            res.add(f"machine.{key}", value)
        res.add("bench.mode", mode)
        if run_storage:
            note("[storage] bench/storage_bench.py --write-docs" + (" --full" if mode == "full" else ""))
            cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "storage_bench.py"),
                   "--dir", root, "--write-docs"] + (["--full"] if mode == "full" else [])
            t = time.perf_counter()
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
            sys.stdout.write(proc.stdout)
            sys.stdout.flush()
            if proc.returncode != 0:
                raise SystemExit(f"storage_bench.py exited {proc.returncode}")
            res.add("bench.storage_elapsed", time.perf_counter() - t, "s", "{:.1f}")
        for key in only:
            t = time.perf_counter()
            BENCHES[key](cfg, root, res)
            res.add(f"bench.b{key}_elapsed", time.perf_counter() - t, "s", "{:.1f}")
            settle()
        elapsed = time.perf_counter() - started
        res.add("bench.elapsed", elapsed, "s", "{:.1f}")
        if write_docs:
            import docs_mirroring
            argv_text = "bench/run.py" + ("" if mode == "quick" else f" --{mode}")
            doc = args.docs_to or common.DOC_PATH
            common.write_sections({
                "Machine": common.machine_markdown(m),
                "How to reproduce": docs_mirroring.reproduce(),
                "Mirroring": docs_mirroring.render(cfg, mode, res, m, elapsed, argv_text),
            }, path=doc)
            note(f"rewrote the Mirroring, How to reproduce and Machine sections of {doc}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
