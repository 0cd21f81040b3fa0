"""What the daemon subcommands (primary, secondary) share: addresses,
logging, the TOML config file, listen errors, and the serve loop around a
daemon (signals, HTTP and control servers, readiness lines, ordered
shutdown)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Awaitable, Callable

from blockmirror.cli._args import seconds_arg
from blockmirror.errors import ConfigError
from blockmirror.runtime.pairing import PAIR_NAME_DEFAULT

_PORT_RE = re.compile(r"^[0-9]{1,5}$")
LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"
LOG_DATEFMT = "%Y-%m-%dT%H:%M:%S"


def parse_address(text: str, flag: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPV6]:PORT`, port 0-65535."""
    hint = "write the address as HOST:PORT, e.g. 127.0.0.1:10809 or [::1]:10809 (port 0 picks a free port)"
    m = re.match(r"^\[([^\[\]]+)\]:([^:]*)$", text) or re.match(r"^([^:\[\]]+):([^:]*)$", text)
    if not m:
        raise ConfigError(f"{flag} {text!r} is not HOST:PORT", hint=hint)
    host, port_text = m.group(1).strip(), m.group(2)
    if not host or host != m.group(1):
        raise ConfigError(f"{flag} {text!r}: bad host {m.group(1)!r}", hint=hint)
    if not _PORT_RE.match(port_text) or int(port_text) > 65535:
        raise ConfigError(f"{flag} {text!r}: port {port_text!r} is not a number from 0 to 65535", hint=hint)
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def nbd_uri(host: str, port: int) -> str:
    return f"nbd://{format_address(host, port)}"


def setup_logging(level: str) -> None:
    import faulthandler
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: stacks on stderr
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper()), format=LOG_FORMAT,
                        datefmt=LOG_DATEFMT)


def listen_error(what: str, flag: str, host: str, port: int, exc: OSError) -> ConfigError:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(f"cannot {what} on {where}: the address is already in use",
                           hint=f"choose another port with {flag} HOST:PORT (port 0 picks a free one), "
                                "or stop the process that holds it (ss -ltnp)")
    if isinstance(exc, socket.gaierror) or exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        return ConfigError(f"cannot {what} on {where}: {exc.strerror or exc}",
                           hint="use an address of this machine, e.g. 127.0.0.1, 0.0.0.0 or ::")
    if exc.errno == errno.EACCES:
        return ConfigError(f"cannot {what} on {where}: permission denied",
                           hint="use a port above 1023, or run as root")
    return ConfigError(f"cannot {what} on {where}: {exc}")


# -- config file ------------------------------------------------------------------------------

def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="TOML file with the same settings as the flags (keys are flag names without "
                             "the dashes, e.g. secret-file = \"/etc/blockmirror/secret\"); flags win")


def apply_config(args: argparse.Namespace, parser: argparse.ArgumentParser, defaults: dict) -> None:
    """Fill unset flags from --config, then from `defaults`."""
    settings: dict = {}
    if getattr(args, "config", None):
        import tomllib
        path = args.config
        try:
            with open(path, "rb") as f:
                settings = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist", hint="give the path of a TOML file") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}",
                              hint="give the path of a readable TOML file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}",
                              hint='write one setting per line, e.g. peer = "10.0.0.2:7000"') from None
        known = {a.dest: a for a in parser._actions if a.dest not in ("help", "config", "dir")}
        for key, value in settings.items():
            dest = key.replace("-", "_")
            if dest not in known:
                names = ", ".join(sorted(d.replace("_", "-") for d in known))
                raise ConfigError(f"config file {path}: unknown setting {key!r}", hint=f"known settings: {names}")
            value = _config_value(path, key, value, known[dest])
            if getattr(args, dest) is not None:
                continue  # the flag wins
            setattr(args, dest, value)
    for dest, value in defaults.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, value)
    check_link_timing(args)


def check_link_timing(args: argparse.Namespace) -> None:
    """A heartbeat must come more often than the link timeout, or the link
    drops between two heartbeats."""
    interval, timeout = getattr(args, "heartbeat_interval", None), getattr(args, "link_timeout", None)
    if interval is None or timeout is None or interval < timeout:
        return
    raise ConfigError(f"--heartbeat-interval {interval:g} is not below --link-timeout {timeout:g}: "
                      "the link would count as down between two heartbeats",
                      hint=f"lower --heartbeat-interval below {timeout:g} (e.g. {min(1.0, timeout / 4):g}, "
                           f"or leave it out for the default) or raise --link-timeout above {interval:g} "
                           "(heartbeat-interval / link-timeout in a --config file)")


def _toml(value) -> str:
    """`value` as it is written in TOML (for error messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return str(value)


def _config_value(path: str, key: str, value, action: argparse.Action):
    """A config file value checked against the type its flag takes, as the
    flag's text (or a bool for an on/off flag)."""
    def bad(expected: str, example: str) -> ConfigError:
        return ConfigError(f"config file {path}: {key} = {_toml(value)} must be {expected}",
                           hint=f"write it as {key} = {example}")

    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if action.nargs == 0:  # an on/off flag (store_true)
        if not isinstance(value, bool):
            raise bad("a boolean (true or false, without quotes)", "true")
        return value
    if action.choices is not None:
        choices = list(action.choices)
        if not isinstance(value, str) or value not in choices:
            raise bad("one of " + ", ".join(_toml(c) for c in choices), _toml(choices[0]))
        return value
    if action.type is not None:  # a number of seconds
        if not is_number:
            raise bad("a number of seconds (without quotes)", "5")
        try:
            return action.type(str(value))
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise ConfigError(f"config file {path}: {key} = {_toml(value)}: {exc}",
                              hint=f"write it as {key} = 5") from None
    if action.metavar == "SIZE":  # a size: "32MiB", or a number of bytes
        from blockmirror.units import parse_size
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise bad('a size, e.g. "32MiB", or a whole number of bytes', '"32MiB"')
        try:
            parse_size(value)
        except (ConfigError, ValueError) as exc:
            raise ConfigError(f"config file {path}: {key} = {_toml(value)}: {exc}",
                              hint=f'write it as {key} = "32MiB" or a whole number of bytes') from None
        return value
    if not isinstance(value, str):
        if action.metavar == "HOST:PORT":
            raise bad('a string "HOST:PORT"', '"127.0.0.1:10809"')
        if action.metavar == "FILE":
            raise bad("a string (a file path)", '"/etc/blockmirror/FILE"')
        raise bad("a string", f'"{(action.metavar or "VALUE").lower()}"')
    return value


def positive_seconds(text: str) -> float:
    return seconds_arg(text, maximum=3600)


def add_link_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pair", metavar="NAME",
                        help=f"pair name; both nodes must use the same one (default: {PAIR_NAME_DEFAULT})")
    parser.add_argument("--link-timeout", type=positive_seconds, metavar="SECONDS",
                        help="the link counts as down after this long without a message from the peer "
                             "(detects black holes; default 5)")
    parser.add_argument("--heartbeat-interval", type=positive_seconds, metavar="SECONDS",
                        help="heartbeat period (default: min(1, link-timeout/4))")
    parser.add_argument("--http", metavar="HOST:PORT",
                        help="serve /status (JSON) and /metrics (Prometheus) over HTTP")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="log verbosity on stderr (default: info)")
    parser.add_argument("--tls-cert", metavar="FILE",
                        help="encrypt the replication link with TLS: this node's certificate (PEM); "
                             "needs --tls-key, and TLS on both nodes")
    parser.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM, unencrypted)")
    parser.add_argument("--tls-ca", metavar="FILE",
                        help="verify the peer's TLS certificate against this CA (PEM); on the secondary this "
                             "requires the primary to present a certificate from it")
    parser.add_argument("--progress", choices=["auto", "always", "never"],
                        help="a progress line for initial sync and resync on stderr "
                             "(auto: when stderr is a terminal)")


LINK_DEFAULTS = {"pair": PAIR_NAME_DEFAULT, "link_timeout": 5.0, "heartbeat_interval": None, "log_level": "info",
                 "progress": "auto"}


def heartbeat_for(args) -> float:
    return args.heartbeat_interval or min(1.0, args.link_timeout / 4)


# -- serving ------------------------------------------------------------------------------------

async def wait_for_signal() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def ready(lines: list[str]) -> None:
    """Readiness on stdout: the addresses, then `ready`."""
    for line in lines:
        print(line, flush=True)
    print(f"ready (pid {os.getpid()})", flush=True)


async def bind(start, address: tuple[str, int], what: str, flag: str,
               undo: Callable[[], Awaitable[None]]) -> tuple[str, int]:
    """`await start(host, port)`, the bound address; a listen error runs
    `undo()` (closing what was started before) and becomes the ConfigError
    that names `flag`."""
    try:
        return await start(*address)
    except (OSError, socket.gaierror) as exc:
        await undo()
        raise listen_error(what, flag, address[0], address[1], exc) from None


async def start_http(status, address: tuple[str, int] | None,
                     undo: Callable[[], Awaitable[None]]) -> tuple[object | None, list[str]]:
    """The /status and /metrics server on `address` (None: no server) and its readiness lines."""
    if address is None:
        return None, []
    from blockmirror.runtime.http import HttpServer
    server = HttpServer(status)
    h, p = await bind(server.start, address, "serve HTTP", "--http", undo)
    return server, [f"http on http://{format_address(h, p)}"]


async def serve(daemon, node_dir: str, progress_mode: str, http_server, announce: Callable[[str], str],
                stop_serving: Callable[[], Awaitable[None]]) -> int:
    """Run a started-up daemon until SIGTERM/SIGINT or a fatal error: the
    control socket, the daemon's loops, the progress line, then
    `announce(control_socket_path)` (log and readiness lines; it returns the
    status line systemd gets with READY=1). Under systemd (runtime/sdnotify.py)
    the daemon then sends STATUS= on state changes and watchdog pings, and
    STOPPING=1 when shutdown begins. Shutdown is ordered: `stop_serving()`
    (no new host connections, in-flight requests finish), the daemon, HTTP,
    the control socket. Exit code 1 after a fatal error."""
    from blockmirror.runtime.control import ControlServer
    from blockmirror.runtime.progress import Progress
    from blockmirror.runtime.sdnotify import Notifier

    async def handle(command: str, req: dict) -> dict:
        if command == "snapshot":
            return await daemon.user_snapshot(str(req.get("label") or "manual"))
        if command == "verify":
            return await daemon.start_verify(req)
        if command != "status":
            raise KeyError(command)
        return (await daemon.status()).as_dict()

    control = ControlServer(node_dir, handle)
    await control.start()
    stop = await wait_for_signal()
    daemon.on_fatal = stop.set
    daemon.start()
    progress = Progress.maybe(progress_mode, daemon.status)
    notifier = Notifier()
    notifier.ready(announce(control.path))
    notifier.start(daemon.status)

    await stop.wait()
    notifier.stop_polling()
    notifier.stopping("stopping" if daemon.fatal is None else f"stopping after a fatal error: {daemon.fatal}")
    if progress is not None:
        progress.stop()
    await stop_serving()
    await daemon.close()
    if http_server is not None:
        await http_server.close()
    await control.close()
    await notifier.close()
    return 1 if daemon.fatal is not None else 0
