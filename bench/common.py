"""Helpers shared by the benchmark scripts in bench/: their error,
statistics, a description of the machine, peak memory, result lines, and
rewriting one section of docs/BENCHMARKS.md while keeping the others intact.

Benchmarks are scripts, never timed assertions in tests. Every script prints
one line per measurement, `name: value unit`, so runs can be compared with
`diff` or `grep`.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import re
import resource
import sqlite3
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC_PATH = os.path.join(ROOT, "docs", "BENCHMARKS.md")

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40


class BenchError(RuntimeError):
    """A benchmark could not measure what it set out to."""


# -- statistics ------------------------------------------------------------------
def median(values) -> float:
    xs = sorted(values)
    if not xs:
        raise ValueError("median of nothing")
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def prewrite(fd: int, nbytes: int) -> None:
    """Write `nbytes` of zeroes from the start of `fd` and make them durable,
    so later writes there overwrite allocated blocks (as a spare COW file's
    do); then sync() so no dirty page is left for the timed part."""
    block = bytes(1 << 20)
    for off in range(0, nbytes, len(block)):
        os.pwrite(fd, block, off)
    os.fsync(fd)
    os.sync()


def prewrite_file(path: str, nbytes: int) -> None:
    """A new file at `path` (emptied if it exists), prewritten (`prewrite`)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        prewrite(fd, nbytes)
    finally:
        os.close(fd)


def percentile(values, q: float) -> float:
    """Nearest-rank percentile (q in 0..100): a value that was observed."""
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of nothing")
    rank = max(1, math.ceil(q / 100 * len(xs)))
    return xs[min(rank, len(xs)) - 1]


def size_label(n: int, sep: str = "") -> str:
    for unit, scale in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{sep}{unit}"
    return f"{n}{sep}B"


# -- the machine -----------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def filesystem_of(path: str) -> tuple[str, str, str]:
    """(fstype, mount point, source) of the filesystem holding `path`."""
    path = os.path.realpath(path)
    best = ("unknown", "", "")
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                mnt = left.split()[4].replace("\\040", " ")
                fstype, source = right.split()[:2]
                inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best[1]):
                    best = (fstype, mnt, source)
    except OSError:
        pass
    return best


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty src" if dirty else "") if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine(bench_dir: str) -> dict[str, str]:
    fstype, mnt, source = filesystem_of(bench_dir)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    try:
        import pyroaring
        roaring = pyroaring.__version__
    except Exception:  # noqa: BLE001 - only a description
        roaring = "not installed"
    return {
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} logical ({usable} usable)",
        "ram": f"{_ram_bytes() / GiB:.1f} GiB",
        "bench_fs": f"{fstype} on {source} (mounted at {mnt}; bench dir {bench_dir})",
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "sqlite": sqlite3.sqlite_version,
        "pyroaring": roaring,
        "root": "yes" if os.geteuid() == 0 else "no",
    }


def machine_markdown(m: dict[str, str]) -> str:
    """The body of docs/BENCHMARKS.md's Machine section."""
    rows = [("CPU", m["cpu"]), ("Cores", m["cores"]), ("RAM", m["ram"]),
            ("Filesystem of the bench dir", m["bench_fs"]), ("Kernel", m["kernel"]),
            ("Python", m["python"]), ("SQLite", m["sqlite"]), ("pyroaring", m["pyroaring"])]
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + f"\n\nDescribed {today()} by the bench scripts."


def machine_oneline(m: dict[str, str]) -> str:
    return (f"{m['cpu']}, {m['cores'].split(' (')[0]} cores, {m['ram']} RAM, "
            f"{m['bench_fs'].split(' on ')[0]}, {m['kernel']}, Python {m['python'].split()[1]}")


# -- memory ----------------------------------------------------------------------
def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far.

    VmHWM of /proc/self/status, not ru_maxrss: Linux keeps ru_maxrss across
    execve, so a child started by a big parent would report the parent's
    peak (measured: 678 MiB for a child that only imported blockmirror)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- result lines ----------------------------------------------------------------
class Results:
    """Prints `name: value unit` lines as they come and keeps them."""

    def __init__(self, out=sys.stdout):
        self.out = out
        self.values: dict[str, tuple[float | str, str]] = {}

    def add(self, name: str, value, unit: str = "", fmt: str = "{:.3f}") -> None:
        assert re.match(r"^[A-Za-z0-9_.\[\]-]+$", name), name
        self.values[name] = (value, unit)
        text = fmt.format(value) if isinstance(value, (int, float)) else str(value)
        print(f"{name}: {text}{' ' + unit if unit else ''}", file=self.out, flush=True)

    def __getitem__(self, name: str):
        return self.values[name][0]


def note(text: str) -> None:
    """Progress for humans, on stderr (stdout holds only result lines)."""
    print(text, file=sys.stderr, flush=True)


# -- docs/BENCHMARKS.md ---------------------------------------------------------
DOC_SKELETON = """# Benchmarks

Numbers measured by the scripts in `bench/`. Benchmarks are scripts, never
timed assertions in tests (`tests/bench` only checks that each script still
runs in its `--smoke` mode). Every figure is a median of at least 5 runs
unless the line says otherwise; a ratio always compares cases measured side
by side in the same run, on the same files.

## Machine

(filled in by the bench scripts' `--write-docs`)

## How to reproduce

```sh
make venv
.venv/bin/python bench/storage_bench.py                 # quick mode, < 5 min
.venv/bin/python bench/storage_bench.py --full          # more runs, longer
.venv/bin/python bench/storage_bench.py --write-docs    # also rewrite its section here
.venv/bin/python bench/storage_bench.py --dir /mnt/x    # put the data on another filesystem
```

Each script prints one `name: value unit` line per measurement on stdout
(progress goes to stderr), and with `--write-docs` rewrites only its own
section of this file and the Machine section. Temporary data goes to a
directory under /var/tmp (sparse files: large volumes use no real space) and
is removed at the end. The scripts run as any user; they never drop the page
cache (that needs root), so each section says what was cached.
"""


def _section_bounds(text: str, title: str) -> tuple[int, int] | None:
    m = re.search(rf"^## {re.escape(title)}[ \t]*\n", text, re.M)
    if not m:
        return None
    nxt = re.search(r"^## ", text[m.end():], re.M)
    end = m.end() + nxt.start() if nxt else len(text)
    return m.start(), end


def replace_section(text: str, title: str, body: str) -> str:
    """Replace the body of `## title` (up to the next `## ` heading), or
    append the section at the end; every other section is kept as is."""
    block = f"## {title}\n\n{body.strip()}\n\n"
    bounds = _section_bounds(text, title)
    if bounds is None:
        return text.rstrip("\n") + "\n\n" + block.rstrip("\n") + "\n"
    start, end = bounds
    new = text[:start] + block + text[end:]
    return new.rstrip("\n") + "\n"


def write_sections(sections: dict[str, str], path: str = DOC_PATH) -> None:
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = DOC_SKELETON
    for title, body in sections.items():
        text = replace_section(text, title, body)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def today() -> str:
    return datetime.date.today().isoformat()
