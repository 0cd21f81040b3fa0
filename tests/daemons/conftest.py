import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from daemon_helpers import Daemon, make_nodes, primary_args, secondary_args  # noqa: E402

from blockmirror.faultproxy import FaultProxyThread  # noqa: E402


class Pair:
    """A secondary, a fault proxy in front of it, and a primary dialling the proxy."""

    def __init__(self, tmp_path, mode: str = "async", primary_extra=(), secondary_extra=()):
        self.p_dir, self.s_dir, self.secret = make_nodes(tmp_path)
        self.mode = mode
        self.primary_extra = list(primary_extra)
        self.secondary = Daemon("secondary", self.s_dir, *secondary_args(self.secret, *secondary_extra))
        self.proxy = FaultProxyThread(self.secondary.listen)
        self.primary = Daemon("primary", self.p_dir, *primary_args(self.secret, self.proxy.address,
                                                                   "--mode", mode, *self.primary_extra))

    def close(self) -> dict:
        codes = {}
        for d in (self.primary, self.secondary):
            if d.proc is not None and d.proc.poll() is None:
                codes[d.role] = d.stop()
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
