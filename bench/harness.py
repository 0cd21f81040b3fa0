"""Real processes for the daemon benchmarks (bench/run.py): node
directories, `blockmirror primary|secondary` daemons, the fault proxy as a
process, status over the control socket, peak memory of a process, NBD
writers (python libnbd, aio with a queue depth), and an rsync daemon.

Adapted from tests/daemons/daemon_helpers.py (the benchmarks do not import
the test suite). Nothing here asserts a timing.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from blockmirror.runtime.control import request
from blockmirror.storage import Node

CHUNK = 64 << 10
SECRET = "YmVuY2htYXJrIHNlY3JldCBzaGFyZWQgYnkgdGhlIHBhaXIgb2Ygbm9kZXM=\n"
# Link settings of every benchmark pair: a dead link is seen within 1 s, a
# lost link is retried every 0.1-0.2 s (the engine's backoff, capped).
LINK = ["--link-timeout", "1", "--heartbeat-interval", "0.2", "--log-level", "warning"]


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listening on port {port}")


def vm_hwm(pid: int) -> int:
    """Peak resident set size (VmHWM) of a process, bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmHWM for pid {pid}")


def vm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_pair(base: str, volumes: dict[str, int]) -> tuple[str, str, str]:
    """Two initialised node directories and a secret file under `base`."""
    os.makedirs(base, exist_ok=True)
    p, s = os.path.join(base, "primary"), os.path.join(base, "secondary")
    Node.create(p, volumes, chunk_size=CHUNK).close()
    Node.create(s, volumes, chunk_size=CHUNK).close()
    secret = os.path.join(base, "secret")
    with open(secret, "w") as f:
        f.write(SECRET)
    os.chmod(secret, 0o600)
    return p, s, secret


class Daemon:
    """`blockmirror primary|secondary DIR ...` as a process."""

    def __init__(self, role: str, node_dir: str, *args: str, log_name: str | None = None):
        self.role = role
        self.node_dir = node_dir
        self.args = list(args)
        base = os.path.dirname(node_dir.rstrip("/"))
        self.log_path = os.path.join(base, log_name or f"{role}.log")
        self.proc: subprocess.Popen | None = None
        self.nbd_uri: str | None = None
        self.listen: tuple[str, int] | None = None
        self.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> None:
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "blockmirror", self.role, self.node_dir, *self.args],
            stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.ready_at = None
        lines = self._wait_ready()
        self.ready_at = time.perf_counter()
        for line in lines:
            m = re.match(r"serving \d+ volumes? (?:read-only )?on (nbd://127\.0\.0\.1:\d+)$", line)
            if m:
                self.nbd_uri = m.group(1)
            m = re.match(r"listening for the primary on (127\.0\.0\.1):(\d+)$", line)
            if m:
                self.listen = (m.group(1), int(m.group(2)))

    def _wait_ready(self, timeout_s: float = 60) -> list[str]:
        """Lines up to `ready` (a standalone primary prints only its
        `serving` line)."""
        lines: queue.Queue = queue.Queue()
        standalone = self.role == "primary" and "--peer" not in self.args

        def reader(stdout):
            for line in stdout:
                lines.put(line.strip())
            lines.put(None)
        threading.Thread(target=reader, args=(self.proc.stdout,), daemon=True).start()
        got: list[str] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.05)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.startswith("ready"):
                return got
            got.append(line)
            if standalone and line.startswith("serving"):
                return got
        self.proc.kill()
        self.proc.wait()
        raise BenchError(f"{self.role} did not become ready ({got}); log tail:\n{self.log()[-3000:]}")

    def uri(self, volume: str) -> str:
        return f"{self.nbd_uri}/{volume}"

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path) as f:
            return f.read()

    def status(self) -> dict:
        return request(self.node_dir, "status", timeout_s=30)

    def wait_for(self, predicate, timeout_s: float = 120, what: str = "condition", poll_s: float = 0.02) -> dict:
        deadline = time.monotonic() + timeout_s
        st = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.role} exited {self.proc.returncode}; log tail:\n{self.log()[-3000:]}")
            st = self.status()
            if predicate(st):
                return st
            time.sleep(poll_s)
        raise BenchError(f"{self.role}: no {what} within {timeout_s}s; last status {st}\nlog tail:\n"
                         f"{self.log()[-3000:]}")

    def stop(self, sig=signal.SIGTERM, timeout_s: float = 60) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        finally:
            self._log.close()
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self._log.closed:
            self._log.close()

    def restart(self) -> None:
        """Start again on the same node; a secondary keeps its port."""
        if self.listen is not None and "--listen" in self.args:
            self.args[self.args.index("--listen") + 1] = f"{self.listen[0]}:{self.listen[1]}"
        self.start()


def converged(st: dict) -> bool:
    """The primary mirrors, with nothing unacknowledged."""
    return (st["state"] == "mirroring" and st["peer_connected"] and st["lag_writes"] == 0
            and st["waiting_writes"] == 0)


class Pair:
    """A primary and a secondary on loopback, optionally through a fault
    proxy process. `outage()` stops the secondary (the primary sees the link
    close: EOF), `restore()` starts it again."""

    def __init__(self, base: str, volumes: dict[str, int], mode: str = "async", proxy: bool = False,
                 prefill=None, primary_extra: tuple = ()):
        self.base = base
        self.volumes = volumes
        self.p_dir, self.s_dir, self.secret = make_pair(base, volumes)
        if prefill is not None:
            prefill(self.p_dir)
        self.proxy: ProxyProcess | None = None
        self.secondary = Daemon("secondary", self.s_dir, "--listen", "127.0.0.1:0", "--secret-file", self.secret,
                                *LINK)
        peer = self.secondary.listen
        if proxy:
            self.proxy = ProxyProcess(peer, os.path.join(base, "proxy.sock"), os.path.join(base, "proxy.log"))
            peer = self.proxy.address
        self.primary = Daemon("primary", self.p_dir, "--nbd", "127.0.0.1:0", "--peer", f"{peer[0]}:{peer[1]}",
                              "--secret-file", self.secret, "--mode", mode, "--reconnect-max", "0.2", *LINK,
                              *primary_extra)

    def wait_converged(self, timeout_s: float = 300, poll_s: float = 0.02) -> dict:
        return self.primary.wait_for(converged, timeout_s, "convergence", poll_s)

    def outage(self) -> dict:
        """Stop the secondary; returns the primary's status once it has
        taken the link-down snapshot."""
        before = self.primary.status()["link_failures"]
        self.secondary.stop()
        return self.primary.wait_for(lambda st: st["link_failures"] > before and st["state"] == "disconnected",
                                     60, "link failure")

    def restore(self) -> None:
        self.secondary.restart()

    def close(self) -> None:
        for d in (self.primary, self.secondary):
            try:
                d.stop(timeout_s=60)
            except Exception:  # noqa: BLE001 - best effort at teardown
                d.kill()
        if self.proxy is not None:
            self.proxy.close()


class ProxyProcess:
    """`python -m blockmirror.faultproxy` with a control socket."""

    def __init__(self, target: tuple[str, int], control_path: str, log_path: str):
        self.control_path = control_path
        self._log = open(log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "blockmirror.faultproxy", "--listen", "127.0.0.1:0",
             "--target", f"{target[0]}:{target[1]}", "--control", control_path],
            stdout=subprocess.PIPE, stderr=self._log, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"proxy on (127\.0\.0\.1):(\d+)", line)
        if not m:
            raise BenchError(f"fault proxy did not start: {line!r}")
        self.address = (m.group(1), int(m.group(2)))
        deadline = time.monotonic() + 10
        while not os.path.exists(control_path):
            if time.monotonic() > deadline:
                raise BenchError("fault proxy control socket missing")
            time.sleep(0.02)

    def command(self, cmd: str) -> dict:
        from blockmirror.faultproxy import control
        return control(self.control_path, cmd)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# -- NBD clients ------------------------------------------------------------------------------
def nbd_handle(uri: str):
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


def aio_write(uri: str, writes, qd: int = 16, flush: bool = True) -> float:
    """Write (offset, bytes) pairs through one libnbd connection with up to
    `qd` requests in flight; then FLUSH. Returns the seconds taken (connect
    excluded)."""
    import nbd
    h = nbd_handle(uri)
    try:
        start = time.perf_counter()
        cookies = []
        for off, data in writes:
            while h.aio_in_flight() >= qd:
                h.poll(-1)
                _retire(h, cookies)
            buf = nbd.Buffer.from_bytearray(bytearray(data)) if not isinstance(data, nbd.Buffer) else data
            cookies.append((h.aio_pwrite(buf, off), buf))
        while h.aio_in_flight() > 0:
            h.poll(-1)
            _retire(h, cookies)
        _retire(h, cookies)
        if flush:
            h.flush()
        return time.perf_counter() - start
    finally:
        h.shutdown()


def _retire(h, cookies: list) -> None:
    keep = []
    for cookie, buf in cookies:
        if not h.aio_command_completed(cookie):
            keep.append((cookie, buf))
    cookies[:] = keep


def nbd_buffers(chunks: list[bytes]):
    import nbd
    return [nbd.Buffer.from_bytearray(bytearray(c)) for c in chunks]


class HostWriter(threading.Thread):
    """Writes 64 KiB blocks at random chunks of several volumes (one libnbd
    connection each, synchronous: one write in flight), as fast as it can,
    recording (completion time, latency) of every write."""

    def __init__(self, uris: list[str], sizes: list[int], seed: int = 1):
        super().__init__(daemon=True)
        import random
        self.uris = uris
        self.sizes = sizes
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.samples: list[tuple[float, float]] = []
        self.errors: list[str] = []

    def run(self) -> None:
        import nbd
        handles = [nbd_handle(u) for u in self.uris]
        rng = self.rng
        pool = [nbd.Buffer.from_bytearray(bytearray(rng.randbytes(CHUNK))) for _ in range(8)]
        try:
            while not self.stop_event.is_set():
                i = rng.randrange(len(handles))
                off = rng.randrange(self.sizes[i] // CHUNK) * CHUNK
                t0 = time.perf_counter()
                handles[i].aio_pwrite(pool[rng.randrange(len(pool))], off)
                while handles[i].aio_in_flight() > 0:
                    handles[i].poll(-1)
                t1 = time.perf_counter()
                self.samples.append((t1, t1 - t0))
        except nbd.Error as exc:
            self.errors.append(str(exc))
        finally:
            for h in handles:
                try:
                    h.shutdown()
                except nbd.Error:
                    pass

    def finish(self) -> None:
        self.stop_event.set()
        self.join(60)


# -- rsync ------------------------------------------------------------------------------------
class RsyncDaemon:
    """`rsync --daemon --no-detach` on 127.0.0.1 with one writable module."""

    def __init__(self, base: str, module_dir: str, module: str = "bench"):
        self.port = free_port()
        self.module = module
        conf = os.path.join(base, "rsyncd.conf")
        with open(conf, "w") as f:
            f.write(f"pid file = {os.path.join(base, 'rsyncd.pid')}\n"
                    f"use chroot = false\n"
                    f"[{module}]\n  path = {module_dir}\n  read only = false\n"
                    + ("  uid = root\n  gid = root\n" if os.geteuid() == 0 else ""))
        self._log = open(os.path.join(base, "rsyncd.log"), "a")
        self.proc = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}",
                                      f"--port={self.port}", "--address=127.0.0.1"],
                                     stdout=self._log, stderr=self._log)
        wait_port(self.port)

    def url(self, name: str) -> str:
        return f"rsync://127.0.0.1:{self.port}/{self.module}/{name}"

    def push(self, source: str, name: str) -> dict:
        """rsync --inplace --no-whole-file SOURCE onto the module's NAME;
        returns seconds and the --stats counters."""
        cmd = ["rsync", "--inplace", "--no-whole-file", "--ignore-times", "--stats", source, self.url(name)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr}")
        stats = {"seconds": seconds}
        for key, pattern in (("sent", r"Total bytes sent: ([\d,.]+)"), ("received", r"Total bytes received: ([\d,.]+)"),
                             ("literal", r"Literal data: ([\d,.]+)"), ("matched", r"Matched data: ([\d,.]+)")):
            m = re.search(pattern, proc.stdout)
            stats[key] = int(m.group(1).replace(",", "").replace(".", "")) if m else -1
        return stats

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Popen(subprocess.Popen):
    """A plain process the benchmarks stop like a Daemon."""

    def stop(self, timeout_s: float = 10) -> None:
        if self.poll() is None:
            self.terminate()
            try:
                self.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                self.wait()
