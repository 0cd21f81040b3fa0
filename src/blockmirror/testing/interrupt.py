"""A resync round interrupted part-way, the same way for the tests and the
benchmarks: the link cut by the fault proxy, or kill -9 of either daemon,
once the secondary has received a given share of the round's data; the pair
brought back; and what each attempt of the resync cost, counted so that a
killed daemon does not lose the count.

    meter = ResyncMeter(pair)                 # before the link comes back
    pair.proxy.rate(BPS); pair.proxy.heal()   # a resync round starts, slowly
    interrupt_resync(pair, KILL9_PRIMARY, 0.5, meter)
    ...                                       # the link is held down here
    resume_resync(pair)
    pair.wait_converged()
    meter.received()                          # data bytes the secondary got, both attempts
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from blockmirror.testing.daemon import HarnessError

# How a round can be interrupted.
CUT, KILL9_SECONDARY, KILL9_PRIMARY = "cut", "kill9-secondary", "kill9-primary"
HOWS = (CUT, KILL9_SECONDARY, KILL9_PRIMARY)
ROLES = ("primary", "secondary")


def round_fraction(st: dict) -> float | None:
    """The share of the open round's data bytes that `bytes_done` says moved
    (`resync_progress` of either node's status), or None with no round."""
    prog = st.get("resync_progress")
    if not prog or not prog.get("bytes_total"):
        return None
    return prog["bytes_done"] / prog["bytes_total"]


class ResyncMeter:
    """The resync data bytes of a pair per attempt, across kills and restarts.

    Each daemon's `totals.resync_bytes` counts since that process started
    (the primary: data bytes its rounds handed to its socket, rounds cut
    short included; the secondary: data bytes received). The meter keeps
    marks, one when it is made and one per interruption (`mark`), each with
    every daemon's process and count (a killed daemon's from its last status
    before the kill); a process started since the previous mark counted from
    zero. The fault proxy's `bytes_forwarded` (every byte it read from
    either side: data, frame headers, acks, heartbeats) survives any kill."""

    def __init__(self, pair):
        self.pair = pair
        self.marks: list[dict] = [self._now()]

    def _now(self, last: dict[str, dict] | None = None) -> dict:
        mark: dict = {}
        for role in ROLES:
            d = self.pair.daemon(role)
            if d.running():
                mark[role] = (d.proc, d.status()["totals"]["resync_bytes"])
            else:  # killed: its last status before the kill, if any
                st = (last or {}).get(role)
                mark[role] = (d.proc, st["totals"]["resync_bytes"] if st else None)
        proxy = self.pair.proxy
        mark["proxy"] = proxy.status()["bytes_forwarded"] if proxy is not None else None
        return mark

    def mark(self, last: dict[str, dict] | None = None) -> None:
        """A new attempt begins (call it right after an interruption);
        `last`: the last status of a daemon that was killed, by role."""
        self.marks.append(self._now(last))

    def attempts(self) -> list[dict[str, int | None]]:
        """Per attempt (from one mark to the next, the last one to now), the
        bytes counted by the primary (sent), the secondary (received) and
        the proxy (forwarded, both ways); None where it cannot be known."""
        marks = self.marks + [self._now()]
        out = []
        for a, b in zip(marks, marks[1:]):
            got: dict[str, int | None] = {}
            for role in ROLES:
                (proc_a, va), (proc_b, vb) = a[role], b[role]
                if proc_a is proc_b:
                    got[role] = None if va is None or vb is None else vb - va
                else:  # started again in between: it counted from zero
                    got[role] = vb
            got["proxy"] = None if a["proxy"] is None else b["proxy"] - a["proxy"]
            out.append(got)
        return out

    def total(self, who: str) -> int | None:
        """`who`'s count over every attempt (None if one is unknown)."""
        counts = [att[who] for att in self.attempts()]
        return None if any(c is None for c in counts) else sum(counts)


@dataclass(frozen=True)
class Interruption:
    how: str  # one of HOWS
    round: int  # the id of the round interrupted
    fraction: float  # the share of its data bytes the secondary had received just before
    at: float  # time.perf_counter() of the interruption


def interrupt_resync(pair, how: str, at_fraction: float = 0.5, meter: ResyncMeter | None = None,
                     timeout_s: float | None = None, poll_s: float = 0.02) -> Interruption:
    """Wait until the secondary has received `at_fraction` of the data bytes
    of a resync round (its `resync_progress`), then interrupt it: `cut`
    resets the link at the fault proxy, `kill9-secondary` and
    `kill9-primary` kill that daemon with SIGKILL.

    Returns with the link held down (the proxy cut: no new link can form),
    every daemon still running showing `disconnected`, and a new attempt
    marked on `meter`. A killed daemon is not started again: the caller can
    look at the secondary first (restarting a killed one itself), then
    `resume_resync`."""
    if how not in HOWS:
        raise ValueError(f"unknown interruption {how!r}: one of {', '.join(HOWS)}")
    if pair.proxy is None:
        raise HarnessError("interrupting a resync needs the pair's fault proxy")
    p, s = pair.primary, pair.secondary

    def far_enough(st: dict) -> bool:
        f = round_fraction(st)
        return f is not None and f >= at_fraction
    st = s.wait_for(far_enough, timeout_s, f"a resync round {at_fraction:.0%} received", poll_s)
    last = {"secondary": st}
    at = time.perf_counter()
    if how == KILL9_SECONDARY:
        s.kill9()
    elif how == KILL9_PRIMARY:
        last["primary"] = p.status()
        p.kill9()
    pair.proxy.cut()
    for d in (p, s):
        if d.running():
            d.wait_for(lambda st: st["state"] == "disconnected" and not st["peer_connected"], timeout_s,
                       f"the {d.role} disconnected after the interruption ({how})")
    if meter is not None:
        meter.mark(last)
    return Interruption(how, st["resync_progress"]["round"], round_fraction(st), at)


def resume_resync(pair, rate_bps: float | None = 0) -> None:
    """After `interrupt_resync`: start the killed daemon again (unless the
    caller did), set the link's rate (None: keep it; 0: unlimited) and let
    the link through. The primary restarts after the link is back, so its
    first attempt finds it."""
    if rate_bps is not None:
        pair.proxy.rate(rate_bps)
    if not pair.secondary.running():
        pair.secondary.restart()  # on its port, behind the proxy
    pair.proxy.heal()
    if not pair.primary.running():
        pair.primary.restart()
