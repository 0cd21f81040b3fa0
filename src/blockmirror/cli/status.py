"""`blockmirror status DIR [--json]`: ask the daemon running on DIR."""

from __future__ import annotations

import argparse
import json

from blockmirror.cli._args import timeout_seconds
from blockmirror.status import ResyncProgress, Status
from blockmirror.units import format_size


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "status", help="show the state of the daemon running on a node",
        description="Ask the daemon (primary or secondary) running on DIR, over its control socket "
                    "DIR/blockmirror.sock: role, state (initial-sync, mirroring, disconnected, resyncing, "
                    "split-brain), "
                    "whether the peer is connected, volumes, snapshots and the last resync.",
        epilog="Example: blockmirror status /srv/node --json")
    parser.add_argument("dir", metavar="DIR", help="node directory of a running daemon")
    parser.add_argument("--json", action="store_true", help="print the full status as JSON")
    parser.add_argument("--timeout", type=timeout_seconds, default=10.0, metavar="SECONDS",
                        help="how long to wait for the daemon's answer (default 10)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from blockmirror.runtime.control import request

    raw = request(args.dir, "status", timeout_s=args.timeout)
    if args.json:
        print(json.dumps(raw, indent=2, sort_keys=True))
    else:
        print(render(Status.from_dict(raw)))
    return 0


def render(st: Status) -> str:
    rows = [("role", st.role), ("state", st.state.value)]
    if st.primary is not None:
        p = st.primary
        rows.append(("mode", p.mode or "standalone"))
        if p.peer:
            rows.append(("peer", f"{p.peer} ({'connected' if st.peer_connected else 'not connected'})"))
        if p.mode:
            rows.append(("lag", f"{p.lag_seconds:.1f}s (oldest write the secondary lacks); {p.lag_writes} "
                                f"writes, {format_size(p.inflight_bytes)} in flight"))
            rows.append(("out of sync", f"{format_size(p.out_of_sync_bytes)} ({p.out_of_sync_chunks} chunks)"))
        if p.last_link_error and not st.peer_connected:
            rows.append(("last error", p.last_link_error))
    if st.secondary is not None:
        s = st.secondary
        rows.append(("listen", f"{s.listen} ({'primary connected' if st.peer_connected else 'no primary'})"))
        rows.append(("consistent", "yes" if s.consistent else "no (no complete sync yet)"))
        if s.discarded_chunks:
            kept = "" if s.discarded_snapshot is None else f", kept in snapshot {s.discarded_snapshot}"
            rows.append(("own chunks", f"{s.discarded_chunks} replaced by the primary's{kept}"))
    if st.split_brain is not None:
        sb = st.split_brain
        def n(v):
            return "?" if v is None else str(v)
        rows.append(("split brain", f"both wrote since the shared point (primary {n(sb.primary_chunks)} chunks, "
                                    f"secondary {n(sb.secondary_chunks)}); resolve: blockmirror demote DIR "
                                    f"--discard-my-data on the side that loses"))
    link_tls = st.link.tls if st.link is not None else None
    if link_tls:
        rows.append(("tls", f"{link_tls.get('version')} {link_tls.get('cipher')}, peer "
                            f"{link_tls.get('peer_subject') or 'not verified'}"))
    if st.pair is not None:
        rows.append(("pair", st.pair.name))
    if st.generation:
        rows.append(("generation", f"{st.generation} seq {st.seq}"))
    last = st.last_resync
    if last.rounds:
        rows.append(("last resync", f"{last.kind}, {last.rounds} round{'s' if last.rounds != 1 else ''}: "
                                    f"{last.chunks} chunks, {format_size(last.bytes)} in {last.seconds:.2f}s"))
    else:
        rows.append(("last resync", "none"))
    if st.resync_progress is not None:
        rows.append(("resync", _progress(st.resync_progress)))
    width = max(len(k) for k, _ in rows)
    out = [f"{k:<{width}}  {v}" for k, v in rows]
    out.append("")
    out.append(f"{'VOLUME':<16} {'SIZE':>10}")
    for v in st.volumes:
        out.append(f"{v.name:<16} {format_size(v.size):>10}")
    out.append("")
    if st.snapshots:
        out.append(f"{'SNAPSHOT':<8} {'KIND':<9} {'LABEL':<24} {'CHUNKS':>8} {'SPACE':>10}")
        for snap in st.snapshots:
            kind = "internal" if snap.internal else "user"
            out.append(f"{snap.id:<8} {kind:<9} {snap.label:<24} {snap.exceptions:>8} "
                       f"{format_size(snap.space_bytes):>10}")
    else:
        out.append("no snapshots")
    return "\n".join(out)


def _progress(prog: ResyncProgress) -> str:
    """`round 3 (incremental): 45.0% 5.4 MiB of 12 MiB, 3 MiB/s, ETA 2s`."""
    kind = prog.kind or "resync"
    if prog.chunks_total is not None:
        chunks = f"{prog.chunks_done}/{prog.chunks_total} chunks sent"
    else:
        chunks = f"{prog.chunks_done} chunks received"
    done, total = prog.bytes_done, prog.bytes_total
    pct = f"{100 * done / total:.1f}% " if total else ""
    size = f"{format_size(int(done))} of {format_size(int(total))}" if total else format_size(int(done))
    speed = (f"{format_size(prog.rate_bps)}/s, ETA {prog.eta_s:.0f}s" if prog.rate_bps and prog.eta_s is not None
             else "rate not known yet")
    return f"round {prog.round} ({kind}): {pct}{size} ({chunks}), {speed}"
