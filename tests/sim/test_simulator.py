"""The deterministic simulator: 500 seeds of faults must keep every invariant
and exercise what the simulator claims to check; each deliberately broken
engine must be caught within a few seeds; a seed replays identically; the
CLI reports failures with their replay command and keeps going."""

import io
import subprocess
import sys
from collections import Counter

import pytest

from blockmirror.engine import PrimaryNode, SecondaryNode
from blockmirror.errors import NoSpace
from blockmirror.sim.faults import FAULT_KINDS
from blockmirror.sim.runner import MUTATIONS, run_range
from blockmirror.sim.scenario import run_seed

SEEDS = 500

# Each mutation, the invariant that catches it, and how many seeds (from 0)
# the search may take: a little over what it needed when written.
CAUGHT_BY = {
    "skip-unacked": ("consistency", 20),
    "no-pause": ("consistency", 40),
    "ack-before-durable": ("ack-durability", 10),
    "round-in-place": ("consistency", 10),
    "delete-base-early": ("needless-full-sync", 40),
    "no-frame-checksum": ("consistency", 20),
    "flush-not-durable": ("flush-durability", 120),
    "export-ignores-round": ("export-image", 20),
    "reused-seq": ("no-exception", 10),
    "demote-forgets-own": ("consistency", 20),
    "promote-keeps-round": ("promoted-image", 20),
    "split-brain-as-incremental": ("split-brain", 40),
    "cursor-before-sync": ("verify-exact", 30),  # a verify finds it while a damage holds consistency back
    "resume-from-start": ("resume-minimal", 25),
    "repair-equal-chunks": ("verify-repair-minimal", 20),
    "verify-before-apply": ("verify-exact", 140),  # a delay or black hole delivers a write and a request together
    "checksum-sends-equal": ("checksum-minimal", 10),
}


@pytest.fixture(scope="module")
def five_hundred():
    """The 500 seeds, with every phase move the nodes made."""
    from blockmirror.engine.phases import PhaseMachine
    out = io.StringIO()
    moves = set()
    move = PhaseMachine.move

    def counting(self, new, reason):
        moves.add((self.phase, new))
        return move(self, new, reason)
    PhaseMachine.move = counting
    try:
        results = run_range(0, SEEDS, out=out)
    finally:
        PhaseMachine.move = move
    return results, out.getvalue(), moves


def test_500_seeds_keep_every_invariant(five_hundred):
    results, report, _ = five_hundred
    assert [r.seed for r in results if not r.ok] == [], report
    assert {r.mode for r in results} == {"sync", "async"}
    assert {r.workload for r in results} == {"sequential", "random", "hot", "spanning"}
    assert sum(r.stats.get("incremental rounds", 0) for r in results) > SEEDS  # resyncs happened, many


def test_the_500_seeds_exercise_what_the_checker_claims(five_hundred):
    results, report, _ = five_hundred
    fired, stats = Counter(), Counter()
    for r in results:
        fired.update(r.faults)
        stats.update(r.stats)
    kinds = set(FAULT_KINDS)
    assert {k for k, n in fired.items() if n} >= kinds | {"outage"}, report
    # Large cases: MiB volumes, writes spanning several seqs, long outages, small send budgets.
    opts = [r.options for r in results]
    assert sum(o.big_volumes for o in opts) and sum(o.outage_s > 0 for o in opts)
    assert sum(o.send_budget_random for o in opts) and stats["writes spanning seqs"]
    for event in ("crashes in recovery", "process stops", "probes", "export reads", "export reads refused",
                  "primary reads", "full rounds", "damages", "verifies identical", "verify repairs",
                  "verifies repaired"):
        assert stats[event] > 0, f"no {event} in {SEEDS} seeds\n{report}"


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_broken_engine_is_caught(mutation):
    invariant, seeds = CAUGHT_BY[mutation]
    for seed in range(seeds):
        r = run_seed(seed, frozenset([mutation]))
        if not r.ok:
            assert r.violation.startswith(f"{invariant}: "), r.violation
            return
    pytest.fail(f"mutation {mutation} survived {seeds} seeds")


def test_every_mutation_has_a_catching_invariant():
    assert set(CAUGHT_BY) == set(MUTATIONS)


@pytest.mark.parametrize("seed", [17, 31])  # 31: MiB volumes and writes spanning seqs
def test_a_seed_replays_identically(seed):
    a, b = run_seed(seed), run_seed(seed)
    assert a.ok and (a.faults, a.faults_drawn, a.stats, a.bytes_sent) == (b.faults, b.faults_drawn, b.stats,
                                                                          b.bytes_sent)


def _simulate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockmirror", "simulate", *args], capture_output=True, text=True)


def test_cli_reports_and_prints_the_replay_command():
    ok = _simulate("--seeds", "0:10")
    assert ok.returncode == 0 and "10 passed, 0 failed" in ok.stdout
    bad = _simulate("--seeds", "0:60", "--mutation", "round-in-place", "--stop")
    assert bad.returncode == 1
    assert "reproduce with: blockmirror simulate --seeds" in bad.stdout and "--mutation round-in-place" in bad.stdout
    r = _simulate("--seeds", "5:2")
    assert r.returncode == 1 and r.stderr.startswith("Error:")


def test_cli_goes_on_after_an_exception_fails_a_seed():
    r = _simulate("--seeds", "0:4", "--mutation", "reused-seq")
    assert r.returncode == 1
    assert "FAIL seed 0" in r.stdout and "no-exception: LocalProtocolError" in r.stdout
    assert "reproduce with: blockmirror simulate --seeds 0:1 --mutation reused-seq" in r.stdout
    assert "scenarios: 4 " in r.stdout  # the seeds after the failing one ran
    assert "options: mutations=reused-seq mode=" in r.stdout  # the failing seed's derived options


def test_cli_verbose_prints_a_passing_seeds_options():
    r = _simulate("--seeds", "3:4", "-v")
    assert r.returncode == 0 and "ok seed 3" in r.stdout
    assert "options: mutations=none mode=" in r.stdout and "window_bytes_max=" in r.stdout
    assert "1 passed, 0 failed" in r.stdout


@pytest.mark.parametrize("engine", [PrimaryNode, SecondaryNode])
def test_an_engine_error_stops_the_process_and_the_pair_recovers(monkeypatch, engine):
    """A BlockmirrorError escaping a node's step stops that node's process,
    keeping its page cache; it restarts and the checker's invariants still hold."""
    failed_at = []
    timers = engine._timers

    def fails_once(self, now):
        if not failed_at and now > 3.0:
            failed_at.append(now)
            raise NoSpace("metadata store full (injected by the test)")
        return timers(self, now)

    monkeypatch.setattr(engine, "_timers", fails_once)
    r = run_seed(17)
    assert failed_at and r.ok, r.violation
    assert r.stats["process stops (fatal error)"] == 1 and r.stats["process stops"] >= 1


def test_every_move_of_the_phase_tables_happens(five_hundred):
    """The tables in engine/phases.py list exactly what the nodes do: over
    the 500 seeds every legal move is made (an illegal one raises and fails
    its seed), so a move nobody makes is a stale line of the table."""
    from blockmirror.engine.phases import PRIMARY_TRANSITIONS, SECONDARY_TRANSITIONS
    table = {(a, b) for t in (PRIMARY_TRANSITIONS, SECONDARY_TRANSITIONS) for a, bs in t.items() for b in bs}
    unused = table - five_hundred[2]
    assert unused == set(), f"moves listed but never made: {sorted((a.name, b.name) for a, b in unused)}"
