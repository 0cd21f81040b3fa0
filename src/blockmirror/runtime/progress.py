"""A progress line for initial sync and resync, on a terminal.

Polls the daemon's status twice a second; while a round is under way it
redraws one stderr line with done/total, rate and ETA, and ends it with a
newline when the round ends. Log lines written meanwhile simply scroll it.
"""

from __future__ import annotations

import asyncio
import sys
import time

from blockmirror.units import format_size

INTERVAL_S = 0.5


class Progress:
    def __init__(self, status, stream=sys.stderr):
        self._status = status  # async () -> dict
        self._stream = stream
        self._task = asyncio.get_running_loop().create_task(self._run(), name="progress")
        self._shown = False
        self._round = None
        self._samples: list[tuple[float, float]] = []

    @classmethod
    def maybe(cls, mode: str, status, stream=sys.stderr) -> Progress | None:
        if mode == "never" or (mode == "auto" and not stream.isatty()):
            return None
        return cls(status, stream)

    def stop(self) -> None:
        self._task.cancel()
        if self._shown:
            self._stream.write("\n")
            self._stream.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL_S)
            try:
                st = await self._status()
            except Exception:  # noqa: BLE001 - the line is cosmetic; shutdown races are fine
                continue
            self.draw(st)

    def draw(self, st: dict) -> None:
        prog = st.get("resync_progress")
        if not prog:
            if self._shown:
                last = st.get("last_resync") or {}
                rounds = last.get("rounds") or 1
                self._stream.write(f"\r\x1b[K{last.get('kind') or 'resync'} resync done in {rounds} "
                                   f"round{'s' if rounds != 1 else ''}: {last.get('chunks')} chunks, "
                                   f"{format_size(last.get('bytes') or 0)} in {last.get('seconds', 0):.1f}s\n")
                self._stream.flush()
                self._shown = False
            self._round = None
            return
        if prog.get("round") != self._round:
            self._round = prog.get("round")
            self._samples = []
        done, total = _done_total(prog)
        now = time.monotonic()
        self._samples = [s for s in self._samples if now - s[0] <= 5.0] + [(now, done)]
        rate = 0.0
        if len(self._samples) > 1 and self._samples[-1][0] > self._samples[0][0]:
            rate = (self._samples[-1][1] - self._samples[0][1]) / (self._samples[-1][0] - self._samples[0][0])
        frac = done / total if total else 0.0
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        eta = f"ETA {max(0.0, (total - done) / rate):.0f}s" if rate > 0 and total else "ETA ?"
        what = "initial sync" if prog.get("kind") == "full" else "resync"
        self._stream.write(f"\r\x1b[K{what} round {prog.get('round')} [{bar}] {frac * 100:5.1f}% "
                           f"{format_size(int(done))}/{format_size(int(total))} "
                           f"{format_size(int(rate))}/s {eta}")
        self._stream.flush()
        self._shown = True


def _done_total(prog: dict) -> tuple[float, float]:
    """Progress in bytes: the primary knows chunks done/total and the total
    bytes; the secondary knows bytes done and the announced maximum."""
    if "chunks_total" in prog:
        total = prog.get("bytes_total") or 0
        ctot = prog.get("chunks_total") or 0
        handed = total * prog.get("chunks_done", 0) / ctot if ctot else 0.0
        return max(0.0, handed - prog.get("bytes_queued", 0)), float(total)
    return float(prog.get("bytes_done", 0)), float(prog.get("bytes_max") or 0)


def add_rate(prog: dict, started: float | None, now: float) -> dict:
    """Add the round's average rate and an ETA to a status progress dict:
    `seconds` since the round began, `bytes_done`/`bytes_total` (what has
    reached the peer, of the round's size), `rate_bps` and `eta_s` (None
    until something moved)."""
    done, total = _done_total(prog)
    elapsed = max(0.0, now - started) if started is not None else 0.0
    rate = done / elapsed if elapsed > 0 else 0.0
    prog["seconds"] = round(elapsed, 3)
    prog.setdefault("bytes_done", int(done))
    prog["bytes_total"] = int(total)
    prog["rate_bps"] = int(rate)
    prog["eta_s"] = round(max(0.0, total - done) / rate, 1) if rate > 0 and total else None
    return prog
