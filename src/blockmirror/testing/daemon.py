"""`blockmirror primary|secondary DIR ...` as a real process: started, read
up to its readiness line, asked for its status over the control socket,
stopped with a signal or killed, restarted on the same node."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

from blockmirror.runtime.control import request


class HarnessError(RuntimeError):
    """A process under test did not do what the harness waited for."""


@dataclass(frozen=True)
class Patience:
    """How long the harness waits for a daemon, and how often it looks."""

    ready_s: float = 20.0  # start to the readiness line
    status_s: float = 10.0  # one status request over the control socket
    wait_for_s: float = 30.0  # default of Daemon.wait_for
    stop_s: float = 30.0  # signal to exit
    poll_s: float = 0.05  # between two status requests in wait_for


TESTS = Patience()

_NBD_LINE = re.compile(r"serving \d+ volumes? (?:read-only )?on (nbd://([0-9.]+):(\d+))$")
_LISTEN_LINE = re.compile(r"listening for the primary on ([0-9.]+):(\d+)(?: \(TLS[^)]*\))?$")


def converged(st: dict) -> bool:
    """The primary mirrors, with nothing unacknowledged."""
    return (st["state"] == "mirroring" and st["peer_connected"] and st["lag_writes"] == 0
            and st["waiting_writes"] == 0)


def in_round(st: dict) -> bool:
    """A round with data is open (its commit not yet confirmed)."""
    prog = st.get("resync_progress")
    return bool(prog) and prog["chunks_total"] > 0 and prog["chunks_done"] > 0


def read_lines_until(proc: subprocess.Popen, is_last: Callable[[str], bool], timeout_s: float) -> list[str] | None:
    """The stripped stdout lines of `proc` up to and including the first for
    which `is_last` holds; None if the process ends or the time runs out
    first. A thread reads (select() cannot see lines already in the pipe's
    Python buffer) and goes on draining stdout afterwards, so the process
    never blocks on a full pipe."""
    lines: queue.Queue = queue.Queue()

    def reader(stdout) -> None:
        for line in stdout:
            lines.put(line.strip())
        lines.put(None)
    threading.Thread(target=reader, args=(proc.stdout,), daemon=True).start()
    got: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.02)
        except queue.Empty:
            continue
        if line is None:
            return None
        got.append(line)
        if is_last(line):
            return got
    return None


class Daemon:
    """One `blockmirror ROLE NODE_DIR ARGS...` process, started at once.

    Its stderr goes to `<parent of NODE_DIR>/<log_name or ROLE.log>`
    (appended across restarts); `prefix` runs it under another command
    (e.g. `ip netns exec NS`); `env`: variables added to (or, with value
    None, removed from) the inherited environment."""

    def __init__(self, role: str, node_dir: str, *args: str, log_name: str | None = None,
                 prefix: tuple[str, ...] = (), patience: Patience = TESTS,
                 env: dict[str, str | None] | None = None):
        self.role = role
        self.node_dir = node_dir
        self.args = list(args)
        self.prefix = list(prefix)
        self.patience = patience
        self.env = dict(env) if env else None
        self.log_path = os.path.join(os.path.dirname(node_dir.rstrip("/")), log_name or f"{role}.log")
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []  # stdout up to readiness, without the `ready` line
        self.nbd_uri: str | None = None
        self.nbd_address: tuple[str, int] | None = None
        self.listen: tuple[str, int] | None = None  # where a secondary takes its primary
        self.ready_at = 0.0  # time.perf_counter() at readiness
        self.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def nbd_port(self) -> int:
        return self.nbd_address[1]

    def start(self) -> None:
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "blockmirror", self.role, self.node_dir, *self.args],
            stdout=subprocess.PIPE, stderr=self._log, text=True, env=self._environ())
        # A primary without a peer prints only its `serving` line.
        standalone = self.role == "primary" and "--peer" not in self.args
        lines = read_lines_until(self.proc, lambda line: line.startswith("ready") or (
            standalone and line.startswith("serving")), self.patience.ready_s)
        if lines is None:
            self.kill9()
            raise HarnessError(f"{self.role} did not become ready within {self.patience.ready_s}s; "
                               f"log:\n{self.log()}")
        self.ready_at = time.perf_counter()
        self.lines = [line for line in lines if not line.startswith("ready")]
        self.nbd_uri = self.nbd_address = self.listen = None
        for line in self.lines:
            if m := _NBD_LINE.match(line):
                self.nbd_uri, self.nbd_address = m.group(1), (m.group(2), int(m.group(3)))
            if m := _LISTEN_LINE.match(line):
                self.listen = (m.group(1), int(m.group(2)))

    def _environ(self) -> dict[str, str] | None:
        """None (inherit) without `env`."""
        if self.env is None:
            return None
        environ = dict(os.environ)
        for key, value in self.env.items():
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value
        return environ

    def uri(self, volume: str) -> str:
        return f"{self.nbd_uri}/{volume}"

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path) as f:
            return f.read()

    def status(self) -> dict:
        return request(self.node_dir, "status", timeout_s=self.patience.status_s)

    def wait_for(self, predicate: Callable[[dict], bool], timeout_s: float | None = None,
                 what: str = "condition", poll_s: float | None = None) -> dict:
        """The first status for which `predicate` holds."""
        timeout_s = self.patience.wait_for_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        st = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(f"{self.role} exited {self.proc.returncode}; log:\n{self.log()}")
            st = self.status()
            if predicate(st):
                return st
            time.sleep(self.patience.poll_s if poll_s is None else poll_s)
        raise HarnessError(f"{self.role}: no {what} within {timeout_s}s; last status {st}\nlog:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float | None = None) -> int:
        """Send `sig` and wait for the exit code; a process that outlives
        the timeout is killed and is an error."""
        timeout_s = self.patience.stop_s if timeout_s is None else timeout_s
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise HarnessError(f"{self.role} did not stop on {sig!r} within {timeout_s}s; log:\n{self.log()}") from None
        finally:
            self._log.close()

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self, *args: str) -> None:
        """Start again on the same node, with new arguments if given; a
        secondary keeps the port it listened on."""
        if args:
            self.args = list(args)
        if self.listen is not None and "--listen" in self.args:
            self.args[self.args.index("--listen") + 1] = f"{self.listen[0]}:{self.listen[1]}"
        self.start()
