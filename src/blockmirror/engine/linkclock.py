"""Timers of a link, for both roles: heartbeats, silence (a black hole
shows as nothing heard for `timeout_s`), and the primary's reconnect
backoff. Pure arithmetic on the `now` the driver passes in."""

from __future__ import annotations

import random

INF = float("inf")


class LinkClock:
    def __init__(self, heartbeat_s: float, timeout_s: float):
        self.heartbeat_s = heartbeat_s
        self.timeout_s = timeout_s
        self.last_heard = 0.0
        self.next_heartbeat = INF

    def up(self, now: float) -> None:
        self.last_heard = now
        self.next_heartbeat = now + self.heartbeat_s

    def heard(self, now: float) -> None:
        self.last_heard = now

    def silent(self, now: float) -> bool:
        return now >= self.last_heard + self.timeout_s

    def heartbeat_due(self, now: float) -> bool:
        """True once per period; the caller sends the Heartbeat."""
        if now < self.next_heartbeat:
            return False
        self.next_heartbeat = now + self.heartbeat_s
        return True

    def deadline(self) -> float:
        return min(self.next_heartbeat, self.last_heard + self.timeout_s)


class Backoff:
    """Exponential reconnect delay with jitter, reset by a successful link."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random):
        self.min_s = min_s
        self.max_s = max_s
        self.rng = rng
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.max_s, self.min_s * (2 ** min(self.failures, 20)))
        self.failures += 1
        return delay * (0.5 + self.rng.random() / 2)

    def reset(self) -> None:
        self.failures = 0
