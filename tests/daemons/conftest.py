import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from daemon_helpers import Daemon, make_nodes, primary_args, secondary_args  # noqa: E402

from blockmirror.faultproxy import FaultProxyThread  # noqa: E402


class Pair:
    """A secondary, a fault proxy in front of it, and a primary dialling the proxy."""

    def __init__(self, tmp_path, mode: str = "async", primary_extra=(), secondary_extra=(), start: bool = True):
        self.p_dir, self.s_dir, self.secret = make_nodes(tmp_path)
        self.mode = mode
        self.primary_extra = list(primary_extra)
        self.secondary_extra = list(secondary_extra)
        self.primary = self.secondary = self.proxy = None
        if start:
            self.start_secondary()
            self.start_primary()

    def start_secondary(self) -> None:
        self.secondary = Daemon("secondary", self.s_dir, *secondary_args(self.secret, *self.secondary_extra))
        self.proxy = FaultProxyThread(self.secondary.listen)

    def start_primary(self) -> None:
        self.primary = Daemon("primary", self.p_dir, *primary_args(self.secret, self.proxy.address,
                                                                   "--mode", self.mode, *self.primary_extra))

    def close(self) -> dict:
        codes = {}
        for d in (self.primary, self.secondary):
            if d is not None and d.proc is not None and d.proc.poll() is None:
                codes[d.role] = d.stop()
        if self.proxy is not None:
            self.proxy.close()
        return codes


@pytest.fixture
def pair(tmp_path):
    """A running pair in async mode; both daemons must stop cleanly (exit 0)."""
    p = Pair(tmp_path)
    try:
        yield p
    finally:
        codes = p.close()
    for role, code in codes.items():
        assert code == 0, f"{role} exited {code}; log:\n{(p.primary if role == 'primary' else p.secondary).log()}"


@pytest.fixture
def new_pair(tmp_path):
    """A Pair whose daemons the test starts; stopped (exit 0) at the end."""
    made = []

    def make(**kw):
        p = Pair(tmp_path, start=False, **kw)
        made.append(p)
        return p
    yield make
    for p in made:
        codes = p.close()
        for role, code in codes.items():
            assert code == 0, f"{role} exited {code}; log:\n{(p.primary if role == 'primary' else p.secondary).log()}"
