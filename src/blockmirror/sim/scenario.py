"""One simulated scenario, fully determined by its seed.

A safety phase runs host writes and reads under seeded faults (link cuts,
black holes, partitions, slow links, latency spikes, corrupted bytes,
crashes of either node between any two I/O steps and during restarts, full
disks, process stops, verifies of a secondary a faulty disk damaged); a
liveness phase then heals everything and demands convergence (damage of
the secondary repaired by a verify first). The checker (checker.py) holds
every invariant and runs throughout; any exception that escapes the code
under test fails the seed like a broken invariant.
"""

from __future__ import annotations

import logging
import random
import traceback
from collections import Counter
from dataclasses import dataclass, field

from blockmirror.sim.checker import Checker, Violation
from blockmirror.sim.cluster import Cluster
from blockmirror.sim.faults import FaultInjector, FaultLog
from blockmirror.sim.model import HistoryModel
from blockmirror.sim.options import CHUNK_BYTES, Options, derive
from blockmirror.sim.recorder import Recorder
from blockmirror.sim.rolechange import RoleChanges
from blockmirror.sim.workload import Workload

TRACE_LINES_KEPT = 60


@dataclass
class Result:
    seed: int
    ok: bool
    violation: str = ""
    options: Options | None = None
    faults: dict = field(default_factory=dict)  # fired, per kind
    faults_drawn: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)  # rounds, probes, export reads, process stops, ...
    bytes_sent: int = 0
    trace: list = field(default_factory=list)

    @property
    def mode(self) -> str:
        return self.options.mode if self.options else ""

    @property
    def workload(self) -> str:
        return self.options.workload if self.options else ""


class Scenario:
    def __init__(self, seed: int, mutations: frozenset = frozenset()):
        self.seed = seed
        self.rng = rng = random.Random(seed)
        self.opts = opts = derive(seed, rng, frozenset(mutations))
        self.now = 0.0
        self.healing = False
        self.trace: list[str] = []
        self.stats: Counter = Counter()
        self.fault_log = FaultLog()
        self.model = HistoryModel(list(opts.sizes), CHUNK_BYTES)
        self.checker = Checker(opts, self.model)
        self.recorder = Recorder(opts, rng, self.model, self.checker, self.stats, self.log)
        self.cluster = Cluster(opts, rng, self.recorder, self.log, self.fault_log.fired, self.stats)
        self.faults = FaultInjector(opts, rng, self.cluster, self.fault_log, self.log)
        self.recorder.cluster, self.recorder.faults = self.cluster, self.faults
        self.workload = Workload(opts, rng, self.cluster, self.recorder, self.checker, self.stats)
        self.roles = RoleChanges(seed, opts.safety_s, self.cluster, self.recorder, self.fault_log, self.log)

    def log(self, text: str) -> None:
        self.trace.append(f"{self.now:9.4f} {text}")
        if len(self.trace) > TRACE_LINES_KEPT:
            del self.trace[:20]

    # -- main loop ----------------------------------------------------------------------------------
    def _step(self) -> None:
        self.cluster.now = now = self.now
        if not self.healing:
            self.faults.step(now)
        self.faults.verify_damage(self.checker.damage_outstanding)
        self.roles.step(now, self.faults, self.healing)
        self.cluster.restart_due()
        self.cluster.deliver()
        self.workload.step(now, self.healing)
        self.cluster.run_nodes()
        view = self.cluster.primary_view()
        if view.unacked:
            self.checker.window(view, self.recorder.seq_writer)

    def _advance(self) -> None:
        times = [self.cluster.next_time(), self.workload.next_time(self.healing)]
        if not self.healing:
            times.append(self.faults.next_time())
            times.append(self.roles.next_time())
        self.now = max(self.now + 1e-6, min(times))

    def _converged(self) -> bool:
        p, s = self.cluster.primary_view(), self.cluster.secondary_view()
        return (p.up and p.state == "mirroring" and p.linked and not p.unacked and not p.waiting_writes
                and s.holds_point and s.seq == p.seq and not self.checker.damage_outstanding)

    def _run(self) -> None:
        self.cluster.start()
        while self.now < self.opts.safety_s:
            self._step()
            self._advance()
        # Liveness: heal everything, stop the host, demand convergence.
        self.healing = True
        self.log("HEAL")
        self.faults.heal()
        if self.cluster.secondary_view().up:
            self.recorder.probe("before healing")  # every scenario probes the secondary's durable state
        deadline = self.now + self.opts.liveness_s
        while not self._converged() and self.now <= deadline:
            self._step()
            self._advance()
        converged = self._converged()
        p = self.cluster
        self.checker.healed(converged, p.primary_image() if converged else b"",
                            p.secondary_image() if converged else b"", self.cluster.primary_view().state)

    def run(self) -> Result:
        try:
            self._run()
            ok, violation = True, ""
        except Violation as exc:
            ok, violation = False, str(exc)
        except Exception as exc:  # noqa: BLE001 - any escape fails this seed, never the whole run
            ok, violation = False, f"no-exception: {type(exc).__name__}: {exc}"
            for line in traceback.format_exception(exc)[-6:]:
                self.log(line.rstrip().replace("\n", " | "))
        finally:
            self.cluster.close()
        return Result(self.seed, ok, violation, self.opts, dict(self.fault_log.fired_count),
                      dict(self.fault_log.drawn), dict(self.stats), self.cluster.net.bytes_sent,
                      trace=list(self.trace[-25:]) if not ok else [])


def run_seed(seed: int, mutations: frozenset = frozenset()) -> Result:
    logging.getLogger("blockmirror").setLevel(logging.CRITICAL)
    try:
        return Scenario(seed, mutations).run()
    except Exception as exc:  # noqa: BLE001 - a scenario that cannot even be built fails its seed
        return Result(seed, False, f"no-exception: while building the scenario: {type(exc).__name__}: {exc}",
                      trace=[line.rstrip() for line in traceback.format_exception(exc)[-6:]])
