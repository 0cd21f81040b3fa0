"""A progress line for initial sync and resync, on a terminal.

Polls the daemon's status twice a second; while a round is under way it
redraws one stderr line with done/total, rate and ETA, and ends it with a
newline when the round ends. Log lines written meanwhile simply scroll it.
"""

from __future__ import annotations

import asyncio
import sys
import time

from blockmirror.status import FULL, Status
from blockmirror.units import format_size

INTERVAL_S = 0.5


class Progress:
    def __init__(self, status, stream=sys.stderr):
        self._status = status  # async () -> Status
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

    def draw(self, st: Status) -> None:
        prog = st.resync_progress
        if prog is None:
            if self._shown:
                last = st.last_resync
                rounds = last.rounds or 1
                self._stream.write(f"\r\x1b[K{last.kind or 'resync'} resync done in {rounds} "
                                   f"round{'s' if rounds != 1 else ''}: {last.chunks} chunks, "
                                   f"{format_size(last.bytes)} in {last.seconds:.1f}s\n")
                self._stream.flush()
                self._shown = False
            self._round = None
            return
        if prog.round != self._round:
            self._round = prog.round
            self._samples = []
        done, total = float(prog.bytes_done), float(prog.bytes_total)
        now = time.monotonic()
        self._samples = [s for s in self._samples if now - s[0] <= 5.0] + [(now, done)]
        rate = 0.0
        if len(self._samples) > 1 and self._samples[-1][0] > self._samples[0][0]:
            rate = (self._samples[-1][1] - self._samples[0][1]) / (self._samples[-1][0] - self._samples[0][0])
        frac = done / total if total else 0.0
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        eta = f"ETA {max(0.0, (total - done) / rate):.0f}s" if rate > 0 and total else "ETA ?"
        what = "initial sync" if prog.kind == FULL else "resync"
        self._stream.write(f"\r\x1b[K{what} round {prog.round} [{bar}] {frac * 100:5.1f}% "
                           f"{format_size(int(done))}/{format_size(int(total))} "
                           f"{format_size(int(rate))}/s {eta}")
        self._stream.flush()
        self._shown = True
