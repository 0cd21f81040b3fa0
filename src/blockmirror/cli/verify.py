"""`blockmirror verify DIR`: ask the running primary on DIR to compare its
volumes with the secondary's, chunk by chunk, by digests (engine/verify.py).

Exit codes: 0 the volumes are identical (after the repair, with --repair),
1 chunks differ and were not repaired, 2 an error (no daemon, not a primary,
a bad flag, the daemon stopped)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from blockmirror.cli._args import timeout_seconds
from blockmirror.engine.verify import OUT_OF_SYNC_LISTED_MAX
from blockmirror.errors import BlockmirrorError, ConfigError, NodeError
from blockmirror.units import format_size, parse_size

POLL_S = 0.2
EXIT_IDENTICAL, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2


def rate_arg(text: str) -> int:
    try:
        value = parse_size(text)
    except BlockmirrorError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate in bytes per second ({exc})") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a rate is more than 0 bytes per second")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify", help="compare the primary's volumes with the secondary's, online",
        description="Ask the primary running on DIR to compare every chunk of its volumes with the secondary "
                    "by strong digests (BLAKE2b-128), while host writes go on: no chunk data crosses the link "
                    "for a chunk that matches, and a chunk written during the verify is compared as of the "
                    "same write on both sides. It pauses while the link is down or a resync runs, and goes "
                    "on from where it was. Exit 0: identical (after the repair with --repair); 1: chunks "
                    "differ; 2: an error.",
        epilog="Example: blockmirror verify /srv/primary --repair --rate 200MiB")
    parser.add_argument("dir", metavar="DIR", help="node directory of the running primary")
    parser.add_argument("--volume", action="append", default=[], metavar="NAME",
                        help="verify only this volume (repeatable; default: every volume)")
    parser.add_argument("--repair", action="store_true",
                        help="send the chunks that differ to the secondary, in one atomic resync round")
    parser.add_argument("--rate", type=rate_arg, metavar="BYTES/S",
                        help="read at most this many bytes a second on each node (e.g. 100MiB; default: "
                             "no limit)")
    parser.add_argument("--json", action="store_true", help="print the result (last_verify) as JSON")
    parser.add_argument("--timeout", type=timeout_seconds, default=10.0, metavar="SECONDS",
                        help="how long to wait for each answer of the daemon (default 10)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except BlockmirrorError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"Try: {exc.hint}", file=sys.stderr)
        return EXIT_ERROR


def _run(args: argparse.Namespace) -> int:
    from blockmirror.runtime.control import request

    req = {"command": "verify", "volumes": args.volume, "repair": args.repair, "rate_bps": args.rate}
    reply = request(args.dir, json.dumps(req), timeout_s=args.timeout)
    if "error" in reply:
        raise ConfigError(reply["error"], hint=reply.get("hint"))
    run_id = reply["id"]
    tty = sys.stderr.isatty() and not args.json
    if not args.json:
        print(f"verify {run_id}: {reply['chunks']} chunks of {', '.join(reply['volumes'])}"
              + (", repairing what differs" if args.repair else ""), flush=True)
    while True:
        time.sleep(POLL_S)
        try:
            st = request(args.dir, "status", timeout_s=args.timeout)
        except NodeError as exc:
            raise NodeError(f"the daemon stopped before verify {run_id} ended ({exc})",
                            hint="start it again and run blockmirror verify again") from None
        last = st.get("last_verify")
        if last is not None and last.get("id") == run_id:
            break
        now = st.get("verify")
        if tty and now is not None and now.get("id") == run_id:
            sys.stderr.write("\r\033[K" + _progress_line(now))
            sys.stderr.flush()
    if tty:
        sys.stderr.write("\r\033[K")
    if args.json:
        print(json.dumps(last, indent=2, sort_keys=True))
    else:
        print(_result_text(last))
    return EXIT_DIFFERENT if last["result"] == "out-of-sync" else EXIT_IDENTICAL


def _progress_line(v: dict) -> str:
    total = v["chunks_total"] or 1
    eta = f", ETA {v['eta_s']:.0f}s" if v.get("eta_s") is not None else ""
    return (f"verify {v['id']} ({v['state']}): {100 * v['chunks_done'] / total:.1f}% "
            f"{v['chunks_done']}/{v['chunks_total']} chunks, {v['out_of_sync_chunks']} differ, "
            f"{format_size(v['rate_bps'])}/s{eta}")


def _result_text(last: dict) -> str:
    head = f"verify {last['id']}: {last['chunks']} chunks compared in {last['seconds']:.1f}s: "
    if last["result"] == "identical":
        return head + "identical"
    lines = [head + f"{last['out_of_sync_chunks']} chunks differ"
             + (f", {last['repaired_chunks']} repaired" if last["result"] == "repaired" else
                " (not repaired; run again with --repair to send them)")]
    for ext in last["out_of_sync"]:
        lines.append(f"  {ext['volume']} offset {ext['offset']} length {ext['length']}")
    if len(last["out_of_sync"]) >= OUT_OF_SYNC_LISTED_MAX:
        lines.append(f"  (the first {OUT_OF_SYNC_LISTED_MAX} runs only)")
    return "\n".join(lines)
