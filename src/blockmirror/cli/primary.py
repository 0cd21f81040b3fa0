"""`blockmirror primary DIR --nbd HOST:PORT`: serve a node's volumes over NBD.

Without `--peer` (the only mode so far) the primary is standalone: hosts read
and write its volumes over NBD and nothing is mirrored.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import re
import signal
import socket
import sys

from blockmirror.errors import ConfigError

log = logging.getLogger("blockmirror.primary")

SHUTDOWN_GRACE_S = 30.0
_PORT_RE = re.compile(r"^[0-9]{1,5}$")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "primary",
        help="serve a node's volumes to hosts over NBD",
        description=(
            "Serve the volumes of the node in DIR to hosts over NBD (export name = volume name; "
            "an empty export name selects the first volume). Without --peer the node runs standalone: "
            "nothing is mirrored. Prints 'serving N volumes on nbd://HOST:PORT' when ready; "
            "SIGTERM or SIGINT stops it cleanly (in-flight requests finish, data is flushed)."),
        epilog="Example: blockmirror primary /srv/node --nbd 127.0.0.1:10809",
    )
    parser.add_argument("dir", metavar="DIR", help="node directory (made by `blockmirror init`)")
    parser.add_argument("--nbd", required=True, metavar="HOST:PORT",
                        help="address to serve NBD on; port 0 picks a free port (printed when ready)")
    parser.add_argument("--read-only", action="store_true", help="refuse every write (clients see read-only exports)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="log verbosity on stderr (default: info)")
    parser.set_defaults(func=run)


def parse_host_port(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPV6]:PORT`, port 0-65535."""
    hint = "write the address as HOST:PORT, e.g. 127.0.0.1:10809 or [::1]:10809 (port 0 picks a free port)"
    m = re.match(r"^\[([^\[\]]+)\]:([^:]*)$", text) or re.match(r"^([^:\[\]]+):([^:]*)$", text)
    if not m:
        raise ConfigError(f"--nbd {text!r} is not HOST:PORT", hint=hint)
    host, port_text = m.group(1).strip(), m.group(2)
    if not host or host != m.group(1):
        raise ConfigError(f"--nbd {text!r}: bad host {m.group(1)!r}", hint=hint)
    if not _PORT_RE.match(port_text) or int(port_text) > 65535:
        raise ConfigError(f"--nbd {text!r}: port {port_text!r} is not a number from 0 to 65535", hint=hint)
    return host, int(port_text)


def _nbd_uri(host: str, port: int) -> str:
    return f"nbd://[{host}]:{port}" if ":" in host else f"nbd://{host}:{port}"


def run(args: argparse.Namespace) -> int:
    host, port = parse_host_port(args.nbd)
    logging.basicConfig(
        stream=sys.stderr, level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S")

    from blockmirror.nbd.local import LocalNodeExports
    from blockmirror.storage import Node

    node = Node.open(args.dir)
    if not node.volumes:
        node.close()
        raise ConfigError(f"node {args.dir} has no volumes to serve",
                          hint=f"blockmirror init a node with --volume NAME=SIZE")
    local = LocalNodeExports(node, read_only=args.read_only)  # owns the node from here on
    return asyncio.run(_serve(local, host, port))


async def _serve(local, host: str, port: int) -> int:
    from blockmirror.nbd.server import NbdServer

    local.start()
    server = NbdServer(local.exports)
    try:
        bound_host, bound_port = await server.start(host, port)
    except (OSError, socket.gaierror) as exc:
        await local.close()
        raise _listen_error(host, port, exc) from None

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    names = ", ".join(e.name for e in local.exports)
    uri = _nbd_uri(bound_host, bound_port)
    log.info("node %s: serving volumes %s on %s (standalone: no peer)", local.node.path, names, uri)
    count = len(local.exports)
    print(f"serving {count} volume{'s' if count != 1 else ''} on {uri}", flush=True)

    await stop.wait()
    log.info("shutting down: no new connections; finishing in-flight requests")
    await server.shutdown(SHUTDOWN_GRACE_S)
    log.info("flushing and closing the node")
    await local.close()
    log.info("stopped (%d write batches, %d syncs)", local.committer.batches, local.committer.syncs)
    return 0


def _listen_error(host: str, port: int, exc: OSError) -> ConfigError:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(f"cannot serve NBD on {where}: the address is already in use",
                           hint="choose another port with --nbd HOST:PORT (port 0 picks a free one), "
                                "or stop the process that holds it (ss -ltnp)")
    if isinstance(exc, socket.gaierror) or exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        return ConfigError(f"cannot serve NBD on {where}: {exc.strerror or exc}",
                           hint="use an address of this machine, e.g. 127.0.0.1, 0.0.0.0 or ::")
    if exc.errno == errno.EACCES:
        return ConfigError(f"cannot serve NBD on {where}: permission denied",
                           hint="use a port above 1023, or run as root")
    return ConfigError(f"cannot serve NBD on {where}: {exc}")
