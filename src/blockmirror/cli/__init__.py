"""The `blockmirror` command. One module per subcommand; each module has
`register(subparsers)` that adds its parser (with its own help) and sets
`func=run`. User errors become one `Error:` line, a `Try:` hint, exit 1."""

import argparse
import importlib
import sys

from blockmirror import __version__
from blockmirror.errors import BlockmirrorError

# Subcommand modules, in the order `--help` lists them.
SUBCOMMANDS = ["init", "info", "snapshot", "diff", "primary", "secondary", "roles", "status", "verify", "simulate"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's default prints usage + exits 2
        self.print_usage(sys.stderr)
        print(f"Error: {message}", file=sys.stderr)
        print(f"Try: {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="blockmirror",
        description="Remote mirroring of block volumes that survives link failures by using snapshots.",
    )
    parser.add_argument("--version", action="version", version=f"blockmirror {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"blockmirror.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except BlockmirrorError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"Try: {exc.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
