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
import shlex
import subprocess
import sys
import tempfile
import time

from blockmirror.faultproxy import FaultProxyThread
from blockmirror.testing.daemon import Daemon, HarnessError, converged
from blockmirror.testing.tools import qemu_io, run_tool
from blockmirror.units import format_size

VOLUMES = {"db": 64 << 20, "logs": 16 << 20}
LINK_TIMEOUT = "1"


def show_command(cmd: list[str], background: bool = False) -> None:
    print(f"$ {' '.join(shlex.quote(c) for c in cmd)}{' &' if background else ''}")


def show_output(out: str) -> None:
    out = out.strip()
    if out:
        print("  " + out.replace("\n", "\n  "))


def blockmirror(*args: str) -> None:
    print()
    show_command(["blockmirror", *args])
    proc = subprocess.run([sys.executable, "-m", "blockmirror", *args], capture_output=True, text=True, timeout=60)
    print(proc.stdout.rstrip())
    if proc.returncode != 0:
        print(proc.stderr.rstrip())
        raise SystemExit(f"demo failed: blockmirror {args[0]} exited {proc.returncode}")


def host_writes(uri: str, *commands: str) -> None:
    """qemu-io writes through NBD, shown as a user would type them."""
    show_command(["qemu-io", "-f", "raw", *(arg for c in commands for arg in ("-c", c)), uri])
    show_output(qemu_io(uri, *commands))


def identical(primary_uri: str, secondary_uri: str) -> bool:
    cmd = ["qemu-img", "compare", "-f", "raw", "-F", "raw", primary_uri, secondary_uri]
    show_command(cmd)
    try:
        out = run_tool(cmd).stdout
    except HarnessError as exc:  # exit 1: the images differ
        show_output(str(exc))
        return False
    show_output(out)
    return "Images are identical" in out


def start_daemon(role: str, node_dir: str, *args: str) -> Daemon:
    print()
    show_command(["blockmirror", role, node_dir, *args], background=True)
    daemon = Daemon(role, node_dir, *args)
    for line in daemon.lines:
        print(f"  {line}")
    return daemon


class Demo:
    """The pair in a temporary directory, and the steps of the story."""

    def __init__(self, tmp: str):
        self.p_dir, self.s_dir = os.path.join(tmp, "primary"), os.path.join(tmp, "secondary")
        self.secret = os.path.join(tmp, "secret")
        self.daemons: list[Daemon] = []
        self.proxy: FaultProxyThread | None = None

    def init_nodes(self) -> None:
        with open(self.secret, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        os.chmod(self.secret, 0o600)
        vols = [a for name, size in VOLUMES.items() for a in ("--volume", f"{name}={size >> 20}MiB")]
        blockmirror("init", self.p_dir, *vols)
        blockmirror("init", self.s_dir, *vols)

    def start_pair(self) -> None:
        self.secondary = start_daemon("secondary", self.s_dir, "--listen", "127.0.0.1:0", "--secret-file",
                                      self.secret, "--nbd", "127.0.0.1:0", "--link-timeout", LINK_TIMEOUT)
        self.daemons.append(self.secondary)
        self.proxy = FaultProxyThread(self.secondary.listen)
        print(f"\n# a fault proxy on 127.0.0.1:{self.proxy.port} stands for the network between the nodes")
        self.primary = start_daemon("primary", self.p_dir, "--nbd", "127.0.0.1:0", "--peer",
                                    f"127.0.0.1:{self.proxy.port}", "--secret-file", self.secret, "--mode", "sync",
                                    "--link-timeout", LINK_TIMEOUT)
        self.daemons.append(self.primary)
        self.primary.wait_for(converged, what="initial sync")

    def write_while_mirroring(self) -> None:
        print("\n# a host writes 8 MiB to db and 1 MiB to logs through NBD (sync mode: each write is")
        print("# acknowledged once it is durable on both nodes)")
        host_writes(self.primary.uri("db"), "write -P 0xa1 0 8M")
        host_writes(self.primary.uri("logs"), "write -P 0xb2 0 1M")
        self.primary.wait_for(converged, what="mirroring")
        blockmirror("status", self.p_dir)

    def write_during_outage(self) -> None:
        print("\n# the link fails (the proxy resets both sides and refuses new connections)")
        self.proxy.cut()
        self.primary.wait_for(lambda st: st["state"] == "disconnected", what="link-failure detection")
        print("\n# the host keeps writing while the link is down: 3 small writes to db, 1 to logs")
        host_writes(self.primary.uri("db"), "write -P 0xc3 100k 4k", "write -P 0xc4 40M 200k", "write -P 0xc5 60M 20")
        host_writes(self.primary.uri("logs"), "write -P 0xd6 1M 4k")
        print("\n# the primary is disconnected; its snapshot remembers the changed chunks")
        blockmirror("status", self.p_dir)
        blockmirror("status", self.s_dir)

    def heal(self) -> tuple[dict, float]:
        """The status once mirroring again, and the seconds it took."""
        print("\n# the link returns: the primary reconnects and sends only what changed")
        t0 = time.monotonic()
        self.proxy.heal()
        st = self.primary.wait_for(converged, what="resync")
        healed_s = time.monotonic() - t0
        blockmirror("status", self.p_dir)
        return st, healed_s

    def checks(self, st: dict) -> list[tuple[str, bool]]:
        print("\n# both sides hold the same bytes")
        same = all([identical(self.primary.uri(name), self.secondary.uri(name)) for name in VOLUMES])
        last = st["last_resync"]
        # Changed: chunk 1 and chunks 640-643 and 960 of db (64 KiB chunks), chunk 16 of logs.
        return [
            ("qemu-img compare: primary and secondary identical", same),
            ("the resync was incremental", last["kind"] == "incremental"),
            ("the resync sent only the changed chunks (<= 8 of 1280)", 0 < last["chunks"] <= 8),
            ("the resync snapshot was deleted after the commit", st["snapshots"] == []),
        ]

    def stop(self) -> list[tuple[str, int | None]]:
        """Each daemon's exit code after SIGTERM (None: it had to be killed)."""
        codes: list[tuple[str, int | None]] = []
        for daemon in reversed(self.daemons):
            try:
                codes.append((daemon.role, daemon.stop()))
            except HarnessError:
                codes.append((daemon.role, None))
        if self.proxy is not None:
            self.proxy.close()
        return codes


def summary(checks: list[tuple[str, bool]], st: dict, healed_s: float) -> bool:
    print("\nsummary:")
    for what, passed in checks:
        print(f"  [{'ok' if passed else 'FAIL'}] {what}")
    total = sum(VOLUMES.values())
    last = st["last_resync"]
    print(f"  resync: {last['chunks']} chunks, {format_size(last['bytes'])} of {format_size(total)} "
          f"({100 * last['bytes'] / total:.2f}%) in {last['seconds'] * 1000:.0f} ms; "
          f"mirroring again {healed_s:.2f}s after the link returned")
    return all(passed for _, passed in checks)


def run(demo: Demo) -> bool:
    print("blockmirror demo: a primary mirrors to a secondary over TCP and survives a link failure")
    demo.init_nodes()
    demo.start_pair()
    demo.write_while_mirroring()
    demo.write_during_outage()
    st, healed_s = demo.heal()
    return summary(demo.checks(st), st, healed_s)


def main() -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="blockmirror-demo-") as tmp:
        demo = Demo(tmp)
        try:
            ok = run(demo)
        except HarnessError as exc:
            raise SystemExit(f"demo failed: {exc}") from None
        finally:
            codes = demo.stop()
        for role, code in codes:
            if code != 0:
                print(f"  [FAIL] {role} " + ("did not stop on SIGTERM" if code is None else f"exited {code}"))
                ok = False
        if ok:
            print(f"  daemons stopped cleanly; demo took {time.monotonic() - started:.1f}s")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
