"""`blockmirror secondary DIR --listen HOST:PORT --secret-file FILE [--nbd HOST:PORT]`:
receive a primary's writes; optionally serve the last consistent image
read-only over NBD."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket

from blockmirror.cli._daemon import (
    LINK_DEFAULTS,
    add_config_flag,
    add_link_flags,
    apply_config,
    format_address,
    heartbeat_for,
    listen_error,
    nbd_uri,
    parse_address,
    ready,
    setup_logging,
    wait_for_signal,
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
    from blockmirror.runtime.pairing import bind_pair, check_pair_name, read_secret
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
        pair = bind_pair(node, "secondary", pair_name, secret)
    except BaseException:
        node.close()
        raise
    return asyncio.run(_serve(args, node, config, secret, pair, listen, nbd, http, tls_context))


async def _serve(args, node, config, secret, pair, listen, nbd, http, tls_context) -> int:
    from blockmirror.nbd.server import NbdServer
    from blockmirror.runtime.control import ControlServer
    from blockmirror.runtime.progress import Progress
    from blockmirror.runtime.secondary_daemon import SecondaryDaemon

    daemon = SecondaryDaemon(node, config, secret, pair, tls_context)
    await daemon.open()
    lines = []
    try:
        h, p = await daemon.listen(*listen)
    except (OSError, socket.gaierror) as exc:
        await daemon.close()
        raise listen_error("listen for the primary", "--listen", listen[0], listen[1], exc) from None
    over = "" if tls_context is None else (" (TLS, primary verified)" if args.tls_ca else " (TLS)")
    lines.append(f"listening for the primary on {format_address(h, p)}{over}")
    server = None
    if nbd is not None:
        server = NbdServer(daemon.exports)
        try:
            h, p = await server.start(*nbd)
        except (OSError, socket.gaierror) as exc:
            await daemon.close()
            raise listen_error("serve NBD", "--nbd", nbd[0], nbd[1], exc) from None
        count = len(daemon.exports)
        lines.append(f"serving {count} volume{'s' if count != 1 else ''} read-only on {nbd_uri(h, p)}")
    http_server = None
    if http is not None:
        from blockmirror.runtime.http import HttpServer
        http_server = HttpServer(daemon.status)
        try:
            h, p = await http_server.start(*http)
        except (OSError, socket.gaierror) as exc:
            if server is not None:
                await server.shutdown(1)
            await daemon.close()
            raise listen_error("serve HTTP", "--http", http[0], http[1], exc) from None
        lines.append(f"http on http://{format_address(h, p)}")

    async def handle(command: str) -> dict:
        if command != "status":
            raise KeyError(command)
        return (await daemon.status()).as_dict()

    control = ControlServer(node.path, handle)
    await control.start()
    stop = await wait_for_signal()
    daemon.on_fatal = stop.set
    daemon.start()
    progress = Progress.maybe(args.progress, daemon.status)
    log.info("node %s: secondary of pair %r, listening on %s%s%s", node.path, pair.name, daemon.listen_text, over,
             "" if server is None else ", volumes read-only over NBD")
    ready([*lines, f"control socket {control.path}"])

    await stop.wait()
    if progress is not None:
        progress.stop()
    log.info("shutting down: no new connections")
    if server is not None:
        await server.shutdown(SHUTDOWN_GRACE_S)
    await daemon.close()
    if http_server is not None:
        await http_server.close()
    await control.close()
    log.info("stopped")
    return 1 if daemon.fatal is not None else 0
