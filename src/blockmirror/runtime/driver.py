"""The loop that feeds an engine: one step at a time, on the engine thread.

Everything that happens on the event loop (link events, host writes, timer
expiry, a link becoming writable) is queued and wakes the driver; each
iteration takes *everything* queued and runs one `_step` on the engine
thread. What queued up while the previous step ran is therefore handled as
one batch: host writes are group-committed (one `submit`, one fdatasync),
and on the secondary all messages of a batch share one journal sync and one
Ack. The step returns what to do on the loop (messages to send, host
completions, the next timer, links to kill), applied by `_apply`.

Bounds: the receive queue (messages not yet taken by the engine) pauses the
link's reading beyond `RECV_QUEUE_BYTES_MAX`; sending asks the transport's
free space before polling the engine (see transport.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from blockmirror.runtime.enginethread import EngineThread
from blockmirror.runtime.transport import LinkProtocol

RECV_QUEUE_BYTES_MAX = 32 << 20
# glibc malloc: keep freed memory up to this much instead of handing it back
# to the kernel at once. Every mirrored byte passes through a short-lived
# buffer of 64 KiB-4 MiB (a received frame's data, an NBD payload); with
# glibc's defaults the heap top is trimmed after each batch and the next
# batch faults fresh zeroed pages in again (measured: ~15% of the
# secondary's CPU in page faults and page clearing).
MALLOC_TRIM_THRESHOLD_BYTES = 128 << 20
MALLOC_MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's own upper bound for the dynamic threshold
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_malloc_tuned = False


def tune_malloc() -> bool:
    """Once per process; False where the C library is not glibc."""
    global _malloc_tuned
    if _malloc_tuned:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = (mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES) == 1
          and mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES) == 1)
    _malloc_tuned = ok
    return ok


@dataclass
class StepResult:
    send: list = field(default_factory=list)  # messages for `link`
    link: LinkProtocol | None = None  # the link the engine is linked with
    kill: list = field(default_factory=list)  # (link, reason): close these links
    next_timer: float | None = None
    state: str = ""
    reasons: list = field(default_factory=list)  # why the state may have changed
    extra: dict = field(default_factory=dict)  # role-specific results


class EngineDriver:
    role = "?"
    replies_first = False  # send a step's link messages after its host replies

    def __init__(self, engine_thread: EngineThread, log: logging.Logger):
        tune_malloc()
        self.engine_thread = engine_thread
        self.log = log
        self._events: deque = deque()
        self._events_bytes = 0
        self._paused: set[LinkProtocol] = set()
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._stopping = False
        self._task: asyncio.Task | None = None
        self.state = ""
        self.state_since = time.monotonic()
        self.fatal: BaseException | None = None
        self.on_fatal = None  # callback: the daemon stops
        self.steps = 0

    # -- LinkSink ----------------------------------------------------------------------
    def link_event(self, link: LinkProtocol, kind: str, payload) -> None:
        nbytes = 0
        if kind == "msg":
            data = getattr(payload, "data", None)
            nbytes = len(data) if data is not None else 0
        elif kind == "closed":
            payload = (payload, link.established)
            self._paused.discard(link)
            self.on_link_closed(link, payload[0])
        self._events.append((link, kind, payload))
        self._events_bytes += nbytes
        if self._events_bytes > RECV_QUEUE_BYTES_MAX and kind == "msg":
            link.pause_receiving()
            self._paused.add(link)
        self._wake.set()

    def link_writable(self, link: LinkProtocol) -> None:
        self._wake.set()

    def on_link_closed(self, link: LinkProtocol, reason: str) -> None:
        """Loop-side hook, called as a link's terminal event is queued."""

    # -- the loop ------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.role}-driver")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Finish the step under way, then stop stepping."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._timer is not None:
            self._timer.cancel()

    async def _run(self) -> None:
        more = True  # the first step runs at once (timers, first connect)
        while not self._stopping:
            if not more:
                await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                break
            events = list(self._events)
            self._events.clear()
            self._events_bytes = 0
            for link in self._paused:
                link.resume_receiving()
            self._paused.clear()
            inputs = self.take_inputs()
            try:
                res = await self.engine_thread.call(self._step_guarded, events, inputs)
            except BaseException as exc:  # a bug in a layer below: stop, the restart recovers
                self.fatal = exc
                self.log.critical("engine step failed; stopping (a restart recovers): %r", exc, exc_info=exc)
                if self.on_fatal is not None:
                    self.on_fatal()
                return
            self.steps += 1
            try:
                if self.replies_first:  # host completions resolve before the link send is queued
                    more = self.apply(res)
                    more = self._apply_common(res) or more
                else:
                    more = self._apply_common(res)
                    more = self.apply(res) or more
            except Exception as exc:  # a bug on the loop side: same as above
                self.fatal = exc
                self.log.critical("applying an engine step failed; stopping: %r", exc, exc_info=exc)
                if self.on_fatal is not None:
                    self.on_fatal()
                return

    def _step_guarded(self, events, inputs) -> StepResult:
        return self.step(time.monotonic(), events, inputs)

    def _apply_common(self, res: StepResult) -> bool:
        for link, reason in res.kill:
            if not link.closed:
                self.log.warning("closing link %r: %s", link, reason)
                link.abort(reason)
        more = False
        if res.send and res.link is not None and not res.link.closed:
            more = res.link.writable
            if self.replies_first:
                # After the host completions this step resolved have sent
                # their replies (their callbacks are queued first): a host
                # does not wait for the link's writev. Order between steps
                # is kept (FIFO), and it runs before the next step's result.
                asyncio.get_running_loop().call_soon(self._send_later, res.link, res.send)
            else:
                res.link.send(res.send)
        if res.state and res.state != self.state:
            why = "; ".join(res.reasons) if res.reasons else ("daemon started" if not self.state else "engine decision")
            if self.state:
                self.log.info("state %s -> %s (%s)", self.state, res.state, why)
            else:
                self.log.info("state %s (%s)", res.state, why)
            self.state = res.state
            self.state_since = time.monotonic()
        self._arm_timer(res.next_timer)
        return more

    @staticmethod
    def _send_later(link: LinkProtocol, messages) -> None:
        if not link.closed:
            link.send(messages)

    def _arm_timer(self, at: float | None) -> None:
        if at is None or at == float("inf"):
            at = float("inf")
        if at == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at != float("inf"):
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(max(at, loop.time()) + 0.0005, self._wake.set)

    # -- per role: each daemon also defines step(now, events, inputs) -> StepResult,
    # which runs on the engine thread and feeds the engine. ----------------------------
    def take_inputs(self):
        """Loop side: anything besides link events the step needs."""
        return None

    def apply(self, res: StepResult) -> bool:
        """Loop side; True if another step should run at once."""
        return False
