"""`blockmirror primary DIR --nbd HOST:PORT [--peer HOST:PORT --secret-file FILE]`:
serve a node's volumes over NBD, mirrored to a secondary.

With `--peer` every host write is also sent, in order, to the secondary
(runtime/primary_daemon.py); without it the primary is standalone: hosts
read and write its volumes over NBD and nothing is mirrored.
"""

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
    heartbeat_for,
    nbd_uri,
    parse_address,
    positive_seconds,
    ready,
    serve,
    setup_logging,
    start_http,
    wait_for_signal,
)
from blockmirror.errors import ConfigError

log = logging.getLogger("blockmirror.primary")

SHUTDOWN_GRACE_S = 30.0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "primary",
        help="serve a node's volumes to hosts over NBD, mirrored to a secondary",
        description=(
            "Serve the volumes of the node in DIR to hosts over NBD (export name = volume name; "
            "an empty export name selects the first volume). With --peer every write is mirrored to the "
            "secondary at HOST:PORT (run `blockmirror secondary` there, with the same secret file and pair "
            "name); when the link fails writes go on locally and a copy-on-write snapshot remembers what "
            "changed, sent when the link returns. Without --peer the node runs standalone: nothing is "
            "mirrored. Prints 'serving N volumes on nbd://HOST:PORT' when ready; `blockmirror status DIR` "
            "asks the running daemon; SIGTERM or SIGINT stops it cleanly (in-flight requests finish, "
            "the secondary gets what is in flight, data is flushed)."),
        epilog="Example: blockmirror primary /srv/node --nbd 127.0.0.1:10809 --peer 10.0.0.2:7000 "
               "--secret-file /etc/blockmirror/secret --mode sync",
    )
    parser.add_argument("dir", metavar="DIR", help="node directory (made by `blockmirror init`)")
    parser.add_argument("--nbd", metavar="HOST:PORT",
                        help="address to serve NBD on; port 0 picks a free port (printed when ready). Required.")
    parser.add_argument("--read-only", action="store_true", default=None,
                        help="refuse every write (standalone only)")
    parser.add_argument("--peer", metavar="HOST:PORT", help="the secondary's --listen address")
    parser.add_argument("--secret-file", metavar="FILE",
                        help="file holding the pair's shared secret (at least 16 bytes); required with --peer")
    parser.add_argument("--mode", choices=["sync", "async"],
                        help="sync: a write completes once durable on both nodes; async (default): once "
                             "durable locally, with the secondary at most --window behind")
    parser.add_argument("--window", metavar="SIZE",
                        help="async mode: most bytes the secondary may lag behind (default 32MiB)")
    parser.add_argument("--reconnect-max", type=positive_seconds, metavar="SECONDS",
                        help="longest wait between reconnect attempts (default 10)")
    parser.add_argument("--initial-sync", choices=["full", "checksum"],
                        help="how a sync with no common base (the first one) runs: full (default) sends every "
                             "allocated chunk; checksum compares digests of every chunk with the secondary first "
                             "and sends only those that differ (for a secondary pre-seeded with a copy)")
    parser.add_argument("--rpo-warn", type=positive_seconds, metavar="SECONDS",
                        help="log a warning (and set blockmirror_rpo_exceeded) while the oldest write the "
                             "secondary lacks is older than this (default: never)")
    add_link_flags(parser)
    add_config_flag(parser)
    parser.set_defaults(func=run, _parser=parser)


def parse_host_port(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPV6]:PORT`, port 0-65535 (for --nbd)."""
    return parse_address(text, "--nbd")


def run(args: argparse.Namespace) -> int:
    parser = args._parser
    apply_config(args, parser, {**LINK_DEFAULTS, "read_only": False, "mode": "async", "window": "32MiB",
                                "reconnect_max": 10.0, "initial_sync": "full"})
    if not args.nbd:
        parser.error("the following arguments are required: --nbd (or nbd = \"HOST:PORT\" in --config)")
    host, port = parse_host_port(args.nbd)
    if args.peer is None:
        for flag, given in (("--secret-file", args.secret_file), ("--http", args.http),
                            ("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key), ("--tls-ca", args.tls_ca),
                            ("--rpo-warn", args.rpo_warn),
                            ("--initial-sync", args.initial_sync if args.initial_sync != "full" else None)):
            if given:
                raise ConfigError(f"{flag} needs --peer", hint="give the secondary's address with --peer HOST:PORT")
        setup_logging(args.log_level)
        return _run_standalone(args, host, port)
    return _run_mirrored(args, host, port)


def _run_standalone(args, host: str, port: int) -> int:
    from blockmirror.nbd.local import LocalNodeExports
    from blockmirror.storage import Node

    node = Node.open(args.dir)
    try:
        if not node.volumes:
            raise ConfigError(f"node {args.dir} has no volumes to serve",
                              hint="blockmirror init a node with --volume NAME=SIZE")
        if not args.read_only:
            from blockmirror.engine.roles import check_role
            check_role(node, "primary")  # a secondary's volumes are written only by its primary
    except BaseException:
        node.close()
        raise
    from blockmirror.runtime.driver import tune_malloc

    tune_malloc()  # as every daemon: freed payload buffers are reused, not faulted in again
    local = LocalNodeExports(node, read_only=args.read_only)  # owns the node from here on
    return asyncio.run(_serve(local, host, port))


async def _serve(local, host: str, port: int) -> int:
    from blockmirror.nbd.server import NbdServer
    from blockmirror.runtime.control import ControlServer
    from blockmirror.runtime.sdnotify import Notifier

    local.start()
    server = NbdServer(local.exports)
    bound_host, bound_port = await bind(server.start, (host, port), "serve NBD", "--nbd", local.close)

    node = local.node

    async def status(command: str, req: dict) -> dict:
        if command == "snapshot":
            from blockmirror.runtime.control import snapshot_reply
            return snapshot_reply(await asyncio.to_thread(node.snapshot, str(req.get("label") or "manual")))
        if command == "verify":
            return {"error": "this primary runs standalone (no --peer): there is no secondary to compare with",
                    "hint": "run the primary with --peer HOST:PORT to mirror it, then verify"}
        if command != "status":
            raise KeyError(command)
        from blockmirror.status import standalone_status
        return standalone_status(node).as_dict()

    control = ControlServer(node.path, status)
    await control.start()
    stop = await wait_for_signal()
    names = ", ".join(e.name for e in local.exports)
    uri = nbd_uri(bound_host, bound_port)
    log.info("node %s: serving volumes %s on %s (standalone: no peer)", node.path, names, uri)
    count = len(local.exports)
    serving = f"serving {count} volume{'s' if count != 1 else ''} on {uri}"
    print(serving, flush=True)
    notifier = Notifier()  # systemd (Type=notify): READY=1, watchdog pings, STOPPING=1
    notifier.ready(f"standalone: {serving}")
    notifier.start()

    await stop.wait()
    notifier.stopping()
    log.info("shutting down: no new connections; finishing in-flight requests")
    await server.shutdown(SHUTDOWN_GRACE_S)
    await control.close()
    log.info("flushing and closing the node")
    await local.close()
    await notifier.close()
    log.info("stopped (%d write batches, %d syncs)", local.committer.batches, local.committer.syncs)
    return 0


def _run_mirrored(args, host: str, port: int) -> int:
    from blockmirror.engine import PrimaryConfig
    from blockmirror.runtime import tls
    from blockmirror.runtime.pairing import check_pair, check_pair_name, read_secret
    from blockmirror.storage import Node
    from blockmirror.units import parse_size

    if args.read_only:
        raise ConfigError("--read-only is for a standalone primary", hint="drop --read-only, or drop --peer")
    if not args.secret_file:
        raise ConfigError("--peer needs --secret-file", hint="give the pair's shared secret with --secret-file FILE")
    peer = parse_address(args.peer, "--peer")
    if peer[1] == 0:
        raise ConfigError(f"--peer {args.peer!r}: port 0 is not a peer's port", hint="give the port the secondary "
                          "listens on (its --listen)")
    http = parse_address(args.http, "--http") if args.http else None
    pair_name = check_pair_name(args.pair)
    window = parse_size(args.window)
    if window < (64 << 10):
        raise ConfigError(f"--window {args.window} is too small", hint="use at least 64KiB, e.g. --window 32MiB")
    secret = read_secret(args.secret_file)
    tls_files = tls.files_from_args(args)
    tls_context = tls.client_context(tls_files) if tls_files is not None else None
    config = PrimaryConfig(mode=args.mode, window_bytes_max=window, link_timeout_s=args.link_timeout,
                           heartbeat_interval_s=heartbeat_for(args),
                           reconnect_max_s=max(args.reconnect_max, 0.2), rpo_warn_s=args.rpo_warn,
                           initial_sync=args.initial_sync)
    setup_logging(args.log_level)
    node = Node.open(args.dir)
    try:
        if not node.volumes:
            raise ConfigError(f"node {args.dir} has no volumes to serve",
                              hint="blockmirror init a node with --volume NAME=SIZE")
        pair = check_pair(node, "primary", pair_name, secret)
    except BaseException:
        node.close()
        raise
    return asyncio.run(_serve_mirrored(args, node, config, peer, secret, pair, host, port, http, tls_context))


async def _serve_mirrored(args, node, config, peer, secret, pair, host, port, http, tls_context) -> int:
    from blockmirror.nbd.server import NbdServer
    from blockmirror.runtime.primary_daemon import PrimaryDaemon

    daemon = PrimaryDaemon(node, config, peer, secret, pair, tls_context)
    await daemon.open()
    server = NbdServer(daemon.exports)
    bound_host, bound_port = await bind(server.start, (host, port), "serve NBD", "--nbd", daemon.close)

    async def stop_nbd_and_daemon() -> None:
        await server.shutdown(1)
        await daemon.close()

    http_server, http_lines = await start_http(daemon.status, http, stop_nbd_and_daemon)
    uri = nbd_uri(bound_host, bound_port)
    count = len(daemon.exports)
    over = "" if tls_context is None else (", TLS, peer verified" if args.tls_ca else ", TLS, peer not verified")

    def announce(control_path: str) -> str:
        log.info("node %s: serving volumes %s on %s; mirroring to %s (%s mode, pair %r%s)", node.path,
                 ", ".join(e.name for e in daemon.exports), uri, daemon.peer_text, config.mode, pair.name, over)
        serving = f"serving {count} volume{'s' if count != 1 else ''} on {uri}"
        ready([serving, f"mirroring to {daemon.peer_text} ({config.mode} mode, pair {pair.name}{over})",
               *http_lines, f"control socket {control_path}"])
        return serving

    async def stop_serving() -> None:
        log.info("shutting down: no new NBD connections; finishing in-flight requests")
        await server.shutdown(SHUTDOWN_GRACE_S)
        if daemon.fatal is None and not await daemon.drain():
            log.warning("shutting down with writes the secondary has not acknowledged; they are recorded for resync")
        log.info("recording the stop, flushing and closing the node")

    code = await serve(daemon, node.path, args.progress, http_server, announce, stop_serving)
    log.info("stopped")
    return code
