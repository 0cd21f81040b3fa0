"""Runs a range of seeds and reports like a test runner: a summary, and for
each failure the command that replays it with a short event trace."""

from __future__ import annotations

import sys
import time
from collections import Counter

from blockmirror.sim.scenario import Result, run_seed

MUTATIONS = ("skip-unacked", "no-pause", "ack-before-durable", "round-in-place")


def run_range(first: int, last: int, mutations: frozenset = frozenset(), stop_on_failure: bool = False,
              out=sys.stdout) -> list[Result]:
    results = []
    started = time.perf_counter()
    for seed in range(first, last):
        r = run_seed(seed, mutations)
        results.append(r)
        if not r.ok:
            mut = "".join(f" --mutation {m}" for m in sorted(mutations))
            print(f"FAIL seed {seed} ({r.mode}, {r.workload}): {r.violation}", file=out)
            print(f"  reproduce with: blockmirror simulate --seeds {seed}:{seed + 1}{mut}", file=out)
            for line in r.trace[-15:]:
                print(f"    {line}", file=out)
            if stop_on_failure:
                break
    elapsed = time.perf_counter() - started
    faults = Counter()
    for r in results:
        faults.update(r.faults)
    failed = sum(not r.ok for r in results)
    print(f"scenarios: {len(results)} ({sum(r.mode == 'sync' for r in results)} sync, "
          f"{sum(r.mode == 'async' for r in results)} async) in {elapsed:.1f}s, "
          f"{len(results) / max(elapsed, 1e-9):.0f}/s", file=out)
    print("faults: " + (", ".join(f"{k} {v}" for k, v in sorted(faults.items())) or "none"), file=out)
    print(f"host writes: {sum(r.host_writes for r in results)}; resync rounds: {sum(r.rounds for r in results)}, "
          f"chunks resent: {sum(r.resync_chunks for r in results)}; "
          f"link bytes: {sum(r.bytes_sent for r in results)}", file=out)
    print(f"{len(results) - failed} passed, {failed} failed", file=out)
    return results
