"""`make demo`: mirroring on one machine, with a link failure in the middle.

Starts a secondary and a primary as real processes on 127.0.0.1 with a
fault proxy between them, writes through NBD with qemu-io, cuts the link,
keeps writing, shows the status and the snapshot, heals the link, shows
what the resync sent against the volume size, and verifies both sides with
`qemu-img compare`. Exits 0 only if the volumes are identical and the
resync sent only the changes.
"""

from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time

from blockmirror.faultproxy import FaultProxyThread
from blockmirror.runtime.control import request
from blockmirror.units import format_size

VOLUMES = {"db": 64 << 20, "logs": 16 << 20}
LINK_TIMEOUT = "1"


def blockmirror(*args: str, show: bool = True) -> str:
    if show:
        print(f"\n$ blockmirror {' '.join(shlex.quote(a) for a in args)}")
    proc = subprocess.run([sys.executable, "-m", "blockmirror", *args], capture_output=True, text=True, timeout=60)
    if show:
        print(proc.stdout.rstrip())
    if proc.returncode != 0:
        print(proc.stderr.rstrip())
        raise SystemExit(f"demo failed: blockmirror {args[0]} exited {proc.returncode}")
    return proc.stdout


def tool(*cmd: str) -> subprocess.CompletedProcess:
    print(f"$ {' '.join(shlex.quote(c) for c in cmd)}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    out = (proc.stdout + proc.stderr).strip()
    if out:
        print("  " + out.replace("\n", "\n  "))
    return proc


def qemu_io(uri: str, *commands: str) -> None:
    args = ["qemu-io", "-f", "raw"]
    for c in commands:
        args += ["-c", c]
    proc = tool(*args, uri)
    if proc.returncode != 0:
        raise SystemExit(f"demo failed: qemu-io exited {proc.returncode}")


class Daemon:
    def __init__(self, role: str, *args: str, log_path: str):
        print(f"\n$ blockmirror {role} {' '.join(shlex.quote(a) for a in args)} &")
        self.role = role
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "blockmirror", role, *args], stdout=subprocess.PIPE,
                                     stderr=self._log, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(ln.strip()) for ln in self.proc.stdout] + [lines.put(None)],
                         daemon=True).start()
        self.lines = []
        deadline = time.monotonic() + 20
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.proc.kill()
                raise SystemExit(f"demo failed: {role} did not start; log:\n{open(log_path).read()}")
            if line.startswith("ready"):
                break
            print(f"  {line}")
            self.lines.append(line)

    def address(self, prefix: str) -> str:
        return next(ln for ln in self.lines if ln.startswith(prefix)).split()[-1]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log.close()


def wait_for(node_dir: str, predicate, what: str, timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        st = request(node_dir)
        if predicate(st):
            return st
        if time.monotonic() > deadline:
            raise SystemExit(f"demo failed: no {what} within {timeout_s:.0f}s (state {st.get('state')})")
        time.sleep(0.05)


def mirroring(st: dict) -> bool:
    return st["state"] == "mirroring" and st["peer_connected"] and st.get("lag_writes", 0) == 0


def main() -> int:
    started = time.monotonic()
    daemons: list[Daemon] = []
    proxy = None
    with tempfile.TemporaryDirectory(prefix="blockmirror-demo-") as tmp:
        p_dir, s_dir = os.path.join(tmp, "primary"), os.path.join(tmp, "secondary")
        secret = os.path.join(tmp, "secret")
        with open(secret, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        os.chmod(secret, 0o600)
        try:
            print("blockmirror demo: a primary mirrors to a secondary over TCP and survives a link failure")
            vols = [a for name, size in VOLUMES.items() for a in ("--volume", f"{name}={size >> 20}MiB")]
            blockmirror("init", p_dir, *vols)
            blockmirror("init", s_dir, *vols)

            secondary = Daemon("secondary", s_dir, "--listen", "127.0.0.1:0", "--secret-file", secret,
                               "--nbd", "127.0.0.1:0", "--link-timeout", LINK_TIMEOUT,
                               log_path=os.path.join(tmp, "secondary.log"))
            daemons.append(secondary)
            host, port = secondary.address("listening").rsplit(":", 1)
            proxy = FaultProxyThread((host, int(port)))
            print(f"\n# a fault proxy on 127.0.0.1:{proxy.port} stands for the network between the nodes")
            primary = Daemon("primary", p_dir, "--nbd", "127.0.0.1:0", "--peer", f"127.0.0.1:{proxy.port}",
                             "--secret-file", secret, "--mode", "sync", "--link-timeout", LINK_TIMEOUT,
                             log_path=os.path.join(tmp, "primary.log"))
            daemons.append(primary)
            p_nbd = primary.address("serving")
            s_nbd = secondary.address("serving")
            wait_for(p_dir, mirroring, "initial sync")

            print("\n# a host writes 8 MiB to db and 1 MiB to logs through NBD (sync mode: each write is")
            print("# acknowledged once it is durable on both nodes)")
            qemu_io(f"{p_nbd}/db", "write -P 0xa1 0 8M")
            qemu_io(f"{p_nbd}/logs", "write -P 0xb2 0 1M")
            wait_for(p_dir, mirroring, "mirroring")
            blockmirror("status", p_dir)

            print("\n# the link fails (the proxy resets both sides and refuses new connections)")
            proxy.cut()
            wait_for(p_dir, lambda st: st["state"] == "disconnected", "link-failure detection")
            print("\n# the host keeps writing while the link is down: 3 small writes to db, 1 to logs")
            qemu_io(f"{p_nbd}/db", "write -P 0xc3 100k 4k", "write -P 0xc4 40M 200k", "write -P 0xc5 60M 20")
            qemu_io(f"{p_nbd}/logs", "write -P 0xd6 1M 4k")
            print("\n# the primary is disconnected; its snapshot remembers the changed chunks")
            blockmirror("status", p_dir)
            blockmirror("status", s_dir)

            print("\n# the link returns: the primary reconnects and sends only what changed")
            t0 = time.monotonic()
            proxy.heal()
            st = wait_for(p_dir, mirroring, "resync")
            healed_s = time.monotonic() - t0
            blockmirror("status", p_dir)

            print("\n# both sides hold the same bytes")
            identical = True
            for name in VOLUMES:
                proc = tool("qemu-img", "compare", "-f", "raw", "-F", "raw", f"{p_nbd}/{name}", f"{s_nbd}/{name}")
                identical &= proc.returncode == 0 and "Images are identical" in proc.stdout

            total = sum(VOLUMES.values())
            last = st["last_resync"]
            # Changed: chunk 1 and chunks 640-643 and 960 of db (64 KiB chunks), chunk 16 of logs.
            checks = [
                ("qemu-img compare: primary and secondary identical", identical),
                ("the resync was incremental", last["kind"] == "incremental"),
                ("the resync sent only the changed chunks (<= 8 of 1280)", 0 < last["chunks"] <= 8),
                ("the resync snapshot was deleted after the commit", st["snapshots"] == []),
            ]
            print("\nsummary:")
            ok = True
            for what, passed in checks:
                print(f"  [{'ok' if passed else 'FAIL'}] {what}")
                ok &= passed
            print(f"  resync: {last['chunks']} chunks, {format_size(last['bytes'])} of {format_size(total)} "
                  f"({100 * last['bytes'] / total:.2f}%) in {last['seconds'] * 1000:.0f} ms; "
                  f"mirroring again {healed_s:.2f}s after the link returned")
        finally:
            codes = [(d.role, d.stop()) for d in reversed(daemons)]
            if proxy is not None:
                proxy.close()
        for role, code in codes:
            if code != 0:
                print(f"  [FAIL] {role} exited {code}")
                ok = False
        print(f"  daemons stopped cleanly; demo took {time.monotonic() - started:.1f}s")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
