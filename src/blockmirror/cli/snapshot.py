"""`blockmirror snapshot create|list|delete|export`: the snapshot chain of a
stopped node."""

import argparse
import os
import shlex
import sys

from blockmirror.cli.info import describe, internal_role, kind
from blockmirror.errors import ConfigError, NodeError, SnapshotError
from blockmirror.storage import Node
from blockmirror.units import format_size

EXPORT_BLOCK_BYTES = 1 << 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("snapshot", help="create, list, delete or export snapshots",
                       description="Manage the copy-on-write snapshot chain of a node: list, delete and export "
                                   "on a node no daemon is serving; create also on a running primary (its "
                                   "daemon takes it, one pause of every volume). "
                                   "A snapshot covers every volume of the node at one instant. A snapshot "
                                   "is a user's (made by `snapshot create`) or internal: one the mirror "
                                   "took for itself (a resync base, a resync round's target or safety "
                                   "snapshot), which `snapshot delete` keeps unless given --force.")
    ops = p.add_subparsers(dest="op", metavar="OP")
    ops.required = True
    c = ops.add_parser("create", help="snapshot every volume at one instant (a user snapshot)",
                       description="Snapshot every volume of the node at one instant. On a stopped node it is "
                                   "taken directly; on a running primary (mirrored or standalone) its daemon "
                                   "takes it between two steps, with one pause of the writes. A running "
                                   "secondary refuses: snapshot its primary.")
    c.add_argument("dir", metavar="DIR")
    c.add_argument("--label", default="manual", help="a label to show in listings")
    c.set_defaults(func=run_create)
    ls = ops.add_parser("list", help="list snapshots with their kind (internal or user) and space",
                        description="List the snapshots: id, kind (internal: the mirror's own, with what "
                                    "it is for; user: made by `snapshot create`), label, preserved chunks "
                                    "and the space they hold.")
    ls.add_argument("dir", metavar="DIR")
    ls.set_defaults(func=run_list)
    d = ops.add_parser("delete", help="delete one snapshot (the others keep their images; "
                                      "an internal one needs --force)",
                       description="Delete one snapshot; every other snapshot keeps its image. An internal "
                                   "snapshot (one the mirror needs, e.g. a resync base) is refused unless "
                                   "--force is given.")
    d.add_argument("dir", metavar="DIR")
    d.add_argument("id", type=int, metavar="ID")
    d.add_argument("--force", action="store_true",
                   help="delete an internal snapshot too (the mirror's own, e.g. a resync base: without it "
                        "the next resync may have to be a full one)")
    d.set_defaults(func=run_delete)
    e = ops.add_parser("export", help="write one volume's image as of a snapshot to a file")
    e.add_argument("dir", metavar="DIR")
    e.add_argument("id", type=int, metavar="ID")
    e.add_argument("volume", metavar="VOLUME")
    e.add_argument("output", metavar="FILE", help="output file ('-' for stdout); holes stay sparse")
    e.set_defaults(func=run_export)


def run_create(args) -> int:
    try:
        node = Node.open(args.dir)
    except NodeError as exc:
        if "in use by another" not in str(exc):
            raise
        return _create_on_daemon(args)
    with node:
        info = node.snapshot(args.label)
        print(f"snapshot {info.id} ({info.label}) of {len(node.volumes)} volumes; "
              f"writes paused {info.pause_ns / 1e6:.2f} ms")
    return 0


def _create_on_daemon(args) -> int:
    """The node is served: its daemon takes the snapshot (one pause)."""
    import json

    from blockmirror.runtime.control import request

    reply = request(args.dir, json.dumps({"command": "snapshot", "label": args.label}), timeout_s=30)
    if "error" in reply:
        raise NodeError(reply["error"], hint=reply.get("hint"))
    print(f"snapshot {reply['id']} ({reply['label']}) taken by the running daemon; "
          f"writes paused {reply['pause_ms']:.2f} ms")
    return 0


def run_list(args) -> int:
    with Node.open(args.dir) as node:
        snaps = describe(node)["snapshots"]
    if not snaps:
        print("no snapshots")
    for s in snaps:
        role = f"  {internal_role(s['label'])[0]}" if s["internal"] else ""
        print(f"{s['id']:>6}  {kind(s):<8} {s['label']:<16} {s['exceptions']:>8} chunks preserved  "
              f"{format_size(s['space_bytes']):>10}{role}")
    return 0


def run_delete(args) -> int:
    with Node.open(args.dir) as node:
        snap = next((s for s in node.snapshots() if s.id == args.id), None)
        if snap is not None and snap.internal and not args.force:
            what, cost = internal_role(snap.label)
            raise SnapshotError(f"snapshot {snap.id} ({snap.label}) is an internal snapshot the mirror needs: "
                                f"{what}; {cost}",
                                hint=f"blockmirror snapshot delete --force {shlex.quote(args.dir)} {snap.id}  "
                                     "(to delete it anyway)")
        node.delete_snapshot(args.id)  # an unknown id: SnapshotError "no snapshot N"
        print(f"deleted {'internal ' if snap is not None and snap.internal else ''}snapshot {args.id}")
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
