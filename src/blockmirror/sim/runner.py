"""Runs a range of seeds and reports like a test runner: a summary, and for
each failure its derived options, the command that replays it and a short
event trace. A failing seed never stops the run (unless asked to)."""

from __future__ import annotations

import sys
import time
from collections import Counter

from blockmirror.sim.faults import FAULT_KINDS, FIRED_MEANS
from blockmirror.sim.rolechange import FIRED_MEANS as ROLE_CHANGE_FIRED_MEANS
from blockmirror.sim.scenario import Result, run_seed

# Deliberately broken engines (PrimaryConfig/SecondaryConfig `mutations`, or a
# Connection parameter): the simulator must catch each.
MUTATIONS = ("skip-unacked", "no-pause", "ack-before-durable", "round-in-place", "delete-base-early",
             "no-frame-checksum", "flush-not-durable", "export-ignores-round", "reused-seq", "demote-forgets-own",
             "promote-keeps-round", "split-brain-as-incremental", "cursor-before-sync", "resume-from-start",
             "repair-equal-chunks", "verify-before-apply", "checksum-sends-equal")


def replay_command(seed: int, mutations: frozenset) -> str:
    mut = "".join(f" --mutation {m}" for m in sorted(mutations))
    return f"blockmirror simulate --seeds {seed}:{seed + 1}{mut}"


def run_range(first: int, last: int, mutations: frozenset = frozenset(), stop_on_failure: bool = False,
              verbose: bool = False, out=sys.stdout) -> list[Result]:
    results = []
    started = time.perf_counter()
    for seed in range(first, last):
        r = run_seed(seed, mutations)
        results.append(r)
        if verbose or not r.ok:
            _report(r, mutations, out)
        if not r.ok and stop_on_failure:
            break
    _summary(results, time.perf_counter() - started, verbose, out)
    return results


def _report(r: Result, mutations: frozenset, out) -> None:
    if r.ok:
        print(f"ok seed {r.seed}", file=out)
    else:
        print(f"FAIL seed {r.seed} ({r.mode}, {r.workload}): {r.violation}", file=out)
        print(f"  reproduce with: {replay_command(r.seed, mutations)}", file=out)
    if r.options is not None:
        for line in r.options.describe():
            print(f"  options: {line}", file=out)
    if r.ok:
        print("  fired: " + (_counts(r.faults) or "none") + "; " + _counts(r.stats), file=out)
    for line in r.trace[-15:]:
        print(f"    {line}", file=out)


def _counts(counter: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items()) if v)


def _summary(results: list[Result], elapsed: float, verbose: bool, out) -> None:
    fired, drawn, stats = Counter(), Counter(), Counter()
    for r in results:
        fired.update(r.faults)
        drawn.update(r.faults_drawn)
        stats.update(r.stats)
    failed = sum(not r.ok for r in results)
    large = sum(1 for r in results if r.options is not None and r.options.large)
    print(f"scenarios: {len(results)} ({sum(r.mode == 'sync' for r in results)} sync, "
          f"{sum(r.mode == 'async' for r in results)} async, {large} large) in {elapsed:.1f}s, "
          f"{len(results) / max(elapsed, 1e-9):.0f}/s", file=out)
    kinds = [k for k in (*FAULT_KINDS, "outage", *ROLE_CHANGE_FIRED_MEANS) if drawn[k]]
    print("faults fired (of drawn): " + (", ".join(f"{k} {fired[k]} ({drawn[k]})" for k in kinds) or "none"),
          file=out)
    if verbose:
        for k in kinds:
            print(f"  {k} fired: {FIRED_MEANS.get(k) or ROLE_CHANGE_FIRED_MEANS[k]}", file=out)
    print("events: " + (_counts(stats) or "none"), file=out)
    print(f"link bytes: {sum(r.bytes_sent for r in results)}", file=out)
    print(f"{len(results) - failed} passed, {failed} failed", file=out)
