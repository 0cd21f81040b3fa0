"""systemd integration: the template units pass `systemd-analyze verify`, and
real daemons speak sd_notify (READY=1, STATUS=, WATCHDOG=1, STOPPING=1) on
a socket the test binds, as systemd would with Type=notify."""

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from blockmirror.runtime import sdnotify
from blockmirror.testing.daemon import Daemon
from blockmirror.testing.nodes import make_nodes, primary_args, secondary_args

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNITS = os.path.join(ROOT, "contrib", "systemd")
ROLES = ("primary", "secondary")
_NBD = re.compile(r"nbd://([0-9.]+):(\d+)")


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's: every datagram
    with its arrival time. On READY=1 it connects at once to the NBD address
    named in the STATUS= line, so `ready_nbd_ok` tells whether the port
    already accepted connections when READY=1 was sent."""

    def __init__(self, abstract: bool = False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"blockmirror-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:
            self._dir = tempfile.mkdtemp(prefix="bm-notify-", dir="/tmp")  # short: sun_path has 108 bytes
            path = os.path.join(self._dir, "notify")
            self.sock.bind(path)
            self.env_value = path
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.ready_nbd_ok: bool | None = None
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def env(self, **extra: str) -> dict[str, str | None]:
        return {"NOTIFY_SOCKET": self.env_value, "WATCHDOG_USEC": None, "WATCHDOG_PID": None, **extra}

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            if fields.get("READY") == "1" and self.ready_nbd_ok is None:
                m = _NBD.search(fields.get("STATUS", ""))
                try:
                    with socket.create_connection((m.group(1), int(m.group(2))), timeout=2):
                        self.ready_nbd_ok = True
                except (OSError, AttributeError):
                    self.ready_nbd_ok = False
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def snapshot(self) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, predicate, timeout_s: float = 20.0, what: str = "message") -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for _, fields in self.snapshot():
                if predicate(fields):
                    return fields
            time.sleep(0.02)
        raise AssertionError(f"no {what} within {timeout_s}s; got {[f for _, f in self.snapshot()]}")

    def statuses(self) -> list[str]:
        return [f["STATUS"] for _, f in self.snapshot() if "STATUS" in f]

    def count(self, key: str, since: float = 0.0) -> int:
        return sum(1 for t, f in self.snapshot() if key in f and t >= since)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()
        if hasattr(self, "_dir"):
            shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def notify_sockets():
    made: list[NotifySocket] = []

    def make(abstract: bool = False) -> NotifySocket:
        made.append(NotifySocket(abstract))
        return made[-1]
    yield make
    for s in made:
        s.close()


def stop_and_check(daemon: Daemon, ns: NotifySocket) -> None:
    """SIGTERM: STOPPING=1 arrives (so was sent before the exit) after READY=1, and the exit is clean."""
    assert daemon.stop(signal.SIGTERM) == 0, daemon.log()
    time.sleep(0.2)  # a datagram sent just before the exit is in the queue; let the reader take it
    keys = [f for _, f in ns.snapshot()]
    ready_at = next(i for i, f in enumerate(keys) if f.get("READY") == "1")
    stopping = [i for i, f in enumerate(keys) if f.get("STOPPING") == "1"]
    assert len(stopping) == 1 and stopping[0] > ready_at, keys
    assert keys[stopping[0]].get("STATUS", "").startswith("stopping"), keys


# -- the unit files -------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ROLES)
def test_unit_file_verifies(role, tmp_path):
    """`systemd-analyze verify` accepts the unit with no warning (ExecStart
    pointed at this interpreter: verify insists the binary exists).
    systemd-analyze missing is a failure: scripts/ensure-deps installs it."""
    analyze = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    assert os.access(analyze, os.X_OK), "systemd-analyze is missing: run scripts/ensure-deps (Debian package systemd)"
    name = f"blockmirror-{role}@.service"
    with open(os.path.join(UNITS, name)) as f:
        text = f.read()
    exec_start = f"ExecStart=/usr/bin/blockmirror {role} /var/lib/blockmirror/%i --config /etc/blockmirror/%i.toml"
    assert exec_start + "\n" in text
    for line in ("Type=notify", "NotifyAccess=main", "Restart=on-failure", "WatchdogSec=30s", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "ReadWritePaths=/var/lib/blockmirror", "ProtectHome=yes", "PrivateTmp=yes",
                 "ProtectKernelTunables=yes", "ProtectControlGroups=yes", "RestrictSUIDSGID=yes",
                 "LockPersonality=yes"):
        assert f"\n{line}\n" in text, line
    stop_s = int(re.search(r"\nTimeoutStopSec=(\d+)s\n", text).group(1))
    assert stop_s >= (5 + 30 if role == "primary" else 10) + 5  # the ordered stop fits, with room to flush
    (tmp_path / name).write_text(text.replace("ExecStart=/usr/bin/blockmirror ",
                                              f"ExecStart={sys.executable} -m blockmirror "))
    proc = subprocess.run([analyze, "verify", str(tmp_path / name)], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode == 0 and not proc.stderr.strip() and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_unit_verify_catches_mistakes(tmp_path):
    """The check above is not vacuous: a misspelt setting is a warning on stderr."""
    with open(os.path.join(UNITS, "blockmirror-primary@.service")) as f:
        text = f.read().replace("Type=notify", "Type=notifi").replace("/usr/bin/blockmirror", sys.executable)
    (tmp_path / "blockmirror-primary@.service").write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "blockmirror-primary@.service")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "notifi" in proc.stderr


# -- the protocol, in process ------------------------------------------------------------------

def test_notifier_is_a_noop_without_notify_socket():
    n = sdnotify.Notifier({})
    assert not n.enabled and n.watchdog_s is None
    assert n.notify("READY=1") is False


def test_watchdog_interval_from_environment():
    pid = os.getpid()
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "400000"}, pid) == pytest.approx(0.2)
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(pid)}, pid) == pytest.approx(0.2)
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(pid + 1)}, pid) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}, pid) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "x"}, pid) is None
    assert sdnotify.socket_address("@abc") == "\0abc" and sdnotify.socket_address("/run/x") == "/run/x"
    assert sdnotify.socket_address("vsock:2:3") is None and sdnotify.socket_address(None) is None


def test_notifier_abstract_socket_one_datagram(notify_sockets):
    ns = notify_sockets(abstract=True)
    n = sdnotify.Notifier({"NOTIFY_SOCKET": ns.env_value})
    n.ready("serving\nmultiline")
    n.status("mirroring")
    n.status("mirroring")  # unchanged: not sent again
    n.stopping()
    ns.wait_for(lambda f: f.get("STOPPING") == "1")
    got = [f for _, f in ns.snapshot()]
    assert got[0]["READY"] == "1" and got[0]["STATUS"] == "serving multiline"
    assert got[1:] == [{"STATUS": "mirroring"}, {"STOPPING": "1", "STATUS": "stopping"}]


def test_notifier_survives_a_missing_socket():
    n = sdnotify.Notifier({"NOTIFY_SOCKET": "/nonexistent/notify"})
    assert n.enabled and n.notify("READY=1") is False


def test_watchdog_pings_from_the_loop(notify_sockets):
    ns = notify_sockets()
    n = sdnotify.Notifier({"NOTIFY_SOCKET": ns.env_value, "WATCHDOG_USEC": "100000"})

    async def main():
        n.start()
        await asyncio.sleep(0.5)
        time.sleep(0.5)  # a stuck loop: no pings
        await asyncio.sleep(0.3)
        await n.close()
    asyncio.run(main())
    time.sleep(0.1)
    pings = [t for t, f in ns.snapshot() if "WATCHDOG" in f]
    assert 6 <= len(pings) <= 20, pings  # every 0.05 s for 0.8 s of a running loop
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) >= 0.4  # the blocked loop did not ping


# -- real daemons -------------------------------------------------------------------------------

def test_pair_notifies(tmp_path, notify_sockets):
    p_dir, s_dir, secret = make_nodes(tmp_path)
    s_ns = notify_sockets(abstract=True)
    p_ns = notify_sockets()
    secondary = Daemon("secondary", s_dir, *secondary_args(secret), env=s_ns.env())
    primary = None
    try:
        s_ns.wait_for(lambda f: f.get("READY") == "1", what="READY=1 from the secondary")
        assert s_ns.ready_nbd_ok, "READY=1 before the secondary's NBD port accepted connections"
        primary = Daemon("primary", p_dir, *primary_args(secret, secondary.listen),
                         env=p_ns.env(WATCHDOG_USEC="400000"))
        ready = p_ns.wait_for(lambda f: f.get("READY") == "1", what="READY=1 from the primary")
        assert ready["STATUS"] == f"serving 2 volumes on {primary.nbd_uri}"
        assert ready["MAINPID"] == str(primary.pid)
        assert p_ns.ready_nbd_ok, "READY=1 before the primary's NBD port accepted connections"

        p_ns.wait_for(lambda f: f.get("STATUS", "").startswith("mirroring"), what="STATUS=mirroring")
        s_ns.wait_for(lambda f: f.get("STATUS", "").startswith("mirroring"), what="secondary STATUS=mirroring")

        since = time.monotonic()
        time.sleep(1.5)
        pings = p_ns.count("WATCHDOG", since)
        assert 3 <= pings <= 30, pings  # every 0.2 s: about 7
        assert s_ns.count("WATCHDOG") == 0  # no WATCHDOG_USEC, no pings

        stop_and_check(primary, p_ns)
        s_ns.wait_for(lambda f: f.get("STATUS", "").startswith("disconnected"), what="secondary STATUS=disconnected")
        stop_and_check(secondary, s_ns)
    finally:
        for d in (primary, secondary):
            if d is not None and d.running():
                d.kill9()


def test_standalone_primary_notifies(tmp_path, notify_sockets):
    p_dir, _, _ = make_nodes(tmp_path)
    ns = notify_sockets()
    primary = Daemon("primary", p_dir, "--nbd", "127.0.0.1:0", env=ns.env(WATCHDOG_USEC="400000",
                                                                           WATCHDOG_PID=None))
    try:
        ready = ns.wait_for(lambda f: f.get("READY") == "1", what="READY=1")
        assert ready["STATUS"] == f"standalone: serving 2 volumes on {primary.nbd_uri}"
        assert ns.ready_nbd_ok
        ns.wait_for(lambda f: f.get("WATCHDOG") == "1", what="WATCHDOG=1")
        stop_and_check(primary, ns)
    finally:
        if primary.running():
            primary.kill9()


def test_watchdog_pid_of_another_process_means_no_pings(tmp_path, notify_sockets):
    p_dir, _, _ = make_nodes(tmp_path)
    ns = notify_sockets()
    primary = Daemon("primary", p_dir, "--nbd", "127.0.0.1:0",
                     env=ns.env(WATCHDOG_USEC="100000", WATCHDOG_PID="1"))
    try:
        ns.wait_for(lambda f: f.get("READY") == "1", what="READY=1")
        time.sleep(0.5)
        assert ns.count("WATCHDOG") == 0
        stop_and_check(primary, ns)
    finally:
        if primary.running():
            primary.kill9()
