"""The Mirroring and How to reproduce sections of docs/BENCHMARKS.md,
rendered from the result lines of bench/run.py."""

from __future__ import annotations

import os

from common import GiB, MiB, size_label

CHUNK = 64 << 10


def _met(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def reproduce() -> str:
    return """```sh
make bench                                              # everything below, quick mode (~15 min), rewrites this file
.venv/bin/python bench/run.py --full                    # real sizes (6.4 GiB changed in 64 GiB), more runs (long)
.venv/bin/python bench/run.py --only 1 --only 6         # some benchmarks (numbers on stdout, docs untouched)
.venv/bin/python bench/run.py --only resume             # benchmark 9: a resync interrupted half-way and resumed
.venv/bin/python bench/run.py --only verify             # benchmark 10: blockmirror verify (plain, --rate, --repair)
.venv/bin/python bench/run.py --only checksum           # benchmark 11: --initial-sync checksum against full
.venv/bin/python bench/run.py --smoke                   # tiny sizes, seconds: the test suite runs this
.venv/bin/python bench/run.py --dir /mnt/x              # put the data on another filesystem
.venv/bin/python bench/storage_bench.py [--full]        # the storage layer alone (run.py runs it first)
.venv/bin/python bench/floors.py                        # the bare-syscall floors of benchmarks 3 and 4, tiny demo run
```

Diagnostics in `bench/diagnostics/`, run by hand and never by `make bench`
(the test suite runs each one's `--help`, and all but the py-spy one on
tiny sizes): `nbd_throughput.py` (nbdcopy into the standalone primary
against nbdkit's file plugin), `profile_daemons.py` (py-spy of both daemons
on a hot path), `cpu_per_byte.py` (CPU seconds per GiB of benchmark 4's
cases) and `resync_threads.py` (where a resync's CPU and wall time go, per
thread); see notebooks/PROFILES.md.

`make bench` runs `bench/run.py`: first `bench/storage_bench.py --write-docs`
(the Storage section), then the daemon benchmarks (the Mirroring section).
Each script prints one `name: value unit` line per measurement on stdout
(progress goes to stderr), and rewrites only its own sections of this file
and the Machine section; other sections are kept. Temporary data
goes to a directory under /var/tmp (sparse files: large volumes use no real
space) and is removed at the end, also on failure. The scripts never drop
the page cache, so each section says what was cached; between cases they
call sync(), so no case pays for another's writeback."""


def render(cfg, mode, res, m, elapsed, argv_text) -> str:
    import common
    v = res.values

    def g(name):
        return v[name][0]

    runs = cfg["runs"]
    L = [f"Measured {common.today()} by `{argv_text}` in {mode} mode, commit {common.git_rev()}, "
         f"{elapsed / 60:.1f} min, on {common.machine_oneline(m)}. Real `blockmirror primary` and "
         f"`blockmirror secondary` processes on 127.0.0.1 (async mode unless a line says otherwise; "
         f"`--link-timeout 1 --heartbeat-interval 0.2 --reconnect-max 0.2 --log-level warning`), 64 KiB "
         f"chunks, host I/O through NBD (python libnbd with {16} requests in flight, or nbdcopy). "
         f"Every figure is the median of {runs} runs unless its line says otherwise; ratios are medians of "
         f"per-run ratios of cases measured side by side in the same run, the order alternating run by run. "
         f"Absolute times are context only: the machine is shared and noisy. All data was in the page "
         f"cache (the machine has far more RAM than the data); the scripts sync() between cases."]
    L += ["", "**An outage** in benchmarks 1-3, 7 and 8 is the secondary stopped with SIGTERM (the primary "
              "sees the link close: EOF, the same link-failure path as a cut; it takes the link-down "
              "snapshot) and started again; the resync then runs over a direct loopback TCP connection, "
              "without the fault proxy in the data path (a Python proxy would add a copy per byte on a "
              "2-core machine). Benchmark 6 cuts the link with the fault proxy "
              "(`python -m blockmirror.faultproxy`, `cut` = RST on both sides, then `heal`)."]
    L += ["", "**Resync time** is the primary's `last_resync.seconds` from `blockmirror status --json`: from "
              "the link coming up (handshake done) to the commit of the final round (one round when no "
              "host write lands during it, as here). *wall* adds the secondary's process start to "
              "ready, the reconnect backoff (up to 0.2 s) and the handshake: from the secondary's `ready` "
              "line to the primary's status showing mirroring with nothing unacknowledged (polled every "
              "20 ms)."]

    # 1
    size = cfg["b1_vol"]
    sl = size_label(size)
    L += ["", "### 1. Resync vs rsync", ""]
    L.append(f"One {size_label(size, ' ')} volume pre-filled with non-zero data (every 64 KiB chunk distinct), "
             f"initially synced ({g('resync.initial_sync.seconds'):.1f} s). Each run: outage; "
             f"distinct random chunks rewritten with fresh random data through NBD; then, in alternating "
             f"order, blockmirror's resync and `rsync --inplace --no-whole-file --ignore-times --stats "
             f"PRIMARY_IMAGE rsync://127.0.0.1:PORT/bench/secondary.img` through an rsync daemon "
             f"(`rsync --daemon --no-detach --config=FILE --port=P`, module in the temp dir) onto a copy "
             f"of the secondary's image (same content as the secondary before the outage). `--ignore-times` "
             f"only stops rsync's size+mtime quick check from skipping the file. rsync reads both "
             f"{sl} files whole (block checksums on the receiver, rolling checksums on the sender); "
             f"blockmirror reads only the exception tables and the changed chunks.")
    L.append("")
    L.append("*Wire bytes* are what the primary's link transport handed to the kernel on the resync "
             "connection (`link.bytes_sent` in the primary's status: every frame with its 16-byte header, "
             "the handshake, heartbeats), not `last_resync.bytes` (data bytes only). rsync's figure is "
             "`Total bytes sent` of its --stats (client to daemon); the daemon's block checksums "
             "travel the other way (*received*).")
    L += ["", "| changed | changed bytes | resync s | resync wall s | rsync s | rsync / resync | "
              "rsync / resync wall | wire bytes | wire / changed | rsync sent | rsync received |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for frac in cfg["b1_fracs"]:
        n = f"resync.vs_rsync.{sl}_{round(frac * 100)}pct"
        L.append(f"| {frac:.0%} | {g(n + '.changed_bytes'):,} | {g(n + '.bm_seconds'):.3f} | "
                 f"{g(n + '.bm_wall_seconds'):.3f} | {g(n + '.rsync_seconds'):.2f} | {g(n + '.speedup'):.1f}x | "
                 f"{g(n + '.speedup_wall'):.1f}x | {g(n + '.bm_wire_bytes'):,.0f} | "
                 f"{1 + g(n + '.bm_wire_overhead'):.4f} | {g(n + '.rsync_sent_bytes'):,.0f} | "
                 f"{g(n + '.rsync_received_bytes'):,.0f} |")
    n1 = f"resync.vs_rsync.{sl}_1pct"
    sp = g(n1 + ".speedup")
    worst_wire = max(abs(g(f"resync.vs_rsync.{sl}_{round(f * 100)}pct.bm_wire_overhead")) for f in cfg["b1_fracs"])
    L += ["", f"- Target >= 10x faster than rsync at 1%: {_met(sp >= 10)} ({sp:.1f}x by resync time; "
              f"{g(n1 + '.speedup_wall'):.1f}x even counting the secondary's restart and reconnect).",
          f"- Target wire bytes within 5% of the changed chunks' bytes: {_met(worst_wire <= 0.05)} "
          f"(worst {worst_wire:+.2%}; framing is 16 B per frame of up to 1 MiB, plus the handshake and "
          f"heartbeats)."]

    # 2
    sizes = cfg["b2_sizes"]
    L += ["", "### 2. Resync time against volume size", ""]
    L.append(f"A {size_label(sizes[0], ' ')} and a {size_label(sizes[-1], ' ')} sparse volume (two pairs, "
             f"side by side in each run, order alternating), the same number of random chunks "
             f"({g('resync.size.changed_bytes') // CHUNK}, {g('resync.size.changed_bytes') / MiB:.0f} MiB) "
             f"rewritten during each outage. The originals are holes, so the copy-on-write of both "
             f"nodes stores no data (a NULL slot), unlike benchmark 1.")
    L += ["", "| volume | resync s | resync wall s |", "|---|---:|---:|"]
    for s in sizes:
        L.append(f"| {size_label(s, ' ')} | {g(f'resync.size.{size_label(s)}.seconds'):.3f} | "
                 f"{g(f'resync.size.{size_label(s)}.wall_seconds'):.3f} |")
    ratio = g(f"resync.size.ratio_{size_label(sizes[-1])}_to_{size_label(sizes[0])}")
    L += ["", f"- Target {size_label(sizes[-1])} within 20% of {size_label(sizes[0])}: "
              f"{_met(abs(ratio - 1) <= 0.20)} (ratio {ratio:.2f})."]

    # 3
    L += ["", "### 3. Resync throughput against a raw copy", ""]
    L.append("From the runs of benchmark 1: changed bytes / resync time, against a raw copy of the same "
             "chunks in the same run: `os.pread` from the primary's image and `os.pwrite` at the same offsets "
             "of the rsync copy (already equal, so allocated and cached like the secondary's image), "
             "in disk order, consecutive chunks joined up to 1 MiB, one fdatasync at the end; one thread, "
             "no network, no checksums, no copy-on-write. The resync additionally frames and checksums "
             "(xxh3) the data, sends it over TCP, preserves each overwritten chunk on the secondary (the "
             "round's safety snapshot: read the original, write it to a COW record, fdatasync) and commits the round.")
    L += ["", "*Atomic copy* keeps the target consistent at every instant, as the secondary must (a "
              "secondary one can fail over to during a resync; DRBD's SyncTarget is Inconsistent instead, "
              "unless a snapshot is taken before the resync): the same raw copy, but per group of 256 chunks "
              "the originals are read, written to a scratch file that was written in full beforehand (as a "
              "spare COW file is) and fdatasynced before the new data overwrites them; one thread, no network. "
              "*Bare resync* (`bench/floors.py`) adds what a resync between two nodes cannot avoid, still with "
              "bare system calls and no blockmirror code: the chunks are read by one process and sent over "
              "loopback TCP to a second process, which applies them as the atomic copy does, with the overlap "
              "blockmirror's first-write pipeline has (a worker thread syncs a group's originals and "
              "overwrites while the next group is received and its originals are read). "
              "*CPU* is utime+stime of each daemon from the secondary's readiness to convergence, per GiB "
              "changed; *CPU bound* = cores x changed bytes / (primary + secondary CPU-s): what the resync "
              "could reach if its CPU work were perfectly spread over this machine's cores.",
          "", "| changed | resync MB/s | raw copy MB/s | resync / raw | atomic copy / raw | bare resync MB/s "
              "| bare resync / raw | resync / bare resync | primary CPU-s/GiB | secondary CPU-s/GiB "
              "| CPU bound MB/s |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for frac in cfg["b1_fracs"]:
        n = f"resync.vs_raw.{sl}_{round(frac * 100)}pct"
        L.append(f"| {frac:.0%} of {sl} | {g(n + '.resync_mb_s'):.0f} | {g(n + '.raw_copy_mb_s'):.0f} | "
                 f"{g(n + '.ratio'):.1%} | {g(n + '.atomic_ratio'):.1%} | {g(n + '.floor_mb_s'):.0f} | "
                 f"{g(n + '.floor_ratio'):.1%} | {g(n + '.resync_to_floor'):.1%} | "
                 f"{g(n + '.primary_cpu_s_per_gib'):.2f} | "
                 f"{g(n + '.secondary_cpu_s_per_gib'):.2f} | {g(n + '.cpu_bound_mb_s'):.0f} |")
    worst = min(g(f"resync.vs_raw.{sl}_{round(f * 100)}pct.ratio") for f in cfg["b1_fracs"])
    big = f"resync.vs_raw.{sl}_{round(cfg['b1_fracs'][-1] * 100)}pct"
    floors = [g(f"resync.vs_raw.{sl}_{round(f * 100)}pct.floor_ratio") for f in cfg["b1_fracs"]]
    L += ["", f"- Target >= 50% of the raw copy: {_met(g(big + '.ratio') >= 0.5)} at {cfg['b1_fracs'][-1]:.0%} "
              f"({g(big + '.ratio'):.1%}); worst case {worst:.1%}.",
          f"- The measured limit: the bare resync, the same work done with bare system calls and the same "
          f"overlap, reaches {min(floors):.1%}-{max(floors):.1%} of the raw copy on this machine, "
          f"{'below' if max(floors) < 0.5 else 'not below'} the 50% target; the "
          f"resync reaches {g(big + '.resync_to_floor'):.1%} of it at {cfg['b1_fracs'][-1]:.0%}. What "
          f"the raw copy leaves out and a resync cannot: the copy-on-write of every overwritten chunk "
          f"(the atomic copy alone reaches {g(big + '.atomic_ratio'):.1%} of the raw copy), and the "
          f"transfer between two processes over TCP. The daemons used "
          f"{g(big + '.primary_cpu_s_per_gib') + g(big + '.secondary_cpu_s_per_gib'):.2f} "
          f"CPU-s per GiB together: spread perfectly over this machine's {os.cpu_count()} cores that "
          f"allows {g(big + '.cpu_bound_mb_s'):.0f} MB/s, "
          f"{g(big + '.cpu_bound_mb_s') / g(big + '.raw_copy_mb_s'):.0%} of the raw copy. Most of that CPU "
          f"is the kernel's: receiving, the page-cache copies of the originals and of the new data, and "
          f"writeback (`bench/diagnostics/resync_threads.py` splits it per thread; notebooks/PROFILES.md)."]

    # 4
    L += ["", "### 4. Mirrored write throughput through NBD (nbdcopy)", ""]
    L.append(f"`nbdcopy --flush SOURCE nbd://...` of a {size_label(cfg['b4_size'], ' ')} random file (cached) "
             f"onto a {size_label(cfg['b4_size'], ' ')} volume, nbdcopy's defaults (multi-conn where offered). "
             f"*async* and *sync*: a mirroring pair in that mode (the secondary caught up before the next "
             f"case; not timed). *local only*: the same `blockmirror primary` daemon with `--peer` "
             f"pointing at a port where nothing listens (its node never synced: no snapshot, writes are "
             f"local only, through the same engine and daemon code). *standalone*: `blockmirror primary` "
             f"with no `--peer` (the NBD server on the storage layer, no engine). *nbdkit*: "
             f"`nbdkit file` on a file of the same size. Each target was written once before the runs, "
             f"so every run overwrites allocated data.")
    L += ["", "*Bare local* and *bare mirror* (`bench/floors.py`) are the same data movement with bare "
              "system calls and no blockmirror code, no NBD and no client: the source file written over a "
              "file in 256 KiB requests (nbdcopy's request size), then fdatasync; and the same writes each "
              "also sent over loopback TCP to a second process that does what keeps a live mirror "
              "consistent at every instant (every batch received appended to a journal and fdatasynced, "
              "acknowledged, then written to its volume; writeback started every 16 MiB on both sides, the "
              "journal checkpointed every 64 MiB; the sender at most a 32 MiB window ahead of the "
              "acknowledgements: the engine's defaults), timed until the sender's fdatasync after its last "
              "send, as nbdcopy is. On one machine the three files share one disk."]
    cases = [("async", "async (mirroring)"), ("sync", "sync (mirroring)"), ("local", "local only (no peer)"),
             ("standalone", "standalone (no --peer)"), ("nbdkit", "nbdkit file"),
             ("floor_mirror", "bare mirror (no NBD)"), ("floor_local", "bare local (no NBD)")]
    L += ["", "| target | MB/s | / local only |", "|---|---:|---:|"]
    for c, title in cases:
        rel = "100%" if c == "local" else "-" if c == "floor_local" else f"{g(f'nbd.write.{c}_to_local'):.1%}"
        L.append(f"| {title} | {g(f'nbd.write.{c}_mb_s'):.0f} | {rel} |")
    a, s_ = g("nbd.write.async_to_local"), g("nbd.write.sync_to_local")
    L += ["", "CPU per GiB copied (utime+stime, from the copy's start until the secondary caught up; "
              "nbdcopy's from its rusage), and what it allows: *CPU bound* = cores x bytes / total CPU-s, "
              "the speed if that work were spread perfectly over this machine's "
              f"{os.cpu_count()} cores (nbdcopy runs on them too).",
          "", "| case | primary | secondary | nbdcopy | total CPU-s/GiB | CPU bound MB/s | bound / local only "
              "(measured) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for c in ("async", "sync", "local"):
        n = f"nbd.cpu.{c}"
        rel = "-" if c == "local" else f"{g(n + '.bound_to_local'):.0%}"
        sec = "-" if c == "local" else f"{g(n + '.secondary_s_per_gib'):.2f}"
        L.append(f"| {c} | {g(n + '.primary_s_per_gib'):.2f} | {sec} | {g(n + '.nbdcopy_s_per_gib'):.2f} | "
                 f"{g(n + '.total_s_per_gib'):.2f} | {g(n + '.bound_mb_s'):.0f} | {rel} |")
    ab = g("nbd.cpu.async.bound_to_local")
    L += ["", f"- Target async >= 70% of local only: {_met(a >= 0.70)} ({a:.1%}). The measured limit: "
              f"mirroring a byte costs {g('nbd.cpu.async.total_s_per_gib'):.2f} CPU-s/GiB against "
              f"{g('nbd.cpu.local.total_s_per_gib'):.2f} for local only (sending it over TCP, which on "
              f"loopback also costs the receive side's protocol work; receiving it; the secondary's journal "
              f"write and its apply to the volume, the prefix property of docs/ARCHITECTURE.md), so even "
              f"perfectly spread over {os.cpu_count()} cores async could reach {ab:.0%} of local only "
              f"here; it reaches {a / ab:.0%} of that bound. The bare mirror, with no NBD, no client and no "
              f"checks, reaches {g('nbd.write.floor_mirror_mb_s'):.0f} MB/s "
              f"({g('nbd.write.floor_mirror_to_local'):.0%} of local only, "
              f"{'below' if g('nbd.write.floor_mirror_to_local') < 0.70 else 'not below'} the 70% target; "
              f"{g('nbd.write.floor_mirror_to_floor_local'):.0%} of the bare local writes: a mirrored byte is "
              f"written three times on this one disk and crosses TCP); async reaches "
              f"{g('nbd.write.async_to_floor_mirror'):.0%} of it while also serving nbdcopy, which alone "
              f"needs {g('nbd.cpu.async.nbdcopy_s_per_gib'):.2f} CPU-s/GiB of the same {os.cpu_count()} cores.",
          f"- Target sync >= 50% of local only: {_met(s_ >= 0.50)} ({s_:.1%})."]

    # 5
    L += ["", "### 5. Sync-mode write latency (4 KiB FUA, one in flight)", ""]
    L.append(f"python libnbd, {cfg['b5_writes']} writes of 4 KiB with FUA per case and run, one in flight, "
             f"at random 4 KiB offsets of the volumes of benchmark 4; percentiles per run, then the median "
             f"over {runs} runs. A sync-mode FUA write completes after the primary's local write + "
             f"fdatasync, the secondary's journal fdatasync and the Ack.")
    L += ["", "| | p50 us | p99 us | max us |", "|---|---:|---:|---:|"]
    for c, title in (("sync", "sync (mirroring)"), ("async", "async (mirroring)"), ("local", "local only")):
        L.append(f"| {title} | {g(f'nbd.fua4k.{c}.p50_us'):.0f} | {g(f'nbd.fua4k.{c}.p99_us'):.0f} | "
                 f"{g(f'nbd.fua4k.{c}.max_us'):.0f} |")
    L += ["", f"- sync / local only: p50 {g('nbd.fua4k.sync_to_local_p50'):.2f}x, "
              f"p99 {g('nbd.fua4k.sync_to_local_p99'):.2f}x (no target set; context: one loopback round "
              f"trip ~65 us and one fdatasync ~80 us in /work/shared/DESIGN.md)."]

    # 6
    sets = cfg["b6_sets"]
    L += ["", "### 6. Write pause at link failure", ""]
    L.append(f"Two pairs, {' and '.join(f'{n} volumes of {size_label(s_, chr(32))}' for n, s_ in sets)} "
             f"(sparse), each through a fault proxy process. In each run and for each pair (order alternating), "
             f"a host thread writes 64 KiB blocks at random offsets of all volumes as fast as it can (one "
             f"libnbd connection per volume, one write in flight), and the link is cut {cfg['b6_cuts']} "
             f"times: `cut` (RST both ways), wait for the primary's status to show the failure, `heal`, "
             f"wait for mirroring. {runs} runs, so {runs * cfg['b6_cuts']} cuts per size; percentiles "
             f"over all cuts (with so few samples p99 is close to the max). *write pause* is the "
             f"primary's `write_pause_ms` right after each failure (the engine's `SnapshotInfo.pause_ns` "
             f"of the link-down snapshot: the write gate closed, in-flight writes drained, the snapshot "
             f"and the resync-base record committed). *host max latency* is the slowest host write that "
             f"completed between the cut and the status showing it (what a host saw across the cut).")
    L += ["", "| ms | " + " | ".join(f"{n}x{size_label(s_)}" for n, s_ in sets) + " |",
          "|---|" + "---:|" * len(sets)]
    for key, title in (("write_pause_p50", "write pause p50"), ("write_pause_p99", "write pause p99"),
                       ("write_pause_max", "write pause max"), ("host_max_latency_p50", "host max latency p50"),
                       ("host_max_latency_p99", "host max latency p99")):
        L.append(f"| {title} | " + " | ".join(f"{g(f'pause.{n}x{size_label(s_)}.{key}'):.2f}" for n, s_ in sets)
                 + " |")
    L.append("| host writes/s during the runs | " + " | ".join(
        f"{g(f'pause.{n}x{size_label(s_)}.host_writes_per_s'):.0f}" for n, s_ in sets) + " |")
    worst = max(g(f"pause.{n}x{size_label(s_)}.write_pause_p99") for n, s_ in sets)
    (n0, s0), (n1, s1) = sets[0], sets[-1]
    growth = g(f"pause.ratio_{n1}x{size_label(s1)}_to_{n0}x{size_label(s0)}_p99")
    big_s, small_s = f"{n1}x{size_label(s1)}", f"{n0}x{size_label(s0)}"
    p50_growth = g(f"pause.{big_s}.write_pause_p50") / g(f"pause.{small_s}.write_pause_p50")
    cuts = g(f"pause.{small_s}.cuts")
    # With tens of cuts, p99 is the slowest cut or close to it: one outlier.
    # The typical pause (p50) says whether the pause grows with the volumes' size.
    L += ["", f"- Target p99 < 5 ms: {_met(worst < 5.0)} (worst p99 {worst:.2f} ms).",
          f"- Flat in size: p50 {big_s} / {small_s} = {p50_growth:.2f}x "
          f"({'flat' if p50_growth < 1.2 else 'grows with size'}); p99 {growth:.2f}x, but with "
          f"{cuts:.0f} cuts per size p99 is about the single slowest cut."]

    # 7
    k = cfg["b7_chunks"]
    L += ["", "### 7. Writes during an outage against mirroring", ""]
    L.append(f"One {size_label(cfg['b7_vol'], ' ')} volume pre-filled with non-zero data. Each run picks "
             f"{k} distinct random chunks ({k * CHUNK / MiB:.0f} MiB) and writes them with 64 KiB writes "
             f"(python libnbd, 16 in flight, then FLUSH, inside the timing), in a fresh random order each "
             f"time: while mirroring (async); during an outage right after the link-down snapshot (every "
             f"write is the first to its chunk: copy-on-write of real data); and again in the same outage "
             f"(rewrites: the chunk is already preserved). The mirroring case runs before the outage in "
             f"even runs and after the resync in odd ones.")
    L += ["", "| | MB/s | / mirroring |", "|---|---:|---:|",
          f"| mirroring (async) | {g('outage.write64k.mirroring_mb_s'):.0f} | 100% |",
          f"| outage, first writes | {g('outage.write64k.first_mb_s'):.0f} | "
          f"{g('outage.write64k.first_to_mirroring'):.1%} |",
          f"| outage, rewrites | {g('outage.write64k.rewrite_mb_s'):.0f} | "
          f"{g('outage.write64k.rewrite_to_mirroring'):.1%} |"]
    L += ["", "- No target set by the issue; the storage layer's own figures (first writes vs no snapshot) "
              "are in the Storage section."]

    # 8
    size8, ch8 = cfg["b8_vol"], cfg["b8_changed"]
    n8 = f"memory.{size_label(size8)}_{round(ch8 / MiB)}MiB"
    L += ["", "### 8. Peak memory of the daemons", ""]
    scaled = "" if ch8 >= size8 // 10 - CHUNK else (
        f" Quick mode changes {ch8 / GiB:.2f} GiB (10% of 4 GiB), not 10% of the volume (6.4 GiB): "
        f"`--full` runs the real size.")
    L.append(f"Fresh daemons per run ({cfg['b8_runs']} runs), one {size_label(size8, ' ')} sparse volume, "
             f"initial sync, then an outage during which {ch8 // CHUNK} random chunks "
             f"({ch8 / GiB:.2f} GiB) are rewritten through NBD, then the resync. VmHWM (peak RSS) from "
             f"/proc/PID/status: the primary's over its whole life, the restarted secondary's over the "
             f"resync.{scaled}")
    L += ["", "| MiB | primary | secondary |", "|---|---:|---:|",
          f"| VmHWM after the initial sync | {g(n8 + '.primary_before_outage_mib'):.1f} | "
          f"{g(n8 + '.secondary_before_outage_mib'):.1f} |",
          f"| VmHWM after the outage and the resync | {g(n8 + '.primary_peak_mib'):.1f} | "
          f"{g(n8 + '.secondary_peak_mib'):.1f} |",
          f"| VmRSS at the end | {g(n8 + '.primary_rss_after_mib'):.1f} | "
          f"{g(n8 + '.secondary_rss_after_mib'):.1f} |"]
    L += ["", f"- Resync of the {ch8 / GiB:.2f} GiB: {g(n8 + '.resync_seconds'):.2f} s (median)."]

    # 9
    rate9 = cfg["b9_rate"]
    ch9 = cfg["b9_changed"]
    L += ["", "### 9. Resync resumed after an interruption", ""]
    L.append(f"One pair through a fault proxy process (`python -m blockmirror.faultproxy`) whose link is "
             f"limited to {size_label(rate9, ' ')}/s each way, two volumes of {size_label(ch9 * 3 // 2, ' ')} "
             f"and {size_label(ch9 // 2, ' ')} pre-filled with non-zero data. Each run picks half of each "
             f"volume's 64 KiB chunks at random ({size_label(ch9, ' ')} in all); for each case (the order "
             f"rotating run by run) an outage (`cut`) during which those chunks get fresh random data "
             f"through NBD, then `heal`: the resync runs at the limited rate, and is left alone "
             f"(*uninterrupted*) or, once the secondary's `resync_progress` shows half of the "
             f"round received, interrupted: the link cut (RST both ways), the secondary killed (SIGKILL) or "
             f"the primary killed (SIGKILL); the link is held down until the surviving daemons show "
             f"`disconnected`, then the killed daemon is started again and the link healed at the same rate "
             f"(blockmirror.testing.interrupt, shared with tests/daemons/test_daemon_resume.py). "
             f"{cfg['b9_runs']} runs.")
    L += ["", "*Data bytes* are the resync data bytes the secondary received in both attempts "
              "(`totals.resync_bytes` per process: a restarted secondary counts from zero, a killed one's "
              "count is its last status before the kill). The primary's own count is not used: it includes "
              "what was handed to its socket but still sat in its send buffer (up to 8 MiB), the kernel's "
              "or the proxy's when the round was cut, and never crossed the link. *Wire bytes* are every byte "
              "the proxy read from either side (data, frame headers, acks, heartbeats, and what it still "
              "held when the link was cut). *s to converge* is the time the link was in use: from `heal` to "
              "the interruption, plus from the resume (restarting a killed daemon included) to the primary "
              "mirroring with nothing unacknowledged; not the time the link was held down in between."]
    L += ["", "| case | interrupted at | changed bytes | data bytes | data / changed | wire / changed | "
              "s to converge | / uninterrupted |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for case, title in (("uninterrupted", "uninterrupted"), ("cut", "link cut"),
                        ("kill9_secondary", "kill -9 of the secondary"), ("kill9_primary", "kill -9 of the primary")):
        n = f"resume.{case}"
        at = "-" if case == "uninterrupted" else f"{g(n + '.interrupted_at'):.0f}%"
        rel = "1.00x" if case == "uninterrupted" else f"{g(n + '.seconds_to_uninterrupted'):.2f}x"
        L.append(f"| {title} | {at} | {g(n + '.changed_bytes'):,.0f} | {g(n + '.data_bytes'):,.0f} | "
                 f"{g(n + '.data_ratio'):.3f}x | {g(n + '.wire_ratio'):.3f}x | {g(n + '.seconds'):.2f} | {rel} |")
    worst9 = g("resume.worst_data_ratio")
    at9 = g("resume.cut.interrupted_at") / 100
    L += ["", f"- Target: an interrupted round resumes from what the secondary made durable, so the resync "
              f"sends <= 1.1x the changed bytes across both attempts: {_met(worst9 <= 1.1)} (worst "
              f"{worst9:.3f}x; a round started over costs about 1 + {at9:.2f} = {1 + at9:.2f}x)."]

    # 10
    size10, k10 = cfg["b10_vol"], cfg["b10_damaged"]
    n10 = f"verify.{size_label(size10)}"
    L += ["", "### 10. Online verify", ""]
    L.append(f"`blockmirror verify PRIMARY_DIR --json` of one {size_label(size10, ' ')} volume pre-filled with "
             f"non-zero data and identical on both nodes, both image files evicted from the page cache before "
             f"each verify (posix_fadvise DONTNEED; this VM's disk reads vary with its host's cache, so MB/s are "
             f"context), {cfg['b10_runs']} runs of three verifies: unlimited, with `--rate` at half the unlimited "
             f"speed, and with `--repair` after {k10} random chunks were damaged in the stopped secondary's image "
             f"file (seconds: `last_verify.seconds`; link bytes: the fault proxy's `bytes_forwarded`, both ways; "
             f"reads: each daemon's /proc/PID/io `read_bytes`).")
    rd = {r: g(f"{n10}.{r}_read_bytes") for r in ("primary", "secondary")}
    L += ["", "| | |", "|---|---:|",
          f"| seconds (unlimited) | {g(n10 + '.seconds'):.2f} |",
          f"| MB/s compared | {g(n10 + '.mb_s'):.0f} |",
          f"| bytes on the link | {g(n10 + '.link_bytes'):,.0f} ({g(n10 + '.link_ratio'):.4%} of the volume, "
          f"{g(n10 + '.link_to_digests'):.2f}x the 16-byte digests) |",
          f"| bytes read from the disk: primary / secondary | {rd['primary']:,.0f} / {rd['secondary']:,.0f} "
          f"({g(n10 + '.primary_read_ratio'):.2f}x / {g(n10 + '.secondary_read_ratio'):.2f}x the volume) |",
          f"| `--rate` limit / achieved MB/s | {g(n10 + '.rated.limit_mb_s'):.0f} / {g(n10 + '.rated.mb_s'):.0f} "
          f"({g(n10 + '.rated.to_limit'):.3f}x) |",
          f"| `--repair`: damaged / found / repaired chunks | {k10} / "
          f"{g(n10 + '.repair.out_of_sync_chunks'):.0f} / {g(n10 + '.repair.repaired_chunks'):.0f} |",
          f"| `--repair`: resync bytes received / damaged chunks' bytes | {g(n10 + '.repair.resync_bytes'):,.0f} / "
          f"{k10 * CHUNK:,} ({g(n10 + '.repair.resync_to_damaged'):.3f}x) |"]
    link10, to_limit = g(n10 + ".link_ratio"), g(n10 + ".rated.to_limit")
    exact = (g(n10 + ".repair.repaired_chunks") == k10 and g(n10 + ".repair.resync_to_damaged") == 1)
    L += ["", f"- Target: a verify of an identical volume moves < 1% of its bytes over the link: "
              f"{_met(link10 < 0.01)} ({link10:.4%}); `--rate` holds the limit "
              f"({_met(to_limit <= 1.05)}: {to_limit:.3f}x) and `--repair` sends exactly the damaged chunks "
              f"({_met(exact)})."]

    # 11
    size11, frac11 = cfg["b11_vol"], cfg["b11_frac"]
    n11 = f"checksum.{size_label(size11)}_{round(frac11 * 100)}pct"
    k11 = g(n11 + ".changed_chunks")
    L += ["", "### 11. Checksum initial sync of a pre-seeded secondary", ""]
    L.append(f"A {size_label(size11, ' ')} volume pre-filled with non-zero data on the primary, its image "
             f"copied to the secondary before the secondary first runs, then {k11} random chunks ({frac11:.0%}) "
             f"given fresh data on the primary: the first sync with `--initial-sync checksum` against "
             f"`--initial-sync full`, each on a fresh pair with the same data (images evicted from the page "
             f"cache, a fault proxy process in the path, the order alternating), {cfg['b11_runs']} runs (data "
             f"bytes: the secondary's `totals.resync_bytes`; wire bytes: the proxy's `bytes_forwarded`, both "
             f"ways; resync s: the primary's `last_resync.seconds`; wall s: from letting the link through to "
             f"convergence, and to the end of the digest comparison, polled every 20 ms).")
    L += ["", "| | checksum | full |", "|---|---:|---:|",
          f"| data bytes | {g(n11 + '.checksum.data_bytes'):,.0f} | {g(n11 + '.full.data_bytes'):,.0f} |",
          f"| wire bytes | {g(n11 + '.checksum.wire_bytes'):,.0f} | {g(n11 + '.full.wire_bytes'):,.0f} |",
          f"| resync s | {g(n11 + '.checksum.seconds'):.2f} | {g(n11 + '.full.seconds'):.2f} |",
          f"| wall s (comparing) | {g(n11 + '.checksum.wall_seconds'):.2f} "
          f"({g(n11 + '.checksum.compare_seconds'):.2f}) | {g(n11 + '.full.wall_seconds'):.2f} |"]
    dr, wr = g(n11 + ".checksum.data_ratio"), g(n11 + ".checksum.wire_ratio")
    L += ["", f"- Target: data bytes <= 1.05x the changed chunks' bytes ({g(n11 + '.changed_bytes'):,}): "
              f"{_met(dr <= 1.05)} ({dr:.3f}x); wire bytes <= 1.05x those plus the 16-byte digests "
              f"({g(n11 + '.digest_bytes'):,}): {_met(wr <= 1.05)} ({wr:.3f}x); the full sync moves "
              f"{g(n11 + '.full_to_checksum_wire'):.0f}x the wire bytes and takes "
              f"{g(n11 + '.full_to_checksum_seconds'):.2f}x the wall time (the comparison reads both images at "
              f"{g(n11 + '.checksum.compare_mb_s'):.0f} MB/s: on a link slower than that the checksum sync is "
              f"also the faster one; on loopback it need not be)."]

    # timing
    L += ["", "### Time taken", "", "| benchmark | s |", "|---|---:|"]
    for key, title in (("storage", "storage_bench.py"), ("b1", "1 + 3"), ("b2", "2"), ("b4", "4 + 5"),
                       ("b6", "6"), ("b7", "7"), ("b8", "8"), ("b9", "9"), ("b10", "10"), ("b11", "11")):
        name = f"bench.{key}_elapsed"
        if name in v:
            L.append(f"| {title} | {g(name):.0f} |")
    L.append(f"| total | {elapsed:.0f} |")
    return "\n".join(L)
