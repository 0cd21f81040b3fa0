#!/usr/bin/env python3
"""Storage benchmarks (issue 2): snapshot write pause, copy-on-write write
throughput, and diff() over large exception tables.

    .venv/bin/python bench/storage_bench.py [--smoke | --full] [--dir DIR] [--write-docs]

Prints one `name: value unit` line per measurement on stdout (progress on
stderr). Quick mode (the default) takes a few minutes on a 2-core machine;
`--full` takes more runs; `--smoke` uses tiny sizes and takes seconds (the
test suite runs it so this script cannot rot). `--write-docs` rewrites the
Storage and Machine sections of docs/BENCHMARKS.md.

Groups:
1. snapshot: snapshot() of 8 volumes of 1 GiB and of 8 volumes of 64 GiB
   (sparse) while a thread writes continuously; the engine's recorded
   `pause_ns`, the time the write gate was really closed (measured by
   instrumenting the gate), the snapshot() call and delete_snapshot().
2. write: 64 KiB random writes over a pre-filled 1 GiB volume at queue
   depth 32 (write_many batches) and 1: no snapshot vs first writes after a
   snapshot vs rewrites of preserved chunks, side by side in each run.
3. diff: Node.open + diff() over exception tables naming 1% and 10% of the
   16 Mi chunks of a 1 TiB volume, each in a fresh subprocess, with its peak
   memory above a subprocess that only imports the same modules.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import GiB, KiB, MiB, TiB, median, note, percentile, size_label  # noqa: E402

from blockmirror.storage import Node, WriteOp, fileio  # noqa: E402
from blockmirror.storage.gate import WriteGate  # noqa: E402

CHUNK = 64 * KiB

MODES = {
    "smoke": dict(
        pause_sets=[(8, 1 * MiB), (8, 64 * MiB)], pause_runs=2, pause_snaps=5, pause_gap=0.002,
        write_vol=8 * MiB, write_n={32: 64, 1: 16}, write_runs=2,
        diff_vol=1 * GiB, diff_fracs=[0.01, 0.10], diff_runs=2),
    "quick": dict(
        pause_sets=[(8, 1 * GiB), (8, 64 * GiB)], pause_runs=5, pause_snaps=40, pause_gap=0.010,
        write_vol=1 * GiB, write_n={32: 4096, 256: 4096, 1: 256}, write_runs=5,
        diff_vol=1 * TiB, diff_fracs=[0.01, 0.10], diff_runs=5),
    "full": dict(
        pause_sets=[(8, 1 * GiB), (8, 64 * GiB)], pause_runs=7, pause_snaps=200, pause_gap=0.010,
        write_vol=1 * GiB, write_n={32: 8192, 256: 8192, 1: 1024}, write_runs=9,
        diff_vol=1 * TiB, diff_fracs=[0.01, 0.10], diff_runs=9),
}

RATE_LIMITED = 100 * 10**6  # bytes/s of the rate-limited writer
TARGET_PAUSE_P99_MS = 5.0
TARGET_FIRST_RATIO = 0.50
TARGET_REWRITE_RATIO = 0.90
TARGET_DIFF_S = 1.0
TARGET_DIFF_MIB = 100.0


def new_node(path: str, volumes: dict[str, int]) -> Node:
    os.makedirs(path)  # Node.create takes a new or an empty directory
    return Node.create(path, volumes, chunk_size=CHUNK)


def settle(root: str) -> None:
    """Between groups: drop this group's files (their dirty pages die with
    them) and let the kernel write back the rest, so no group pays for the
    previous one's writeback."""
    for name in os.listdir(root):
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    os.sync()


def ms(ns: float) -> float:
    return ns / 1e6


def data_pool(n: int = 16, seed: int = 7) -> list[bytes]:
    """Distinct non-zero 64 KiB buffers (never all zeroes)."""
    rng = random.Random(seed)
    return [rng.randbytes(CHUNK - 1) + b"\x01" for _ in range(n)]


# -- 1. snapshot pause ----------------------------------------------------------------
class TimedGate(WriteGate):
    """The node's write gate, timed from the outside: `closed` is how long
    writers were kept out (drain of in-flight writes + the snapshot itself +
    its metadata commit), `drain` the part spent waiting for writers inside."""

    def __init__(self):
        super().__init__()
        self.closed: list[int] = []
        self.drain: list[int] = []

    @contextlib.contextmanager
    def paused(self):
        t0 = time.perf_counter_ns()
        with super().paused():
            t1 = time.perf_counter_ns()
            yield
        t2 = time.perf_counter_ns()
        self.drain.append(t1 - t0)
        self.closed.append(t2 - t0)


class Writer(threading.Thread):
    """Writes 64 KiB blocks at random offsets of random volumes, in batches
    (queue depth `qd`), until stopped."""

    def __init__(self, node: Node, qd: int = 8, seed: int = 1, rate: float | None = None):
        super().__init__(daemon=True)
        self.rate = rate  # bytes/s, or None: as fast as it can
        self.node = node
        self.qd = qd
        self.rng = random.Random(seed)
        self.pool = data_pool()
        self.stop = threading.Event()
        self.writes = 0
        self.latencies: list[int] = []
        self.error: BaseException | None = None

    def run(self):
        vols = [(name, vol.size // CHUNK) for name, vol in self.node.volumes.items()]
        rng, pool = self.rng, self.pool
        start = time.perf_counter()
        try:
            while not self.stop.is_set():
                if self.rate:
                    ahead = self.writes * CHUNK / self.rate - (time.perf_counter() - start)
                    if ahead > 0:
                        time.sleep(ahead)
                ops = []
                for _ in range(self.qd):
                    name, nchunks = vols[rng.randrange(len(vols))]
                    ops.append(WriteOp(name, rng.randrange(nchunks) * CHUNK, pool[rng.randrange(len(pool))]))
                t = time.perf_counter_ns()
                self.node.write_many(ops)
                self.latencies.append(time.perf_counter_ns() - t)
                self.writes += len(ops)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc


def pause_run(node: Node, snaps: int, gap: float, write: bool = True, rate: float | None = None) -> dict:
    os.sync()  # start clean: no writeback left over from the previous case
    gate = TimedGate()
    node.gate = gate  # nothing is writing yet
    writer = Writer(node, rate=rate)
    if write:
        writer.start()
        time.sleep(0.05)  # the writer is busy before the first snapshot
    pause, call, delete = [], [], []
    prev = None
    t_start = time.perf_counter()
    try:
        for i in range(snaps):
            t = time.perf_counter_ns()
            info = node.snapshot(f"bench-{i}")
            call.append(time.perf_counter_ns() - t)
            pause.append(info.pause_ns)
            if prev is not None:  # keep the chain short: at most two snapshots
                t = time.perf_counter_ns()
                node.delete_snapshot(prev)
                delete.append(time.perf_counter_ns() - t)
            prev = info.id
            time.sleep(gap)
            if writer.error:
                break
    finally:
        writer.stop.set()
        if write:
            writer.join()
    elapsed = time.perf_counter() - t_start
    if writer.error:
        raise RuntimeError("writer thread failed") from writer.error
    if prev is not None:
        node.delete_snapshot(prev)
    node.gate = WriteGate()
    # The engine starts its pause clock just before closing the gate and
    # stops it after the volumes' fdatasync, before the metadata commit.
    flush = [p - d for p, d in zip(pause, gate.drain)]
    return dict(pause=pause, closed=gate.closed, drain=gate.drain, flush=flush, call=call, delete=delete,
                writer_mbps=writer.writes * CHUNK / elapsed / 1e6, writer_lat=writer.latencies or [0])


def bench_snapshot_pause(cfg: dict, root: str, res: common.Results) -> dict:
    """Group 1: the write pause of snapshot() must not grow with volume size."""
    nodes = {}
    for count, size in cfg["pause_sets"]:
        label = f"{count}x{size_label(size)}"
        nodes[label] = new_node(os.path.join(root, f"pause-{label}"),
                                {f"v{i}": size for i in range(count)})
    # The largest set once more with a writer limited to RATE_LIMITED, and
    # with no writer at all: the floor of the pause.
    big = list(nodes)[-1]
    cases = [(label, label, True, None) for label in nodes] + [
        (f"{big}_{RATE_LIMITED // 10**6}MBps", big, True, RATE_LIMITED), (big + "_idle", big, False, None)]
    pooled = {case: {} for case, *_ in cases}
    try:
        for run in range(cfg["pause_runs"]):
            for case, label, write, rate in cases:  # sizes interleaved, run by run
                note(f"snapshot pause: run {run + 1}/{cfg['pause_runs']} {case}")
                r = pause_run(nodes[label], cfg["pause_snaps"], cfg["pause_gap"], write, rate)
                for key, values in r.items():
                    if isinstance(values, list):
                        pooled[case].setdefault(key, []).extend(values)
                    else:
                        pooled[case].setdefault(key, []).append(values)
    finally:
        for node in nodes.values():
            node.close()
        settle(root)
    out = {}
    for case, p in pooled.items():
        name = f"storage.snapshot.{case}"
        n = len(p["pause"])
        res.add(f"{name}.snapshots", n, "", "{}")
        for key, what in (("pause", "pause_ns"), ("closed", "gate_closed"), ("drain", "drain"),
                          ("flush", "flush_in_pause"), ("call", "call")):
            for q, qn in ((50, "p50"), (99, "p99"), (100, "max")):
                res.add(f"{name}.{what}_{qn}", ms(percentile(p[key], q)), "ms")
        res.add(f"{name}.delete_p50", ms(percentile(p["delete"], 50)), "ms")
        res.add(f"{name}.delete_max", ms(max(p["delete"])), "ms")
        if not case.endswith("_idle"):
            res.add(f"{name}.writer_throughput", median(p["writer_mbps"]), "MB/s", "{:.1f}")
            res.add(f"{name}.writer_latency_p50", ms(percentile(p["writer_lat"], 50)), "ms")
            res.add(f"{name}.writer_latency_max", ms(max(p["writer_lat"])), "ms")
        out[case] = name
    small, large = list(nodes)[0], list(nodes)[-1]
    for key in ("pause_ns_p99", "gate_closed_p50", "gate_closed_p99"):
        res.add(f"storage.snapshot.ratio_{large}_to_{small}.{key}",
                res[f"{out[large]}.{key}"] / res[f"{out[small]}.{key}"], "x", "{:.2f}")
    return out


# -- 2. write throughput ----------------------------------------------------------------
def _timed_writes(node: Node, chunks: list[int], qd: int, pool: list[bytes]) -> float:
    """MB/s of 64 KiB writes to `chunks` in batches of `qd`, including the
    flush that makes them durable at the end."""
    t = time.perf_counter_ns()
    for i in range(0, len(chunks), qd):
        node.write_many([WriteOp("v0", c * CHUNK, pool[(i + j) % len(pool)])
                         for j, c in enumerate(chunks[i:i + qd])])
    node.flush()
    return len(chunks) * CHUNK / ((time.perf_counter_ns() - t) / 1e9) / 1e6


def _timed_limit(node: Node, chunks: list[int], qd: int, pool: list[bytes], scratch: str,
                 prewritten: bool = False) -> float:
    """The physical floor of a first write, without blockmirror: per batch,
    read the originals, write them to a scratch file, fdatasync it, then
    overwrite; the same final flush. (No metadata commit, no Python engine.)
    The scratch file is new (every sync allocates blocks: a filesystem
    journal commit) or, with `prewritten`, written in full beforehand,
    outside the timing (the sync only writes data), and each MiB's writeback
    starts as soon as it is written (sync_file_range), as in the node."""
    vol = node.volumes["v0"]
    fd = os.open(scratch, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if prewritten:
            common.prewrite(fd, len(chunks) * CHUNK)
        t = time.perf_counter_ns()
        pos = 0
        group = (1 << 20) // CHUNK
        for i in range(0, len(chunks), qd):
            batch = chunks[i:i + qd]
            for g in range(0, len(batch), group):
                originals = b"".join(os.pread(vol.file.fd, CHUNK, c * CHUNK) for c in batch[g:g + group])
                os.pwrite(fd, originals, pos)
                if prewritten:  # start the writeback at once, as the node does
                    fileio._sync_file_range(fd, pos, len(originals), 2)
                pos += len(originals)
            os.fdatasync(fd)
            for j, c in enumerate(batch):
                os.pwrite(vol.file.fd, pool[(i + j) % len(pool)], c * CHUNK)
        node.flush()
        return len(chunks) * CHUNK / ((time.perf_counter_ns() - t) / 1e9) / 1e6
    finally:
        os.close(fd)
        os.unlink(scratch)


def bench_write_throughput(cfg: dict, root: str, res: common.Results) -> None:
    """Group 2: no snapshot vs first writes after a snapshot vs rewrites."""
    size = cfg["write_vol"]
    nchunks = size // CHUNK
    node = new_node(os.path.join(root, "write"), {"v0": size})
    pool = data_pool(seed=11)
    fill = data_pool(seed=12)
    try:
        note(f"write throughput: pre-filling {size_label(size)} with 64 KiB writes")
        for i in range(0, nchunks, 256):
            node.write_many([WriteOp("v0", c * CHUNK, fill[c % len(fill)])
                             for c in range(i, min(i + 256, nchunks))])
        node.flush()
        rng = random.Random(3)
        per = {qd: {"none": [], "first": [], "rewrite": [], "r_first": [], "r_rewrite": [], "limit": [],
                    "r_limit": [], "reuse": [], "r_reuse": [], "r_reuse_none": [], "spare": []}
               for qd in cfg["write_n"]}
        for run in range(cfg["write_runs"]):
            for qd, n in cfg["write_n"].items():
                note(f"write throughput: run {run + 1}/{cfg['write_runs']} qd{qd}")
                chunks = rng.sample(range(nchunks), min(n, nchunks))

                def order():
                    return rng.sample(chunks, len(chunks))

                def with_snapshot():
                    per[qd]["spare"].append(min(1.0, node.spare_space()[1] / (len(chunks) * CHUNK)))
                    snap = node.snapshot("bench-write")
                    first = _timed_writes(node, order(), qd, pool)
                    assert len(node.diff(snap.id)["v0"]) == len(chunks)
                    rewrite = _timed_writes(node, order(), qd, pool)
                    node.delete_snapshot(snap.id)
                    return first, rewrite

                if run % 2 == 0:  # alternate the order so neither case always goes first
                    none = _timed_writes(node, order(), qd, pool)
                    first, rewrite = with_snapshot()
                else:
                    first, rewrite = with_snapshot()
                    none = _timed_writes(node, order(), qd, pool)
                limit = _timed_limit(node, order(), qd, pool, os.path.join(root, "write", "scratch"))
                reuse = _timed_limit(node, order(), qd, pool, os.path.join(root, "write", "scratch"), True)
                r = per[qd]
                r["limit"].append(limit)
                r["r_limit"].append(first / limit)
                r["reuse"].append(reuse)
                r["r_reuse_none"].append(reuse / none)
                r["r_reuse"].append(first / reuse)
                r["none"].append(none)
                r["first"].append(first)
                r["rewrite"].append(rewrite)
                r["r_first"].append(first / none)
                r["r_rewrite"].append(rewrite / none)
    finally:
        node.close()
        settle(root)
    for qd, r in per.items():
        name = f"storage.write64k.qd{qd}"
        res.add(f"{name}.no_snapshot", median(r["none"]), "MB/s", "{:.1f}")
        res.add(f"{name}.first_write", median(r["first"]), "MB/s", "{:.1f}")
        res.add(f"{name}.rewrite", median(r["rewrite"]), "MB/s", "{:.1f}")
        res.add(f"{name}.first_write_ratio", median(r["r_first"]), "x", "{:.3f}")
        res.add(f"{name}.rewrite_ratio", median(r["r_rewrite"]), "x", "{:.3f}")
        res.add(f"{name}.cow_floor", median(r["limit"]), "MB/s", "{:.1f}")
        res.add(f"{name}.first_write_to_floor", median(r["r_limit"]), "x", "{:.3f}")
        res.add(f"{name}.reuse_floor", median(r["reuse"]), "MB/s", "{:.1f}")
        res.add(f"{name}.reuse_floor_ratio", median(r["r_reuse_none"]), "x", "{:.3f}")
        res.add(f"{name}.first_write_to_reuse_floor", median(r["r_reuse"]), "x", "{:.3f}")
        res.add(f"{name}.spare_covered", median(r["spare"]), "x", "{:.2f}")


# -- 3. diff over large exception tables -------------------------------------------------
def _make_diff_node(path: str, size: int, frac: float, seed: int) -> tuple[int, int]:
    node = new_node(path, {"v0": size})
    try:
        snap = node.snapshot("bench-diff").id
        vid = node.volumes["v0"].id
        total = size // CHUNK
        chunks = sorted(random.Random(seed).sample(range(total), round(total * frac)))
        conn = node.meta._conn  # the metadata layer's SQLite connection
        with node.meta.transaction("bench-fill") as c:
            assert c is conn
            c.executemany("INSERT INTO exceptions (snap, vol, chunk, file, slot) VALUES (?, ?, ?, ?, NULL)",
                          ((snap, vid, ch, snap) for ch in chunks))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        node.close()
    return snap, len(chunks)


def _child(args: list[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_diff(path: str, snap: int) -> None:
    t0 = time.perf_counter_ns()
    node = Node.open(path)
    t1 = time.perf_counter_ns()
    changed = node.diff(snap)
    t2 = time.perf_counter_ns()
    n = sum(len(b) for b in changed.values())
    rss = common.peak_rss_bytes()
    node.close()
    print(json.dumps({"open_ns": t1 - t0, "diff_ns": t2 - t1, "chunks": n, "maxrss": rss}))


def child_baseline() -> None:
    # The same imports as child_diff (this module's), nothing else.
    print(json.dumps({"maxrss": common.peak_rss_bytes()}))


def bench_diff(cfg: dict, root: str, res: common.Results) -> None:
    """Group 3: Node.open (loads the tables) + diff() in a fresh process."""
    size = cfg["diff_vol"]
    made = []
    for i, frac in enumerate(cfg["diff_fracs"]):
        note(f"diff: filling an exception table with {frac:.0%} of {size // CHUNK} chunks")
        path = os.path.join(root, f"diff-{i}")
        t = time.perf_counter()
        snap, n = _make_diff_node(path, size, frac, seed=100 + i)
        note(f"diff: {n} rows inserted in {time.perf_counter() - t:.1f} s")
        made.append((frac, path, snap, n))
    per = {frac: {"open": [], "diff": [], "total": [], "mem": []} for frac, *_ in made}
    base = []
    for run in range(cfg["diff_runs"]):
        note(f"diff: run {run + 1}/{cfg['diff_runs']}")
        base.append(_child(["--child-baseline"])["maxrss"])
        for frac, path, snap, n in made:
            r = _child(["--child-diff", path, str(snap)])
            assert r["chunks"] == n, (r, n)
            p = per[frac]
            p["open"].append(r["open_ns"])
            p["diff"].append(r["diff_ns"])
            p["total"].append(r["open_ns"] + r["diff_ns"])
            p["mem"].append(r["maxrss"] - base[-1])
    res.add("storage.diff.baseline_rss", median(base) / MiB, "MiB", "{:.1f}")
    for frac, path, snap, n in made:
        p = per[frac]
        name = f"storage.diff.{size_label(size)}_{round(frac * 100)}pct"
        res.add(f"{name}.chunks", n, "", "{}")
        res.add(f"{name}.open", ms(median(p["open"])), "ms", "{:.1f}")
        res.add(f"{name}.diff", ms(median(p["diff"])), "ms", "{:.3f}")
        res.add(f"{name}.open_plus_diff", ms(median(p["total"])), "ms", "{:.1f}")
        res.add(f"{name}.peak_mem_above_baseline", median(p["mem"]) / MiB, "MiB", "{:.1f}")


# -- docs ----------------------------------------------------------------------------------
def _met(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def storage_section(cfg: dict, mode: str, res: common.Results, m: dict, pause_labels: dict,
                    elapsed: float) -> str:
    v = res.values
    L = []
    L.append(f"Measured {common.today()} by `bench/storage_bench.py` in {mode} mode "
             f"(`{' '.join(['bench/storage_bench.py'] + sys.argv[1:])}`), commit {common.git_rev()}, "
             f"{elapsed / 60:.1f} min, on {common.machine_oneline(m)}. "
             f"The page cache was never dropped (the script runs as any user); between groups the "
             f"script deletes the group's files and calls sync(), so no group pays for another's "
             f"writeback.")
    # 1
    writing = {k: n for k, n in pause_labels.items() if "_" not in k}
    small, large = list(writing)[0], list(writing)[-1]

    def vols(label: str) -> str:
        count, size = label.split("_")[0].split("x")
        return f"{count} volumes of {size[:-3]} {size[-3:]}"

    L += ["", "### Snapshot creation and write pause", ""]
    L.append(f"`node.snapshot()` of {vols(small)} and of {vols(large)} (sparse), "
             f"{cfg['pause_runs']} runs x {cfg['pause_snaps']} snapshots per size, the sizes interleaved "
             f"run by run, {cfg['pause_gap'] * 1000:.0f} ms apart, while a thread writes 64 KiB blocks "
             f"at random offsets of all volumes in batches of 8 (`write_many`, no FUA) as fast as it can. "
             f"Each new snapshot deletes the previous one, so the chain holds at most two. Every run starts with a sync(), so no run inherits another's dirty pages. The last two "
             f"columns are the {vols(large)} again with the writer limited to "
             f"{RATE_LIMITED // 10**6} MB/s, and with no writer: the floor. Percentiles are over all "
             f"snapshots of a column. *pause_ns* is what the engine records in `SnapshotInfo.pause_ns`; "
             f"*gate closed* is the time writers were really kept out, measured by wrapping the node's "
             f"write gate: draining the in-flight batch (*drain*), then the fdatasync of every volume "
             f"(*flush in pause* = pause_ns - drain), then the metadata commit (which pause_ns leaves "
             f"out). *call* is the whole `snapshot()` call (it also fdatasyncs every volume before "
             f"closing the gate). *writer latency* is one `write_many` of 8 as the writer saw it.")
    cols = list(pause_labels)
    L += ["", "| ms | " + " | ".join(c.replace("_idle", ", idle").replace("_", ", ").replace("MBps", " MB/s") for c in cols) + " |",
          "|---|" + "---:|" * len(cols)]
    rows = [("pause_ns p50", "pause_ns_p50"), ("pause_ns p99", "pause_ns_p99"), ("pause_ns max", "pause_ns_max"),
            ("gate closed p50", "gate_closed_p50"), ("gate closed p99", "gate_closed_p99"),
            ("gate closed max", "gate_closed_max"), ("of which drain p50", "drain_p50"),
            ("of which drain p99", "drain_p99"), ("of which flush in pause p50", "flush_in_pause_p50"),
            ("of which flush in pause p99", "flush_in_pause_p99"), ("snapshot() call p50", "call_p50"),
            ("snapshot() call p99", "call_p99"), ("snapshot() call max", "call_max"),
            ("delete_snapshot() p50", "delete_p50"), ("delete_snapshot() max", "delete_max"),
            ("writer latency p50", "writer_latency_p50"), ("writer latency max", "writer_latency_max"),
            ("writer throughput (MB/s)", "writer_throughput")]
    for title, key in rows:
        cells = []
        for c in cols:
            got = v.get(f"{pause_labels[c]}.{key}")
            cells.append("-" if got is None else f"{got[0]:.0f}" if key == "writer_throughput" else f"{got[0]:.2f}")
        L.append(f"| {title} | " + " | ".join(cells) + " |")
    ratio = f"storage.snapshot.ratio_{large}_to_{small}"
    worst = max(v[f"{n}.gate_closed_p99"][0] for n in writing.values())
    worst_rec = max(v[f"{n}.pause_ns_p99"][0] for n in writing.values())
    L += ["", f"- Growth with size ({large} / {small}, same run): gate closed p50 "
              f"{v[ratio + '.gate_closed_p50'][0]:.2f}x, p99 {v[ratio + '.gate_closed_p99'][0]:.2f}x; "
              f"pause_ns p99 {v[ratio + '.pause_ns_p99'][0]:.2f}x.",
          f"- Target p99 pause < {TARGET_PAUSE_P99_MS:g} ms under unlimited writes: {_met(worst < TARGET_PAUSE_P99_MS)} "
          f"by the time the gate is really closed (worst p99 {worst:.2f} ms); "
          f"{_met(worst_rec < TARGET_PAUSE_P99_MS)} by the recorded pause_ns (worst p99 {worst_rec:.2f} ms)."]
    for c, n in pause_labels.items():
        if c.endswith("MBps"):
            p99 = v[f"{n}.gate_closed_p99"][0]
            L.append(f"- With the writer limited to {RATE_LIMITED // 10**6} MB/s: gate closed p99 {p99:.2f} ms, "
                     f"target {_met(p99 < TARGET_PAUSE_P99_MS)}.")
        elif c.endswith("_idle"):
            p99 = v[f"{n}.gate_closed_p99"][0]
            L.append(f"- With no writer: gate closed p99 {p99:.2f} ms, target {_met(p99 < TARGET_PAUSE_P99_MS)}.")
    # 2
    L += ["", "### 64 KiB random writes: no snapshot, first writes after a snapshot, rewrites", ""]
    L.append(f"One {size_label(cfg['write_vol'], ' ')} volume, pre-filled with non-zero data by 64 KiB writes "
             f"(so a preserved original is real data that goes to a COW file, and every case overwrites "
             f"a file in the same state, last written with 64 KiB writes, fully in the page cache). "
             f"Each run picks one random set of distinct chunks per queue depth "
             f"({', '.join(f'{n} at QD {qd}' for qd, n in cfg['write_n'].items())}) and writes it three "
             f"times in fresh random orders: with no snapshot; right after a snapshot (every write is the "
             f"first to its chunk: read the original, write it to the COW file as a record whose header "
             f"carries the exception rows, fdatasync it, then overwrite; the sync and the overwrites run "
             f"on the node's pipeline thread while the next batch's originals are read; the rows reach "
             f"SQLite in bulk at the next snapshot or delete); and again (every chunk already preserved). "
             f"QD n is one "
             f"`write_many` of n writes (one group commit: the NBD server batches its queued requests), "
             f"QD 1 is `write`. No FUA; each case ends with "
             f"`node.flush()`, inside its timing, so every case ends durable. {cfg['write_runs']} runs; the "
             f"no-snapshot case goes first in even runs and last in odd ones. Ratios are medians of the "
             f"per-run ratios.")
    spare = v["storage.write64k.qd32.spare_covered"][0]
    L += ["", "A deleted snapshot's COW file is kept as a spare (up to 1/4 of the volumes' size, "
              "`Node.spare_limit_bytes`) and the next snapshot writes its originals over those already "
              "allocated blocks: each run's snapshot is deleted at its end, so from the second run on the "
              f"first writes reuse the previous run's file (median share of the COW space a spare covered at "
              f"QD 32: {spare:.0%}; the first run appends to a new file).",
          "", "Two floors, the same first writes done with raw syscalls and no blockmirror code: per batch, "
              "read the originals, write them to a scratch file, fdatasync it, overwrite (no metadata "
              "commit, no Python engine). *append floor*: the scratch file is new, so every fdatasync also "
              "allocates blocks (an ext4 journal commit). *reuse floor*: the scratch file was written in "
              "full beforehand (outside the timing), as a spare COW file is, so the fdatasync only writes "
              "data, and each MiB's writeback is started as soon as it is written (sync_file_range), as the "
              "node does, so the disk works while the next originals are read. The reuse floor is what a "
              "copy-on-write that keeps a chunk's original durable before its overwrite pays on this disk "
              "when it does each batch in series (the original's bytes are written to the disk once more, "
              "on top of the new data); blockmirror overlaps one batch's sync and overwrites with the next "
              "batch's reads, so it can beat it.",
          "", "| | no snapshot MB/s | first writes MB/s | rewrites MB/s | first / none | rewrite / none "
              "| append floor MB/s | reuse floor MB/s | reuse floor / none | first / reuse floor |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for qd in cfg["write_n"]:
        n = f"storage.write64k.qd{qd}"
        L.append(f"| QD {qd} | {v[n + '.no_snapshot'][0]:.0f} | {v[n + '.first_write'][0]:.0f} | "
                 f"{v[n + '.rewrite'][0]:.0f} | {v[n + '.first_write_ratio'][0]:.1%} | "
                 f"{v[n + '.rewrite_ratio'][0]:.1%} | {v[n + '.cow_floor'][0]:.0f} | "
                 f"{v[n + '.reuse_floor'][0]:.0f} | {v[n + '.reuse_floor_ratio'][0]:.1%} | "
                 f"{v[n + '.first_write_to_reuse_floor'][0]:.1%} |")
    q32 = "storage.write64k.qd32"
    fr, rr = v[q32 + ".first_write_ratio"][0], v[q32 + ".rewrite_ratio"][0]
    floor = v[q32 + ".reuse_floor_ratio"][0]
    L += ["", f"- Target first writes >= {TARGET_FIRST_RATIO:.0%} of no-snapshot (QD 32): "
              f"{_met(fr >= TARGET_FIRST_RATIO)} ({fr:.1%}); the reuse floor on this disk is {floor:.1%} "
              f"of no-snapshot, and blockmirror reaches {v[q32 + '.first_write_to_reuse_floor'][0]:.1%} "
              f"of it.",
          f"- Target rewrites >= {TARGET_REWRITE_RATIO:.0%} of no-snapshot (QD 32): "
          f"{_met(rr >= TARGET_REWRITE_RATIO)} ({rr:.1%})."]
    if 256 in cfg["write_n"]:
        q256 = "storage.write64k.qd256"
        L.append(f"- QD 256 (16 MiB per group commit): first writes "
                 f"{v[q256 + '.first_write_ratio'][0]:.1%} of no-snapshot, rewrites "
                 f"{v[q256 + '.rewrite_ratio'][0]:.1%}. Larger group commits help little: the cost of a "
                 f"first write grows with its bytes (read the original, copy it, sync it), not per batch; "
                 f"and a larger batch leaves less to overlap (one batch of 256 is one pipeline job).")
    if 1 in cfg["write_n"]:
        q1 = "storage.write64k.qd1"
        L.append(f"- QD 1, for honesty: a first write costs a sync of the COW file of its own, "
                 f"so first writes reach {v[q1 + '.first_write_ratio'][0]:.1%} of no-snapshot; "
                 f"rewrites {v[q1 + '.rewrite_ratio'][0]:.1%}.")
    # 3
    L += ["", "### diff() over large exception tables", ""]
    L.append(f"One {size_label(cfg['diff_vol'], ' ')} sparse volume at 64 KiB chunks "
             f"({cfg['diff_vol'] // CHUNK} chunks), one snapshot whose exception table was filled directly "
             f"through the metadata store's SQLite connection (uniformly random chunks, `slot` NULL, no "
             f"data written). Each measurement runs in a fresh subprocess: `Node.open` (which loads every "
             f"table into a roaring bitmap) then `node.diff(snap)`. Peak memory is that subprocess's "
             f"peak RSS (VmHWM) minus that of a subprocess that only imports the same modules "
             f"({v['storage.diff.baseline_rss'][0]:.1f} MiB). The database file was in the page cache. "
             f"{cfg['diff_runs']} runs.")
    L += ["", "| table size | rows | Node.open ms | diff() ms | open + diff ms | peak memory MiB |",
          "|---|---:|---:|---:|---:|---:|"]
    last = None
    for frac in cfg["diff_fracs"]:
        n = f"storage.diff.{size_label(cfg['diff_vol'])}_{round(frac * 100)}pct"
        L.append(f"| {frac:.0%} | {v[n + '.chunks'][0]} | {v[n + '.open'][0]:.0f} | {v[n + '.diff'][0]:.2f} | "
                 f"{v[n + '.open_plus_diff'][0]:.0f} | {v[n + '.peak_mem_above_baseline'][0]:.1f} |")
        last = n
    t, mem = v[last + ".open_plus_diff"][0] / 1000, v[last + ".peak_mem_above_baseline"][0]
    L += ["", f"- Target at {cfg['diff_fracs'][-1]:.0%}: < {TARGET_DIFF_S:g} s "
              f"{_met(t < TARGET_DIFF_S)} ({t:.2f} s), < {TARGET_DIFF_MIB:g} MiB {_met(mem < TARGET_DIFF_MIB)} "
              f"({mem:.1f} MiB)."]
    return "\n".join(L)


# -- main ------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (for the test suite)")
    g.add_argument("--full", action="store_true", help="more runs and snapshots (longer)")
    ap.add_argument("--dir", help="where to put temporary data (default: a new directory under /var/tmp)")
    ap.add_argument("--write-docs", action="store_true",
                    help="rewrite the Storage and Machine sections of docs/BENCHMARKS.md")
    ap.add_argument("--only", choices=["snapshot", "write", "diff"], action="append",
                    help="run only these groups (repeatable); --write-docs needs all")
    ap.add_argument("--child-diff", nargs=2, metavar=("DIR", "SNAP"), help=argparse.SUPPRESS)
    ap.add_argument("--child-baseline", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_diff:
        child_diff(args.child_diff[0], int(args.child_diff[1]))
        return 0
    if args.child_baseline:
        child_baseline()
        return 0
    if args.write_docs and args.only:
        ap.error("--write-docs needs every group: drop --only")
    mode = "smoke" if args.smoke else "full" if args.full else "quick"
    cfg = MODES[mode]
    groups = args.only or ["snapshot", "write", "diff"]

    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
        root = tempfile.mkdtemp(prefix="blockmirror-bench-", dir=args.dir)
    else:
        root = tempfile.mkdtemp(prefix="blockmirror-bench-", dir="/var/tmp")
    res = common.Results()
    started = time.perf_counter()
    try:
        m = common.machine(root)
        for key, value in m.items():
            res.add(f"machine.{key}", value)
        res.add("storage.mode", mode)
        pause_labels = {}
        if "snapshot" in groups:
            pause_labels = bench_snapshot_pause(cfg, root, res)
        if "write" in groups:
            bench_write_throughput(cfg, root, res)
        if "diff" in groups:
            bench_diff(cfg, root, res)
        elapsed = time.perf_counter() - started
        res.add("storage.elapsed", elapsed, "s", "{:.1f}")
        if args.write_docs:
            common.write_sections({
                "Machine": common.machine_markdown(m),
                "Storage": storage_section(cfg, mode, res, m, pause_labels, elapsed),
            })
            note(f"rewrote the Storage and Machine sections of {common.DOC_PATH}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
