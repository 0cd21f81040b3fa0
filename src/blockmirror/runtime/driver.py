"""The asyncio driver of a node (engine/): one step at a time, on the
engine thread.

Everything that happens on the event loop (a link's handshake ends, its
messages arrive, it closes; host requests; a timer expires; a link becomes
writable) is queued and wakes the driver; each iteration turns *everything*
queued into the node's typed events and runs one `step` on the engine
thread. What queued up while the previous step ran is one batch: host
writes are group-committed (one fdatasync) and on the secondary all
messages of a batch share one journal sync and one Ack. The step's Output
is applied on the loop: links opened, closed, sent to; host requests
completed; log lines written; the timer armed.

Bounds: the receive queue (messages not yet taken by the node) pauses the
link's reading beyond `RECV_QUEUE_BYTES_MAX`; sending asks the transport's
free space (`send_budget`) before stepping.
"""

from __future__ import annotations

import abc
import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections import deque

from blockmirror.engine import (
    Accepted,
    HostRequests,
    LinkClosed,
    LinkUp,
    Output,
    Received,
)
from blockmirror.runtime.enginethread import EngineThread
from blockmirror.runtime.transport import LinkProtocol
from blockmirror.status import LinkStatus, PairStatus, Status

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


class NodeDriver(abc.ABC):
    """Feeds one node (PrimaryNode or SecondaryNode). A daemon subclasses it
    for its I/O: `start_link` (dial or answer), `complete` (host requests)."""

    role = "?"
    replies_first = False  # send a step's messages after its host completions are resolved

    def __init__(self, engine_thread: EngineThread, log: logging.Logger):
        tune_malloc()
        self.engine_thread = engine_thread
        self.log = log
        self.node = None  # set by the daemon's open(), on the engine thread
        self.links: dict[int, LinkProtocol] = {}  # node link id -> link
        self._events: deque = deque()  # typed events, or ("msg", link_id, message)
        self._events_bytes = 0
        self._host: list = []
        self._paused: set[LinkProtocol] = set()
        self._admin: dict = {}  # admin commands awaiting their step's reply
        self._admin_tokens = 0
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

    # -- LinkSink (the transport's callbacks, on the loop) -----------------------------------
    def link_event(self, link: LinkProtocol, kind: str, payload) -> None:
        lid = link.node_link
        if kind == "msg":
            self._events.append(("msg", lid, payload))
            data = getattr(payload, "data", None)
            if data is not None:
                self._events_bytes += len(data)
                if self._events_bytes > RECV_QUEUE_BYTES_MAX:
                    link.pause_receiving()
                    self._paused.add(link)
        elif kind == "up":
            self._events.append(LinkUp(lid, payload))
        elif kind == "closed":
            self._paused.discard(link)
            if self.links.get(lid) is link:
                del self.links[lid]
            self.on_link_closed(link, payload)
            self._events.append(LinkClosed(lid, payload, link.peer_error_code))
        self._wake.set()

    def link_writable(self, link: LinkProtocol) -> None:
        self._wake.set()

    def on_link_closed(self, link: LinkProtocol, reason: str) -> None:
        """Loop-side hook, called as a link's terminal event is queued."""

    def accepted(self, link: LinkProtocol) -> None:
        """Secondary: `link` may start its handshake (the node answers)."""
        self.links[link.node_link] = link
        self._events.append(Accepted(link.node_link))
        self._wake.set()

    def host_request(self, item) -> None:
        self._host.append(item)
        self._wake.set()

    def _take_events(self) -> list:
        """Queued link events in order, consecutive messages of one link as
        one Received batch; host requests after them."""
        out: list = []
        batch: list | None = None
        batch_link = None
        for ev in self._events:
            if isinstance(ev, tuple):
                _, lid, msg = ev
                if batch is None or lid != batch_link:
                    batch, batch_link = [], lid
                    out.append(Received(lid, batch))
                batch.append(msg)
            else:
                out.append(ev)
                batch = None
        self._events.clear()
        self._events_bytes = 0
        for link in self._paused:
            link.resume_receiving()
        self._paused.clear()
        if self._host:
            out.append(HostRequests(self._host))
            self._host = []
        return out

    # -- the loop ----------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.role}-driver")

    async def stop(self) -> None:
        """Finish the step under way, then stop stepping."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._timer is not None:
            self._timer.cancel()

    def send_budget(self) -> int:
        return 1 << 62

    async def _run(self) -> None:
        more = True  # the first step runs at once (timers, the first dial, recovery's log lines)
        while not self._stopping:
            if not more:
                await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                break
            events = self._take_events()
            budget = self.send_budget()
            try:
                out = await self.engine_thread.call(self._step, events, budget)
            except BaseException as exc:  # a bug or a failed disk below: stop, the restart recovers
                self._die("engine step failed; stopping (a restart recovers)", exc)
                return
            self.steps += 1
            try:
                more = self.apply(out)
            except Exception as exc:  # a bug on the loop side: same as above
                self._die("applying an engine step failed; stopping", exc)
                return
            if budget == 0 and out.link is not None and self.send_budget() > 0:
                more = True  # the link came up in this step: what the node queued for it goes at once

    def _die(self, what: str, exc: BaseException) -> None:
        self.fatal = exc
        self.log.critical("%s: %r", what, exc, exc_info=exc)
        if self.on_fatal is not None:
            self.on_fatal()

    def _step(self, events: list, budget: int) -> Output:
        return self.node.step(time.monotonic(), events, budget)

    async def step_once(self, events: list) -> Output:
        """One step outside the loop (the final Stop), applied here."""
        out = await self.engine_thread.call(self._step, events, 1 << 62)
        self.apply(out)
        return out

    def apply(self, out: Output) -> bool:
        """Apply a step's Output on the loop; True if another step should run
        at once (the link took everything and may take more)."""
        if self.replies_first:
            self.complete(out.completions)
        for close in out.close:
            link = self.links.pop(close.link, None)
            if link is None or link.closed:
                continue
            if close.last:
                link.send(list(close.last))
            if close.reset:
                self.log.warning("closing link %r: %s", link, close.reason)
                link.abort(close.reason)
            else:
                link.close(close.reason)
        for start in out.start:
            self.start_link(start)
        more = False
        link = self.links.get(out.link) if out.link is not None else None
        if out.send and link is not None and not link.closed:
            more = link.writable
            if self.replies_first:
                # After the host completions this step resolved have sent
                # their replies (their callbacks are queued first): a host
                # does not wait for the link's writev. Order between steps
                # is kept (FIFO), and it runs before the next step's result.
                asyncio.get_running_loop().call_soon(self._send_later, link, out.send)
            else:
                link.send(out.send)
        for line in out.logs:
            self.log.log(line.level, "%s", line.text)
        for token, result in out.replies:
            future = self._admin.pop(token, None)
            if future is not None and not future.done():
                future.set_result(result)
        if out.state and out.state != self.state:
            self.state = out.state
            self.state_since = time.monotonic()
        if not self.replies_first:
            self.complete(out.completions)
        self._arm_timer(out.next_timer)
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

    # -- status ------------------------------------------------------------------------------
    async def status(self) -> Status:
        """The node's status with what only the daemon knows."""
        st: Status = await self.engine_thread.call(self.node.status, time.monotonic())
        st.pair = PairStatus(self.pair.name, str(self.pair.uuid))
        st.node = self.storage.path
        link = self.current_link()
        st.link = None if link is None else LinkStatus(link.peer, link.established, link.tls, link.bytes_sent,
                                                       link.bytes_received)
        await self.add_status(st, link)
        st.state_seconds = round(time.monotonic() - self.state_since, 3)
        st.engine_steps = self.steps
        return st

    async def admin(self, make_event):
        """Run an admin command as an event of the node's next step;
        `make_event(token)` builds it. Its reply (a result, or an error
        raised here) comes in that step's Output.replies."""
        self._admin_tokens += 1
        token = ("admin", self._admin_tokens)
        future = asyncio.get_running_loop().create_future()
        self._admin[token] = future
        self._events.append(make_event(token))
        self._wake.set()
        result = await future
        if isinstance(result, BaseException):
            raise result
        return result

    async def user_snapshot(self, label: str) -> dict:
        """`blockmirror snapshot create` on a running node (control socket)."""
        return {"error": f"a running {self.role} takes no user snapshots: its volumes follow its primary, and "
                         f"may hold a resync round half-applied",
                "hint": "snapshot the primary (blockmirror snapshot create PRIMARY_DIR --label L), or stop "
                        "this daemon first"}

    async def start_verify(self, req: dict) -> dict:
        """`blockmirror verify` (control socket): the primary compares."""
        return {"error": f"a running {self.role} does not start a verify: the primary compares its volumes "
                         f"with this node's",
                "hint": "run it on the primary's directory: blockmirror verify PRIMARY_DIR"}

    # -- per role ----------------------------------------------------------------------------
    def current_link(self) -> LinkProtocol | None:
        """The link status shows: the active one, or the newest attempt."""
        return None

    async def add_status(self, st: Status, link: LinkProtocol | None) -> None:
        """The role's own status fields."""

    @abc.abstractmethod
    def start_link(self, start) -> None:
        """A Dial (primary) or Answer (secondary) from the node."""

    def complete(self, completions) -> None:
        """Host requests the node completed (primary)."""
