"""`blockmirror secondary DIR --listen HOST:PORT --secret-file FILE [--nbd HOST:PORT]`:
receive a primary's writes; optionally serve the last consistent image
read-only over NBD."""

from __future__ import annotations

import argparse
import asyncio
import logging

from blockmirror.cli._daemon import (
    LINK_DEFAULTS,
    add_config_flag,
    add_link_flags,
    apply_config,
    bind,
    format_address,
    heartbeat_for,
    nbd_uri,
    parse_address,
    ready,
    serve,
    setup_logging,
    start_http,
)
from blockmirror.errors import ConfigError

log = logging.getLogger("blockmirror.secondary")

SHUTDOWN_GRACE_S = 10.0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "secondary",
        help="receive a primary's writes (and serve them read-only over NBD)",
        description=(
            "Run the secondary of a pair on the node in DIR: listen for the primary on --listen, "
            "authenticate it with the shared secret, and apply its writes in order (journaled, "
            "acknowledged once durable). After a link failure the primary sends only what changed. "
            "With --nbd the volumes are served read-only, always showing a consistent image of the "
            "primary (for inspection, backups, verification). Initialise DIR with `blockmirror init` with "
            "the primary's volume names and sizes. Prints the addresses and 'ready' when ready; "
            "`blockmirror status DIR` asks the running daemon; SIGTERM/SIGINT stop it cleanly."),
        epilog="Example: blockmirror secondary /srv/replica --listen 0.0.0.0:7000 "
               "--secret-file /etc/blockmirror/secret --nbd 127.0.0.1:10810",
    )
    parser.add_argument("dir", metavar="DIR", help="node directory (made by `blockmirror init`)")
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help="address the primary connects to (its --peer); port 0 picks a free port. Required.")
    parser.add_argument("--secret-file", metavar="FILE",
                        help="file holding the pair's shared secret (the primary's file). Required.")
    parser.add_argument("--nbd", metavar="HOST:PORT", help="also serve the volumes read-only over NBD here")
    add_link_flags(parser)
    add_config_flag(parser)
    parser.set_defaults(func=run, _parser=parser)


def run(args: argparse.Namespace) -> int:
    from blockmirror.engine import SecondaryConfig
    from blockmirror.runtime import tls
    from blockmirror.runtime.pairing import check_pair, check_pair_name, read_secret
    from blockmirror.storage import Node

    parser = args._parser
    apply_config(args, parser, dict(LINK_DEFAULTS))
    missing = [f for f, v in (("--listen", args.listen), ("--secret-file", args.secret_file)) if not v]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    listen = parse_address(args.listen, "--listen")
    nbd = parse_address(args.nbd, "--nbd") if args.nbd else None
    http = parse_address(args.http, "--http") if args.http else None
    pair_name = check_pair_name(args.pair)
    secret = read_secret(args.secret_file)
    tls_files = tls.files_from_args(args)
    tls_context = tls.server_context(tls_files) if tls_files is not None else None
    config = SecondaryConfig(heartbeat_interval_s=heartbeat_for(args), link_timeout_s=args.link_timeout)
    setup_logging(args.log_level)
    node = Node.open(args.dir)
    try:
        if not node.volumes:
            raise ConfigError(f"node {args.dir} has no volumes", hint="blockmirror init a node with --volume NAME=SIZE")
        pair = check_pair(node, "secondary", pair_name, secret)
    except BaseException:
        node.close()
        raise
    return asyncio.run(_serve(args, node, config, secret, pair, listen, nbd, http, tls_context))


async def _serve(args, node, config, secret, pair, listen, nbd, http, tls_context) -> int:
    from blockmirror.nbd.server import NbdServer
    from blockmirror.runtime.secondary_daemon import SecondaryDaemon

    daemon = SecondaryDaemon(node, config, secret, pair, tls_context)
    await daemon.open()
    h, p = await bind(daemon.listen, listen, "listen for the primary", "--listen", daemon.close)
    over = "" if tls_context is None else (" (TLS, primary verified)" if args.tls_ca else " (TLS)")
    lines = [f"listening for the primary on {format_address(h, p)}{over}"]
    server = None if nbd is None else NbdServer(daemon.exports)
    if server is not None:
        h, p = await bind(server.start, nbd, "serve NBD", "--nbd", daemon.close)
        count = len(daemon.exports)
        lines.append(f"serving {count} volume{'s' if count != 1 else ''} read-only on {nbd_uri(h, p)}")

    async def stop_nbd(grace_s: float) -> None:
        if server is not None:
            await server.shutdown(grace_s)

    async def stop_nbd_and_daemon() -> None:
        await stop_nbd(1)
        await daemon.close()

    http_server, http_lines = await start_http(daemon.status, http, stop_nbd_and_daemon)

    def announce(control_path: str) -> str:
        log.info("node %s: secondary of pair %r, listening on %s%s%s", node.path, pair.name, daemon.listen_text,
                 over, "" if server is None else ", volumes read-only over NBD")
        ready([*lines, *http_lines, f"control socket {control_path}"])
        return "; ".join(lines)

    async def stop_serving() -> None:
        log.info("shutting down: no new connections")
        await stop_nbd(SHUTDOWN_GRACE_S)

    code = await serve(daemon, node.path, args.progress, http_server, announce, stop_serving)
    log.info("stopped")
    return code
