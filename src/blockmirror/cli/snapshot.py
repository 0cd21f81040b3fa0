"""`blockmirror snapshot create|list|delete|export`: the snapshot chain of a
stopped node."""

import argparse
import os
import sys

from blockmirror.cli.info import describe
from blockmirror.errors import ConfigError
from blockmirror.storage import Node
from blockmirror.units import format_size

EXPORT_BLOCK_BYTES = 1 << 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("snapshot", help="create, list, delete or export snapshots (offline)",
                       description="Manage the copy-on-write snapshot chain of a node no daemon is serving. "
                                   "A snapshot covers every volume of the node at one instant.")
    ops = p.add_subparsers(dest="op", metavar="OP")
    ops.required = True
    c = ops.add_parser("create", help="snapshot every volume at one instant")
    c.add_argument("dir", metavar="DIR")
    c.add_argument("--label", default="manual", help="a label to show in listings")
    c.set_defaults(func=run_create)
    ls = ops.add_parser("list", help="list snapshots with their space")
    ls.add_argument("dir", metavar="DIR")
    ls.set_defaults(func=run_list)
    d = ops.add_parser("delete", help="delete one snapshot (the others keep their images)")
    d.add_argument("dir", metavar="DIR")
    d.add_argument("id", type=int, metavar="ID")
    d.set_defaults(func=run_delete)
    e = ops.add_parser("export", help="write one volume's image as of a snapshot to a file")
    e.add_argument("dir", metavar="DIR")
    e.add_argument("id", type=int, metavar="ID")
    e.add_argument("volume", metavar="VOLUME")
    e.add_argument("output", metavar="FILE", help="output file ('-' for stdout); holes stay sparse")
    e.set_defaults(func=run_export)


def run_create(args) -> int:
    with Node.open(args.dir) as node:
        info = node.snapshot(args.label)
        print(f"snapshot {info.id} ({info.label}) of {len(node.volumes)} volumes; "
              f"writes paused {info.pause_ns / 1e6:.2f} ms")
    return 0


def run_list(args) -> int:
    with Node.open(args.dir) as node:
        snaps = describe(node)["snapshots"]
    if not snaps:
        print("no snapshots")
    for s in snaps:
        print(f"{s['id']:>6}  {s['label']:<16} {s['exceptions']:>8} chunks preserved  "
              f"{format_size(s['space_bytes']):>10}")
    return 0


def run_delete(args) -> int:
    with Node.open(args.dir) as node:
        node.delete_snapshot(args.id)
        print(f"deleted snapshot {args.id}")
    return 0


def run_export(args) -> int:
    with Node.open(args.dir) as node:
        vol = node.volume(args.volume)
        if args.output == "-":
            out = sys.stdout.buffer
        else:
            if os.path.exists(args.output):
                raise ConfigError(f"{args.output} exists", hint="choose a new output file")
            out = open(args.output, "wb")
        try:
            zero = bytes(EXPORT_BLOCK_BYTES)
            for pos in range(0, vol.size, EXPORT_BLOCK_BYTES):
                n = min(EXPORT_BLOCK_BYTES, vol.size - pos)
                data = node.read_snapshot(args.id, vol.name, pos, n)
                if out is not sys.stdout.buffer and data == zero[:n]:
                    out.seek(n, os.SEEK_CUR)
                else:
                    out.write(data)
            if out is not sys.stdout.buffer:
                out.truncate(vol.size)
        finally:
            if out is not sys.stdout.buffer:
                out.close()
    return 0
