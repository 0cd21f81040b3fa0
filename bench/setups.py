"""What the daemon benchmarks and diagnostics start besides the harness's
defaults: a pair with the benchmarks' settings, a primary whose peer never
answers (local only), a standalone primary, nbdkit's file plugin and an
rsync daemon (the baselines)."""

from __future__ import annotations

import os
import re
import subprocess
import time

from blockmirror.storage import Node
from blockmirror.testing.daemon import Daemon, Patience
from blockmirror.testing.nodes import CHUNK, make_nodes, primary_args
from blockmirror.testing.pair import Pair
from blockmirror.testing.tools import free_port, stop_process, wait_port

from common import BenchError

# Large volumes take long to start and to stop; the polls that time an event are fine-grained.
BENCH = Patience(ready_s=60, status_s=30, wait_for_s=120, stop_s=60, poll_s=0.02)
QUIET = ["--log-level", "warning"]
# A lost link is retried every 0.1-0.2 s (the engine's backoff, capped).
PRIMARY_EXTRA = ["--reconnect-max", "0.2", *QUIET]


def pair(base: str, volumes: dict[str, int], mode: str = "async", proxy: str | None = None, prefill=None,
         primary_extra=(), start: bool = True) -> Pair:
    """A running pair on loopback, the primary dialling the secondary (or,
    with proxy="process", a fault proxy process in front of it); with
    start=False, its nodes only (the caller starts the daemons)."""
    return Pair(base, volumes, mode=mode, proxy=proxy, primary_extra=[*PRIMARY_EXTRA, *primary_extra],
                secondary_extra=QUIET, secondary_nbd=False, prefill=prefill, patience=BENCH, start=start)


def local_primary(base: str, volumes: dict[str, int]) -> Daemon:
    """A primary whose peer is a port where nothing listens: it mirrors
    nothing, but runs the same daemon as a pair's (local only)."""
    p_dir, _, secret = make_nodes(base, volumes)
    return Daemon("primary", p_dir, *primary_args(secret, ("127.0.0.1", free_port()), "--reconnect-max", "10",
                                                  *QUIET), patience=BENCH)


def standalone_primary(base: str, volumes: dict[str, int]) -> Daemon:
    """`blockmirror primary` with no peer at all (no engine)."""
    node_dir = os.path.join(base, "node")
    os.makedirs(base, exist_ok=True)
    Node.create(node_dir, volumes, chunk_size=CHUNK).close()
    return Daemon("primary", node_dir, "--nbd", "127.0.0.1:0", *QUIET, patience=BENCH)


class NbdkitFile:
    """`nbdkit -f file IMAGE` on 127.0.0.1 (a sparse image of `size` bytes)."""

    def __init__(self, image: str, size: int):
        with open(image, "wb") as f:
            f.truncate(size)
        self.port = free_port()
        self.proc = subprocess.Popen(["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(self.port), "file", image],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        self.uri = f"nbd://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        stop_process(self.proc)


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
        try:
            stop_process(self.proc)
        finally:
            self._log.close()
