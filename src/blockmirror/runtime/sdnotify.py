"""systemd's readiness protocol (sd_notify(3)) without libsystemd.

A notification is one datagram of newline-separated assignments
(`READY=1`, `STATUS=...`, `WATCHDOG=1`, `STOPPING=1`) sent to the AF_UNIX
socket named by `$NOTIFY_SOCKET` (a path, or an abstract name when it
starts with '@'). Without `$NOTIFY_SOCKET` (not run by systemd with
Type=notify) every call is a no-op.

The daemons send READY=1 once they serve, STATUS= when their state changes
(polled from the status they report), WATCHDOG=1 every half
`$WATCHDOG_USEC` from the asyncio loop (a stuck loop stops the pings, and
systemd restarts the service), and STOPPING=1 when shutdown begins.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping

log = logging.getLogger("blockmirror.sdnotify")

STATUS_INTERVAL_S = 1.0  # how often the state is polled for STATUS= lines


def socket_address(value: str | None) -> str | None:
    """The sendto() address of `$NOTIFY_SOCKET`; None when unset or of a kind not supported here."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # e.g. vsock:...: not used for services on the host


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between two WATCHDOG=1 (half `$WATCHDOG_USEC`), or None when
    the watchdog is off or meant for another process (`$WATCHDOG_PID`)."""
    usec, for_pid = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
    if not usec or (for_pid and for_pid.strip() != str(pid)):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


def summary(st) -> str:
    """One STATUS= line for a Status: the state, the sync progress, why the link is down."""
    text = str(st.state)
    prog = st.resync_progress
    if prog is not None and prog.bytes_total:
        text += f" {min(100, int(100 * prog.bytes_done / prog.bytes_total))}%"
    own = st.primary
    if own is not None and own.mode is not None:
        if text == "disconnected" and own.last_link_error:
            text += f": {own.last_link_error}"
        elif text == "mirroring" and own.lag_writes:
            text += f", {own.lag_writes} writes behind"
    elif st.secondary is not None and text == "disconnected":
        text += ": waiting for the primary"
    return text


class Notifier:
    """The notifications of one daemon process."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        self.address = socket_address(env.get("NOTIFY_SOCKET"))
        self.watchdog_s = watchdog_interval(env, os.getpid()) if self.address else None
        self._sock: socket.socket | None = None
        self._status: str | None = None
        self._tasks: list[asyncio.Task] = []
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send the assignments in one datagram; False when disabled or not sent."""
        if self.address is None:
            return False
        data = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)  # never stall the loop on a full receive queue
            self._sock.sendto(data, self.address)
            return True
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd on %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
            return False

    def ready(self, status: str) -> None:
        self._status = status
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, text: str) -> None:
        """STATUS=text, if it changed."""
        if text != self._status:
            self._status = text
            self.notify(f"STATUS={text}")

    def stopping(self, status: str = "stopping") -> None:
        self._status = status
        self.notify("STOPPING=1", f"STATUS={status}")

    def start(self, status: Callable[[], Awaitable[object]] | None = None) -> None:
        """Start the watchdog pings and (given an async `status()` that
        returns a Status) the STATUS= poller, in the running loop."""
        loop = asyncio.get_running_loop()
        if self.watchdog_s is not None:
            self._tasks.append(loop.create_task(self._watchdog(self.watchdog_s), name="sd-watchdog"))
        if status is not None and self.enabled:
            self._tasks.append(loop.create_task(self._poll(status), name="sd-status"))

    def stop_polling(self) -> None:
        """No more STATUS= from the poller (shutdown: the state is `stopping`)."""
        for task in self._tasks:
            if task.get_name() == "sd-status":
                task.cancel()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _watchdog(self, interval_s: float) -> None:
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval_s)

    async def _poll(self, status: Callable[[], Awaitable[object]]) -> None:
        while True:
            try:
                self.status(summary(await status()))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a status line is not worth a crash; shutdown races are fine
                log.debug("status for systemd failed", exc_info=True)
            await asyncio.sleep(STATUS_INTERVAL_S)
