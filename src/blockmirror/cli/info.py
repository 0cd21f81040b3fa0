"""`blockmirror info DIR`: what a stopped node holds (volumes, snapshots, space)."""

import argparse
import json

from blockmirror.storage import Node
from blockmirror.units import format_size


# What the engines' own snapshots are, by the label they give them, and what
# deleting one costs the mirror.
_RESYNC_BASE_LOSS = "deleting it forces a full resync unless another resync base matches the secondary"
INTERNAL_ROLES = {
    "link-down": ("a resync base (the primary's volumes when the link went down)", _RESYNC_BASE_LOSS),
    "restart": ("a resync base (the primary's volumes at a start that found no base)", _RESYNC_BASE_LOSS),
    "promoted": ("a resync base (the image a promoted secondary kept: the point it shares with its old primary)",
                 _RESYNC_BASE_LOSS),
    "resync-target": ("a resync round's target (the resync base once the round commits; kept while a cut round "
                      "may resume)", "deleting it forces the cut round to start over, or a full resync"),
    "resync-safety": ("the secondary's image before a resync round (served while the round is open, to roll it "
                      "back if it cannot resume)",
                      "deleting it means an open round cannot be rolled back: the secondary's image is not "
                      "consistent until a full sync"),
    "verify-repair": ("a resync base for the chunks a verify --repair found different",
                      _RESYNC_BASE_LOSS),
}


def internal_role(label: str) -> tuple[str, str]:
    """(what an internal snapshot is for, what deleting it costs), from its label."""
    return INTERNAL_ROLES.get(label, ("an internal snapshot of the mirror",
                                      "deleting it can force a full resync"))


def kind(snapshot: dict) -> str:
    return "internal" if snapshot["internal"] else "user"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show a node's volumes and snapshots (offline)",
                       description="Show the volumes, snapshots and snapshot space of a node directory "
                                   "that no daemon is serving.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def describe(node: Node) -> dict:
    space = {s.id: s for s in node.snapshot_space()}
    return {
        "node_uuid": node.node_uuid,
        "chunk_size": node.chunk_size,
        "volumes": [{"name": v.name, "uuid": v.uuid, "size": v.size,
                     "allocated_bytes": sum(n for _, n in v.allocated_extents())}
                    for v in node.volumes.values()],
        "snapshots": [{"id": s.id, "label": s.label, "created_ns": s.created_ns, "pause_ns": s.pause_ns,
                       "sealed": s.sealed, "internal": s.internal,
                       "exceptions": space[s.id].exceptions, "space_bytes": space[s.id].data_bytes}
                      for s in node.snapshots()],
        "spare_cow": dict(zip(("files", "bytes"), node.spare_space()), limit_bytes=node.spare_limit_bytes),
    }


def run(args) -> int:
    with Node.open(args.dir) as node:
        info = describe(node)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"node {info['node_uuid']}  chunk size {format_size(info['chunk_size'])}")
    print(f"{'VOLUME':<16} {'SIZE':>10} {'ALLOCATED':>10}  UUID")
    for v in info["volumes"]:
        print(f"{v['name']:<16} {format_size(v['size']):>10} {format_size(v['allocated_bytes']):>10}  {v['uuid']}")
    if info["snapshots"]:
        print(f"{'SNAPSHOT':>8} {'KIND':<8} {'LABEL':<16} {'CHUNKS':>8} {'SPACE':>10} {'PAUSE':>9}")
        for s in info["snapshots"]:
            print(f"{s['id']:>8} {kind(s):<8} {s['label']:<16} {s['exceptions']:>8} "
                  f"{format_size(s['space_bytes']):>10} "
                  f"{s['pause_ns'] / 1e6:>7.2f}ms" + ("" if s["sealed"] else "  (unsealed: crashed before its sync)"))
    else:
        print("no snapshots")
    spare = info["spare_cow"]
    if spare["files"]:
        print(f"spare COW space {format_size(spare['bytes'])} in {spare['files']} file(s), kept for the next "
              f"snapshots (at most {format_size(spare['limit_bytes'])})")
    return 0
