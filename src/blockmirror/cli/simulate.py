"""`blockmirror simulate --seeds A:B`: the deterministic fault simulator."""

import argparse

from blockmirror.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate", help="run the deterministic fault simulator",
        description="Run seeded scenarios of the real engine, protocol and storage code under simulated "
                    "link cuts, black holes, partitions, slow links, corrupted bytes, crashes of either node "
                    "at any I/O step (restarts included), full disks, process stops, and verifies (with repair) "
                    "of a secondary a faulty disk damaged, checking the invariants throughout; then heal and "
                    "require convergence. A failing seed prints its options and the command that replays it; the "
                    "run goes on to the next seed.")
    p.add_argument("--seeds", default="0:100", metavar="A:B", help="seeds A (inclusive) to B (exclusive)")
    p.add_argument("--mutation", action="append", default=[], metavar="NAME",
                   help="run a deliberately broken engine or protocol to check that the simulator catches it "
                        "(e.g. skip-unacked, round-in-place, verify-before-apply; an unknown name lists them all)")
    p.add_argument("--stop", action="store_true", help="stop at the first failing seed")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print every seed's derived options and what fired, passing seeds too")
    p.set_defaults(func=run)


def parse_seeds(text: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise ConfigError(f"--seeds {text!r} is not A:B", hint="e.g. --seeds 0:500") from None
    if a < 0 or b <= a:
        raise ConfigError(f"--seeds {text!r} is an empty range", hint="B must be greater than A, e.g. 0:500")
    return a, b


def run(args) -> int:
    from blockmirror.sim.runner import MUTATIONS, run_range
    first, last = parse_seeds(args.seeds)
    for m in args.mutation:
        if m not in MUTATIONS:
            raise ConfigError(f"unknown mutation {m!r}", hint=f"one of: {', '.join(MUTATIONS)}")
    results = run_range(first, last, frozenset(args.mutation), stop_on_failure=args.stop, verbose=args.verbose)
    return 0 if all(r.ok for r in results) else 1
