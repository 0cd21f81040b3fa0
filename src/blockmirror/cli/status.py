"""`blockmirror status DIR [--json]`: ask the daemon running on DIR."""

from __future__ import annotations

import argparse
import json

from blockmirror.units import format_size


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "status", help="show the state of the daemon running on a node",
        description="Ask the daemon (primary or secondary) running on DIR, over its control socket "
                    "DIR/blockmirror.sock: role, state (initial-sync, mirroring, disconnected, resyncing), "
                    "whether the peer is connected, volumes, snapshots and the last resync.",
        epilog="Example: blockmirror status /srv/node --json")
    parser.add_argument("dir", metavar="DIR", help="node directory of a running daemon")
    parser.add_argument("--json", action="store_true", help="print the full status as JSON")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="how long to wait for the daemon's answer (default 10)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from blockmirror.runtime.control import request

    st = request(args.dir, "status", timeout_s=args.timeout)
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
    else:
        print(render(st))
    return 0


def render(st: dict) -> str:
    rows = [("role", st.get("role")), ("state", st.get("state"))]
    if st.get("role") == "primary":
        rows.append(("mode", st.get("mode") or "standalone"))
        if st.get("peer"):
            rows.append(("peer", f"{st['peer']} ({'connected' if st.get('peer_connected') else 'not connected'})"))
        if "lag_writes" in st:
            rows.append(("lag", f"{st['lag_writes']} writes, {format_size(st.get('inflight_bytes', 0))} in flight"))
        if st.get("last_link_error") and not st.get("peer_connected"):
            rows.append(("last error", st["last_link_error"]))
    else:
        rows.append(("listen", f"{st.get('listen')} ({'primary connected' if st.get('peer_connected') else 'no primary'})"))
        rows.append(("consistent", "yes" if st.get("consistent") else "no (no complete sync yet)"))
    link_tls = (st.get("link") or {}).get("tls")
    if link_tls:
        rows.append(("tls", f"{link_tls.get('version')} {link_tls.get('cipher')}, peer "
                            f"{link_tls.get('peer_subject') or 'not verified'}"))
    if st.get("pair"):
        rows.append(("pair", st["pair"]["name"]))
    if st.get("generation"):
        rows.append(("generation", f"{st['generation']} seq {st.get('seq', 0)}"))
    last = st.get("last_resync") or {}
    if last.get("rounds"):  # the primary: one resync, all its rounds
        n = last["rounds"]
        rows.append(("last resync", f"{last.get('kind')}, {n} round{'s' if n != 1 else ''}: {last['chunks']} "
                                    f"chunks, {format_size(last['bytes'])} in {last['seconds']:.2f}s"))
    elif last.get("round"):  # the secondary: the last round it applied
        rows.append(("last resync", f"round {last['round']} ({last.get('kind')}): {last['chunks']} chunks, "
                                    f"{format_size(last['bytes'])} in {last['seconds']:.2f}s"))
    else:
        rows.append(("last resync", "none"))
    prog = st.get("resync_progress")
    if prog:
        rows.append(("resync", _progress(prog)))
    width = max(len(k) for k, _ in rows)
    out = [f"{k:<{width}}  {v}" for k, v in rows]
    out.append("")
    out.append(f"{'VOLUME':<16} {'SIZE':>10}")
    for v in st.get("volumes", []):
        out.append(f"{v['name']:<16} {format_size(v['size']):>10}")
    snaps = st.get("snapshots") or []
    out.append("")
    if snaps:
        out.append(f"{'SNAPSHOT':<8} {'LABEL':<16} {'CHUNKS':>8} {'SPACE':>10}")
        for s in snaps:
            out.append(f"{s['id']:<8} {s['label']:<16} {s.get('exceptions', 0):>8} "
                       f"{format_size(s.get('space_bytes', 0)):>10}")
    else:
        out.append("no snapshots")
    return "\n".join(out)


def _progress(prog: dict) -> str:
    """`round 3 (incremental): 45.0% 5.4 MiB of 12 MiB, 3 MiB/s, ETA 2s`."""
    kind = prog.get("kind") or "resync"
    if "chunks_total" in prog:
        chunks = f"{prog['chunks_done']}/{prog['chunks_total']} chunks sent"
    else:
        chunks = f"{prog['chunks_done']} chunks received"
    done, total = prog.get("bytes_done", 0), prog.get("bytes_total") or 0
    pct = f"{100 * done / total:.1f}% " if total else ""
    size = f"{format_size(int(done))} of {format_size(int(total))}" if total else format_size(int(done))
    rate = prog.get("rate_bps")
    eta = prog.get("eta_s")
    speed = f"{format_size(rate)}/s, ETA {eta:.0f}s" if rate and eta is not None else "rate not known yet"
    return f"round {prog['round']} ({kind}): {pct}{size} ({chunks}), {speed}"
