"""The fault proxy (`blockmirror.faultproxy`) between a primary and its
secondary, in either of two forms with one client API (`FaultProxyControl`):
in this process on its own thread (`FaultProxyThread`), or as a separate
process driven over its control socket (`ProxyProcess`: a Python proxy in
the harness's own process would share its GIL with the measurements)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Protocol

from blockmirror.faultproxy import FaultProxyThread, control
from blockmirror.testing.daemon import HarnessError, read_lines_until
from blockmirror.testing.tools import stop_process


class FaultProxyControl(Protocol):
    address: tuple[str, int]

    def cut(self) -> None: ...
    def blackhole(self) -> None: ...
    def delay(self, seconds: float) -> None: ...
    def rate(self, bytes_per_s: float) -> None: ...
    def heal(self) -> None: ...
    def status(self) -> dict: ...
    def close(self) -> None: ...


class ProxyProcess:
    """`python -m blockmirror.faultproxy --listen 127.0.0.1:0 --target T
    --control PATH`, its stderr in `log_path`."""

    def __init__(self, target: tuple[str, int], control_path: str, log_path: str, ready_timeout_s: float = 20):
        self.control_path = control_path
        self._log = open(log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "blockmirror.faultproxy", "--listen", "127.0.0.1:0",
             "--target", f"{target[0]}:{target[1]}", "--control", control_path],
            stdout=subprocess.PIPE, stderr=self._log, text=True)
        lines = read_lines_until(self.proc, lambda line: True, ready_timeout_s)
        m = re.match(r"proxy on ([0-9.]+):(\d+) -> ", lines[0]) if lines else None
        if not m:
            self.close()
            with open(log_path) as f:
                tail = f.read()[-2000:]
            raise HarnessError(f"the fault proxy did not start (ready line {lines!r}); its log ends:\n{tail}")
        self.ready_line = lines[0]
        self.address = (m.group(1), int(m.group(2)))
        # The control socket is bound before the readiness line is printed.
        if not os.path.exists(control_path):
            self.close()
            raise HarnessError(f"the fault proxy has no control socket {control_path}")

    def command(self, line: str) -> dict:
        """One command line (`cut`, `delay 0.1`, ...); the proxy's status
        after it. An unknown command is a ValueError."""
        return control(self.control_path, line)

    def cut(self) -> None:
        self.command("cut")

    def blackhole(self) -> None:
        self.command("blackhole")

    def delay(self, seconds: float) -> None:
        self.command(f"delay {seconds}")

    def rate(self, bytes_per_s: float) -> None:
        self.command(f"rate {bytes_per_s}")

    def heal(self) -> None:
        self.command("heal")

    def status(self) -> dict:
        return self.command("status")

    def stop(self, timeout_s: float = 10) -> int:
        """SIGTERM; the exit code."""
        try:
            return stop_process(self.proc, timeout_s)
        finally:
            self._log.close()

    def close(self) -> None:
        self.stop()


def start_proxy(kind: str, target: tuple[str, int], base: str) -> FaultProxyControl:
    """A fault proxy to `target`: kind "thread" or "process" (its control
    socket and log under `base`)."""
    if kind == "thread":
        return FaultProxyThread(target)
    if kind == "process":
        return ProxyProcess(target, os.path.join(base, "proxy.sock"), os.path.join(base, "proxy.log"))
    raise ValueError(f"unknown fault proxy kind {kind!r}: thread or process")
