"""A mirroring pair on loopback: a secondary, optionally a fault proxy in
front of it, and a primary dialling the proxy (or the secondary)."""

from __future__ import annotations

import os
from typing import Callable

from blockmirror.testing.daemon import TESTS, Daemon, HarnessError, Patience, converged
from blockmirror.testing.nodes import VOLUMES, make_nodes, primary_args, secondary_args
from blockmirror.testing.proxy import FaultProxyControl, start_proxy


class Pair:
    """Node directories under `base` (made at once, `prefill(primary_dir)`
    writes the primary's data before any daemon runs); the daemons start
    now, or with start_secondary() and start_primary() when `start` is
    False. `proxy`: "thread", "process" or None (the primary dials the
    secondary directly)."""

    def __init__(self, base: str | os.PathLike, volumes: dict[str, int] = VOLUMES, mode: str = "async",
                 proxy: str | None = "thread", primary_extra=(), secondary_extra=(), secondary_nbd: bool = True,
                 prefill: Callable[[str], None] | None = None, patience: Patience = TESTS, start: bool = True):
        self.base = os.fspath(base)
        self.volumes = volumes
        self.p_dir, self.s_dir, self.secret = make_nodes(self.base, volumes)
        if prefill is not None:
            prefill(self.p_dir)
        self.mode = mode
        self.proxy_kind = proxy
        self.primary_extra = list(primary_extra)
        self.secondary_extra = list(secondary_extra)
        self.secondary_nbd = secondary_nbd
        self.patience = patience
        self.primary: Daemon | None = None
        self.secondary: Daemon | None = None
        self.proxy: FaultProxyControl | None = None
        if start:
            try:
                self.start_secondary()
                self.start_primary()
            except BaseException:
                self.close()  # no daemon or proxy outlives a pair that failed to start
                raise

    def start_secondary(self) -> None:
        """The secondary, and the fault proxy in front of it."""
        self.secondary = Daemon("secondary", self.s_dir, *secondary_args(
            self.secret, *self.secondary_extra, nbd="127.0.0.1:0" if self.secondary_nbd else None),
            patience=self.patience)
        if self.proxy_kind is not None:
            self.proxy = start_proxy(self.proxy_kind, self.secondary.listen, self.base)

    def start_primary(self) -> None:
        peer = self.proxy.address if self.proxy is not None else self.secondary.listen
        self.primary = Daemon("primary", self.p_dir, *primary_args(self.secret, peer, "--mode", self.mode,
                                                                   *self.primary_extra), patience=self.patience)

    def wait_converged(self, timeout_s: float | None = None, poll_s: float | None = None) -> dict:
        return self.primary.wait_for(converged, timeout_s, "convergence", poll_s)

    def outage(self) -> dict:
        """Stop the secondary (the primary sees the link close: EOF); the
        primary's status once it has taken the link-down snapshot."""
        before = self.primary.status()["link_failures"]
        self.secondary.stop()
        return self.primary.wait_for(lambda st: st["link_failures"] > before and st["state"] == "disconnected",
                                     what="link failure")

    def restore(self) -> None:
        """Start the secondary again, on its port."""
        self.secondary.restart()

    def close(self) -> dict[str, int | None]:
        """Stop both daemons (SIGTERM) and the proxy; each running daemon's
        exit code, None for one that had to be killed."""
        codes: dict[str, int | None] = {}
        try:
            for d in (self.primary, self.secondary):
                if d is not None and d.running():
                    try:
                        codes[d.role] = d.stop()
                    except HarnessError:
                        codes[d.role] = None
        finally:
            if self.proxy is not None:
                self.proxy.close()
        return codes

    def daemon(self, role: str) -> Daemon:
        return self.primary if role == "primary" else self.secondary
