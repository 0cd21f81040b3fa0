"""`blockmirror diff DIR SNAPSHOT`: chunks changed since a snapshot, from the
exception tables alone (no data is read or compared)."""

import argparse
import json

from blockmirror.storage import Node
from blockmirror.units import format_size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diff", help="show the chunks changed since a snapshot (offline)",
                       description="List, per volume, the chunks written since SNAPSHOT: the union of the "
                                   "exception tables of that snapshot and every newer one.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("id", type=int, metavar="SNAPSHOT")
    p.add_argument("--json", action="store_true", help="machine-readable output with chunk ranges")
    p.set_defaults(func=run)


def ranges(chunks) -> list[tuple[int, int]]:
    """Sorted chunk indices as inclusive (first, last) runs."""
    runs: list[list[int]] = []
    for c in chunks:
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return [(a, b) for a, b in runs]


def run(args) -> int:
    with Node.open(args.dir) as node:
        diff = node.diff(args.id)
        cs = node.chunk_size
        report = {name: {"chunks": len(chunks), "bytes": len(chunks) * cs, "size": node.volumes[name].size,
                         "ranges": ranges(chunks)} for name, chunks in diff.items()}
    if args.json:
        print(json.dumps({"snapshot": args.id, "chunk_size": cs, "volumes": report}, indent=2))
        return 0
    for name, r in report.items():
        shown = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in r["ranges"][:8])
        more = " ..." if len(r["ranges"]) > 8 else ""
        print(f"{name}: {r['chunks']} chunks changed ({format_size(r['bytes'])} of {format_size(r['size'])})"
              + (f": {shown}{more}" if shown else ""))
    return 0
