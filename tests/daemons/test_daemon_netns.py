"""Link failures made by the kernel, not by a proxy: the primary and the
secondary run in two network namespaces joined by a veth pair on a private
link-local /30; iptables DROP (a silent black hole), iptables REJECT with a
TCP reset, and `ip link set ... down` break the link while the primary keeps
serving its host. The test creates and removes the namespaces; the host's
own interfaces and rules are never touched (iptables runs inside the
secondary's namespace, on its own tables)."""

import os
import random
import subprocess
import time

import pytest

from blockmirror.testing.daemon import Daemon, HarnessError, converged
from blockmirror.testing.nodes import FAST_LINK, VOLUMES, make_nodes, primary_args
from blockmirror.testing.tools import assert_identical, qemu_io, run_tool as run

VOLUME_BYTES = sum(VOLUMES.values())


class Netns:
    """Two namespaces `bmtest-p-<r>` and `bmtest-s-<r>`, a veth pair between
    them on 169.254.X.Y/30, loopback up in both."""

    def __init__(self):
        rng = random.Random()
        r = f"{rng.randrange(16 ** 6):06x}"
        self.p, self.s = f"bmtest-p-{r}", f"bmtest-s-{r}"
        self.p_dev, self.s_dev = f"bmp{r}", f"bms{r}"  # at most 15 characters
        third, fourth = rng.randrange(1, 255), 4 * rng.randrange(0, 64)
        self.p_ip, self.s_ip = f"169.254.{third}.{fourth + 1}", f"169.254.{third}.{fourth + 2}"
        self.made = []
        # `ip netns add` bind-mounts /run/netns the first time; undo that at the end if it was us.
        self.mounted_run_netns = subprocess.run(["mountpoint", "-q", "/run/netns"]).returncode == 0
        try:
            for ns in (self.p, self.s):
                run(["ip", "netns", "add", ns])
                self.made.append(ns)
            run([*self.exec(self.p), "ip", "link", "add", self.p_dev, "type", "veth", "peer", "name",
                 self.s_dev, "netns", self.s])
            for ns, dev, ip in ((self.p, self.p_dev, self.p_ip), (self.s, self.s_dev, self.s_ip)):
                run([*self.exec(ns), "ip", "addr", "add", f"{ip}/30", "dev", dev])
                run([*self.exec(ns), "ip", "link", "set", dev, "up"])
                run([*self.exec(ns), "ip", "link", "set", "lo", "up"])
        except BaseException:
            self.close()
            raise

    def exec(self, ns: str) -> tuple[str, ...]:
        # nsenter joins only the network namespace; `ip netns exec` / `ip -n`
        # also remount / and /sys, which fails where / is not a mount (a chroot).
        return ("nsenter", f"--net=/run/netns/{ns}")

    def iptables(self, ns: str, *rule: str) -> None:
        run([*self.exec(ns), "iptables", *rule])

    def close(self) -> None:
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.made = []
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.strip()
        if not self.mounted_run_netns and not left:
            subprocess.run(["umount", "/run/netns"], capture_output=True, timeout=30)


@pytest.mark.root
def test_kernel_link_faults_between_network_namespaces(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("needs root to create network namespaces and iptables rules (run the tests as root)")
    net = Netns()
    p = s = None
    try:
        p_dir, s_dir, secret = make_nodes(tmp_path)
        # Its read-only NBD on the veth address too, for qemu-img compare from the primary's namespace.
        s = Daemon("secondary", s_dir, "--listen", f"{net.s_ip}:0", "--secret-file", secret,
                   "--nbd", f"{net.s_ip}:0", *FAST_LINK, prefix=net.exec(net.s))
        port = s.listen[1]
        p = Daemon("primary", p_dir, *primary_args(secret, (net.s_ip, port), "--reconnect-max", "0.5"),
                   prefix=net.exec(net.p))

        def write(*commands: str) -> None:
            qemu_io(p.uri("vol0"), *commands, prefix=net.exec(net.p))

        p.wait_for(converged, what="initial sync across the veth pair")
        write("write -P 0x10 0 12M")
        p.wait_for(converged, what="mirroring of 12 MiB")
        dport = ["-p", "tcp", "--dport", str(port)]
        sport = ["-p", "tcp", "--sport", str(port)]
        scenarios = [
            # name, break, heal, expected reason for the link going down
            ("iptables DROP",
             lambda: (net.iptables(net.s, "-I", "INPUT", *dport, "-j", "DROP"),
                      net.iptables(net.s, "-I", "OUTPUT", *sport, "-j", "DROP")),
             lambda: (net.iptables(net.s, "-D", "INPUT", *dport, "-j", "DROP"),
                      net.iptables(net.s, "-D", "OUTPUT", *sport, "-j", "DROP")),
             "link silent"),
            ("iptables REJECT tcp-reset",
             lambda: net.iptables(net.s, "-I", "INPUT", *dport, "-j", "REJECT", "--reject-with", "tcp-reset"),
             lambda: net.iptables(net.s, "-D", "INPUT", *dport, "-j", "REJECT", "--reject-with", "tcp-reset"),
             "Connection reset by peer"),
            ("ip link down",
             lambda: run([*net.exec(net.p), "ip", "link", "set", net.p_dev, "down"]),
             lambda: run([*net.exec(net.p), "ip", "link", "set", net.p_dev, "up"]),
             "link silent"),
        ]
        for i, (name, breaks, heals, why) in enumerate(scenarios):
            log_mark = len(p.log())
            write(f"write -P {0x20 + i} {i}M 64k")
            p.wait_for(converged, what=f"mirroring before {name}")
            t0 = time.monotonic()
            breaks()
            try:
                p.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10, what=f"{name}: link down")
                detected_s = time.monotonic() - t0
                st = p.status()
                assert len(st["snapshots"]) == 1, f"{name}: the link failure takes one snapshot"
                # The host keeps writing while the link is down: 3 chunks.
                write(f"write -P {0x30 + i} 4M 64k", f"write -P {0x40 + i} 8M 128k")
                s.wait_for(lambda st: st["state"] == "disconnected", timeout_s=10,
                           what=f"{name}: the secondary noticing")
            finally:
                heals()
            st = p.wait_for(converged, timeout_s=30, what=f"convergence after {name}")
            down = [ln for ln in p.log()[log_mark:].splitlines() if "state mirroring -> disconnected" in ln]
            assert down and why in down[0], f"{name}: {down}"
            if why == "Connection reset by peer":
                assert detected_s < 1.0, f"{name}: a reset took {detected_s:.2f}s to notice"
            else:
                assert detected_s < 4.0, f"{name}: a 1 s link timeout took {detected_s:.2f}s"
            last = st["last_resync"]
            assert last["kind"] == "incremental", (name, last)
            # Three chunks written while down (plus what was in flight): a small fraction.
            assert 0 < last["bytes"] <= 6 * 65536 and last["bytes"] < VOLUME_BYTES / 50, (name, last)
            assert st["snapshots"] == [], f"{name}: the resync snapshot is deleted"
            assert s.wait_for(lambda st: st["state"] == "mirroring", timeout_s=10)["consistent"]
            # qemu-img compare inside the primary's namespace (its loopback NBD, the secondary's on the veth)
            assert_identical(p, s, prefix=net.exec(net.p))
    finally:
        for d in (p, s):
            if d is not None and d.proc.poll() is None:
                try:
                    d.stop(timeout_s=15)
                except HarnessError:
                    pass
        net.close()
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert net.p not in left and net.s not in left
