"""Memory, CPU and I/O readings of a process (or one of its threads) from /proc."""

from __future__ import annotations

import os

TICK_S = 1 / os.sysconf("SC_CLK_TCK")  # the resolution of the CPU times in /proc/PID/stat


def _read(path: str) -> str | None:
    """The file's text; None if the process or thread has gone."""
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _proc_dir(pid: int, tid: int | None) -> str:
    return f"/proc/{pid}" if tid is None else f"/proc/{pid}/task/{tid}"


def _status_bytes(pid: int, key: str) -> int:
    text = _read(f"/proc/{pid}/status") or ""
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"no {key} for pid {pid}")


def vm_hwm(pid: int) -> int:
    """Peak resident set size (VmHWM) of a process, bytes."""
    return _status_bytes(pid, "VmHWM")


def vm_rss(pid: int) -> int:
    """Resident set size (VmRSS) of a process now, bytes."""
    return _status_bytes(pid, "VmRSS")


def io_counters(pid: int) -> dict[str, int]:
    """/proc/PID/io of a process (all its threads, live and gone) as a dict:
    `rchar`/`wchar` are the bytes its read and write system calls moved
    (files, sockets and pipes alike, page cache hits included);
    `read_bytes`/`write_bytes` what it made the storage read or write (a
    read served from the page cache counts nothing)."""
    text = _read(f"/proc/{pid}/io")
    if text is None:
        raise LookupError(f"no process {pid}")
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = int(value)
    return out


def stat_fields(pid: int, tid: int | None = None) -> list[str] | None:
    """The fields of /proc/PID[/task/TID]/stat after the command name
    (`state` is [0], `minflt` [7], `utime` [11], `stime` [12]); None if gone."""
    text = _read(f"{_proc_dir(pid, tid)}/stat")
    return None if text is None else text.rsplit(")", 1)[1].split()


def cpu_split(pid: int, tid: int | None = None) -> tuple[float, float]:
    """(user, system) CPU seconds so far of a process (all its threads) or of one thread."""
    fields = stat_fields(pid, tid)
    if fields is None:
        raise LookupError(f"no process {pid}" + ("" if tid is None else f" thread {tid}"))
    return int(fields[11]) * TICK_S, int(fields[12]) * TICK_S


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    return sum(cpu_split(pid))


def thread_ids(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds of each live thread of a process: {tid: seconds}."""
    out = {}
    for tid in thread_ids(pid):
        fields = stat_fields(pid, tid)
        if fields is not None:
            out[tid] = (int(fields[11]) + int(fields[12])) * TICK_S
    return out


def context_switches(pid: int) -> int:
    """Context switches (voluntary and not) of the live threads of a process so far."""
    n = 0
    for tid in thread_ids(pid):
        for line in (_read(f"{_proc_dir(pid, tid)}/status") or "").splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                n += int(line.split()[1])
    return n


def schedstat(pid: int, tid: int) -> tuple[float, float, int] | None:
    """(seconds on a core, seconds runnable but waiting for one, times put
    on a core) of a thread so far; None if gone."""
    text = _read(f"{_proc_dir(pid, tid)}/schedstat")
    if text is None:
        return None
    run_ns, wait_ns, slices = (int(x) for x in text.split())
    return run_ns / 1e9, wait_ns / 1e9, slices


def thread_comm(pid: int, tid: int) -> str | None:
    """A thread's kernel name; None if gone."""
    text = _read(f"{_proc_dir(pid, tid)}/comm")
    return None if text is None else text.strip()


def thread_syscall(pid: int, tid: int) -> str:
    """/proc/PID/task/TID/syscall: the number of the system call a thread
    sleeps in and its arguments ("" if gone)."""
    return _read(f"{_proc_dir(pid, tid)}/syscall") or ""
