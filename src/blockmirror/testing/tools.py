"""External programs the tests and the benchmarks drive (qemu-io, qemu-img,
nbdcopy), one-shot `blockmirror` commands (verify), plain helper processes,
and loopback ports."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Iterable

from blockmirror.testing.daemon import Daemon, HarnessError
from blockmirror.testing.nodes import VOLUMES


def run_tool(cmd: list[str], timeout_s: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run a program, capturing its text output; a non-zero exit (or a
    missing program) is an error, never a skip."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, **kw)
    if proc.returncode != 0:
        raise HarnessError(f"{' '.join(cmd)} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def qemu_io(uri: str, *commands: str, prefix: tuple[str, ...] = ()) -> str:
    """`qemu-io -f raw -c CMD... URI`; its output. A failed command (a
    `read -P` whose pattern does not match, a write error) is an error."""
    cmd = [*prefix, "qemu-io", "-f", "raw"]
    for c in commands:
        cmd += ["-c", c]
    out = run_tool(cmd + [uri]).stdout
    # qemu-io reports failed commands on stdout and still exits 0.
    if "fail" in out.lower() or "error" in out.lower():
        raise HarnessError(f"{' '.join(cmd)} {uri}: {out}")
    return out


def read_export(uri: str) -> bytes:
    """The whole export, read with nbdcopy."""
    proc = subprocess.run(["nbdcopy", uri, "-"], capture_output=True, timeout=60)
    if proc.returncode != 0:
        raise HarnessError(f"nbdcopy {uri} - exited {proc.returncode}: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def assert_identical(primary: Daemon, secondary: Daemon, volumes: Iterable[str] = VOLUMES,
                     prefix: tuple[str, ...] = ()) -> None:
    """`qemu-img compare` of each volume as both daemons serve it."""
    for vol in volumes:
        proc = subprocess.run([*prefix, "qemu-img", "compare", "-f", "raw", "-F", "raw", primary.uri(vol),
                               secondary.uri(vol)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "Images are identical" in proc.stdout, (
            f"{vol}: qemu-img compare exited {proc.returncode}: {proc.stdout}{proc.stderr}\n"
            f"primary log:\n{primary.log()[-3000:]}\nsecondary log:\n{secondary.log()[-3000:]}")


def verify(node_dir: str, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    """`blockmirror verify NODE_DIR ARGS...` to its end (whatever its exit
    code: 0 identical or repaired, 1 chunks differ, 2 an error)."""
    return subprocess.run([sys.executable, "-m", "blockmirror", "verify", node_dir, *args], capture_output=True,
                          text=True, timeout=timeout_s)


def stop_process(proc: subprocess.Popen, timeout_s: float = 10) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on (at this instant)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 20) -> None:
    """Until something accepts connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise HarnessError(f"nothing listening on 127.0.0.1:{port} within {timeout_s}s")
