"""`blockmirror promote DIR [--force]` and `blockmirror demote DIR
[--discard-my-data]`: change the role of a stopped node (engine/roles.py)."""

from __future__ import annotations

import argparse

from blockmirror.errors import NodeError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "promote", help="make a stopped secondary a primary (failover, switchover)",
        description="Make a stopped secondary the primary of its pair. It keeps its last consistent image "
                    "(a resync round that was open is rolled back) and records it as the point both nodes "
                    "share, so that the old primary, once demoted, catches up incrementally. Serve it next "
                    "with: blockmirror primary DIR --nbd HOST:PORT [--peer HOST:PORT ...].")
    p.add_argument("dir", metavar="DIR", help="the secondary's node directory (its daemon stopped)")
    p.add_argument("--force", action="store_true",
                   help="promote a node that never completed a sync with its primary (its volumes may hold "
                        "no consistent image; its next sync to a peer is a full one)")
    p.set_defaults(func=run_promote)
    d = sub.add_parser(
        "demote", help="make a stopped primary a secondary (failback, switchover)",
        description="Make a stopped primary a secondary of its pair. The chunks it changed that its new "
                    "primary may lack (writes never replicated, writes after a failure) are recorded so "
                    "that the next resync sends them back, and their data is kept first in a snapshot "
                    "labelled discarded-... (blockmirror snapshot export reads it). Run it next with: "
                    "blockmirror secondary DIR --listen HOST:PORT --secret-file FILE.")
    d.add_argument("dir", metavar="DIR", help="the primary's node directory (its daemon stopped)")
    d.add_argument("--discard-my-data", action="store_true",
                   help="resolve a split brain: this node's writes since the pair parted lose to its peer's "
                        "(they are kept in the discarded-... snapshot); also on a node already demoted")
    d.set_defaults(func=run_demote)


def _open(path: str):
    from blockmirror.storage import Node

    try:
        return Node.open(path)
    except NodeError as exc:
        if "in use by another" in str(exc):
            raise NodeError(f"{path} is in use by a running daemon", hint="stop it first (SIGTERM, or "
                            "systemctl stop), then run this command again") from None
        raise


def run_promote(args) -> int:
    from blockmirror.engine.roles import promote

    with _open(args.dir) as node:
        done = promote(node, force=args.force)
    if done.generation is None:
        print(f"promoted {args.dir} to primary; it held no consistent image (--force): its next sync is a full one")
    else:
        rolled = "; an open resync round was rolled back" if done.rolled_back else ""
        print(f"promoted {args.dir} to primary at generation {done.generation} (seq {done.seq}){rolled}; "
              f"writes from now on are tracked in snapshot {done.base}")
    print(f"next: blockmirror primary {args.dir} --nbd HOST:PORT [--peer HOST:PORT --secret-file FILE]")
    return 0


def run_demote(args) -> int:
    from blockmirror.engine.records import RecordStore
    from blockmirror.engine.roles import demote, node_role

    with _open(args.dir) as node:
        was_secondary = node_role(RecordStore(node)) == "secondary"
        done = demote(node, discard=args.discard_my_data)
    if was_secondary:
        kept = "" if done.discarded is None else f" (kept in snapshot {done.discarded}, {done.discarded_label})"
        print(f"{args.dir}: its own data ({done.changed_chunks} chunks, {done.diverged} of them written as a "
              f"primary after the pair parted) loses to its primary's at the next resync{kept}")
        print(f"next: blockmirror secondary {args.dir} --listen HOST:PORT --secret-file FILE")
        return 0
    if done.generation is None:
        print(f"demoted {args.dir} to secondary; it shares no point with its peer: its next sync is a full one")
    else:
        print(f"demoted {args.dir} to secondary at generation {done.generation}; "
              f"{done.changed_chunks} chunks of its own go back to its new primary's data at the next resync")
    if done.diverged:
        lose = ("they lose to its new primary's" if args.discard_my_data else
                "if its new primary wrote too, the pair refuses to resync (split brain) until one side is "
                "demoted with --discard-my-data")
        print(f"{done.diverged} of them were written after the pair parted: {lose}")
    if done.discarded is not None:
        print(f"this node's data as of now is kept in snapshot {done.discarded} ({done.discarded_label}): "
              f"blockmirror snapshot export {args.dir} {done.discarded} VOLUME FILE")
    print(f"next: blockmirror secondary {args.dir} --listen HOST:PORT --secret-file FILE")
    return 0
