"""The write gate of a node: the pause of the method's steps 64-70.

Writers pass through the gate; `paused()` stops new writers, waits for the
ones inside to drain, and holds the gate closed while the caller snapshots
every volume at that one instant.
"""

from __future__ import annotations

import contextlib
import threading


class WriteGate:
    def __init__(self):
        self._cond = threading.Condition()
        self._active = 0
        self._paused = False

    @contextlib.contextmanager
    def writing(self):
        with self._cond:
            while self._paused:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if self._active == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def paused(self):
        with self._cond:
            while self._paused:  # one pause at a time
                self._cond.wait()
            self._paused = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._paused = False
                self._cond.notify_all()
