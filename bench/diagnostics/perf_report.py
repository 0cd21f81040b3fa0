"""perf record of one resync, cut to the resync's time window: samples per
thread of both daemons and of the kernel threads, and for a daemon what
its threads and the kernel did for it (used by resync_threads.py --perf)."""

from __future__ import annotations

import collections
import os
import re
import subprocess

PERF = "/usr/bin/perf"


# What a sampled kernel stack was doing, outermost match first (frames from the root down).
OPS = [("tcp_recvmsg", "TCP receive"), ("tcp_sendmsg", "TCP send"), ("ext4_sync_file", "fdatasync/fsync"),
       ("file_write_and_wait_range", "fdatasync/fsync"), ("ksys_sync_file_range", "sync_file_range"),
       ("sync_file_range", "sync_file_range"), ("filemap_read", "read from page cache"),
       ("generic_perform_write", "write to page cache"), ("ext4_buffered_write_iter", "write to page cache"),
       ("futex", "futex (GIL, locks, conditions)"), ("ep_poll", "epoll"), ("do_epoll", "epoll"),
       ("fallocate", "fallocate/punch"), ("asm_exc_page_fault", "page fault (user code)"),
       ("handle_softirqs", "interrupt/softirq"), ("asm_sysvec", "interrupt/softirq"),
       ("asm_common_interrupt", "interrupt/softirq")]


def _leaf_kind(frames: list[tuple[str, str]]) -> str:
    leaf = frames[0][0]
    names = [f for f, _ in frames]
    if "asm_exc_page_fault" in names:
        return "page fault"
    if "copy" in leaf or "memcpy" in leaf or "memmove" in leaf:
        return "copy"
    if any(k in leaf for k in ("clear_page", "alloc_pages", "get_page_from_freelist", "rmqueue", "free_pages",
                               "folio_alloc", "free_unref")):
        return "page alloc/free"
    if any(any(k in f for k in ("mpage_", "ext4_bio_write", "ext4_do_writepages", "submit_bio", "blk_", "bio_"))
           for f in names):
        return "writeback/block"
    return "other"


def perf_categories(data: str, window: str, pid: int) -> tuple[collections.Counter, collections.Counter]:
    """Per sample of process `pid` in the window: (op, leaf kind) for kernel
    samples, ("user: DSO", "") for user ones."""
    proc = subprocess.run([PERF, "script", "-i", data, "-F", "tid,ip,sym,dso", "--time", window, "--pid", str(pid)],
                          capture_output=True, text=True)
    ops: collections.Counter = collections.Counter()
    kinds: collections.Counter = collections.Counter()
    for block in proc.stdout.split("\n\n"):
        frames = []
        for line in block.splitlines()[1:]:
            m = re.match(r"^\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)$", line)
            if m:
                frames.append((m.group(1), m.group(2)))
        if not frames:
            continue
        if frames[0][1] != "[kernel.kallsyms]":
            dso = os.path.basename(frames[0][1])
            for key, label in (("python3", "Python interpreter"), ("xxhash", "xxhash"), ("sqlite", "SQLite"),
                               ("libc.so", "libc (memcpy, malloc, ...)"), ("pyroaring", "pyroaring")):
                if key in dso:
                    dso = label
                    break
            ops[f"user: {dso}"] += 1
            continue
        op = None
        for name, _ in reversed(frames):  # from the root down
            for key, label in OPS:
                if key in name:
                    op = label
                    break
            if op:
                break
        if op is None:
            below = [n for n, _ in frames]
            op = "other kernel"
            if "do_syscall_64" in below:
                i = below.index("do_syscall_64")
                op = f"syscall {below[i - 1]}" if i > 0 else op
        op = f"kernel: {op}"
        ops[op] += 1
        kinds[(op, _leaf_kind(frames))] += 1
    return ops, kinds


def perf_report(data: str, t0: float, t1: float, pids: dict[str, int], top: int, primary_top: int) -> None:
    """Sample counts in the window. Every report is sorted by thread (`pid`
    sort key) first and summed up here: perf's --pid filter with a sort that
    merges threads (comm, dso, sym) judges a merged entry by whichever
    thread made it first, so it drops or keeps whole entries wrongly."""
    window = f"{t0:.6f},{t1:.6f}"

    def report(*args: str) -> list[tuple[int, int, str, str]]:
        """(samples, tid, comm, rest of the line)"""
        proc = subprocess.run([PERF, "report", "-i", data, "--no-children", "--stdio", "-g", "none", "-n",
                               "--time", window, *args], capture_output=True, text=True)
        rows = []
        for line in proc.stdout.splitlines():
            parts = line.split(None, 3)
            if len(parts) < 3 or line.lstrip().startswith("#") or not parts[0].endswith("%"):
                continue
            tid, _, comm = parts[2].partition(":")
            try:
                rows.append((int(parts[1]), int(tid), comm, parts[3].strip() if len(parts) > 3 else ""))
            except ValueError:
                pass
        return rows

    hz = 999
    by_thread = report("--sort", "pid")
    total = sum(n for n, *_ in by_thread)
    tids = {role: {tid for _, tid, _, _ in report("--pid", str(pid), "--sort", "pid")} for role, pid in pids.items()}
    role_of = {tid: role for role, ts in tids.items() for tid in ts}
    print(f"\nperf record -a -g -F {hz}, {data}: window {t1 - t0:.3f} s (the resync), "
          f"{total} samples on {os.cpu_count()} cores (samples / {hz} = CPU-s)")
    print("  by thread (python = MainThread, the event loop; swapper = idle):")
    for n, tid, comm, _ in by_thread[:16]:
        print(f"    {n / total:6.1%}  {n / hz:6.3f} CPU-s  {tid}:{comm:16} {role_of.get(tid, '')}")
    sym_rows = report("--sort", "pid,sym")
    dso_rows = report("--sort", "pid,dso")
    for role, n_top in (("secondary", top), ("primary", primary_top)):
        if not n_top:
            continue
        mine = tids[role]
        threads_n = collections.Counter()
        for n, tid, comm, _ in by_thread:
            if tid in mine:
                threads_n["MainThread" if tid == pids[role] else comm] += n
        rtotal = sum(threads_n.values())
        if not rtotal:
            print(f"  {role}: no samples")
            continue
        print(f"  {role} (pid {pids[role]}): {rtotal} samples = {rtotal / hz:.3f} CPU-s; by thread: "
              + ", ".join(f"{name} {n / rtotal:.0%}" for name, n in threads_n.most_common(6)))
        dsos = collections.Counter()
        for n, tid, _, rest in dso_rows:
            if tid in mine:
                dsos[rest] += n
        print("    by object: " + ", ".join(f"{name} {n / rtotal:.0%}" for name, n in dsos.most_common(6)))
        syms = collections.Counter()
        for n, tid, _, rest in sym_rows:
            if tid in mine:
                syms[rest] += n
        ops, kinds = perf_categories(data, window, pids[role])
        ototal = sum(ops.values()) or 1
        print("    by operation (outermost kernel frame; leaf kinds: copy / page fault / page alloc / writeback):")
        for op, n in ops.most_common(12):
            split = ", ".join(f"{kind} {m / n:.0%}" for (o, kind), m in
                              sorted(kinds.items(), key=lambda kv: -kv[1]) if o == op and m / n >= 0.05)
            print(f"      {n / ototal:6.1%}  {op}{'  (' + split + ')' if split else ''}")
        print(f"    top {n_top} symbols (--no-children --sort sym; % of the {role}'s samples; [k] kernel, [.] user):")
        for name, n in syms.most_common(n_top):
            print(f"      {n / rtotal:6.1%}  {name}")
