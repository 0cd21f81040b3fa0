"""Role changes in the fault schedule: the secondary takes over.

In a share of seeds, at random times of the safety phase, the pair swaps
roles as an operator would with `blockmirror demote` and `promote`:

- failover: the primary is lost (a crash now, or its disk as it is if it is
  down); the secondary stops (in order, or it crashes or is killed too,
  leaving a round half-applied that `promote` must roll back: half the
  failovers wait for one);
- switchover: both stop in order.

Then `promote` runs on the secondary's disk and `demote` on the old
primary's, and both restart in their new roles. The checker holds the
promoted image to the secondary's last committed point (sync mode: with
every write acknowledged to a host), the demoted node's discarded-...
snapshot to its last image, and, from its first commit on, the new
secondary to the new primary's history.

None happens while a damage of the secondary (faults.py) is outstanding:
it waits for the repair.

Their own random stream keeps every other seed's scenario as it was.
"""

from __future__ import annotations

import random

from blockmirror.engine.roles import demote, promote
from blockmirror.errors import NodeError
from blockmirror.sim.views import NIL

ROLE_CHANGE_KINDS = ("failover", "switchover")
ROLE_CHANGE_SHARE = 0.3  # of seeds that change roles at all
FIRED_MEANS = {
    "failover": "the secondary held a committed image: the primary was lost, the secondary promoted, the old "
                "primary demoted, both restarted in their new roles",
    "switchover": "as failover, with both nodes stopped in order first",
    "split-brain": "after a failover both nodes had written: the primary refused the secondary, which was "
                   "then demoted with --discard-my-data",
}


class RoleChanges:
    def __init__(self, seed: int, safety_s: float, cluster, recorder, fault_log, trace):
        self.rng = random.Random(f"role-changes {seed}")
        self.cluster = cluster
        self.recorder = recorder
        self.fault_log = fault_log
        self.trace = trace
        self.resolved_at = float("-inf")
        self.next_at = self.rng.uniform(0.5, safety_s) if self.rng.random() < ROLE_CHANGE_SHARE else float("inf")
        self.in_round_by = self.next_at + 3.0 if self.rng.random() < 0.5 else None
        self._round_batches: int | None = None

    def next_time(self) -> float:
        return self.next_at

    def step(self, now: float, faults, healing: bool) -> None:
        """A split brain is resolved whenever seen (healing too); role changes
        happen in the safety phase."""
        if self.cluster.primary_view().state == "split-brain" and now >= self.resolved_at + 20.0:
            self.resolved_at = now  # once: the primary's next dial meets the secondary that may lose
            self._resolve_split_brain(faults)
        if healing or now < self.next_at:
            return
        if self.recorder.checker.damage_outstanding:
            self.next_at = now + 0.25  # no operator fails over to a disk known bad: wait for its repair
            return
        in_round = self.in_round_by is not None
        if in_round and now < self.in_round_by and not self._round_under_way():
            self.next_at = now + 0.01  # this one waits (a while) for a round the secondary is applying
            return
        self.next_at = now + self.rng.uniform(1.0, 4.0) if self.rng.random() < 0.4 else float("inf")
        self.in_round_by = now + 3.0 if self.rng.random() < 0.5 else None
        self._round_batches = None
        kind = "failover" if in_round else self.rng.choice(ROLE_CHANGE_KINDS)
        self.fault_log.draw(kind)
        view = self.cluster.secondary_view()
        if not (view.up and not view.inconsistent and view.generation != NIL and not view.own_changes):
            self.trace(f"ROLE CHANGE {kind}: skipped, the secondary holds no committed image")
            return
        faults.end_full()  # an operator changes roles on healthy disks
        self.cluster.disarm()
        self.trace(f"ROLE CHANGE {kind}")
        self._change(kind == "switchover")
        self.fault_log.fired(kind)

    def _round_under_way(self) -> bool:
        """The secondary applies an incremental round and has written some of it."""
        view = self.cluster.secondary_view()
        if not view.round_open:
            self._round_batches = None
            return False
        if self._round_batches is None:
            self._round_batches = view.applied_batches
        return view.applied_batches > self._round_batches

    def _resolve_split_brain(self, faults) -> None:
        """Both wrote since the point they shared: the operator lets one
        side's writes lose: `demote --discard-my-data` on the secondary, or
        on the primary with the secondary promoted (its writes win)."""
        cluster = self.cluster
        self.fault_log.draw("split-brain")
        self.fault_log.fired("split-brain")
        faults.end_full()
        cluster.disarm()
        if self.rng.random() < 0.5:
            self.trace("SPLIT BRAIN: the primary's writes lose: demote --discard-my-data on it, promote the other")
            cluster.stop_node("primary")
            cluster.stop_node("secondary")
            self._swap(discard=True)
            return
        self.trace("SPLIT BRAIN: demote --discard-my-data on the secondary")
        cluster.stop_node("secondary")
        with cluster.open_disk(cluster.secondary) as node:
            before = cluster.committed_image_of(node)  # a round kept open to resume: its pre-round image
            result = demote(node, discard=True, config=cluster.pconfig)
            kept = None if result.discarded is None else cluster.snapshot_image(node, result.discarded)
        self.recorder.demoted(before, kept, result.changed_chunks, discard=True)
        cluster.restart_soon()

    def _change(self, planned: bool) -> None:
        cluster = self.cluster
        if planned:
            cluster.stop_node("primary")
        else:
            cluster.crash_now("primary")
        if planned or (self.rng.random() < 0.5 and not cluster.secondary_view().round_open):
            cluster.stop_node("secondary")
        else:
            cluster.crash_now("secondary", self.rng.choice(("crash", "kill")))
        self._swap(discard=False)

    def _swap(self, discard: bool) -> None:
        """Both nodes are down: promote the secondary, demote the primary
        (`--discard-my-data` if `discard`), restart them in their new roles."""
        cluster, recorder = self.cluster, self.recorder
        old_p, old_s = cluster.primary, cluster.secondary
        mutations = cluster.pconfig.mutations
        with cluster.open_disk(old_s) as node:
            try:
                done = promote(node, mutations=mutations)
            except NodeError as exc:  # its recovery left no consistent image (a full round interrupted)
                self.trace(f"promote refused: {exc}")
                cluster.restart_soon()
                return
            promoted = cluster.image_of(node)
        if not done.own_chunks:  # else its image is its point's plus its own writes, which win
            recorder.promoted(str(done.generation), done.seq, promoted)
        recorder.recovered_hot(list(done.own_extents))  # chunks its first round may resend unchanged
        with cluster.open_disk(old_p) as node:
            before = cluster.image_of(node)
            result = demote(node, discard=discard, config=cluster.pconfig)
            kept = None if result.discarded is None else cluster.snapshot_image(node, result.discarded)
        recorder.demoted(before, kept, result.changed_chunks, result.diverged, discard=discard)
        cluster.swap_roles()
        recorder.roles_swapped(promoted, str(result.generation) if result.generation else None,
                               str(done.generation))
        cluster.restart_soon()
