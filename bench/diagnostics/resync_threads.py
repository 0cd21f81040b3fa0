#!/usr/bin/env python3
"""Where the CPU and the wall time of an incremental resync go, per process
and per thread (not a benchmark of `make bench`; a diagnostic).

    .venv/bin/python bench/diagnostics/resync_threads.py [--size-gib 2] [--frac 0.10] [--runs 3]
                                                         [--sample-hz 0] [--perf DIR [--perf-primary N]] [--dir DIR]

Sets up a pair as benchmark 3 of bench/run.py does (prefilled volume,
initial sync), then per run: an outage, `frac` of the chunks rewritten on the
primary, restore, convergence. It reads /proc/PID/task/*/{stat,schedstat}
of both daemons right before the restore (the secondary: right after it is
ready again, as run.py's `resync()` does) and right after convergence, and
prints per thread: user and system CPU-s per GiB changed (clock ticks), on-CPU
seconds (schedstat, ns) as a share of the resync's seconds (is one thread
saturated?), run-queue wait (runnable but not on a core) and the times it was
put on a core. Also the machine's CPU split (/proc/stat: user, sys, iowait,
idle, in cores) over that window and over the resync itself (the primary's
`last_resync` seconds, ending at convergence; /proc/stat read every 10 ms).
Medians over runs.

Thread names: Python 3.11 does not give its threads kernel names, so the
daemons are started with a `sitecustomize` (in a temporary directory put on
PYTHONPATH) that writes each Python thread's name, shortened to 15 bytes, to
/proc/self/task/TID/comm when it starts ("secondary-engine_0" -> "sec-engine_0";
the main thread, the asyncio event loop, keeps its process name and is shown
as MainThread). The same names show up in `perf report --sort comm`.

--sample-hz N: also sample every thread's state N times a second during each
resync (R = on a core or runnable; otherwise the system call it sleeps in,
from /proc/PID/task/TID/syscall): where the off-CPU time goes (fdatasync,
epoll, futex). A futex word that several threads of a process wait on is
taken to be the GIL; a thread's other futex waits are its own queue,
condition or lock. The sampler runs in this process and costs some CPU on the
same cores (so its runs' throughput is a bit lower).

--perf DIR: after the measured runs, one more resync under
`perf record -a -g --clockid CLOCK_MONOTONIC` (system-wide, started before the
restore: `perf record -p PID` cannot be attached before the restarted
secondary exists and does not follow threads created after it attached, such
as cow-apply, which starts at the first round). The report is cut to the
resync (`--time`): samples per thread of both daemons and of the kernel
threads (writeback, block I/O); then for the secondary (and with
--perf-primary N the primary): threads, objects, what the kernel was doing
(outermost matching frame of each call chain: TCP receive, write to or read
from the page cache, fdatasync, ...; and the leaf: copy, page fault, page
allocation, writeback) and the top symbols of `perf report --no-children
--sort sym`, in percent of the process's samples. perf.data is kept in DIR.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from blockmirror.testing import procstat
from blockmirror.testing.host import aio_write
from blockmirror.testing.nodes import CHUNK
from blockmirror.testing.pair import Pair
from blockmirror.testing.procstat import TICK_S

from perf_report import PERF, perf_report

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # bench/

import setups  # noqa: E402
from common import GiB, median, note  # noqa: E402
from workload import QD, fresh_writes, prefill_volume, settle  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")

# Installed in the daemons through PYTHONPATH: kernel thread names from Python's.
SITECUSTOMIZE = '''\
import threading

_orig_bootstrap_inner = threading.Thread._bootstrap_inner


def _short(name):
    for long, short in (("secondary", "sec"), ("primary", "pri"), ("ThreadPoolExecutor", "TPE")):
        name = name.replace(long, short)
    return name[:15]


def _bootstrap_inner(self):
    try:
        with open("/proc/self/task/%d/comm" % threading.get_native_id(), "w") as f:
            f.write(_short(self.name))
    except OSError:
        pass
    _orig_bootstrap_inner(self)


threading.Thread._bootstrap_inner = _bootstrap_inner

try:  # what Debian's own sitecustomize does (this one shadows it)
    import apport_python_hook
except ImportError:
    pass
else:
    apport_python_hook.install()
'''

# x86_64 system call numbers of the calls a daemon thread sleeps in
SYSCALLS = {0: "read", 1: "write", 7: "poll", 17: "pread64", 18: "pwrite64", 19: "readv", 20: "writev",
            23: "select", 44: "sendto", 45: "recvfrom", 46: "sendmsg", 47: "recvmsg", 74: "fsync",
            75: "fdatasync", 202: "futex", 230: "clock_nanosleep", 232: "epoll_wait", 277: "sync_file_range",
            281: "epoll_pwait", 295: "preadv", 296: "pwritev", 327: "preadv2", 328: "pwritev2", 35: "nanosleep"}


# -- /proc ------------------------------------------------------------------------------------
def thread_name(pid: int, tid: int) -> str | None:
    return "MainThread" if tid == pid else procstat.thread_comm(pid, tid)


def threads(pid: int) -> dict:
    """tid -> dict(name, user, sys [CPU-s from ticks], run, wait [s from schedstat]);
    plus key 0: the whole process (every thread, dead ones included)."""
    out = {}
    for tid in procstat.thread_ids(pid):
        f = procstat.stat_fields(pid, tid)
        sched = procstat.schedstat(pid, tid)
        name = thread_name(pid, tid)
        if f is None or sched is None or name is None:
            continue  # exited meanwhile
        run_s, wait_s, slices = sched
        out[tid] = {"name": name, "user": int(f[11]) * TICK_S, "sys": int(f[12]) * TICK_S,
                    "run": run_s, "wait": wait_s, "slices": slices, "minflt": int(f[7])}
    f = procstat.stat_fields(pid)
    out[0] = {"name": "(process)", "user": int(f[11]) * TICK_S, "sys": int(f[12]) * TICK_S, "run": 0.0,
              "wait": 0.0, "slices": 0, "minflt": int(f[7])}
    return out


def machine_cpu() -> dict:
    """Seconds of all cores so far: busy (user+nice+system+irq+softirq+steal), idle, iowait."""
    with open("/proc/stat") as f:
        v = [int(x) * TICK_S for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = v
    return {"user": user + nice, "sys": system + irq + softirq, "steal": steal, "idle": idle, "iowait": iowait}


ZERO = {"user": 0.0, "sys": 0.0, "run": 0.0, "wait": 0.0, "slices": 0, "minflt": 0}


def delta(before: dict, after: dict, proc: str) -> dict:
    """(proc, thread name) -> CPU used between the samples; threads with one
    name (none here, but a pool could) are added up; '(other)' is the
    process's CPU not in any live thread (threads that exited)."""
    out: dict = collections.defaultdict(lambda: dict(ZERO))
    for tid, a in after.items():
        if tid == 0:
            continue
        b = before.get(tid, dict(ZERO))
        row = out[(proc, a["name"])]
        for k in ZERO:
            row[k] += a[k] - b[k]
    total = {k: after[0][k] - before[0][k] for k in ("user", "sys")}
    live = {k: sum(r[k] for r in out.values()) for k in ("user", "sys")}
    # threads that exited, or the rounding of tick-based times (a process's utime/stime are not the sum
    # of its threads' rounded values): shown only when larger than a few ticks
    other = {k: total[k] - live[k] for k in ("user", "sys")}
    if other["user"] + other["sys"] > max(3.5 * TICK_S, 0.1 * (total["user"] + total["sys"])):
        out[(proc, "(unattributed)")] = dict(ZERO, **other)
    out[(proc, "(process)")] = {"user": total["user"], "sys": total["sys"],
                                "run": sum(r["run"] for r in out.values()),
                                "wait": sum(r["wait"] for r in out.values()),
                                "slices": sum(r["slices"] for r in out.values()),
                                "minflt": after[0]["minflt"] - before[0]["minflt"]}
    return dict(out)


class MachineSampler(threading.Thread):
    """/proc/stat every `period` s, timestamped (time.monotonic), so the
    machine's CPU split can be cut to the resync itself."""

    def __init__(self, period: float = 0.01):
        super().__init__(daemon=True)
        self.period = period
        self.stop_event = threading.Event()
        self.series: list[tuple[float, dict]] = []

    def run(self) -> None:
        self.series.append((time.monotonic(), machine_cpu()))
        while not self.stop_event.wait(self.period):
            self.series.append((time.monotonic(), machine_cpu()))

    def finish(self) -> None:
        if self.stop_event.is_set():
            return
        self.stop_event.set()
        self.join(10)
        self.series.append((time.monotonic(), machine_cpu()))

    def split(self, t0: float, t1: float) -> tuple[float, dict]:
        """(seconds, cores of each kind) between the samples nearest t0 and t1."""
        a = min(self.series, key=lambda x: abs(x[0] - t0))
        b = min(self.series, key=lambda x: abs(x[0] - t1))
        secs = b[0] - a[0]
        return secs, {k: (b[1][k] - a[1][k]) / secs for k in a[1]} if secs > 0 else {}


class StateSampler(threading.Thread):
    """Every 1/hz s: each thread's state of both daemons (R, or the system
    call it sleeps in)."""

    def __init__(self, pids: dict[str, int], hz: float):
        super().__init__(daemon=True)
        self.pids = pids
        self.period = 1 / hz
        self.stop_event = threading.Event()
        self.samples: list[tuple[float, str, str, str]] = []  # (time, proc, thread, state)

    def run(self) -> None:
        while not self.stop_event.wait(self.period):
            now = time.monotonic()
            for proc, pid in self.pids.items():
                try:
                    tids = procstat.thread_ids(pid)
                except FileNotFoundError:
                    continue
                for tid in tids:
                    fields = procstat.stat_fields(pid, tid)
                    name = thread_name(pid, tid)
                    if fields is None or name is None:
                        continue
                    state = fields[0]
                    if state == "R":
                        label = "R (on CPU/runnable)"
                    else:
                        sc = procstat.thread_syscall(pid, tid).split()
                        nr = int(sc[0]) if sc and sc[0].lstrip("-").isdigit() else -1
                        label = f"{state} {SYSCALLS.get(nr, f'syscall {nr}')}"
                        if nr == 202 and len(sc) > 1:
                            label += f"@{sc[1]}"  # the futex word: one shared by several threads is the GIL
                    self.samples.append((now, proc, name, label))

    def finish(self) -> None:
        self.stop_event.set()
        self.join(10)

    def counts(self, t0: float, t1: float) -> tuple[dict, int]:
        """(proc, thread) -> state -> samples between t0 and t1; number of sampling instants."""
        out: dict = collections.defaultdict(collections.Counter)
        instants = set()
        for t, proc, name, label in self.samples:
            if t0 <= t <= t1:
                out[(proc, name)][label] += 1
                instants.add(t)
        return out, len(instants)


# -- one resync ---------------------------------------------------------------------------------
def one_resync(pair: Pair, chunks: list[int], seed: int, sample_hz: float = 0,
               perf_dir: str | None = None) -> dict:
    pair.outage()
    aio_write(pair.primary.uri("vol0"), fresh_writes(chunks, seed), qd=QD)
    settle()
    perf = sampler = machine = None
    perf_data = os.path.join(perf_dir, "perf.data") if perf_dir else ""
    try:
        if perf_dir:
            perf = subprocess.Popen([PERF, "record", "-a", "-g", "-F", "999", "--clockid", "CLOCK_MONOTONIC",
                                     "-o", perf_data], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # perf is set up (the pair is idle: the secondary is down)
        p_before = threads(pair.primary.pid)
        m_before = machine_cpu()
        pair.restore()
        s_before = threads(pair.secondary.pid)  # after its start-up (imports, node open), as run.py's resync()
        m_ready = machine_cpu()
        if sample_hz:
            sampler = StateSampler({"primary": pair.primary.pid, "secondary": pair.secondary.pid}, sample_hz)
            sampler.start()
        me_before = os.times()
        machine = MachineSampler()
        machine.start()
        st = pair.wait_converged()
        after_t = time.perf_counter()
        t_done = time.monotonic()
        machine.finish()
        p_after = threads(pair.primary.pid)
        s_after = threads(pair.secondary.pid)
        m_after = machine_cpu()
        me_after = os.times()
    finally:
        for t in (machine, sampler):
            if t is not None:
                t.finish()
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            try:
                perf.wait(60)
            except subprocess.TimeoutExpired:
                perf.kill()
                perf.wait()
    rows = delta(p_before, p_after, "primary")
    rows.update(delta(s_before, s_after, "secondary"))
    lr = st["last_resync"]
    # the resync itself: it ended at most one status poll (20 ms) before t_done
    t_end = t_done - 0.01
    _, in_resync = machine.split(t_end - lr["seconds"], t_end)
    states, state_samples = sampler.counts(t_end - lr["seconds"], t_end) if sampler else (None, 0)
    return {"seconds": lr["seconds"], "wall": after_t - pair.secondary.ready_at, "chunks": lr["chunks"],
            "rounds": lr["rounds"], "changed": len(chunks) * CHUNK, "rows": rows,
            "machine": {k: m_after[k] - m_ready[k] for k in m_after},
            "machine_incl_startup": {k: m_after[k] - m_before[k] for k in m_after},
            "machine_resync": in_resync,
            "harness_cpu": (me_after.user + me_after.system) - (me_before.user + me_before.system),
            "states": states, "state_samples": state_samples,
            "perf": (perf_data, t_end - lr["seconds"], t_end, pair.primary.pid, pair.secondary.pid) if perf else None}


# -- reports ------------------------------------------------------------------------------------
def print_table(runs: list[dict]) -> None:
    secs = [r["seconds"] for r in runs]
    walls = [r["wall"] for r in runs]
    print(f"\nresync of {runs[0]['changed'] / GiB:.3f} GiB changed ({runs[0]['changed'] // CHUNK} chunks), "
          f"{len(runs)} runs, medians")
    print(f"  resync seconds {median(secs):.3f} (runs: {', '.join(f'{s:.3f}' for s in secs)}), "
          f"{median(r['changed'] / r['seconds'] / 1e6 for r in runs):.0f} MB/s; "
          f"wall from secondary ready to converged {median(walls):.3f} s; "
          f"rounds {median(r['rounds'] for r in runs):.0f}; chunks sent {median(r['chunks'] for r in runs):.0f}")
    keys = []
    for r in runs:
        for k in r["rows"]:
            if k not in keys:
                keys.append(k)

    def med(k, f):
        return median(f(r["rows"][k], r) if k in r["rows"] else 0.0 for r in runs)

    print(f"\n  {'process':9} {'thread':17} {'user':>6} {'sys':>6} {'u+s':>6}  {'on-CPU':>7} {'busy%':>6} "
          f"{'busy%':>6} {'rq-wait':>7} {'slices':>6} {'wait/':>6} {'faults':>6}")
    print(f"  {'':9} {'':17} {'CPU-s/GiB changed':>20}  {'s':>7} {'resync':>6} {'wall':>6} {'s':>7} {'':>6} "
          f"{'slice':>6} {'B/B':>6}")
    for proc in ("primary", "secondary"):
        ks = [k for k in keys if k[0] == proc]
        ks.sort(key=lambda k: (k[1] == "(process)", -med(k, lambda x, r: x["user"] + x["sys"])))
        for k in ks:
            u = med(k, lambda x, r: x["user"] / (r["changed"] / GiB))
            s = med(k, lambda x, r: x["sys"] / (r["changed"] / GiB))
            on = med(k, lambda x, r: x["run"])
            if k[1] != "(process)" and u + s < 0.005 and on < 0.005:
                continue
            share = med(k, lambda x, r: x["run"] / r["seconds"])
            share_w = med(k, lambda x, r: x["run"] / r["wall"])
            wait = med(k, lambda x, r: x["wait"])
            slices = med(k, lambda x, r: x["slices"])
            per = med(k, lambda x, r: x["wait"] / x["slices"] * 1e6 if x["slices"] else 0.0)
            faults = med(k, lambda x, r: x["minflt"] * PAGE / r["changed"])
            print(f"  {proc:9} {k[1]:17} {u:6.2f} {s:6.2f} {u + s:6.2f}  {on:7.3f} {share:6.0%} {share_w:6.0%} "
                  f"{wait:7.3f} {slices:6.0f} {per:4.0f}us {faults:6.2f}")
    both = median((r["rows"][("primary", "(process)")]["user"] + r["rows"][("primary", "(process)")]["sys"]
                   + r["rows"][("secondary", "(process)")]["user"] + r["rows"][("secondary", "(process)")]["sys"])
                  / r["wall"] for r in runs)
    print(f"\n  both daemons: {both:.2f} cores busy on average over the wall window "
          f"(of {os.cpu_count()} cores); this script (status polling, samplers): "
          f"{median(r['harness_cpu'] for r in runs):.3f} CPU-s per run")
    m = {k: median(r["machine"][k] / r["wall"] for r in runs) for k in runs[0]["machine"]}
    print(f"  machine over the wall window, in cores: user {m['user']:.2f}, sys {m['sys']:.2f}, "
          f"iowait {m['iowait']:.2f}, idle {m['idle']:.2f}, steal {m['steal']:.2f}")
    m = {k: median(r["machine_resync"][k] for r in runs) for k in runs[0]["machine_resync"]}
    print(f"  machine during the resync itself (its last_resync seconds, /proc/stat every 10 ms), in cores: "
          f"user {m['user']:.2f}, sys {m['sys']:.2f}, iowait {m['iowait']:.2f}, idle {m['idle']:.2f}")
    both = median(sum(r["rows"][(p, "(process)")]["run"] for p in ("primary", "secondary")) / r["seconds"]
                  for r in runs)
    print(f"  both daemons' threads on a core per resync second: {both:.2f}; runnable but waiting for a core: "
          f"{median(sum(r['rows'][(p, '(process)')]['wait'] for p in ('primary', 'secondary')) / r['seconds'] for r in runs):.2f}")
    print(f"  (u/s: ticks of {TICK_S * 1000:.0f} ms; on-CPU, rq-wait (runnable, not on a core) and slices "
          f"(times put on a core): schedstat; busy% = on-CPU / resync seconds or / wall; faults B/B: minor page "
          f"faults x {PAGE} B per changed byte, i.e. fresh memory touched)")


def print_states(runs: list[dict]) -> None:
    counts: dict = collections.defaultdict(collections.Counter)
    for r in runs:
        for k, c in r["states"].items():
            counts[k].update(c)
    print(f"\nthread states during the resync (its last_resync seconds), {sum(r['state_samples'] for r in runs)} samples "
          f"over {len(runs)} runs (share of the samples in which the thread existed; R = on a core or runnable; "
          "S/D = sleeping in that system call; futex = GIL, locks, conditions)")
    # A futex word that several threads of a process wait on is the GIL (its condition variable); a thread's
    # other futex waits are its own queue, condition or lock.
    waiters: dict = collections.defaultdict(set)
    for (proc, name), c in counts.items():
        for lab in c:
            if "futex@" in lab:
                waiters[(proc, lab.split("@")[1])].add(name)
    for (proc, name), c in list(counts.items()):
        merged: collections.Counter = collections.Counter()
        for lab, v in c.items():
            if "futex@" in lab:
                shared = len(waiters[(proc, lab.split("@")[1])]) > 1
                lab = lab.split("@")[0] + (" (GIL)" if shared else " (own queue/cond)")
            merged[lab] += v
        counts[(proc, name)] = merged
    for (proc, name), c in sorted(counts.items(), key=lambda kv: (kv[0][0], -kv[1]["R (on CPU/runnable)"])):
        n = sum(c.values())
        top = ", ".join(f"{lab} {v / n:.0%}" for lab, v in c.most_common(5))
        print(f"  {proc:9} {name:17} {top}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=2)
    ap.add_argument("--frac", type=float, default=0.10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sample-hz", type=float, default=0, help="sample thread states this often in each run")
    ap.add_argument("--perf", metavar="DIR", help="one more resync under perf record -g; perf.data kept in DIR")
    ap.add_argument("--perf-top", type=int, default=30, help="symbols of the secondary to show")
    ap.add_argument("--perf-primary", type=int, default=0, metavar="N", help="also show N symbols of the primary")
    ap.add_argument("--dir", default="/var/tmp", help="parent of the temporary directory")
    args = ap.parse_args()
    size = int(args.size_gib * GiB) // CHUNK * CHUNK
    nchunks = size // CHUNK
    k = max(1, round(nchunks * args.frac))
    root = tempfile.mkdtemp(prefix="blockmirror-threads-", dir=args.dir)
    hook = os.path.join(root, "pyhook")
    os.makedirs(hook)
    with open(os.path.join(hook, "sitecustomize.py"), "w") as f:
        f.write(SITECUSTOMIZE)
    os.environ["PYTHONPATH"] = hook + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    pair = None
    try:
        note(f"{args.size_gib:g} GiB volume, {k} chunks ({k * CHUNK / GiB:.3f} GiB) changed per run; "
             "prefill + initial sync")
        pair = setups.pair(os.path.join(root, "pair"), {"vol0": size}, prefill=prefill_volume(size))
        pair.wait_converged(timeout_s=1800)
        settle()
        rng = random.Random(11)
        runs = []
        for i in range(args.runs):
            r = one_resync(pair, rng.sample(range(nchunks), k), rng.getrandbits(64), args.sample_hz)
            if r["chunks"] != k:
                note(f"    warning: resync sent {r['chunks']} chunks, {k} changed")
            note(f"    run {i}: resync {r['seconds']:.3f}s ({r['changed'] / r['seconds'] / 1e6:.0f} MB/s), "
                 f"wall {r['wall']:.3f}s")
            runs.append(r)
            settle()
        print_table(runs)
        if args.sample_hz:
            print_states(runs)
        if args.perf:
            os.makedirs(args.perf, exist_ok=True)
            r = one_resync(pair, rng.sample(range(nchunks), k), rng.getrandbits(64), perf_dir=args.perf)
            print(f"\nresync under perf: {r['seconds']:.3f}s ({r['changed'] / r['seconds'] / 1e6:.0f} MB/s)")
            data, t0, t1, p_pid, s_pid = r["perf"]
            perf_report(data, t0, t1, {"primary": p_pid, "secondary": s_pid}, args.perf_top, args.perf_primary)
    finally:
        if pair is not None:
            pair.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
