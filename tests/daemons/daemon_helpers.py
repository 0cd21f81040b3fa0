"""Real daemons for the daemon tests: processes, addresses from their
readiness lines, status over the control socket, NBD clients."""

from __future__ import annotations

import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time

import nbd

from blockmirror.runtime.control import request
from blockmirror.storage import Node

VOLUMES = {"vol0": 16 << 20, "vol1": 4 << 20}
CHUNK = 64 << 10
SECRET = "c2VjcmV0IHNoYXJlZCBieSB0aGUgdGVzdCBwYWlyIG9mIG5vZGVz\n"
FAST = ["--link-timeout", "1", "--heartbeat-interval", "0.2"]


def make_nodes(tmp_path, volumes=VOLUMES, secondary_volumes=None):
    """Two initialised nodes and a secret file: (primary_dir, secondary_dir, secret_path)."""
    p, s = str(tmp_path / "primary"), str(tmp_path / "secondary")
    Node.create(p, volumes, chunk_size=CHUNK).close()
    Node.create(s, secondary_volumes or volumes, chunk_size=CHUNK).close()
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    return p, s, str(secret)


class Daemon:
    """`blockmirror primary|secondary DIR ...` as a real process."""

    def __init__(self, role: str, node_dir: str, *args: str, log_name: str | None = None,
                 prefix: tuple[str, ...] = ()):
        self.role = role
        self.prefix = list(prefix)  # e.g. ip netns exec NS
        self.node_dir = node_dir
        self.args = args
        base = os.path.dirname(node_dir.rstrip("/"))
        self.log_path = os.path.join(base, log_name or f"{role}.log")
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "blockmirror", self.role, self.node_dir, *self.args],
            stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.lines = self._wait_ready()
        self.nbd_uri = self.listen = None
        for line in self.lines:
            m = re.match(r"serving \d+ volumes? (?:read-only )?on (nbd://[0-9.]+:\d+)$", line)
            if m:
                self.nbd_uri = m.group(1)
            m = re.match(r"listening for the primary on ([0-9.]+):(\d+)(?: \(TLS[^)]*\))?$", line)
            if m:
                self.listen = (m.group(1), int(m.group(2)))

    def _wait_ready(self, timeout_s: float = 20) -> list[str]:
        """Lines up to `ready`, read by a thread (select() cannot see lines
        already in the pipe's Python buffer)."""
        lines: queue.Queue = queue.Queue()

        def reader(stdout):
            for line in stdout:
                lines.put(line.strip())
            lines.put(None)
        threading.Thread(target=reader, args=(self.proc.stdout,), daemon=True).start()
        got = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.startswith("ready"):
                return got
            got.append(line)
        self.proc.kill()
        self.proc.wait()
        raise AssertionError(f"{self.role} did not become ready ({got}); log:\n{self.log()}")

    def uri(self, volume: str) -> str:
        return f"{self.nbd_uri}/{volume}"

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path) as f:
            return f.read()

    def status(self) -> dict:
        return request(self.node_dir, "status", timeout_s=10)

    def wait_for(self, predicate, timeout_s: float = 30, what: str = "condition") -> dict:
        deadline = time.monotonic() + timeout_s
        st = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"{self.role} exited {self.proc.returncode}; log:\n{self.log()}"
            st = self.status()
            if predicate(st):
                return st
            time.sleep(0.05)
        raise AssertionError(f"{self.role}: no {what} within {timeout_s}s; last status {st}\nlog:\n{self.log()}")

    def stop(self, sig=signal.SIGTERM, timeout_s: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.role} did not stop on {sig!r}; log:\n{self.log()}")
        finally:
            self._log.close()
        return code

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._log.close()

    def restart(self, *args: str) -> None:
        """Start again on the same node, with new arguments if given."""
        if args:
            self.args = args
        self.start()


def primary_args(secret: str, peer: tuple[str, int], *extra: str) -> list[str]:
    return ["--nbd", "127.0.0.1:0", "--peer", f"{peer[0]}:{peer[1]}", "--secret-file", secret, *FAST, *extra]


def secondary_args(secret: str, *extra: str, listen: str = "127.0.0.1:0") -> list[str]:
    return ["--listen", listen, "--secret-file", secret, "--nbd", "127.0.0.1:0", *FAST, *extra]


def converged(st: dict) -> bool:
    """The primary mirrors, with nothing unacknowledged."""
    return (st["state"] == "mirroring" and st["peer_connected"] and st["lag_writes"] == 0
            and st["waiting_writes"] == 0)


def run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a tool; a missing tool is a failure, never a skip."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def qemu_io(uri: str, *commands: str) -> None:
    cmd = ["qemu-io", "-f", "raw"]
    for c in commands:
        cmd += ["-c", c]
    run(cmd + [uri])


def assert_identical(primary: Daemon, secondary: Daemon) -> None:
    for vol in VOLUMES:
        proc = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", primary.uri(vol),
                               secondary.uri(vol)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (f"{vol}: qemu-img compare exited {proc.returncode}: {proc.stdout}{proc.stderr}\n"
                                      f"primary log:\n{primary.log()[-3000:]}\nsecondary log:\n{secondary.log()[-3000:]}")
        assert "Images are identical" in proc.stdout


class HostWriter:
    """A host writing continuously through NBD (python libnbd), in a thread:
    4 KiB - 64 KiB writes at random offsets of a small hot area."""

    def __init__(self, uri: str, area_bytes: int = 1 << 20, seed: int = 1, flush_every: int = 16):
        self.uri = uri
        self.area_bytes = area_bytes
        self.rng = random.Random(seed)
        self.flush_every = flush_every
        self.writes = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        h = nbd.NBD()
        try:
            h.connect_uri(self.uri)
            while not self._stop.is_set():
                length = self.rng.choice((4096, 16384, 65536))
                offset = self.rng.randrange(0, self.area_bytes - length, 4096)
                h.pwrite(self.rng.randbytes(length), offset)
                self.writes += 1
                if self.writes % self.flush_every == 0:
                    h.flush()
                time.sleep(0.002)
        except nbd.Error as exc:
            self.errors.append(str(exc))
        finally:
            try:
                h.shutdown()
            except nbd.Error:
                pass

    def wait_writes(self, n: int, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        target = self.writes + n
        while self.writes < target:
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, f"host writes stalled at {self.writes} (wanted {target})"
            time.sleep(0.01)

    def stop(self, errors_expected: bool = False) -> int:
        self._stop.set()
        self._thread.join(20)
        assert not self._thread.is_alive(), "host writer stuck"
        assert errors_expected or not self.errors, f"host writes failed: {self.errors}"
        return self.writes
